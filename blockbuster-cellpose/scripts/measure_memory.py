"""Measure Cellpose's working memory per pixel of a 2D tile (for ``Needs.bytes_per_voxel``).

Each tile size runs in a fresh process: the model is built and warmed up on a small tile,
then the growth of the process's own peak resident memory (``blockbuster.memory``: ``VmHWM``,
not ``ru_maxrss``, which Linux hands down from the parent) while segmenting an ``N x N`` tile
is measured from its memory just before the tile (the peak is reset there where Linux allows).
It prints the growth per tile and the per-pixel slope between tile sizes. Uses a randomly
initialised stock-width Cellpose 3 network (same activations as ``cyto3``) with
``cellprob_threshold`` lowered so the mask dynamics run on most pixels, the costly case. Usage::

    python scripts/measure_memory.py [SIZE ...]   # default 512 1024 2048
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys
import numpy as np
from blockbuster.memory import peak_baseline, peak_rss_bytes
from blockbuster.plugins.cellpose import cellpose_fn

weights, size = sys.argv[1], int(sys.argv[2])
fn = cellpose_fn(weights, diameter=30, cellprob_threshold=-6.0)
rng = np.random.default_rng(0)
fn(rng.random((96, 96), dtype=np.float32))            # build and warm up the model
tile = rng.random((size, size), dtype=np.float32)
before = peak_baseline()
fn(tile)
print(json.dumps({"size": size, "growth": peak_rss_bytes() - before}))
"""


def stock_weights(folder: Path) -> Path:
    """Save a randomly initialised stock-width Cellpose 3 network to ``folder``."""
    from cellpose.resnet_torch import CPnet

    path = folder / "stock_random_cp3"
    CPnet([2, 32, 64, 128, 256], 3, sz=3).save_model(str(path))
    return path


def measure(weights: Path, size: int) -> int:
    """Peak memory growth in bytes while segmenting a ``size x size`` tile."""
    out = subprocess.run([sys.executable, "-c", CHILD, str(weights), str(size)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["growth"]


def main() -> None:
    sizes = [int(s) for s in sys.argv[1:]] or [512, 1024, 2048]
    with tempfile.TemporaryDirectory() as tmp:
        weights = stock_weights(Path(tmp))
        growth = {size: measure(weights, size) for size in sizes}
    for size, grown in growth.items():
        print(f"{size}^2 tile: peak grew {grown / 1e6:.0f} MB ({grown / size**2:.0f} B per pixel)")
    for small, large in zip(sizes, sizes[1:]):
        slope = (growth[large] - growth[small]) / (large**2 - small**2)
        fixed = growth[small] - slope * small**2
        print(f"{small}^2 -> {large}^2: {slope:.0f} B per extra pixel, fixed part "
              f"{fixed / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
