"""The figures of docs/stardist.md: tiling choices vs a whole-image run, and memory per voxel.

1. Agreement (object F1 at IoU >= 0.5, :func:`blockbuster.metrics.match_objects`) of
   ``tile_process`` with one whole-image run of the tiny test model on the 1536² mosaic of real
   nuclei the tests use (3 x 3 tiles of 600², 2 threads), for: the defaults (global percentiles,
   halo = receptive field rounded up to the network's lattice), per-tile percentiles, the raw
   receptive field as halo (off the lattice), a tile shape off the lattice (604), and smaller
   aligned halos (32, 16); and StarDist's own ``predict_instances_big`` on the same mosaic.
2. Working memory of the segmenter per voxel of a tile (what ``Needs.bytes_per_voxel``
   estimates): the growth of a fresh process's own peak RSS (:mod:`blockbuster.memory`) while
   segmenting one 1024² and one 2048² tile of real nuclei (StarDist's 512² test image tiled
   with flips), after a warm-up on a small tile; for the tiny test model and for a randomly
   initialised network of the ``2D_versatile_fluo`` architecture (32 rays, grid 2, U-Net
   depth 3, 32 filters; ``prob_thresh=0.99`` so that non-maximum suppression does not get
   every pixel of an untrained network as a candidate: the network's memory, not NMS's).

Usage: python bench/stardist_figures.py [--skip-memory] [--out bench/results]
(writes stardist.md and stardist.json; ~5 min on the 2-core development machine).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from reporting import figure_arguments, save  # noqa: E402

TESTS = HERE.parent / "blockbuster-stardist" / "tests"
TINY_2D = TESTS / "data" / "tiny_2d"
TILE = (600, 600)

#: name: (tile_process options beyond the image, the function and 2 threads)
TILINGS = {
    "defaults (global percentiles, halo on the lattice)": {},
    "per-tile percentiles": {"normalize_scope": "tile"},
    "halo = raw receptive field (off the lattice)": {"overlap": "field"},
    "tile shape 604 (off the lattice)": {"tile_shape": (604, 604)},
    "aligned halo 32": {"overlap": 32},
    "aligned halo 16": {"overlap": 16},
}

MEMORY_CHILD = r"""
import json, os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["CUDA_VISIBLE_DEVICES"] = ""
import numpy as np
from blockbuster.memory import peak_baseline, peak_rss_bytes
from blockbuster.plugins.stardist import stardist_fn

which, size = sys.argv[1], int(sys.argv[2])
if which == "versatile":
    from stardist.models import Config2D, StarDist2D
    config = Config2D(n_rays=32, grid=(2, 2), unet_n_depth=3, unet_n_filter_base=32,
                      n_channel_in=1)
    model = StarDist2D(config, name=None, basedir=None)
    options = {"prob_thresh": 0.99}  # random weights: keep NMS from seeing every pixel
else:
    model, options = which, {}
from stardist.data import test_image_nuclei_2d
nuclei = test_image_nuclei_2d().astype(np.float32)  # real nuclei, 512^2, tiled with flips
tile = np.block([[nuclei if (i + j) % 2 == 0 else nuclei[:, ::-1] for j in range(size // 512)]
                 for i in range(size // 512)])
fn = stardist_fn(model, **options).with_global_normalization(nuclei)
fn(nuclei[:256, :256])  # build and warm up the model
before = peak_baseline()
labels = fn(tile)
print(json.dumps({"growth": peak_rss_bytes() - before, "objects": int(labels.max()),
                  "estimate": fn.blockbuster_needs().bytes_per_voxel}))
"""


def mosaic():
    """The tests' 1536² mosaic of real nuclei (``nuclei_mosaic`` of their conftest)."""
    spec = importlib.util.spec_from_file_location("stardist_tests_conftest", TESTS / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.nuclei_mosaic((3, 3))


def agreement() -> list[dict]:
    import numpy as np

    from blockbuster import tile_process
    from blockbuster.metrics import match_objects
    from blockbuster.plugins.stardist import stardist_fn

    image = mosaic()
    whole = stardist_fn(TINY_2D).with_global_normalization(image)(image)
    rows = []
    for name, options in TILINGS.items():
        options = dict(options)
        fn = stardist_fn(TINY_2D, normalize_scope=options.pop("normalize_scope", "global"))
        if options.get("overlap") == "field":
            options["overlap"] = fn.receptive_field()
        options.setdefault("tile_shape", TILE)
        labels = np.asarray(tile_process(image, fn, workers=2, compute=True, **options))
        match = match_objects(whole, labels)
        halo = options.get("overlap", fn.blockbuster_needs().halo)
        rows.append({"tiling": name, "tile_shape": list(options["tile_shape"]),
                     "halo": np.atleast_1d(halo).tolist(),
                     "f1": match.f1, "false_merges": match.false_merges,
                     "false_splits": match.false_splits, "objects_whole": int(whole.max())})
        print(json.dumps(rows[-1]), flush=True)
    rows.append(predict_instances_big(image, whole))
    return rows


def predict_instances_big(image, whole) -> dict:
    """StarDist's own block-wise prediction on the same mosaic, for comparison."""
    from blockbuster.metrics import match_objects
    from blockbuster.plugins.stardist import stardist_fn

    fn = stardist_fn(TINY_2D).with_global_normalization(image)
    labels, _ = fn.model().predict_instances_big(fn.normalized(image, None), axes="YX",
                                                 block_size=800, min_overlap=64,
                                                 show_progress=False)
    match = match_objects(whole, labels)
    return {"tiling": "StarDist's predict_instances_big (block 800, min_overlap 64)",
            "tile_shape": [800, 800], "halo": [64], "f1": match.f1,
            "false_merges": match.false_merges, "false_splits": match.false_splits,
            "objects_whole": int(whole.max())}


def memory() -> list[dict]:
    rows = []
    for which in (str(TINY_2D), "versatile"):
        for size in (1024, 2048):
            done = subprocess.run([sys.executable, "-c", MEMORY_CHILD, which, str(size)],
                                  capture_output=True, text=True, check=True)
            found = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append({"model": "tiny test model" if which != "versatile" else
                         "2D_versatile_fluo architecture (random weights)", "tile": size,
                         "growth_mb": found["growth"] / 1e6,
                         "bytes_per_voxel": found["growth"] / size**2,
                         "objects": found["objects"],
                         "estimate_bytes_per_voxel": found["estimate"]})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(report: dict) -> str:
    lines = ["| tiling (1536² mosaic, tiny model, 2 threads) | tile | halo | F1 vs whole | "
             "false merges | false splits |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['tiling']} | {r['tile_shape'][0]} | {r['halo'][0]} | {r['f1']:.4f} | "
              f"{r['false_merges']} | {r['false_splits']} |" for r in report["agreement"]]
    if report["memory"]:
        lines += ["", "| model | tile | objects | peak RSS growth MB | B per voxel | "
                  "Needs.bytes_per_voxel |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['tile']}² | {r['objects']} | {r['growth_mb']:.0f} | "
                  f"{r['bytes_per_voxel']:.0f} | {r['estimate_bytes_per_voxel']:.0f} |"
                  for r in report["memory"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    args = figure_arguments(__doc__)
    report = {"agreement": agreement(), "memory": [] if args.skip_memory else memory()}
    save(args.out, "stardist", report, markdown(report))


if __name__ == "__main__":
    main()
