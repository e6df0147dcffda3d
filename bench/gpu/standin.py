"""The GPU path's CPU side, measured without a GPU: a stand-in ``fn`` that sleeps as a GPU would.

    python bench/gpu/standin.py --out bench/results/standin

The stand-in takes batches of 16 tiles like ``torch_fn`` on a GPU, sleeps ``--gpu-ms`` per tile
(the forward pass: it releases the GIL, as waiting for a CUDA result does) and returns a
speckled probability map (~10% foreground in small pieces, like a random network's output) for
blockbuster to label. One worker, as on one GPU. The share of the run the stand-in "GPU" is
busy (``busy``: seconds asleep / wall) is the GPU busy fraction such a run could reach, and
``outside_fn`` the share of the worker's time outside ``fn``: what is left of the core's
per-tile work (reading, labelling, staging, writing) on the worker's critical path.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


class SleepingSegmenter:
    """Sleeps ``seconds`` per tile and returns a fixed speckled probability map."""

    batch_size = 16

    def __init__(self, seconds: float, halo: int, side: int) -> None:
        from scipy import ndimage

        self.seconds, self.halo = seconds, halo
        noise = ndimage.gaussian_filter(np.random.default_rng(0).random((side, side),
                                                                         np.float32), 1.0)
        self.speckle = (noise > np.quantile(noise, 0.9)).astype(np.float32)

    def blockbuster_needs(self):
        from blockbuster import Needs

        return Needs(halo=self.halo, workers=1, output="probability")

    def __call__(self, tile):
        return self.segment_batch([tile])[0]

    def segment_batch(self, tiles):
        time.sleep(self.seconds * len(tiles))
        return [self.speckle[: t.shape[0], : t.shape[1]].copy() for t in tiles]


def run(size: int, tile: int, gpu_ms: float, halo: int, folder: Path,
        workers: int | None = None, output: str = "labels.zarr") -> dict:
    """One run with the segmenter's one worker; ``workers=1`` makes every pass, not just the
    segment stage, run on that one worker (as before the passes after it had their own)."""
    import zarr

    from blockbuster import tile_process

    source = folder / "image.zarr"
    if not source.exists() or zarr.open_array(str(source), mode="r").shape != (size, size):
        image = zarr.create_array(str(source), shape=(size, size), chunks=(tile, tile),
                                  dtype=np.uint16, overwrite=True)
        image[...] = np.random.default_rng(1).integers(0, 4000, (size, size), dtype=np.uint16)
    fn = SleepingSegmenter(gpu_ms / 1000, halo, tile + 2 * halo)
    started, cpu = time.perf_counter(), cpu_seconds()
    _, stats = tile_process(str(source), fn, tile_shape=(tile, tile), overlap=halo,
                            workers=workers, write_to=folder / output, overwrite=True,
                            return_stats=True)
    wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    return {"size": size, "tile": tile, "halo": halo, "gpu_ms_per_tile": gpu_ms,
            "workers": workers or "segmenter's (1)", "cpu_s": round(cpu, 3),
            "n_tiles": stats.n_tiles, "n_objects": stats.n_objects, "wall_s": round(wall, 3),
            "stage_s": {k: round(v, 3) for k, v in stats.stage_seconds.items()},
            "busy": round(stats.n_tiles * gpu_ms / 1000 / wall, 3),
            "outside_fn": round(1 - stats.seconds_in_fn / wall, 3)}


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def compare_post_workers(size: int, tile: int, gpu_ms: float, halo: int, folder: Path,
                         repeats: int) -> list[dict]:
    """The passes after ``fn`` (merge, relabel) on one worker (``workers=1``) and on a thread
    per core (the segmenter's one worker, the default), alternated ``repeats`` times; both
    outputs must be the same bytes."""
    import zarr

    rows = []
    for _ in range(repeats):
        for workers, output in ((1, "one.zarr"), (None, "all.zarr")):
            rows.append(run(size, tile, gpu_ms, halo, folder, workers, output))
            print(json.dumps(rows[-1]), flush=True)
    one, every = (zarr.open_array(str(folder / name), mode="r")[...]
                  for name in ("one.zarr", "all.zarr"))
    if one.dtype != every.dtype or not np.array_equal(one, every):
        raise SystemExit("the outputs differ: the post-segment pool changed the labels")
    print("outputs identical:", one.dtype, int(one.max()), "objects", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--halo", type=int, default=32)
    parser.add_argument("--gpu-ms", default="22,60", help="stand-in GPU ms per tile (comma list)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/standin"))
    parser.add_argument("--compare-post-workers", type=int, metavar="REPEATS", default=0,
                        help="instead: merge and relabel on one worker vs a thread per core, "
                             "REPEATS alternated runs at the first --gpu-ms")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="bench-standin-"))
    rows = []
    try:
        run(args.tile * 2, args.tile, 0.0, args.halo, folder)  # imports and first calls
        if args.compare_post_workers:
            rows = compare_post_workers(args.size, args.tile, float(args.gpu_ms.split(",")[0]),
                                        args.halo, folder, args.compare_post_workers)
        for gpu_ms in [] if rows else [float(v) for v in args.gpu_ms.split(",")]:
            rows.append(run(args.size, args.tile, gpu_ms, args.halo, folder))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    report = {"python": platform.python_version(), "rows": rows}
    (args.out / "standin.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
