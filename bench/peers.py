"""Blockbuster against its peers: speed, memory and stitching fidelity, side by side.

Every (case, peer) pair runs in a fresh process so its peak RSS is its own. Fidelity is measured
against the whole-image call of the same function: F1 of object matching at IoU >= 0.5, false
merges (one tiled object holding most of two whole-image objects) and false splits.

Peers:
- ``whole``        the function on the whole image (reference; the floor for speed)
- ``blockbuster``  tile_process, threads, 2 workers, merge="overlap" (or "touch" for CC)
- ``touch``        tile_process with merge="touch" (what touching-face stitching gives)
- ``dask-image``   dask_image.ndmeasure.label on the same threshold (connected components only)
- ``cellpose``     cellpose.contrib.distributed_segmentation (cellpose cases, when installed)
- ``stardist``     StarDist's predict_instances_big (stardist cases, when installed)

Usage: python bench/peers.py [--quick] [--out bench/results]   (prints one table, writes
Markdown and JSON). The test suite runs ``--tiny`` only.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


# -- cases ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    name: str
    kind: str          # "cc" (threshold + components), "watershed" or "stardist"
    side: int
    ndim: int = 2
    tile: int = 512
    overlap: int = 0


def cases(size: str) -> list[Case]:
    scale = {"tiny": 256, "quick": 2048, "full": 4096}[size]
    tile = {"tiny": 128, "quick": 512, "full": 1024}[size]
    return [
        Case("sparse nuclei (real, mosaic)", "cc", scale, tile=tile),
        Case("dense touching nuclei", "watershed", scale, tile=max(128, tile // 2), overlap=40),
        Case("large objects across tiles", "cc", scale, tile=tile // 2),
        Case("3D nuclei", "cc", max(64, scale // 16), ndim=3, tile=max(32, tile // 8)),
        Case("real nuclei, StarDist (tiny model)", "stardist", max(512, scale // 2),
             tile=max(256, tile // 2), overlap=48),
    ]


def make_image(case: Case) -> np.ndarray:
    from blockbuster.synthetic import nuclei, touching_disks

    if case.name.startswith(("sparse", "real")):
        return real_nuclei_mosaic(case.side)
    if case.name.startswith("dense"):
        return touching_disks((case.side, case.side), radius=9, spacing=17, seed=1)
    if case.name.startswith("large"):
        return nuclei((case.side, case.side), density=0.00004, radius=(60, 140), seed=2)
    return nuclei((case.side,) * 3, density=0.002, radius=(3, 6), seed=3)


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
    from blockbuster.sampling import otsu_threshold, sample_blocks
    from blockbuster.segmenters import Threshold, Watershed

    if case.kind == "watershed":
        return Watershed(threshold=0.5, min_distance=5, diameter=20)
    if case.kind == "stardist":
        from blockbuster.plugins.stardist import stardist_fn

        model = HERE.parent / "blockbuster-stardist" / "tests" / "data" / "tiny_2d"
        return stardist_fn(str(model)).with_global_normalization(image)
    threshold = otsu_threshold(sample_blocks(image))
    return Threshold(threshold=threshold, connectivity=case.ndim)


# -- peers (each runs in a child process) -----------------------------------------------------
def run_peer(case_json: str, peer: str, workdir: str) -> dict:
    case = Case(**json.loads(case_json))
    image = make_image(case)
    fn = segmenter(case, image)
    out = Path(workdir) / f"{peer}.npy"
    t0 = time.perf_counter()
    in_fn = None
    if peer == "whole":
        labels = fn(image)
        in_fn = time.perf_counter() - t0
    elif peer in ("blockbuster", "touch"):
        from blockbuster import tile_process

        merge = "touch" if peer == "touch" or case.overlap == 0 else "overlap"
        labels, stats = tile_process(image, fn, tile_shape=(case.tile,) * case.ndim,
                                     overlap=case.overlap, merge=merge, executor="threads",
                                     workers=2, compute=True, return_stats=True)
        in_fn = stats.seconds_in_fn / 2
    elif peer == "stardist":
        if case.kind != "stardist":
            return {"skipped": "predict_instances_big runs StarDist models only"}
        x = fn.normalized(image, None)
        t0 = time.perf_counter()
        labels, _ = fn.model().predict_instances_big(
            x, axes="YX", block_size=case.tile, min_overlap=case.overlap, show_progress=False)
    elif peer == "dask-image":
        if case.kind != "cc":
            return {"skipped": "dask-image only labels connected components"}
        import dask.array as da
        from dask_image import ndmeasure
        from scipy import ndimage

        mask = da.from_array(image, chunks=(case.tile,) * case.ndim) > fn.threshold
        structure = ndimage.generate_binary_structure(case.ndim, case.ndim)
        labels, _ = ndmeasure.label(mask, structure=structure)
        labels = labels.compute(scheduler="threads", num_workers=2)
    else:
        return {"skipped": f"peer {peer} does not apply to this case"}
    wall = time.perf_counter() - t0
    np.save(out, labels)
    return {"wall_s": wall, "in_fn_s": in_fn, "peak_rss_mb": _rss_mb(),
            "megapixels_per_s": image.size / 1e6 / wall, "objects": int(labels.max())}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def in_child(case: Case, peer: str, workdir: str) -> dict:
    code = (f"import json, sys; sys.path.insert(0, {str(HERE)!r}); import peers; "
            f"print(json.dumps(peers.run_peer({json.dumps(case.__dict__)!r}, {peer!r}, "
            f"{workdir!r})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def fidelity(workdir: str, peer: str) -> dict:
    from blockbuster.metrics import match_objects

    reference = np.load(Path(workdir) / "whole.npy")
    result = np.load(Path(workdir) / f"{peer}.npy")
    score = match_objects(reference, result)
    return {"f1": score.f1, "false_merges": score.false_merges,
            "false_splits": score.false_splits}


# -- the table ----------------------------------------------------------------------------------
PEERS = ["whole", "blockbuster", "touch", "dask-image", "stardist"]


def run(size: str, out: Path) -> list[dict]:
    rows = []
    for case in cases(size):
        if case.kind == "stardist" and importlib.util.find_spec("stardist") is None:
            continue
        with tempfile.TemporaryDirectory() as workdir:
            for peer in PEERS:
                row = {"case": case.name, "peer": peer, **in_child(case, peer, workdir)}
                if "wall_s" in row and peer != "whole":
                    row.update(fidelity(workdir, peer))
                if row.get("in_fn_s") is not None:
                    row["outside_fn_share"] = 1 - row["in_fn_s"] / row["wall_s"]
                rows.append(row)
                print(json.dumps(row), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "peers.json").write_text(json.dumps(rows, indent=1))
    (out / "peers.md").write_text(markdown(rows))
    print(markdown(rows))
    return rows


def markdown(rows: list[dict]) -> str:
    head = ("| case | peer | wall s | MP/s | outside fn | peak RSS MB | objects | F1 | "
            "false merges | false splits |\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        if "wall_s" not in r:
            lines.append(f"| {r['case']} | {r['peer']} | {r.get('skipped') or r.get('error')} "
                         "| | | | | | | |")
            continue
        share = f"{r['outside_fn_share']:.0%}" if "outside_fn_share" in r else ""
        lines.append(
            f"| {r['case']} | {r['peer']} | {r['wall_s']:.2f} | {r['megapixels_per_s']:.1f} | "
            f"{share} | {r['peak_rss_mb']:.0f} | {r['objects']} | {r.get('f1', 1.0):.4f} | "
            f"{r.get('false_merges', 0)} | {r.get('false_splits', 0)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="a few minutes")
    group.add_argument("--tiny", action="store_true", help="seconds: harness check only")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    run("tiny" if args.tiny else "quick" if args.quick else "full", Path(args.out))


if __name__ == "__main__":
    main()
