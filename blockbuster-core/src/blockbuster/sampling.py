"""Image-wide statistics from a small sample of blocks, never the whole image.

Segmenters use this in ``prepare(image)`` to fix one threshold or one normalization for all
tiles, so neighbouring tiles see the same intensities.
"""

from __future__ import annotations

import itertools
import math

import numpy as np


def sample_blocks(image, *, max_voxels: int = 2**22, block: int = 256) -> np.ndarray:
    """Flattened values of up to ``max_voxels`` voxels from evenly spread blocks of ``image``.

    ``image`` is a reader (anything with ``shape`` and ``read(region)``, the reader contract)
    or an array with numpy slicing (zarr, dask or numpy). Blocks of side ``block`` (whole axes
    when shorter) are taken on a regular grid of positions, so the sample is deterministic and
    covers the whole image.
    """
    shape = tuple(int(s) for s in image.shape)
    sides = [min(s, block) for s in shape]
    per_block = math.prod(sides)
    n_blocks = max(1, max_voxels // per_block)
    counts = _spread(shape, sides, n_blocks)
    values = []
    for corner in itertools.product(*[
        np.linspace(0, s - side, n, dtype=int) for s, side, n in zip(shape, sides, counts)
    ]):
        region = tuple(slice(int(c), int(c) + side) for c, side in zip(corner, sides))
        piece = read_region(image, region)
        if hasattr(piece, "compute"):  # dask
            piece = piece.compute()
        values.append(np.asarray(piece).ravel())
    return np.concatenate(values)


def read_region(image, region: tuple[slice, ...]):
    """``image.read(region)`` for a reader (the contract names only ``read``), else slicing."""
    read = getattr(image, "read", None)
    return read(region) if callable(read) else image[region]


def _spread(shape, sides, n_blocks) -> list[int]:
    """Blocks per axis: proportional to how many blocks fit, product <= n_blocks."""
    fits = [max(1, s // side) for s, side in zip(shape, sides)]
    total = math.prod(fits)
    if total <= n_blocks:
        return fits
    scale = (n_blocks / total) ** (1 / len(shape))
    return [max(1, min(f, int(f * scale))) for f in fits]


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of a sample of values."""
    from skimage.filters import threshold_otsu

    if values.size == 0 or values.min() == values.max():
        return float(values.max()) if values.size else 0.0
    return float(threshold_otsu(values))
