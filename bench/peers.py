"""Blockbuster against its peers: speed, memory and stitching fidelity, side by side.

Every (case, peer) pair runs in a fresh process so its peak RSS is its own. Fidelity is measured
against the whole-image call of the same function: F1 of object matching at IoU >= 0.5, false
merges (one tiled object holding most of two whole-image objects) and false splits.

Peers:
- ``whole``        the function on the whole image (reference; the floor for speed)
- ``blockbuster``  tile_process, threads, 2 workers, merge="overlap" (or "touch" for CC)
- ``touch``        tile_process with merge="touch" (what touching-face stitching gives)
- ``dask-image``   dask_image.ndmeasure.label on the same threshold (connected components only)
- ``stardist``     StarDist's predict_instances_big (StarDist cases, when installed)
- ``cellpose-distributed``  cellpose.contrib.distributed_segmentation.distributed_eval on a dask
                   LocalCluster of 2 single-threaded workers (Cellpose cases). It needs zarr 2, so
                   it runs in its own environment, ``bench/.venv-cellpose-distributed``
                   (``make bench-env``), through ``cellpose_distributed_peer.py``; without that
                   environment, and always under ``--tiny``, its rows say why they were skipped.
- ``patchworks``   patchworks 3.3.0's ``tile_process`` (the GPL original of this design, driven
                   through its documented API) with the same ``fn``, tiles, overlap and 2
                   workers, on the CC, watershed and 3D cases and the large-image case. It runs
                   in its own environment, ``bench/.venv-patchworks`` (``make
                   bench-env-patchworks``), through ``patchworks_peer.py``; without it, and
                   always under ``--tiny``, its rows say why they were skipped.
- ``blockbuster-pw-env``  blockbuster (threads, 2 workers) in that same environment, through the
                   same script: the row the patchworks targets compare with (the same packages,
                   so the same import floor of peak RSS).

``--only-patchworks`` runs only the cases where patchworks takes part, ``--case TEXT`` only the
cases whose name contains ``TEXT``.

On the large-image case (an 8192² uint16 nuclei zarr with 1024² chunks, threshold + components,
1024² tiles, overlap 16: the case of issue 20) blockbuster and patchworks read the zarr and write
their labels to a zarr, as a user would; the whole-image call reads it into memory.

Peers are timed warm: an untimed run on a corner of the image first imports what they import
lazily, loads the model and starts thread pools (``warm_up_s`` in the JSON), so the times are
those of a long-running process, not of imports and model loading.

After the table come the targets of the benchmark, each with its measured value and whether it
is met.

Usage: python bench/peers.py [--quick | --tiny] [--out bench/results]   (prints the table and
the targets, writes peers.md and peers.json). The test suite runs ``--tiny`` only.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from blockbuster.memory import peak_rss_mb

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
STARDIST_MODEL = ROOT / "blockbuster-stardist" / "tests" / "data" / "tiny_2d"
CELLPOSE_MODEL = ROOT / "blockbuster-cellpose" / "tests" / "data" / "tiny_disks_cp3"
#: Diameter (px) of the disks the tiny Cellpose model was trained on and of the Cellpose cases'
#: cells. Cellpose's distributed mode always overlaps blocks by twice the diameter.
CELL_DIAMETER = 24
CELLPOSE_DISTRIBUTED_PYTHON = HERE / ".venv-cellpose-distributed" / "bin" / "python"
PATCHWORKS_PYTHON = HERE / ".venv-patchworks" / "bin" / "python"
WORKERS = 2
F1_TARGET = 0.99
OUTSIDE_FN_TARGET = 0.10
#: Kinds of case whose function runs a neural network (and needs its package).
NETWORK_KINDS = ("stardist", "cellpose")


# -- cases ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    name: str
    kind: str          # "cc" (threshold + components), "watershed", "stardist" or "cellpose"
    side: int
    ndim: int = 2
    tile: int = 512
    overlap: int = 0
    planes: int = 0    # > 0: a (planes, side, side) stack, tiled along Y and X only
    on_disk: bool = False  # read from a zarr (chunks = tiles) and written to one, not in memory

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.planes, self.side, self.side) if self.planes else (self.side,) * self.ndim

    @property
    def tile_shape(self) -> tuple[int, ...]:
        return (self.planes, self.tile, self.tile) if self.planes else (self.tile,) * self.ndim

    @property
    def halo(self) -> int | tuple[int, ...]:
        return (0, self.overlap, self.overlap) if self.planes else self.overlap


def cases(size: str) -> list[Case]:
    scale = {"tiny": 256, "quick": 2048, "full": 4096}[size]
    tile = {"tiny": 128, "quick": 512, "full": 1024}[size]
    cells = {"tiny": 256, "quick": 1024, "full": 1536}[size]  # Cellpose: ~0.05 MP/s
    cellpose_2d = Case("dense touching nuclei, Cellpose (tiny model)", "cellpose", cells,
                       tile=max(128, tile // 2), overlap=2 * CELL_DIAMETER)
    return [
        Case("sparse nuclei (real, mosaic)", "cc", scale, tile=tile),
        Case("dense touching nuclei", "watershed", scale, tile=max(128, tile // 2), overlap=40),
        Case("large objects across tiles", "cc", scale, tile=tile // 2),
        Case("3D nuclei", "cc", max(64, scale // 16), ndim=3, tile=max(32, tile // 8)),
        Case("real nuclei, StarDist (tiny model)", "stardist", max(512, scale // 2),
             tile=max(256, tile // 2), overlap=48),
        # --tiny keeps one Cellpose case: every process importing cellpose spends ~5 s on it
        *([] if size == "tiny" else [cellpose_2d]),
        Case("dense touching nuclei, Cellpose 3-plane stack (tiny model)", "cellpose",
             max(256, cells // 2), ndim=3, planes=3, tile=max(128, tile // 2),
             overlap=2 * CELL_DIAMETER),
        Case("large image, zarr on disk", "cc", {"tiny": 512, "quick": 4096, "full": 8192}[size],
             tile=2 * tile, overlap=16, on_disk=True),
    ]


def make_image(case: Case) -> np.ndarray:
    from blockbuster.synthetic import nuclei, touching_disks

    if case.kind == "cellpose":
        return touching_cells(case.shape)
    if case.name.startswith(("sparse", "real")):
        return real_nuclei_mosaic(case.side)
    if case.name.startswith("dense"):
        return touching_disks((case.side, case.side), radius=9, spacing=17, seed=1)
    if case.name.startswith("large objects"):
        return nuclei((case.side, case.side), density=0.00004, radius=(60, 140), seed=2)
    if case.on_disk:
        return nuclei_mosaic(case.side, case.tile)
    return nuclei((case.side,) * 3, density=0.002, radius=(3, 6), seed=3)


def touching_cells(shape: tuple[int, ...]) -> np.ndarray:
    """A grid of touching disks of ``CELL_DIAMETER``, blurred and noisy like the images the tiny
    Cellpose model was trained on; a stack repeats the cells with new noise in every plane."""
    from scipy import ndimage

    from blockbuster.synthetic import touching_disks

    disks = touching_disks(shape[-2:], radius=CELL_DIAMETER // 2, spacing=CELL_DIAMETER, seed=4)
    cells = ndimage.gaussian_filter(disks, 1.0) * 0.8 + 0.1
    noise = np.random.default_rng(4).normal(0, 0.05, shape)
    return (cells + noise).astype(np.float32)


def nuclei_mosaic(side: int, tile: int) -> np.ndarray:
    """``bench_core.py``'s synthetic nuclei image: one seeded ``tile``² block after another."""
    from blockbuster.synthetic import nuclei

    n = side // tile
    image = np.empty((side, side), np.uint16)
    for i in range(n):
        for j in range(n):
            image[i * tile:(i + 1) * tile, j * tile:(j + 1) * tile] = nuclei(
                (tile, tile), density=0.003, seed=i * n + j)
    return image


ON_DISK_IMAGE = "image.zarr"


def write_image_on_disk(case: Case, workdir: Path) -> None:
    """The image of an on-disk case as a zarr array in ``workdir``, one chunk per tile."""
    import zarr

    image = make_image(case)
    array = zarr.create_array(store=str(workdir / ON_DISK_IMAGE), shape=image.shape,
                              chunks=case.tile_shape, dtype=image.dtype)
    array[...] = image


def real_nuclei_mosaic(side: int) -> np.ndarray:
    """StarDist's bundled real nuclei image (512², fluorescence), tiled with flips to ``side``.

    Falls back to scikit-image's bundled ``coins`` when stardist is not installed.
    """
    try:
        from stardist.data import test_image_nuclei_2d

        base = test_image_nuclei_2d().astype(np.uint16)
    except ImportError:
        from skimage.data import coins

        base = coins().astype(np.uint16)
    reps = -(-side // base.shape[0])
    rows = [np.concatenate([base if (i + j) % 2 == 0 else base[:, ::-1] for j in range(reps)], 1)
            for i in range(reps)]
    return np.ascontiguousarray(np.concatenate(rows, 0)[:side, :side])


def segmenter(case: Case, image: np.ndarray):
    from blockbuster.builtin.segmenters import Threshold, Watershed
    from blockbuster.sampling import otsu_threshold, sample_blocks

    if case.kind == "watershed":
        return Watershed(threshold=0.5, min_distance=5, diameter=20)
    if case.kind == "stardist":
        from blockbuster.plugins.stardist import stardist_fn

        return stardist_fn(str(STARDIST_MODEL)).with_global_normalization(image)
    if case.kind == "cellpose":
        from blockbuster.plugins.cellpose import cellpose_fn

        # a stack: every plane in 2D, the cells linked across planes where IoU >= 0.5
        fn = cellpose_fn(str(CELLPOSE_MODEL), diameter=CELL_DIAMETER,
                         stitch_threshold=0.5 if case.planes else 0.0)
        return fn.prepare(image)
    threshold = otsu_threshold(sample_blocks(image))
    return Threshold(threshold=threshold, connectivity=case.ndim)


# -- peers (each runs in a child process) -----------------------------------------------------
def run_peer(case_json: str, peer: str, workdir: str) -> dict:
    case = Case(**json.loads(case_json))
    image = case_image(case, peer, Path(workdir))
    fn = segmenter(case, image)
    runner = RUNNERS[peer]
    warm = ({"warm_up_s": warm_up(case, runner, image, fn, Path(workdir))}
            if peer in WARM_PEERS else {})
    labels, measured = runner(case, image, fn, Path(workdir))
    np.save(Path(workdir) / f"{peer}.npy", labels)
    return {"peak_rss_mb": peak_rss_mb(), **warm, **measured,
            "megapixels_per_s": np.prod(case.shape) / 1e6 / measured["wall_s"],
            "objects": measured.get("objects", int(labels.max()))}


def case_image(case: Case, peer: str, workdir: Path):
    """The case's image: in memory, or for an on-disk case the zarr that ``run_case`` wrote
    (read whole only by the whole-image call)."""
    if not case.on_disk:
        return make_image(case)
    import zarr

    array = zarr.open_array(str(workdir / ON_DISK_IMAGE), mode="r")
    return array[...] if peer == "whole" else array


def warm_up(case: Case, runner, image: np.ndarray, fn, workdir: Path) -> float:
    """Seconds of one untimed run on a corner of two tiles per axis: it imports what the peer
    imports lazily, loads the model, starts thread pools."""
    corner = tuple(slice(0, 2 * t) for t in case.tile_shape)
    t0 = time.perf_counter()
    runner(case, image[corner], fn, workdir)
    return time.perf_counter() - t0


def run_whole(case: Case, image, fn, workdir: Path):
    t0 = time.perf_counter()
    labels = fn(image)
    wall = time.perf_counter() - t0
    return labels, {"wall_s": wall, "in_fn_s": wall}


def run_blockbuster(case: Case, image, fn, workdir: Path, merge: str | None = None):
    from blockbuster import tile_process

    merge = merge or ("overlap" if case.overlap else "touch")
    if not isinstance(image, np.ndarray):  # an on-disk case (its warm-up gets a corner)
        with tempfile.TemporaryDirectory(dir=workdir) as out:
            t0 = time.perf_counter()
            result, stats = tile_process(str(workdir / ON_DISK_IMAGE), fn,
                                         tile_shape=case.tile_shape, overlap=case.halo,
                                         merge=merge, executor="threads", workers=WORKERS,
                                         write_to=Path(out) / "labels.zarr", return_stats=True)
            wall = time.perf_counter() - t0
            peak = peak_rss_mb()  # the run's, before its labels are read for the comparison
            labels = result.compute()
        return labels, {"wall_s": wall, "in_fn_s": stats.seconds_in_fn / WORKERS,
                        "peak_rss_mb": peak}
    t0 = time.perf_counter()
    labels, stats = tile_process(image, fn, tile_shape=case.tile_shape, overlap=case.halo,
                                 merge=merge, executor="threads", workers=WORKERS,
                                 compute=True, return_stats=True)
    return labels, {"wall_s": time.perf_counter() - t0,
                    "in_fn_s": stats.seconds_in_fn / WORKERS}


def run_touch(case: Case, image, fn, workdir: Path):
    return run_blockbuster(case, image, fn, workdir, merge="touch")


def run_stardist(case: Case, image, fn, workdir: Path):
    x = fn.normalized(image, None)
    t0 = time.perf_counter()
    labels, _ = fn.model().predict_instances_big(
        x, axes="YX", block_size=case.tile, min_overlap=case.overlap, show_progress=False)
    return labels, {"wall_s": time.perf_counter() - t0}


def run_dask_image(case: Case, image, fn, workdir: Path):
    import dask.array as da
    from dask_image import ndmeasure
    from scipy import ndimage

    t0 = time.perf_counter()
    mask = da.from_array(image, chunks=case.tile_shape) > fn.threshold
    structure = ndimage.generate_binary_structure(case.ndim, case.ndim)
    labels, _ = ndmeasure.label(mask, structure=structure)
    labels = labels.compute(scheduler="threads", num_workers=WORKERS)
    return labels, {"wall_s": time.perf_counter() - t0}


def run_cellpose_distributed(case: Case, image, fn, workdir: Path):
    """``distributed_eval`` in its own environment: image, job and results go through files."""
    rundir = workdir / "cellpose-distributed"
    rundir.mkdir()
    np.save(rundir / "image.npy", image)
    job = {"image": "image.npy", "labels": "labels.npy", "result": "result.json",
           "blocksize": list(case.tile_shape), "weights": str(CELLPOSE_MODEL),
           "eval_kwargs": distributed_eval_kwargs(case, fn)}
    (rundir / "job.json").write_text(json.dumps(job))
    done = subprocess.run([str(CELLPOSE_DISTRIBUTED_PYTHON),
                           str(HERE / "cellpose_distributed_peer.py"), "job.json"],
                          cwd=rundir, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"cellpose_distributed_peer.py: {_last_line(done.stderr)}")
    return np.load(rundir / "labels.npy"), json.loads((rundir / "result.json").read_text())


def run_patchworks(case: Case, image, fn, workdir: Path, tool: str = "patchworks"):
    """patchworks' ``tile_process`` in its own environment: image, job and results go through
    files (the zarr of an on-disk case, else a ``.npy``); it warms itself up on a corner.
    ``tool="blockbuster"``: blockbuster's ``tile_process`` in that same environment."""
    import dataclasses

    rundir = workdir / tool
    rundir.mkdir()
    if case.on_disk:
        source = str(workdir / ON_DISK_IMAGE)
    else:
        source = str(rundir / "image.npy")
        np.save(source, image)
    kind = "watershed" if case.kind == "watershed" else "threshold"
    job = {"tool": tool, "image": source, "fn": {"kind": kind, **dataclasses.asdict(fn)},
           "tile_shape": list(case.tile_shape), "overlap": case.overlap, "workers": WORKERS,
           "labels": "labels.npy", "result": "result.json"}
    (rundir / "job.json").write_text(json.dumps(job))
    done = subprocess.run([str(PATCHWORKS_PYTHON), str(HERE / "patchworks_peer.py"), "job.json"],
                          cwd=rundir, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"patchworks_peer.py: {_last_line(done.stderr)}")
    return np.load(rundir / "labels.npy"), json.loads((rundir / "result.json").read_text())


def run_blockbuster_in_patchworks_env(case: Case, image, fn, workdir: Path):
    return run_patchworks(case, image, fn, workdir, tool="blockbuster")


def distributed_eval_kwargs(case: Case, fn) -> dict:
    """``CellposeModel.eval`` options giving the same function as ``fn``: its diameter, its
    image-wide intensity normalization and, for a stack, its stitching across planes."""
    settings = fn.settings
    # an int: distributed_eval slices blocks by 2 * diameter (a float fails in remove_overlaps)
    kwargs = {"diameter": int(settings.diameter), "channels": [0, 0],
              "normalize": {"lowhigh": list(settings.lowhigh)}}
    if case.planes:
        kwargs.update(z_axis=0, stitch_threshold=settings.stitch_threshold)
    return kwargs


#: Peers warmed up here; ``cellpose-distributed`` warms its own cluster up the same way.
WARM_PEERS = ("whole", "blockbuster", "touch", "stardist", "dask-image")
RUNNERS = {"whole": run_whole, "blockbuster": run_blockbuster, "touch": run_touch,
           "stardist": run_stardist, "dask-image": run_dask_image,
           "cellpose-distributed": run_cellpose_distributed, "patchworks": run_patchworks,
           "blockbuster-pw-env": run_blockbuster_in_patchworks_env}
#: Peers beyond whole / blockbuster / touch that take part in cases of a kind.
PATCHWORKS_PEERS = ["blockbuster-pw-env", "patchworks"]
OWN_PEERS = {"cc": ["dask-image", *PATCHWORKS_PEERS], "watershed": PATCHWORKS_PEERS,
             "stardist": ["stardist"], "cellpose": ["cellpose-distributed"]}
#: Peers that run in an environment of their own, and how to build it.
OWN_ENVIRONMENTS = {"cellpose-distributed": (CELLPOSE_DISTRIBUTED_PYTHON,
                                             "cellpose.contrib.distributed_segmentation",
                                             "make bench-env"),
                    "patchworks": (PATCHWORKS_PYTHON, "patchworks", "make bench-env-patchworks"),
                    "blockbuster-pw-env": (PATCHWORKS_PYTHON, "patchworks, blockbuster",
                                           "make bench-env-patchworks")}
#: Verified with cellpose 3.1.1.3: every block is segmented, then stitching fails.
DISTRIBUTED_2D = ("distributed_eval cannot stitch 2D images: block_face_adjacency_graph labels "
                  "the block faces with a 3D structure ('structure and input must have equal "
                  "rank'), see the 3-plane stack case")


def peers_of(case: Case, size: str) -> list[str]:
    """The peers of ``case``; ``--tiny`` leaves out touch on network-based cases (the same
    harness path as on the other cases, and seconds of framework import per process)."""
    touch = [] if size == "tiny" and case.kind in NETWORK_KINDS else ["touch"]
    if case.on_disk:  # the large image: the tools that read and write zarrs out of core
        return ["whole", "blockbuster", *PATCHWORKS_PEERS]
    return ["whole", "blockbuster", *touch, *OWN_PEERS.get(case.kind, [])]


def skip_reason(case: Case, peer: str, size: str) -> str | None:
    """Why ``peer`` does not run on ``case`` (None: it runs)."""
    if peer not in OWN_ENVIRONMENTS:
        return None
    if size == "tiny":
        return "not run by --tiny (it needs its own environment)"
    if peer == "cellpose-distributed" and not case.planes:
        return DISTRIBUTED_2D
    return environment_unavailable(peer)


@functools.cache
def environment_unavailable(peer: str) -> str | None:
    """Why the environment of ``peer`` cannot run it (None: it can)."""
    python, module, make = OWN_ENVIRONMENTS[peer]
    if not python.exists():
        return f"no {python.parents[1].name} environment: run {make}"
    done = subprocess.run([str(python), "-c", f"import {module}"], capture_output=True, text=True)
    if done.returncode != 0:
        return f"incomplete environment ({_last_line(done.stderr)}): run {make}"
    return None


def _last_line(text: str) -> str:
    return text.strip().splitlines()[-1] if text.strip() else "failed"


def in_child(case: Case, peer: str, workdir: str) -> dict:
    code = (f"import json, sys; sys.path.insert(0, {str(HERE)!r}); import peers; "
            f"print(json.dumps(peers.run_peer({json.dumps(case.__dict__)!r}, {peer!r}, "
            f"{workdir!r})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": _last_line(done.stderr)}
    return json.loads(done.stdout.strip().splitlines()[-1])


def fidelity(workdir: str, peer: str, exact: bool) -> dict:
    """F1, false merges and splits against the whole-image labels; ``exact``: also whether the
    labels are the same objects, pixel for pixel."""
    from blockbuster.metrics import match_objects

    reference = np.load(Path(workdir) / "whole.npy")
    result = np.load(Path(workdir) / f"{peer}.npy")
    score = match_objects(reference, result)
    found = {"f1": score.f1, "false_merges": score.false_merges,
             "false_splits": score.false_splits}
    if exact:
        found["identical"] = same_objects(reference, result)
    return found


def same_objects(reference: np.ndarray, result: np.ndarray) -> bool:
    from blockbuster.testing import assert_same_labels

    try:
        assert_same_labels(reference, result)
    except AssertionError:
        return False
    return True


# -- the run --------------------------------------------------------------------------------------
def run(size: str, out: Path, only_patchworks: bool = False,
        names: list[str] | None = None) -> dict:
    rows = []
    for case in cases(size):
        if names and not any(name in case.name for name in names):
            continue
        if case.kind in NETWORK_KINDS and importlib.util.find_spec(case.kind) is None:
            continue
        if only_patchworks and "patchworks" not in peers_of(case, size):
            continue
        rows.extend(run_case(case, size))
    report = {"rows": rows, "targets": targets(rows)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "peers.json").write_text(json.dumps(report, indent=1))
    (out / "peers.md").write_text(markdown(report))
    print(markdown(report))
    return report


def run_case(case: Case, size: str) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        if case.on_disk:
            write_image_on_disk(case, Path(workdir))
        for peer in peers_of(case, size):
            row = {"case": case.name, "kind": case.kind, "peer": peer}
            reason = skip_reason(case, peer, size)
            row.update({"skipped": reason} if reason else in_child(case, peer, workdir))
            if "wall_s" in row and peer != "whole":
                row.update(fidelity(workdir, peer, exact=case.kind == "cc"))
            if row.get("in_fn_s") is not None:
                row["outside_fn_share"] = 1 - row["in_fn_s"] / row["wall_s"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


# -- targets ----------------------------------------------------------------------------------
def targets(rows: list[dict]) -> list[dict]:
    """Each target of the benchmark with its measured value and status, case by case."""
    at = {(r["case"], r["peer"]): r for r in rows}
    found = []
    for case, kind in dict.fromkeys((r["case"], r["kind"]) for r in rows):
        blockbuster = at.get((case, "blockbuster"))
        if (case, "patchworks") in at:
            found += patchworks_targets(case, at.get((case, "blockbuster-pw-env")),
                                        at[(case, "patchworks")])
        if (case, "dask-image") not in at and kind == "cc":
            continue
        if kind == "cc":
            dask_image = at.get((case, "dask-image"))
            found += [identical_target(case, blockbuster, dask_image),
                      speed_target(case, blockbuster, dask_image)]
            continue
        found.append(f1_target(case, blockbuster))
        if kind in NETWORK_KINDS:
            found.append(outside_fn_target(case, blockbuster))
        if kind == "cellpose":
            found.append(merges_target(case, blockbuster, at.get((case, "cellpose-distributed"))))
    return found


def target(text: str, measured: str, met: bool | None) -> dict:
    status = "not measured" if met is None else "met" if met else "missed"
    return {"target": text, "measured": measured, "status": status}


def _measured(row: dict | None) -> bool:
    return row is not None and "wall_s" in row


def _unmeasured(text: str, *rows: dict | None) -> dict:
    why = next((f"{r['peer']}: {r.get('skipped') or r.get('error')}" for r in rows
                if r is not None and not _measured(r)), "no result")
    return target(text, why, None)


def identical_target(case: str, blockbuster: dict | None, dask_image: dict | None) -> dict:
    text = f"{case}: blockbuster's objects identical to whole-image and dask-image"
    if not (_measured(blockbuster) and _measured(dask_image)):
        return _unmeasured(text, blockbuster, dask_image)
    same = blockbuster["identical"] and dask_image["identical"]
    measured = (f"blockbuster vs whole: {_yes(blockbuster['identical'])}, "
                f"dask-image vs whole: {_yes(dask_image['identical'])}")
    return target(text, measured, same)


def speed_target(case: str, blockbuster: dict | None, dask_image: dict | None) -> dict:
    text = f"{case}: blockbuster faster than dask-image on {WORKERS} workers"
    if not (_measured(blockbuster) and _measured(dask_image)):
        return _unmeasured(text, blockbuster, dask_image)
    speedup = dask_image["wall_s"] / blockbuster["wall_s"]
    ratio = f"x{speedup:.2f} faster" if speedup >= 1 else f"x{1 / speedup:.2f} slower"
    measured = f"{ratio} ({blockbuster['wall_s']:.2f} s vs {dask_image['wall_s']:.2f} s)"
    return target(text, measured, speedup > 1)


#: blockbuster's speed-up over patchworks targeted on the large image (issue 20).
PATCHWORKS_SPEEDUP = 2.0


def patchworks_targets(case: str, blockbuster: dict | None, patchworks: dict) -> list[dict]:
    """Fidelity and peak RSS no worse than patchworks', and on the large image >= 2x faster:
    blockbuster run in patchworks' environment (the same interpreter and packages)."""
    texts = [f"{case}: blockbuster's F1 >= patchworks' and false merges + splits <= its",
             f"{case}: blockbuster's peak RSS <= patchworks'",
             f"{case}: blockbuster faster than patchworks"
             + (f" by >= {PATCHWORKS_SPEEDUP}x" if case.startswith("large image") else "")]
    if not (_measured(blockbuster) and _measured(patchworks)):
        return [_unmeasured(text, blockbuster, patchworks) for text in texts]
    errors = [r["false_merges"] + r["false_splits"] for r in (blockbuster, patchworks)]
    fidelity = (f"F1 {blockbuster['f1']:.4f} vs {patchworks['f1']:.4f}, merges + splits "
                f"{errors[0]} vs {errors[1]}")
    ours, theirs = blockbuster["peak_rss_mb"], patchworks["peak_rss_mb"]
    speedup = patchworks["wall_s"] / blockbuster["wall_s"]
    needed = PATCHWORKS_SPEEDUP if case.startswith("large image") else 1.0
    return [target(texts[0], fidelity, blockbuster["f1"] >= patchworks["f1"]
                   and errors[0] <= errors[1]),
            target(texts[1], f"{ours:.0f} MB vs {theirs:.0f} MB", ours <= theirs),
            target(texts[2], f"x{speedup:.2f} ({blockbuster['wall_s']:.2f} s vs "
                   f"{patchworks['wall_s']:.2f} s)", speedup >= needed)]


def f1_target(case: str, blockbuster: dict | None) -> dict:
    text = f"{case}: blockbuster F1 >= {F1_TARGET} vs whole-image"
    if not _measured(blockbuster):
        return _unmeasured(text, blockbuster)
    return target(text, f"{blockbuster['f1']:.4f}", blockbuster["f1"] >= F1_TARGET)


def outside_fn_target(case: str, blockbuster: dict | None) -> dict:
    text = f"{case}: blockbuster's time outside fn <= {OUTSIDE_FN_TARGET:.0%} of its wall time"
    if not _measured(blockbuster):
        return _unmeasured(text, blockbuster)
    share = blockbuster["outside_fn_share"]
    return target(text, f"{share:.1%}", share <= OUTSIDE_FN_TARGET)


def merges_target(case: str, blockbuster: dict | None, distributed: dict | None) -> dict:
    text = f"{case}: blockbuster's false merges none, or fewer than cellpose-distributed's"
    if not (_measured(blockbuster) and _measured(distributed)):
        return _unmeasured(text, blockbuster, distributed)
    ours, theirs = blockbuster["false_merges"], distributed["false_merges"]
    return target(text, f"{ours} vs {theirs}", ours == 0 or ours < theirs)


def _yes(flag: bool) -> str:
    return "identical" if flag else "different"


# -- the report -----------------------------------------------------------------------------------
def markdown(report: dict) -> str:
    return table(report["rows"]) + "\n" + targets_markdown(report["targets"])


def table(rows: list[dict]) -> str:
    head = ("| case | peer | wall s | MP/s | outside fn | peak RSS MB | objects | F1 | "
            "false merges | false splits |\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        if "wall_s" not in r:
            why = f"skipped: {r['skipped']}" if "skipped" in r else f"error: {r['error']}"
            lines.append(f"| {r['case']} | {r['peer']} | {why} | | | | | | | |")
            continue
        share = f"{r['outside_fn_share']:.0%}" if "outside_fn_share" in r else ""
        lines.append(
            f"| {r['case']} | {r['peer']} | {r['wall_s']:.2f} | {r['megapixels_per_s']:.1f} | "
            f"{share} | {r['peak_rss_mb']:.0f} | {r['objects']} | {r.get('f1', 1.0):.4f} | "
            f"{r.get('false_merges', 0)} | {r.get('false_splits', 0)} |")
    return "\n".join(lines) + "\n"


def targets_markdown(found: list[dict]) -> str:
    lines = ["## Targets", "", "| target | measured | status |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['measured']} | {t['status']} |" for t in found]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="a few minutes")
    group.add_argument("--tiny", action="store_true", help="seconds: harness check only")
    parser.add_argument("--only-patchworks", action="store_true",
                        help="only the cases where patchworks takes part")
    parser.add_argument("--case", action="append", dest="cases", metavar="TEXT",
                        help="only the cases whose name contains TEXT (repeatable)")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    run("tiny" if args.tiny else "quick" if args.quick else "full", Path(args.out),
        args.only_patchworks, args.cases)


if __name__ == "__main__":
    main()
