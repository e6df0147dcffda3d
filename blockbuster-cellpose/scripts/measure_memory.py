"""Measure Cellpose's working memory per pixel of a 2D tile (for ``Needs.bytes_per_voxel``).

Each tile size runs in a fresh process: the model is built and warmed up on a small tile,
then the peak resident memory growth while segmenting an ``N x N`` tile is divided by
``N * N``. Uses a randomly initialised stock-width Cellpose 3 network (same activations as
``cyto3``) with ``cellprob_threshold`` lowered so the mask dynamics run on most pixels, the
costly case. Usage::

    python scripts/measure_memory.py            # prints bytes per pixel for a few sizes
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys
import numpy as np
from blockbuster.plugins.cellpose import cellpose_fn

weights, size = sys.argv[1], int(sys.argv[2])
fn = cellpose_fn(weights, diameter=30, cellprob_threshold=-6.0)
rng = np.random.default_rng(0)
fn(rng.random((96, 96), dtype=np.float32))            # build and warm up the model
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
tile = rng.random((size, size), dtype=np.float32)
fn(tile)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"size": size, "growth": peak - before}))
"""


def stock_weights(folder: Path) -> Path:
    """Save a randomly initialised stock-width Cellpose 3 network to ``folder``."""
    from cellpose.resnet_torch import CPnet

    path = folder / "stock_random_cp3"
    CPnet([2, 32, 64, 128, 256], 3, sz=3).save_model(str(path))
    return path


def measure(weights: Path, size: int) -> float:
    """Peak memory growth in bytes per pixel while segmenting a ``size x size`` tile."""
    out = subprocess.run([sys.executable, "-c", CHILD, str(weights), str(size)],
                         capture_output=True, text=True, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return result["growth"] / size**2


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        weights = stock_weights(Path(tmp))
        for size in (512, 1024, 2048):
            print(f"{size}^2 tile: {measure(weights, size):.0f} bytes per pixel")


if __name__ == "__main__":
    main()
