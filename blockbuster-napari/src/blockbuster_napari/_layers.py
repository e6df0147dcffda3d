"""A blockbuster output folder as napari layer data: what the Run widget adds after a run and
what the reader contribution returns, so both give the same layers.

- the labels, lazily (dask over the written zarr, every pyramid level of an OME-Zarr labels
  image: never loaded whole), at the physical scale of the input;
- the per-object table beside them (``<output>.objects.csv`` / ``.parquet``), as the labels
  layer's features (napari shows the row of the label under the mouse);
- the merge log beside them (``<output>.merges.parquet``), as a Shapes layer of the tile
  seams, one line per face between two tiles with the joins made across it.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from blockbuster.errors import ImageReadError

LayerData = tuple[Any, dict[str, Any], str]
TABLE_SUFFIXES = (".objects.csv", ".objects.parquet", ".objects.pq")
MERGE_LOG_SUFFIXES = (".merges.parquet", ".merges.pq")
ATTRS_KEY = "blockbuster"


@dataclass
class Labels:
    """The written labels: ``levels`` (dask arrays, full resolution first), their ``scale`` and
    ``translate`` per axis, a ``name``, and the folder beside which table and log lie."""

    levels: list
    scale: tuple[float, ...]
    translate: tuple[float, ...]
    name: str
    beside: Path


def output_layers(path: str | os.PathLike, *, name: str | None = None) -> list[LayerData]:
    """Every layer of the blockbuster output at ``path``: labels, then the seams if logged."""
    labels = open_labels(path, name=name)
    layers = [labels_layer(labels)]
    log = find_beside(labels.beside, MERGE_LOG_SUFFIXES)
    if log is not None:
        layers.append(seams_layer(log, labels))
    return layers


def is_output(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds labels written by blockbuster (plain zarr or OME-Zarr labels)."""
    try:
        open_labels(path)
    except (ImageReadError, OSError, ValueError, KeyError):
        return False
    return True


# -- labels -----------------------------------------------------------------------------------
def open_labels(path: str | os.PathLike, *, name: str | None = None) -> Labels:
    """The labels at ``path``: a plain zarr array, an OME-Zarr labels image
    (``…/labels/<name>``), or an OME-Zarr image holding labels (``name``, else its first)."""
    import zarr

    path = Path(path)
    try:
        node = zarr.open(store=str(path), mode="r")
    except Exception as error:
        raise ImageReadError(f"{str(path)!r} is not a zarr array or group: {error}") from error
    if isinstance(node, zarr.Array):
        return _plain_labels(node, path)
    attrs = node.attrs.asdict()
    if ATTRS_KEY in attrs or "image-label" in _ome(attrs):
        return _ome_labels(path, path)
    names = _ome(node["labels"].attrs.asdict()).get("labels", []) if "labels" in node else []
    if not names:
        raise ImageReadError(f"{str(path)!r} holds no labels written by blockbuster.")
    chosen = name if name in names else names[0]
    return _ome_labels(path / "labels" / chosen, path)


def _ome(attrs: dict) -> dict:
    return attrs.get("ome", attrs)  # NGFF 0.5 nests the metadata under "ome"


def _plain_labels(array, path: Path) -> Labels:
    import dask.array as da

    info = array.attrs.asdict().get(ATTRS_KEY)
    if info is None:
        raise ImageReadError(f"{str(path)!r} is a zarr array not written by blockbuster.")
    source = info.get("source", {})
    ndim = array.ndim
    scale = tuple(source.get("scale") or (1.0,) * ndim)
    translate = tuple(source.get("translation") or (0.0,) * ndim)
    return Labels([da.from_zarr(array)], scale, translate, _stem(path), path)


def _ome_labels(group_path: Path, beside: Path) -> Labels:
    import dask.array as da
    import zarr

    from blockbuster.builtin.ome_zarr import read_multiscales

    meta = read_multiscales(group_path)
    group = zarr.open_group(str(group_path), mode="r")
    levels = [da.from_zarr(group[level.path]) for level in meta.levels]
    first = meta.levels[0]
    return Labels(levels, tuple(first.scale), tuple(first.translation), group_path.name, beside)


def _stem(path: Path) -> str:
    name = path.name
    return name[: -len(".zarr")] if name.endswith(".zarr") else name


def labels_layer(labels: Labels) -> LayerData:
    """The Labels layer: every level (multiscale when several), scale, the table as features."""
    data = labels.levels if len(labels.levels) > 1 else labels.levels[0]
    meta: dict[str, Any] = {"name": labels.name, "scale": labels.scale,
                            "translate": labels.translate,
                            "multiscale": len(labels.levels) > 1,
                            "metadata": {"blockbuster_output": str(labels.beside)}}
    table = find_beside(labels.beside, TABLE_SUFFIXES)
    if table is not None:
        meta["features"] = table_features(table)
    return data, meta, "labels"


def table_features(path: Path):
    """The object table as napari features: one row per label, ``index`` = the label."""
    from blockbuster.table import read_table

    table = read_table(path)
    table.insert(0, "index", table["label"].astype(np.int64))
    table["tiles"] = [";".join(str(t) for t in tiles) for tiles in table["tiles"]]
    return table


def find_beside(output: Path, suffixes: tuple[str, ...]) -> Path | None:
    """The first ``<output><suffix>`` that exists."""
    for suffix in suffixes:
        candidate = Path(f"{output}{suffix}")
        if candidate.exists():
            return candidate
    return None


# -- seams ------------------------------------------------------------------------------------
def seams_layer(log_path: Path, labels: Labels) -> LayerData:
    """Shapes: one line per face between two tiles in the last two axes, with how many pairs
    were joined and contested across it (features), red where any pair was contested."""
    import pandas as pd

    from blockbuster.tiling import TileGrid

    log = pd.read_parquet(log_path)
    shape = labels.levels[0].shape
    tile_shape = tuple(log.attrs.get("tile_shape") or labels.levels[0].chunksize)
    grid = TileGrid(shape, tile_shape, (0,) * len(shape))
    counts: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
    for a, b, joined in zip(log["tile_a"], log["tile_b"], log["joined"]):
        segment = face_segment(grid, int(a), int(b))
        if segment is not None:
            counts[segment][0 if joined else 1] += 1
    segments = sorted(counts)
    data = [np.array(segment, float) for segment in segments]
    features = pd.DataFrame({"joined": [counts[s][0] for s in segments],
                             "contested": [counts[s][1] for s in segments]})
    colors = ["red" if c else "yellow" for c in features["contested"]]
    meta = {"name": f"{labels.name} seams", "shape_type": "line", "features": features,
            "edge_color": colors, "edge_width": 1.0, "scale": labels.scale[-2:],
            "translate": labels.translate[-2:], "visible": True}
    return data, meta, "shapes"


def face_segment(grid, a: int, b: int) -> tuple | None:
    """The 2D line ``((y0, x0), (y1, x1))`` between tiles ``a`` and ``b`` in the last two axes
    when they share a face there (``None`` for a face across another axis, or an edge)."""
    pa, pb = grid.position(a), grid.position(b)
    steps = [axis for axis, (p, q) in enumerate(zip(pa, pb)) if p != q]
    if len(steps) != 1 or steps[0] < grid.ndim - 2:
        return None
    axis = steps[0]
    tile = grid.tile(a)
    y, x = (tile.core[-2], tile.core[-1])
    if axis == grid.ndim - 1:  # neighbours along x: a vertical line at the x seam
        return ((y.start, x.stop), (y.stop, x.stop))
    return ((y.stop, x.start), (y.stop, x.stop))
