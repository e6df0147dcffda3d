"""Provisional IDs: the one scheme by which every tile labels its objects without coordination.

A tile's objects get *local* labels ``1..n`` (``0`` is background). The provisional ID of local
label ``l`` in tile ``t`` is ``(t << TILE_SHIFT) | l``, a uint64: unique across the image, and
ordered by tile, then by local label. The merge pairs provisional IDs; the relabel turns them
into final IDs ``1..N`` in that order. A tile holds at most ``MAX_LOCAL_LABELS`` objects.
"""

from __future__ import annotations

import numpy as np

TILE_SHIFT = np.uint64(32)
LOCAL_DTYPE = np.uint32
MAX_LOCAL_LABELS = int(np.iinfo(LOCAL_DTYPE).max)
LOCAL_MASK = np.uint64(MAX_LOCAL_LABELS)


def encode(tile_index: int | np.ndarray, local: np.ndarray) -> np.ndarray:
    """Provisional IDs of local labels ``local`` of tile(s) ``tile_index``."""
    return (np.asarray(tile_index, np.uint64) << TILE_SHIFT) | np.asarray(local).astype(np.uint64)


def tile_of(ids: np.ndarray) -> np.ndarray:
    """The tile index of each provisional ID."""
    return (np.asarray(ids, np.uint64) >> TILE_SHIFT).astype(np.int64)


def local_of(ids: np.ndarray) -> np.ndarray:
    """The local label of each provisional ID."""
    return (np.asarray(ids, np.uint64) & LOCAL_MASK).astype(np.int64)


def first_of_tiles(tile_indices: np.ndarray) -> np.ndarray:
    """The provisional ID just below each tile's first label (local label 0)."""
    return encode(tile_indices, np.zeros(np.shape(tile_indices), np.uint64))


def local_dtype(count: int) -> np.dtype:
    """The smallest unsigned dtype holding local labels ``0..count``: a tile's labels are
    staged in it, and numbered straight into it."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if count <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.uint64)
