"""The merge log: every cross-tile join the merge considered, with its evidence.

With ``tile_process(..., merge_log=True)`` the run writes ``<write_to>.merges.parquet`` (or the
``.parquet`` path given), one row per pair of provisional labels found across a tile face:

``tile_a``, ``tile_b`` (tile indices; ``tile_b`` lies one step after ``tile_a`` along the
face's axis, and within one step on the others), ``local_a``,
``local_b`` (the labels inside each tile), ``id_a``, ``id_b`` (provisional IDs,
:mod:`blockbuster.ids`), ``face`` (where ``tile_b`` lies from ``tile_a``: ``"x+"`` across the
``x`` face, ``"y-x+"`` across an edge or corner: down in ``y``, up in ``x``), ``axis`` (the
face's axis index, ``-1`` for an edge or corner), ``side`` (``"hi"``: ``tile_a``'s far side;
the pair lies on ``tile_b``'s near side), ``pixel_pairs`` (neighbour pixel pairs across the
face backing the join: under
``merge="overlap"`` both tiles agree on them), ``clean_pairs`` (those of them not next to a
pixel pair the two tiles disagree on), ``contested`` (dropped: each label has another partner
backed by many more pixel pairs, see :mod:`blockbuster.merge`), ``joined`` (the pair joined
the two labels), ``final_a``, ``final_b`` (the output IDs of both labels: equal when joined),
``rule`` (``"face"`` for these rows).

With ``merge="iou"`` the log also holds one row per pair of 2D objects overlapping across
neighbouring planes (``rule = "iou"``): ``id_a``/``id_b`` name each whole 2D object by the
smallest provisional ID of its pieces (``tile_a``/``tile_b``, ``local_a``/``local_b`` are that
piece's), ``face`` is the stack axis (``"z+"``), ``pixel_pairs`` and ``clean_pairs`` the pixels
the two objects share, ``iou``, ``area_a`` and ``area_b`` the support the rule weighed (empty on
face rows), ``joined`` whether it joined them (mutual best match with ``iou >= iou_threshold``)
and ``contested`` is false.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from blockbuster.ids import local_of, tile_of
from blockbuster.planning import path_beside_output
from blockbuster.relabel import Relabeling
from blockbuster.tiling import TileGrid

MERGE_LOG_SUFFIXES = (".parquet", ".pq")


def resolve_merge_log_path(merge_log, write_to) -> Path | None:
    """Where the merge log goes: beside the labels for ``True``, else the path given."""
    return path_beside_output(merge_log, write_to, argument="merge_log", what="log",
                              beside=".merges.parquet", suffixes=MERGE_LOG_SUFFIXES,
                              kinds="a .parquet path", give="a .parquet path for the log")


def merge_log_table(pairs: np.ndarray, support: np.ndarray, clean: np.ndarray,
                    joined: np.ndarray, relabeling: Relabeling, grid: TileGrid,
                    axes=None, planes=None):
    """One row per candidate pair across a face (``pairs``: provisional IDs, ``(n, 2)``),
    sorted by tile, then one per pair of 2D objects across planes (``planes``: a
    :class:`~blockbuster.stitching.PlaneJoins`, ``merge="iou"`` only)."""
    import pandas as pd

    names = tuple(axes) if axes else tuple(f"axis{i}" for i in range(grid.ndim))
    table = _face_rows(pairs, support, clean, joined, relabeling, grid, names)
    if planes is not None:
        table = pd.concat([table, _plane_rows(planes, relabeling, grid, names)],
                          ignore_index=True)
    table.attrs.update({"axes": list(names), "tile_shape": list(grid.tile_shape),
                        "overlap": list(grid.overlap)})
    return table


def _plane_rows(planes, relabeling: Relabeling, grid: TileGrid, names):
    """The rows of the cross-plane pairs of ``merge="iou"``, with their IoU and areas."""
    import pandas as pd

    from blockbuster.stitching import stack_axis

    order = np.lexsort((planes.pairs[:, 1], planes.pairs[:, 0]))
    pairs = planes.pairs[order]
    axis = stack_axis(grid)
    shared = planes.intersections[order]
    return pd.DataFrame({
        "tile_a": tile_of(pairs[:, 0]), "tile_b": tile_of(pairs[:, 1]),
        "local_a": local_of(pairs[:, 0]), "local_b": local_of(pairs[:, 1]),
        "id_a": pairs[:, 0], "id_b": pairs[:, 1],
        "face": f"{names[axis]}+", "axis": np.full(len(pairs), axis, np.int64), "side": "hi",
        "pixel_pairs": shared, "clean_pairs": shared,
        "contested": np.zeros(len(pairs), bool), "joined": planes.joined[order],
        "final_a": relabeling.final_ids(pairs[:, 0]),
        "final_b": relabeling.final_ids(pairs[:, 1]),
        "rule": "iou", "iou": planes.iou[order],
        "area_a": pd.array(planes.areas[order, 0], "Int64"),
        "area_b": pd.array(planes.areas[order, 1], "Int64"),
    })


def _face_rows(pairs, support, clean, joined, relabeling: Relabeling, grid: TileGrid, names):
    """The rows of the candidate pairs across tile faces."""
    import pandas as pd

    pairs = np.asarray(pairs, np.uint64).reshape(-1, 2)
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    pairs, support, clean, joined = pairs[order], support[order], clean[order], joined[order]
    tile_a, tile_b = tile_of(pairs[:, 0]), tile_of(pairs[:, 1])
    faces = [_face(grid, int(a), int(b), names) for a, b in zip(tile_a, tile_b)]
    return pd.DataFrame({
        "tile_a": tile_a, "tile_b": tile_b,
        "local_a": local_of(pairs[:, 0]), "local_b": local_of(pairs[:, 1]),
        "id_a": pairs[:, 0], "id_b": pairs[:, 1],
        "face": [f for f, _ in faces], "axis": np.array([a for _, a in faces], np.int64),
        "side": "hi",
        "pixel_pairs": np.asarray(support, np.int64), "clean_pairs": np.asarray(clean, np.int64),
        "contested": ~np.asarray(joined, bool), "joined": np.asarray(joined, bool),
        "final_a": relabeling.final_ids(pairs[:, 0]),
        "final_b": relabeling.final_ids(pairs[:, 1]),
        "rule": "face", "iou": np.full(len(pairs), np.nan),
        "area_a": pd.array([None] * len(pairs), "Int64"),
        "area_b": pd.array([None] * len(pairs), "Int64"),
    })


def _face(grid: TileGrid, a: int, b: int, names) -> tuple[str, int]:
    """``("x+", axis)`` for a face between tiles ``a`` and ``b``; ``("y+x-", -1)`` for an edge."""
    pa, pb = grid.tile(a).position, grid.tile(b).position
    steps = [(axis, q - p) for axis, (p, q) in enumerate(zip(pa, pb)) if q != p]
    text = "".join(f"{names[axis]}{'+' if step > 0 else '-'}" for axis, step in steps)
    return text, steps[0][0] if len(steps) == 1 else -1
