"""The GPU path, measured: tiles/s, time outside fn and GPU busy fraction on an 8192² image.

    python bench/gpu/bench_gpu.py --out bench/results/gpu        # on a CUDA machine
    python bench/gpu/bench_gpu.py --tiny --out /tmp/gpu-tiny     # CPU, seconds (the test suite)

Cases (random weights: speed does not depend on them):

- ``unet``      the 4-level U-Net of ``bench/bench_torch.py`` through ``torch_fn`` (semantic,
                connected components), halo 32;
- ``cpnet``     Cellpose 3's network (``cellpose.resnet_torch.CPnet``, stock widths 32-256)
                through ``torch_fn``: its cell-probability channel, thresholded, connected
                components; halo 64 (two 30 px diameters, rounded to the network's 16);
- ``cellpose``  the whole Cellpose 3 pipeline (``cellpose_fn(gpu=True)``: 224 px patches,
                flow dynamics, masks) with stock-width random weights;
- ``cpsam``     the whole Cellpose-SAM pipeline (Cellpose 4: ViT-L on 256 px patches, every
                layer computed) with the blob-finding weights of the Cellpose 4 tests
                (``blockbuster-cellpose/tests/_local_cpsam.py``): needs cellpose 4 installed,
                so it is not among the default cases.

Each runs ``tile_process`` from a zarr (1024² chunks) into a zarr with 1024² tiles, once with
the default workers (one per GPU), once with each of ``--workers`` threads sharing the GPU and
once with each of ``--process-workers`` worker processes (each its own CUDA context; no CUDA
events there, NVML only). Figures:

- ``tiles_per_s``        tiles / wall time of the whole run (segment, merge, relabel);
- ``outside_fn``         ``1 - (seconds in fn / workers) / wall``;
- ``gpu_busy_events``    union of the intervals between CUDA events recorded before and after
                         every forward pass of the network, over the wall time (the network
                         only: Cellpose's flow dynamics on the GPU count as idle);
- ``gpu_busy_segment``   the same busy time over the segment stage only (reading, ``fn``,
                         staging: the part of the run that feeds the GPU), without the
                         run's set-up, merge and relabel, which no GPU work can overlap;
- ``gpu_busy_nvml``      mean NVML utilisation sampled every 20 ms during the run;
- ``breakdown_s``        (default run) seconds per step, summed over the tiles: reading
                         (reader thread), preparing and launching passes and waiting for
                         their results (the worker's thread, inside ``fn``), and labelling and
                         staging (writer thread, behind ``fn``);
- ``whole_s``            the same segmenter on the whole image (on a GPU a crop: see
                         ``WHOLE_MAX_SIDE``), and ``tiled_vs_whole``: tiled wall time over the
                         whole-image time scaled to the image's pixels.

``--tiny`` runs every case on the CPU with tiny networks on a 256² image and checks that the
tiled labels of the U-Net (float64, halo beyond its receptive field) equal its whole-image
labels. Results: ``gpu.json`` and ``gpu.md`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ for bench_torch

TARGET_BUSY = 0.90
TARGET_OUTSIDE = 0.10


# -- image ------------------------------------------------------------------------------------
def make_image(path: Path, side: int, chunk: int) -> np.ndarray:
    """A uint16 nuclei image of ``side``² (a 2048² synthetic block tiled), saved as zarr."""
    import zarr

    from blockbuster.synthetic import nuclei

    block = nuclei((min(side, 2048),) * 2, seed=1)
    reps = -(-side // block.shape[0])
    image = np.tile(block, (reps, reps))[:side, :side].copy()
    array = zarr.create_array(str(path), shape=image.shape, chunks=(chunk, chunk),
                              dtype=image.dtype, overwrite=True)
    array[...] = image
    return image


# -- models -----------------------------------------------------------------------------------
def cpnet_module(nbase: list[int]):
    """Cellpose 3's ``CPnet`` (random weights) returning its cell-probability logits."""
    import torch
    from cellpose.resnet_torch import CPnet

    class CellProbability(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = CPnet(list(nbase), 3, sz=3, max_pool=True)

            self.offset = 0.0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            pair = torch.cat([x, torch.zeros_like(x)], dim=1)  # Cellpose 3: [cyto, nucleus]
            return self.net(pair)[0][:, 2:3] - self.offset

    torch.manual_seed(0)
    return CellProbability()


FOREGROUND = 0.1  # random networks are shifted so this share of a sample is foreground


def calibration_sample(image: np.ndarray):
    """A float32 (1, 1, Y, X) tensor of a corner of ``image`` scaled to [0, 1]."""
    import torch

    corner = image[:512, :512].astype(np.float32) / np.float32(np.iinfo(image.dtype).max)
    return torch.from_numpy(corner)[None, None]


def foreground_shift(logits) -> float:
    """The logit above which ``FOREGROUND`` of ``logits`` lie."""
    return float(np.quantile(logits.detach().double().numpy(), 1 - FOREGROUND))


def build_case(name: str, tiny: bool, device: str, folder: Path, image: np.ndarray):
    """(segmenter, halo) of a case; random networks shifted to find some foreground."""
    import torch

    from blockbuster.plugins.torch import torch_fn

    torch.manual_seed(0)
    sample = calibration_sample(image)
    if name == "unet":
        from bench_torch import BenchUNet

        net = (BenchUNet(width=4, levels=1) if tiny else BenchUNet(width=16)).eval()
        with torch.no_grad():
            logits = net(sample)
            net.head.bias[1] -= foreground_shift(logits[:, 1] - logits[:, 0])
        halo = 16 if tiny else 32
        fn = torch_fn(net, device=device, output="semantic", halo=halo,
                      pad_multiple=2 if tiny else 16, dtype="float64" if tiny else "float32")
        return fn, halo
    if name == "cpnet":
        halo = 16 if tiny else 64
        net = cpnet_module([2, 4, 8] if tiny else [2, 32, 64, 128, 256]).eval()
        with torch.no_grad():
            net.offset = foreground_shift(net(sample))
        fn = torch_fn(net, device=device, output="probability", activation="sigmoid",
                      threshold=0.5, halo=halo, pad_multiple=4 if tiny else 16)
        return fn, halo
    if name == "cellpose":
        from cellpose.resnet_torch import CPnet

        from blockbuster.plugins.cellpose import cellpose_fn

        weights = folder / "random_cpnet"
        nbase = [2, 8, 16, 32, 64] if tiny else [2, 32, 64, 128, 256]
        net = CPnet(nbase, 3, sz=3, max_pool=True).eval()
        with torch.no_grad():
            cellprob = net(torch.cat([sample, torch.zeros_like(sample)], dim=1))[0][:, 2]
            net.output[2].bias[2] -= foreground_shift(cellprob)
        torch.save(net.state_dict(), weights)
        # random flows fail Cellpose's flow check: flow_threshold=0 keeps their masks
        fn = cellpose_fn(str(weights), gpu=device != "cpu", diameter=30, flow_threshold=0.0)
        return fn, fn.blockbuster_needs().halo
    if name == "cpsam":
        return cpsam_case(device, folder)
    raise SystemExit(f"unknown case {name!r}; choose from unet, cpnet, cellpose, cpsam")


def cpsam_case(device: str, folder: Path):
    """Cellpose-SAM (cellpose 4) with weights that find blobs (the full ViT-L still runs)."""
    import torch

    from blockbuster.plugins.cellpose import cellpose_fn

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "blockbuster-cellpose" / "tests"))
    from _local_cpsam import blob_cpsam_state

    weights = folder / "blob_cpsam"
    torch.save(blob_cpsam_state(), weights)
    fn = cellpose_fn(str(weights), gpu=device != "cpu", diameter=30, flow_threshold=0.0)
    return fn, fn.blockbuster_needs().halo


def timed_module(name: str, fn):
    """The network whose forward passes are timed with CUDA events (loaded by a warm-up)."""
    if name in ("cellpose", "cpsam"):
        return fn.load_model().net
    return fn._model()[0]


# -- GPU timing -------------------------------------------------------------------------------
class ForwardEvents:
    """CUDA events before and after every forward pass of ``module`` (any thread)."""

    def __init__(self, module) -> None:
        import torch

        self.torch = torch
        self.pairs: list = []
        self.lock = threading.Lock()
        self.handles = [module.register_forward_pre_hook(self._before),
                        module.register_forward_hook(self._after)]
        self.local = threading.local()

    def _event(self):
        event = self.torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def _before(self, module, args):
        self.local.start = self._event()

    def _after(self, module, args, output):
        end = self._event()
        with self.lock:
            self.pairs.append((self.local.start, end))

    def start(self):
        self.pairs.clear()
        self.origin = self._event()

    def busy_seconds(self) -> float:
        """Length of the union of the recorded forward intervals."""
        self.torch.cuda.synchronize()
        spans = sorted((self.origin.elapsed_time(a), self.origin.elapsed_time(b))
                       for a, b in self.pairs)
        total, reach = 0.0, -np.inf
        for begin, end in spans:
            if end > reach:
                total += end - max(begin, reach)
                reach = end
        return total / 1000

    def close(self):
        for handle in self.handles:
            handle.remove()


class NvmlSampler:
    """Mean GPU utilisation (NVML) sampled every ``period`` seconds in a thread."""

    def __init__(self, index: int = 0, period: float = 0.02) -> None:
        import pynvml

        pynvml.nvmlInit()
        self.nvml = pynvml
        self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        self.period = period
        self.samples: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.is_set():
            self.samples.append(self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu)
            time.sleep(self.period)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()

    def mean(self) -> float | None:
        return float(np.mean(self.samples)) / 100 if self.samples else None


def _nvml(cuda: bool):
    if not cuda:
        return None
    try:
        return NvmlSampler()
    except Exception:  # no NVML here: the events still give the busy fraction
        return None


# -- runs -------------------------------------------------------------------------------------
def tiled_run(fn, source, halo: int, tile: int, workers, out: Path, module, cuda: bool,
              executor: str = "threads", breakdown: bool = False) -> tuple[dict, object]:
    from blockbuster import tile_process
    from blockbuster.worker import usable_cores

    in_process = executor != "processes"  # the parent sees the forward passes
    if cuda and not in_process:
        import torch

        torch.cuda.empty_cache()  # the worker processes need what the parent's cache holds
    events = ForwardEvents(module) if cuda and in_process else None
    sampler = _nvml(cuda)
    steps = Breakdown() if breakdown and in_process else _Nothing()
    if events:
        events.start()
    started = time.perf_counter()
    with sampler or _Nothing(), steps:
        labels, stats = tile_process(source, fn, tile_shape=(tile, tile), overlap=halo,
                                     workers=workers, executor=executor, write_to=out,
                                     overwrite=True, return_stats=True)
    wall = time.perf_counter() - started
    used = workers or fn.blockbuster_needs().workers or usable_cores()
    row = {
        "executor": executor,
        "workers": used,
        "workers_default": workers is None,
        "n_tiles": stats.n_tiles,
        "n_objects": stats.n_objects,
        "wall_s": round(wall, 3),
        "stage_s": {k: round(v, 3) for k, v in stats.stage_seconds.items()},
        "tiles_per_s": round(stats.n_tiles / wall, 2),
        "fn_s_per_worker": round(stats.seconds_in_fn / used, 3),
        "outside_fn": round(1 - stats.seconds_in_fn / used / wall, 3),
        "gpu_busy_events": round(events.busy_seconds() / wall, 3) if events else None,
        "gpu_busy_segment": round(events.busy_seconds() / stats.stage_seconds["segment"], 3)
        if events else None,
        "gpu_busy_nvml": round(sampler.mean(), 3) if sampler and sampler.mean() is not None
        else None,
    }
    if isinstance(steps, Breakdown):
        row["breakdown_s"] = steps.seconds()
    if events:
        events.close()
    return row, labels


class Breakdown:
    """Seconds spent in the steps of a run (any thread), summed over calls, while active.

    ``read`` (reader thread) and ``stage`` (labelling, face layers and the staged write, in
    the writer thread) are the core's per-tile work around ``fn``; ``prepare`` (normalise and
    pad), ``launch`` (upload and queue a forward pass) and ``wait`` (for a pass's result) are
    the torch backend's steps inside ``fn``.
    """

    def __init__(self) -> None:
        import blockbuster.tasks as tasks
        from blockbuster.plugins.torch import _gpu
        from blockbuster.plugins.torch._segmenter import TorchSegmenter

        # staging is labelling plus the staged write, on the writer thread (a GPU model) or
        # the worker's own (a plain fn): both parts are timed, wherever they run
        self.targets = {("read", tasks, "_read_tiles"), ("stage", tasks, "_stage_contents_of"),
                        ("stage", tasks, "_write_staged"),
                        ("prepare", TorchSegmenter, "_prepare"),
                        ("launch", TorchSegmenter, "_launch"), ("wait", _gpu.Download, "result")}
        self.totals = dict.fromkeys((step for step, _, _ in self.targets), 0.0)
        self.lock = threading.Lock()

    def _timed(self, step: str, original):
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                with self.lock:
                    self.totals[step] += time.perf_counter() - started
        return timed

    def __enter__(self):
        self.originals = {(owner, name): getattr(owner, name)
                          for _, owner, name in self.targets}
        for step, owner, name in self.targets:
            setattr(owner, name, self._timed(step, self.originals[owner, name]))
        return self

    def __exit__(self, *exc):
        for (owner, name), original in self.originals.items():
            setattr(owner, name, original)

    def seconds(self) -> dict:
        return {step: round(total, 3) for step, total in self.totals.items()}


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


#: Largest whole-image side per case on a GPU: 32 channels x 8192² is 2^31 elements, past the
#: 32-bit indexing of some CUDA kernels, so the networks run on a 5792² crop (half the pixels);
#: the Cellpose pipelines on a 4096² (Cellpose-SAM: 2048²) crop to fit the time of one device call.
WHOLE_MAX_SIDE = {"unet": 5792, "cpnet": 5792, "cellpose": 4096, "cpsam": 2048}


def whole_run(fn, image: np.ndarray, cuda: bool,
              max_side: int | None = None) -> tuple[dict, np.ndarray | None]:
    """The segmenter on the whole image, or on the largest square crop that fits."""
    import torch

    from blockbuster.pixelmaps import whole_image_objects

    side = min(image.shape[0], max_side or image.shape[0])
    while True:
        crop = image[:side, :side]
        try:
            started = time.perf_counter()
            labels = whole_image_objects(fn, crop)  # a pixel map labelled as tiles are
            if cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - started
            return {"whole_side": side, "whole_s": round(seconds, 3),
                    "whole_mpix_per_s": round(side * side / seconds / 1e6, 2)}, labels
        except Exception as error:  # out of memory, or a tensor too large for a kernel
            if side <= 1024:
                return {"whole_error": f"{type(error).__name__}: {error}"[:300]}, None
            side = max(1024, (int(side / 2**0.5) // 16) * 16)
            if cuda:
                torch.cuda.empty_cache()


def run_case(name: str, args, image: np.ndarray, source: Path, folder: Path) -> list[dict]:
    import torch

    cuda = args.device != "cpu"
    fn, halo = build_case(name, args.tiny, args.device, folder, image)
    corner = image[: 2 * args.tile, : 2 * args.tile]
    from blockbuster import tile_process

    warm = time.perf_counter()
    tile_process(corner, fn, tile_shape=(args.tile, args.tile), overlap=halo, compute=True)
    warm = time.perf_counter() - warm
    module = timed_module(name, fn)
    common = {"case": name, "image": list(image.shape), "tile": args.tile, "halo": halo,
              "warm_up_s": round(warm, 2)}
    if name in ("unet", "cpnet") and cuda:
        padded = (1, args.tile + 2 * halo, args.tile + 2 * halo)
        common["forward_batch"] = fn._forward_batch(fn._model()[1], padded)
        common["tiles_per_call"] = fn.batch_size
    rows = []
    runs = [(None, "threads"), *[(w, "threads") for w in args.workers if w],
            *[(w, "processes") for w in args.process_workers if w]]
    for workers, executor in runs:
        try:
            row, labels = tiled_run(fn, source, halo, args.tile, workers,
                                    folder / "labels.zarr", module, cuda, executor,
                                    breakdown=workers is None)
        except Exception as error:  # keep this case's other runs and its whole-image figures
            if workers is None:
                raise
            row = {"executor": executor, "workers": workers, "workers_default": False,
                   "error": f"{type(error).__name__}: {error}"[:300]}
        rows.append({**common, **row})
        print(json.dumps(rows[-1]), flush=True)
    whole, whole_labels = whole_run(fn, image, cuda, WHOLE_MAX_SIDE[name] if cuda else None)
    tiled = np.asarray(labels[: whole.get("whole_side", 0), : whole.get("whole_side", 0)])
    if whole_labels is not None and whole["whole_side"] == image.shape[0]:
        whole["foreground_agreement"] = round(float(np.mean((tiled > 0) == (whole_labels > 0))), 5)
        whole["labels_match_whole"] = _same_partition(whole_labels, tiled)
    for row in rows:
        row.update(whole)
        if "whole_s" in whole and "wall_s" in row:
            per_pixel = whole["whole_s"] / whole["whole_side"] ** 2
            row["tiled_vs_whole"] = round(row["wall_s"] / (per_pixel * image.size), 2)
    print(json.dumps(whole), flush=True)
    if cuda:
        torch.cuda.empty_cache()
    return rows


def _same_partition(expected: np.ndarray, actual: np.ndarray) -> bool:
    from blockbuster.testing import assert_same_labels

    try:
        assert_same_labels(expected, actual)
    except AssertionError:
        return False
    return True


# -- report -----------------------------------------------------------------------------------
def environment(device: str) -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__,
            "device": device, "cpus": os.cpu_count()}
    if device != "cpu":
        free, total = torch.cuda.mem_get_info()
        info.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda,
                    gpu_memory_gib=round(total / 2**30, 1),
                    gpu_free_gib=round(free / 2**30, 1))
    return info


def targets(rows: list[dict]) -> list[dict]:
    """Each target with the measured value of the default (one worker per GPU) runs."""
    found = []
    for row in rows:
        if not row["workers_default"]:
            continue
        for key, goal, better in (("gpu_busy_events", TARGET_BUSY, "ge"),
                                  ("outside_fn", TARGET_OUTSIDE, "le")):
            value = row.get(key)
            met = None if value is None else (value >= goal if better == "ge" else value <= goal)
            sign = ">=" if better == "ge" else "<="
            found.append({"case": row["case"], "target": f"{key} {sign} {goal}", "value": value,
                          "status": "not measured" if met is None else "met" if met else "missed"})
    return found


def markdown(report: dict) -> str:
    columns = ("case", "executor", "workers", "tiles_per_s", "wall_s", "outside_fn",
               "gpu_busy_events", "gpu_busy_segment", "gpu_busy_nvml", "forward_batch",
               "whole_side", "whole_s", "tiled_vs_whole")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in report["rows"]:
        cells = [str(row.get(c, "")) for c in columns]
        if "error" in row:
            cells[3] = f"failed: {row['error'][:120]}"
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Targets", "", "| case | target | value | status |", "|---|---|---|---|"]
    lines += [f"| {t['case']} | {t['target']} | {t['value']} | {t['status']} |"
              for t in report["targets"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="CPU, tiny networks, 256² image")
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--cases", default="unet,cpnet,cellpose")
    parser.add_argument("--workers", default="4",
                        help="extra worker counts to run besides the default (comma separated)")
    parser.add_argument("--process-workers", default="",
                        help="worker-process counts to run too (comma separated)")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--out", type=Path, default=Path("bench/results/gpu"))
    args = parser.parse_args(argv)
    import torch

    if args.tiny:
        args.size, args.tile, args.device = 256, 64, "cpu"
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.workers = [int(w) for w in args.workers.split(",") if w.strip()]
    args.process_workers = [int(w) for w in args.process_workers.split(",") if w.strip()]
    args.out.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    report = {"environment": environment(args.device), "tiny": args.tiny, "rows": []}
    print(json.dumps(report["environment"]), flush=True)
    try:
        started = time.perf_counter()
        image = make_image(folder / "image.zarr", args.size, args.tile)
        report["image_s"] = round(time.perf_counter() - started, 2)
        for name in args.cases.split(","):
            try:
                report["rows"] += run_case(name.strip(), args, image, folder / "image.zarr",
                                           folder)
            except Exception as error:  # keep the other cases' figures
                report.setdefault("errors", {})[name] = f"{type(error).__name__}: {error}"[:500]
                print(f"{name}: {type(error).__name__}: {error}", flush=True)
            report["targets"] = targets(report["rows"])
            (args.out / "gpu.json").write_text(json.dumps(report, indent=1))
            (args.out / "gpu.md").write_text(markdown(report))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(markdown(report), flush=True)
    return 1 if report.get("errors") else 0


if __name__ == "__main__":
    raise SystemExit(main())
