"""Numbering a tile's labels (``blockbuster._label_kernels.renumber_in_order``) on four kinds of
1024² label images, best of 20 calls each.

Usage: python bench/renumber_runs.py [--image PATH]  (the 8192² nuclei zarr of
``bench_workers.py``; without it, the nuclei case is skipped). To compare two builds, run it
with each one's ``src`` first on ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import ndimage

from blockbuster._label_kernels import renumber_in_order

SIDE = 1024


def best_ms(call, repeats: int = 20) -> float:
    call()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def cases(image: str | None) -> dict[str, np.ndarray]:
    found = {}
    if image:
        import zarr

        window = np.asarray(zarr.open_array(image, mode="r")[1000:1000 + SIDE + 32,
                                                             1000:1000 + SIDE + 32])
        labels = ndimage.label(window > np.percentile(window, 57), structure=np.ones((3, 3)))[0]
        found["nuclei, core of a padded window"] = labels[16:-16, 16:-16]
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    found["dense: 2x2 objects on a 4-pixel grid"] = np.where(
        ((yy % 4) < 2) & ((xx % 4) < 2), (yy // 4) * (SIDE // 4) + xx // 4 + 1, 0
    ).astype(np.int32)
    rng = np.random.default_rng(0)
    found["random labels 0..999 (no runs)"] = rng.integers(0, 1000, (SIDE, SIDE)).astype(np.int32)
    blobs = ndimage.gaussian_filter(rng.random((SIDE, SIDE)), 3) > 0.5
    found["blobs, uint16"] = ndimage.label(blobs)[0].astype(np.uint16)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default=None)
    args = parser.parse_args()
    for name, labels in cases(args.image).items():
        ms = best_ms(lambda labels=labels: renumber_in_order(labels))
        print(f"{name:40s} {ms:6.2f} ms")


if __name__ == "__main__":
    main()
