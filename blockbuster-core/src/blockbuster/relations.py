"""Relations between two label images: which parent object (a cell) holds each child (a nucleus).

Computed tile by tile, never with either image whole in memory: :func:`pair_counts` counts the
voxels of every (child, parent) pair in one tile, O(pairs in the tile); the counts add up across
tiles (:func:`combine_pairs`), so the result equals the whole-image computation exactly, for
any tiling and any chunking of either image.

**The parent rule** (:func:`assign_parents`): a child's parent is the nonzero parent label it
shares the most voxels with; a tie goes to the smallest parent id; a child that overlaps only
background gets parent ``0``.

Columns of the table, one row per child label (sorted):

``child``, ``parent``, ``child_voxels`` (the child's size), ``overlap_voxels`` (voxels it shares
with its parent), ``overlap_fraction`` (``overlap_voxels / child_voxels``, 0 without a parent)
and ``n_parents`` (how many distinct nonzero parents it touches: more than 1 flags a child cut
by a parent boundary). With ``pairs=True`` the table has one row per overlapping (child,
nonzero parent) pair instead: ``child``, ``parent``, ``overlap_voxels``, ``child_voxels``,
``overlap_fraction``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from blockbuster.errors import InvalidParameterError
from blockbuster.table import require_table_packages, write_table
from blockbuster.tilewise import label_grid, map_tiles, open_labels, resolve_workers

COLUMNS = ("child", "parent", "child_voxels", "overlap_voxels", "overlap_fraction", "n_parents")
PAIR_COLUMNS = ("child", "parent", "overlap_voxels", "child_voxels", "overlap_fraction")


@dataclass
class PairCounts:
    """Voxels shared by each (child, parent) pair; parent 0 counts the child's background."""

    children: np.ndarray  # (k,) uint64
    parents: np.ndarray  # (k,) uint64
    voxels: np.ndarray  # (k,) int64

    def __len__(self) -> int:
        return len(self.children)


def pair_counts(children: np.ndarray, parents: np.ndarray) -> PairCounts:
    """Count the voxels of every (child, parent) pair in two blocks of the same shape.

    Only voxels of a child (nonzero in ``children``) count; their parent may be 0.
    """
    children, parents = np.asarray(children), np.asarray(parents)
    if children.shape != parents.shape:
        raise InvalidParameterError(
            f"children block {children.shape} and parents block {parents.shape} differ.")
    inside = children.ravel() != 0
    return _group(children.ravel()[inside], parents.ravel()[inside], None)


def combine_pairs(partials: Iterable[PairCounts]) -> PairCounts:
    """Add the tiles' pair counts up: one entry per (child, parent) pair, sorted."""
    parts = [p for p in partials if len(p)]
    if not parts:
        return _group(np.zeros(0, np.uint64), np.zeros(0, np.uint64), None)
    return _group(np.concatenate([p.children for p in parts]),
                  np.concatenate([p.parents for p in parts]),
                  np.concatenate([p.voxels for p in parts]))


def _group(children: np.ndarray, parents: np.ndarray, weights: np.ndarray | None) -> PairCounts:
    """Sum ``weights`` (1 per entry when ``None``) per distinct (child, parent), sorted."""
    child_ids, child_index = np.unique(children, return_inverse=True)
    parent_ids, parent_index = np.unique(parents, return_inverse=True)
    width = max(len(parent_ids), 1)
    key = child_index.astype(np.int64) * width + parent_index
    keys, inverse = np.unique(key, return_inverse=True)
    voxels = (np.bincount(inverse, minlength=len(keys)) if weights is None else
              np.bincount(inverse, weights=weights, minlength=len(keys)))
    return PairCounts(child_ids[keys // width].astype(np.uint64),
                      parent_ids[keys % width].astype(np.uint64), voxels.astype(np.int64))


def assign_parents(pairs: PairCounts):
    """One row per child with its parent by the parent rule (see the module docstring)."""
    import pandas as pd

    child_ids, child_index = np.unique(pairs.children, return_inverse=True)
    child_voxels = np.bincount(child_index, weights=pairs.voxels,
                               minlength=len(child_ids)).astype(np.int64)
    parent = np.zeros(len(child_ids), np.uint64)
    overlap = np.zeros(len(child_ids), np.int64)
    nonzero = pairs.parents != 0
    n_parents = np.bincount(child_index[nonzero], minlength=len(child_ids)).astype(np.int64)
    # best pair first within each child: most voxels, then the smallest parent id
    order = np.lexsort((pairs.parents[nonzero], -pairs.voxels[nonzero], child_index[nonzero]))
    rows = child_index[nonzero][order]
    first = np.ones(len(rows), bool)
    first[1:] = rows[1:] != rows[:-1]
    parent[rows[first]] = pairs.parents[nonzero][order][first]
    overlap[rows[first]] = pairs.voxels[nonzero][order][first]
    return pd.DataFrame({
        "child": child_ids.astype(np.uint64), "parent": parent, "child_voxels": child_voxels,
        "overlap_voxels": overlap, "overlap_fraction": overlap / np.maximum(child_voxels, 1),
        "n_parents": n_parents})


def overlap_pairs(pairs: PairCounts):
    """One row per overlapping (child, nonzero parent) pair, with the child's size."""
    import pandas as pd

    child_ids, child_index = np.unique(pairs.children, return_inverse=True)
    child_voxels = np.bincount(child_index, weights=pairs.voxels, minlength=len(child_ids))
    nonzero = pairs.parents != 0
    sizes = child_voxels[child_index[nonzero]].astype(np.int64)
    return pd.DataFrame({
        "child": pairs.children[nonzero], "parent": pairs.parents[nonzero],
        "overlap_voxels": pairs.voxels[nonzero], "child_voxels": sizes,
        "overlap_fraction": pairs.voxels[nonzero] / np.maximum(sizes, 1)})


def relate(children: Any, parents: Any, *, tile_shape: Sequence[int] | None = None,
           workers: int | None = None, pairs: bool = False,
           table: str | os.PathLike | None = None, storage_options: dict | None = None):
    """Relate the objects of two label images of the same shape: each child to its parent.

    Parameters
    ----------
    children, parents
        Label images (a zarr path or URL, a ``zarr.Array``, a numpy or dask array), e.g.
        nuclei and cells. Their chunking may differ; their shape may not.
    tile_shape
        Tile shape of the pass (default: chunk-aligned tiles of the children, ~512 MiB across
        the threads). Any tiling gives the same table.
    workers
        Threads (default: one per core, at most 8).
    pairs
        Return every overlapping (child, parent) pair instead of one parent per child.
    table
        Also write the table there (``.csv`` or ``.parquet``, a local path or a URL).
    storage_options
        For URLs: options of their fsspec filesystem (credentials, endpoint...).

    Returns
    -------
    pandas.DataFrame
        The columns of :mod:`blockbuster.relations` (``child``, ``parent``, ...).
    """
    require_table_packages("relate's table", table)
    child_view = open_labels(children, "children", storage_options=storage_options)
    parent_view = open_labels(parents, "parents", storage_options=storage_options)
    if child_view.shape != parent_view.shape:
        raise InvalidParameterError(
            f"children {child_view.shape} and parents {parent_view.shape} differ in shape; "
            "relate compares two label images of the same grid voxel by voxel. Segment both "
            "from the same image (or resample one onto the other's grid) first.")
    workers = resolve_workers(workers)
    grid = label_grid(child_view.shape, child_view.chunks, tile_shape, workers)

    def count(tile):
        return pair_counts(child_view.read(tile.core), parent_view.read(tile.core))

    counts = combine_pairs(map_tiles(count, grid, workers))
    result = overlap_pairs(counts) if pairs else assign_parents(counts)
    if table is not None:
        write_table(result, table, storage_options=storage_options)
    return result
