"""Polygons of a 2D label image: one (multi)polygon per object, exact to the pixel, holes kept.

Traced tile by tile, never with the label image whole in memory. In each tile,
:func:`tile_faces` finds the pixel sides between different labels (:func:`boundary_edges`),
chains them into rings in numpy (:func:`walk_rings`, no Python step per edge), keeps one
vertex per corner, and builds one polygon per 4-connected piece of an object: its outer ring
and its holes. The pieces of an object that spans several tiles (or touches itself only at a
corner) share exact integer edges, and :func:`dissolve` unions them by label into one
geometry: ``Polygon`` for a connected object, ``MultiPolygon`` for one in pieces; the
vertices tile borders leave on straight edges are dropped, so any tiling gives the polygons of
the whole image.

Coordinates are pixels with pixel ``(row, col)`` covering ``[col, col + 1] x [row, row + 1]``
(``x`` right, ``y`` down, origin at the image's top-left corner), as QuPath expects. Physical
coordinates put pixel centres where the table and OME-Zarr do: ``(x - 0.5) * scale +
translation``.

:func:`write_polygons` writes GeoJSON that QuPath imports (*File > Import objects from file*:
a ``FeatureCollection`` of ``detection`` objects with the table's numbers as
``measurements``) or GeoParquet (with a second geometry column in physical units).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from blockbuster.errors import (
    InvalidParameterError,
    NotTwoDimensionalError,
    OptionalDependencyError,
)
from blockbuster.stores import Location
from blockbuster.tilewise import label_grid, map_tiles, open_labels, resolve_workers

GEO_EXTRA = 'pip install "blockbuster-core[geo]"'
#: what tracing holds per pixel of a tile: 4 edge-index planes (int64), the edges, the pieces
TRACE_BYTES_PER_PIXEL = 96
GEOJSON_SUFFIXES = (".geojson", ".json")
PARQUET_SUFFIXES = (".parquet", ".geoparquet", ".pq")


def require_geo():
    """Import shapely, or explain which extra brings it."""
    try:
        import shapely
    except ImportError as error:
        raise OptionalDependencyError(
            f"polygons need shapely and geopandas, which are not installed ({error}); "
            f"{GEO_EXTRA} brings them.") from error
    return shapely


def tile_faces(labels: np.ndarray, origin: Sequence[int] = (0, 0)):
    """The faces of one 2D tile: ``(labels, polygons)``, one entry per 4-connected piece of an
    object (background left out) with its holes, in global pixel coordinates (``origin`` =
    the tile's first ``(row, col)``)."""
    from skimage.measure import label as connected_pieces

    shapely = require_geo()
    labels = np.asarray(labels)
    pieces = connected_pieces(labels, connectivity=1, background=0)
    side, row, col, following = boundary_edges(pieces)
    if side.size == 0:
        return np.zeros(0, labels.dtype), np.zeros(0, object)
    ring, order = walk_rings(following)
    # signed area of each ring from its unit edges: > 0 outer boundary, < 0 a hole
    x0, y0 = col - 1 + START[side, 0], row - 1 + START[side, 1]
    x1, y1 = x0 + TRAVEL[side, 1], y0 + TRAVEL[side, 0]
    rings, ring_of_edge = np.unique(ring, return_inverse=True)
    area = np.bincount(ring_of_edge, weights=x0 * y1 - x1 * y0)
    corner = corners(side, ring, order)
    coords = np.stack([x0[corner] + int(origin[1]), y0[corner] + int(origin[0])], 1)
    linear = shapely.linearrings(coords.astype(np.float64), indices=ring_of_edge[corner])
    # each ring belongs to the 4-connected piece of its pixels; the piece's shell comes first
    owner = rings  # a ring's smallest edge: its pixel tells the piece and the label
    piece = pieces[row[owner] - 1, col[owner] - 1]
    by_piece = np.lexsort((area < 0, piece))
    piece_ids, polygon_of_ring = np.unique(piece[by_piece], return_inverse=True)
    polygons = shapely.polygons(linear[by_piece], indices=polygon_of_ring)
    shells = by_piece[area[by_piece] > 0]
    return labels[row[owner[shells]] - 1, col[owner[shells]] - 1], polygons


def corners(side: np.ndarray, ring: np.ndarray, order: np.ndarray) -> np.ndarray:
    """The edges, in walking order, that start a corner (their side differs from the side of
    the edge before them on their ring): one vertex each, none along straight runs."""
    side_ordered = side[order]
    first = np.r_[True, ring[order][1:] != ring[order][:-1]]
    before = np.roll(side_ordered, 1)
    before[first] = side_ordered[np.r_[np.flatnonzero(first)[1:], side.size] - 1]
    return order[side_ordered != before]


# side s of a pixel: 0 top, 1 right, 2 bottom, 3 left, walked with the object on the right
# (x right, y down): an object's outer boundary runs clockwise on screen, a hole's the other way
TRAVEL = np.array([(0, 1), (1, 0), (0, -1), (-1, 0)])  # (drow, dcol) along side s
OUTWARD = np.array([(-1, 0), (0, 1), (1, 0), (0, -1)])  # (drow, dcol) to the pixel across it
START = np.array([(0, 0), (1, 0), (1, 1), (0, 1)])  # (dx, dy) of its first vertex in the pixel


def boundary_edges(pieces: np.ndarray):
    """Every pixel side between two different pieces, seen from its nonzero side: ``(side,
    row, col, following)`` with ``row, col`` in the pieces padded by one pixel and
    ``following`` the index of the next edge along the same boundary.

    ``pieces`` are the 4-connected pieces of the labels (one id each). The next edge hugs the
    same pixel (a right turn), else goes straight on, else turns left: pixels that touch
    only at a corner stay on separate rings. Except where a piece meets itself at a corner
    (its two diagonal pixels there, the other two not): hugging would walk that corner twice
    on one ring (a 'C' closed at a corner around a hole), so the walk crosses to the diagonal
    pixel instead, giving an outer ring and a hole that touch there, as valid polygons do.
    """
    padded = np.pad(pieces, 1)
    height, width = padded.shape
    inner = padded[1:-1, 1:-1]
    index = np.full((4, height, width), -1, np.int64)
    found, count = [], 0
    for s in range(4):
        dr, dc = OUTWARD[s]
        across = padded[1 + dr:height - 1 + dr, 1 + dc:width - 1 + dc]
        r, c = np.nonzero((inner != 0) & (inner != across))
        index[s, r + 1, c + 1] = np.arange(count, count + r.size)
        count += r.size
        found.append((np.full(r.size, s), r + 1, c + 1))
    side, row, col = (np.concatenate(parts) for parts in zip(*found))
    right = index[(side + 1) % 4, row, col]
    ahead_r, ahead_c = row + TRAVEL[side, 0], col + TRAVEL[side, 1]
    straight = index[side, ahead_r, ahead_c]
    diagonal_r, diagonal_c = ahead_r + OUTWARD[side, 0], ahead_c + OUTWARD[side, 1]
    left = index[(side - 1) % 4, diagonal_r, diagonal_c]
    pinch = (right >= 0) & (padded[diagonal_r, diagonal_c] == padded[row, col])
    following = np.where(pinch, left, np.where(right >= 0, right, np.where(
        straight >= 0, straight, left)))
    return side, row, col, following


def walk_rings(following: np.ndarray):
    """The rings of the successor permutation ``following``: each edge's ring (named by its
    smallest edge) and the edges ring by ring in walking order from that smallest edge.

    Pointer doubling in numpy, O(n log n): no Python step per edge.
    """
    ring, jump = np.arange(following.size), following
    while True:  # the smallest edge of each ring, windows doubling until nothing changes
        smaller = np.minimum(ring, ring[jump])
        if np.array_equal(smaller, ring):
            break
        ring, jump = smaller, jump[jump]
    last = following == ring  # the edge before the smallest closes the ring
    rest = np.where(last, 0, 1)
    pointer = np.where(last, np.arange(following.size), following)
    while not np.array_equal(pointer[pointer], pointer):  # edges left to walk (list ranking)
        rest, pointer = rest + rest[pointer], pointer[pointer]
    return ring, np.lexsort((-rest, ring))


def dissolve(labels: np.ndarray, faces: np.ndarray):
    """One geometry per label: the union of its faces (a label with one face keeps it)."""
    shapely = require_geo()
    order = np.argsort(labels, kind="stable")
    labels, faces = labels[order], faces[order]
    ids, first, counts = np.unique(labels, return_index=True, return_counts=True)
    geometries = faces[first].copy()
    for row in np.flatnonzero(counts > 1):
        pieces = faces[first[row]:first[row] + counts[row]]
        # the union keeps the vertices where tile borders cut straight edges: drop them
        geometries[row] = shapely.simplify(shapely.union_all(pieces), 0)
    # GeoJSON's right-hand rule: outer rings counterclockwise (in x, y as numbers), holes not
    return ids, shapely.orient_polygons(geometries, exterior_cw=False)


def polygons(labels: Any, *, table: Any = None, plane: int | None = None,
             tile_shape: Sequence[int] | None = None, workers: int | None = None,
             scale: Sequence[float] | None = None, translation: Sequence[float] | None = None,
             units: Sequence[str | None] | None = None, storage_options: dict | None = None):
    """Trace a 2D label image into one polygon per object, tile by tile.

    Parameters
    ----------
    labels
        A 2D label image (a zarr path or URL, a ``zarr.Array``, a numpy or dask array), e.g. a
        ``tile_process`` result; or a 3D one with ``plane``, or whose first axis has size 1.
    table
        The object table (a DataFrame or a ``.csv``/``.parquet`` path) whose columns join the
        polygons by ``label``.
    plane
        For a 3D label image: the index on its first axis to trace.
    tile_shape
        ``(rows, cols)`` of the tracing tiles (default: chunk-aligned, ~512 MiB in all). Any
        tiling gives the same polygons.
    workers
        Threads (default: one per core, at most 8).
    scale, translation, units
        Physical pixel size, origin and unit of the ``y, x`` axes; by default the label
        image's own (OME-Zarr), else the table's.

    Returns
    -------
    geopandas.GeoDataFrame
        ``label``, the table's columns, ``geometry`` in pixels and, when the scale is known,
        ``geometry_<unit>`` (e.g. ``geometry_um``) in physical units: a column, so it
        survives ``merge``; ``attrs`` also holds ``scale``, ``translation`` and ``units``.
    """
    require_geo()
    import geopandas as gpd

    view = open_labels(labels, "labels", storage_options=storage_options)
    prefix = _plane_prefix(view, plane, labels)
    shape2d, chunks2d = view.shape[-2:], view.chunks[-2:] if view.chunks else None
    workers = resolve_workers(workers)
    grid = label_grid(shape2d, chunks2d, tile_shape, workers,
                      bytes_per_voxel=TRACE_BYTES_PER_PIXEL)

    def trace(tile):
        block = view.read(prefix + tile.core).reshape(tile.core_shape)
        return tile_faces(block, tuple(s.start for s in tile.core))

    traced = list(map_tiles(trace, grid, workers))
    face_labels = np.concatenate([t[0] for t in traced]).astype(np.uint64)
    faces = np.concatenate([t[1] for t in traced])
    ids, geometries = dissolve(face_labels, faces)
    frame = gpd.GeoDataFrame({"label": ids}, geometry=list(geometries))
    table = _read_table(table, storage_options)
    if table is not None:
        frame = frame.merge(table, on="label", how="left", suffixes=("", "_table"))
    frame.attrs.update(_physical(view, table, scale, translation, units))
    physical = physical_geometry(frame)
    if physical is not None:  # a column, so the units survive a merge (attrs do not)
        frame[physical_column(frame)] = gpd.GeoSeries(physical, index=frame.index)
    return frame


def _plane_prefix(view, plane: int | None, source: Any) -> tuple[slice, ...]:
    """The region prefix selecting the 2D plane to trace (empty for a 2D image)."""
    leading = view.shape[:-2]
    if view.ndim < 2:
        raise NotTwoDimensionalError(
            f"labels of shape {view.shape} have fewer than 2 axes; polygons need a 2D image.")
    if plane is None:
        if all(n == 1 for n in leading):
            return tuple(slice(0, 1) for _ in leading)
        axes = ",".join(view.axes) if view.axes else "?"
        raise NotTwoDimensionalError(
            f"polygons are traced on 2D label images; this one is {view.ndim}D (shape "
            f"{view.shape}, axes {axes}). Pick one plane with plane=k (--plane k; in a "
            "config, [postprocess] polygons_plane = k), e.g. "
            "plane=0; for every plane call it once per plane, or keep 3D objects as labels "
            "and use the object table.")
    if len(leading) != 1:
        raise NotTwoDimensionalError(
            f"plane={plane} picks a plane of a 3D image; these labels have shape {view.shape}.")
    if isinstance(plane, bool) or not isinstance(plane, int | np.integer) or not (
            -leading[0] <= plane < leading[0]):
        raise InvalidParameterError(
            f"plane={plane!r} is outside the {leading[0]} planes of the labels (shape "
            f"{view.shape}); give 0 to {leading[0] - 1}.")
    plane = int(plane) % leading[0]
    return (slice(plane, plane + 1),)


def _read_table(table: Any, storage_options: dict | None):
    if table is None or not isinstance(table, str | os.PathLike):
        return table
    from blockbuster.table import read_table

    return read_table(table, storage_options=storage_options)


def _physical(view, table, scale, translation, units) -> dict[str, Any]:
    """Scale, translation and units of the ``y, x`` axes: given, else the labels', else the
    table's (its ``attrs`` when read from Parquet)."""
    meta = view.metadata or {}
    attrs = getattr(table, "attrs", {}) or {}

    def last_two(values):
        return [v for v in values][-2:] if values is not None else None

    scale = scale if scale is not None else meta.get("scale") or attrs.get("scale")
    translation = (translation if translation is not None else meta.get("translation")
                   or attrs.get("translation"))
    units = units if units is not None else meta.get("units") or attrs.get("units")
    return {"scale": last_two(scale), "translation": last_two(translation),
            "units": last_two(units)}


def physical_geometry(frame):
    """The polygons in physical units: the frame's ``geometry_<unit>`` column (see
    :func:`polygons`), else ``(x - 0.5) * scale + translation`` from its ``attrs``; ``None``
    when it has neither."""
    shapely = require_geo()
    column = physical_column_of(frame)
    if column is not None:
        return np.asarray(frame[column].array, dtype=object)
    scale = frame.attrs.get("scale")
    if not scale:
        return None
    sy, sx = (float(s) for s in scale)
    ty, tx = (float(t) for t in (frame.attrs.get("translation") or (0.0, 0.0)))
    factor, offset = np.array([sx, sy]), np.array([tx, ty])
    return shapely.transform(np.asarray(frame.geometry.array, dtype=object),
                             lambda xy: (xy - 0.5) * factor + offset)


def physical_column(frame) -> str:
    """``geometry_um`` (the unit of the ``y, x`` axes), or ``geometry_physical``."""
    from blockbuster.table import _unit_suffix

    units = {u for u in (frame.attrs.get("units") or [None])}
    return f"geometry_{_unit_suffix(units.pop()) if len(units) == 1 else 'physical'}"


def physical_column_of(frame) -> str | None:
    """The name of the frame's physical geometry column (``geometry_um``...), if it has one."""
    return next((name for name in geometry_columns(frame)
                 if name != frame.geometry.name and name.startswith("geometry_")), None)


def geometry_columns(frame) -> list[str]:
    """The columns of ``frame`` holding geometries."""
    return [name for name, dtype in frame.dtypes.items() if str(dtype) == "geometry"]


def write_polygons(frame, path: str | os.PathLike, *, physical: bool = False,
                   classification: str | None = None, storage_options: dict | None = None):
    """Write the polygons of :func:`polygons` by the suffix of ``path``.

    ``.geojson`` / ``.json``: a GeoJSON ``FeatureCollection`` QuPath imports, one
    ``detection`` per object (``name`` = its label, ``classification`` if given, the table's
    numeric columns as ``measurements``; every column also as a plain property), in pixels
    unless ``physical``. ``.parquet``: GeoParquet, ``geometry`` in pixels plus
    ``geometry_<unit>`` in physical units when the scale is known. Written whole or not at all.
    """
    from blockbuster.table import write_whole

    frame = _as_geo_frame(frame)
    location = Location(path, storage_options)
    suffix = os.path.splitext(location.name)[1].lower()
    if suffix in GEOJSON_SUFFIXES:
        geometry = physical_geometry(frame) if physical else None
        if physical and geometry is None:
            raise InvalidParameterError(
                f"physical=True for {path}, but the labels carry no physical scale; pass "
                "scale=(dy, dx) to polygons() or write pixel coordinates.")
        return write_whole(location, lambda target: _write_geojson(
            frame, target, geometry, classification))
    if suffix in PARQUET_SUFFIXES:
        return write_whole(location, lambda target: _write_geoparquet(frame, target))
    raise InvalidParameterError(
        f"polygons path {str(path)!r}: use .geojson (QuPath, GIS) or .parquet (GeoParquet).")


def _as_geo_frame(frame):
    """``frame`` as a GeoDataFrame (a pandas ``merge`` onto a plain table returns a DataFrame
    holding the geometry columns)."""
    import geopandas as gpd

    return frame if isinstance(frame, gpd.GeoDataFrame) else gpd.GeoDataFrame(
        frame, geometry="geometry")


def _write_geojson(frame, target, geometry, classification: str | None) -> None:
    shapely = require_geo()
    geometry = np.asarray(frame.geometry.array if geometry is None else geometry, dtype=object)
    shapes = shapely.to_geojson(geometry)
    columns = [c for c in frame.columns if c not in geometry_columns(frame)]
    with open(target, "wb") if isinstance(target, str | os.PathLike) else _keep_open(
            target) as out:
        out.write(b'{"type": "FeatureCollection", "features": [\n')
        for number, (shape, values) in enumerate(zip(shapes, frame[columns].itertuples(
                index=False, name=None))):
            properties = _qupath_properties(dict(zip(columns, values)), classification)
            feature = (f'{{"type": "Feature", "geometry": {shape}, '
                       f'"properties": {json.dumps(properties)}}}')
            out.write(((",\n" if number else "") + feature).encode())
        out.write(b"\n]}\n")


class _keep_open:
    """A context manager over a file object that leaves it open (for in-memory buffers)."""

    def __init__(self, file):
        self.file = file

    def __enter__(self):
        return self.file

    def __exit__(self, *exc):
        return False


def _qupath_properties(row: dict[str, Any], classification: str | None) -> dict[str, Any]:
    """QuPath's keys (``objectType``, ``name``, ``classification``, ``measurements``) and
    every column as a plain property (NaN as ``null``; lists as lists)."""
    plain = {name: _json_value(value) for name, value in row.items()}
    measurements = {name: value for name, value in plain.items()
                    if isinstance(value, int | float) and not isinstance(value, bool)}
    properties = {"objectType": "detection", "name": str(plain.get("label", ""))}
    if classification:
        properties["classification"] = {"name": str(classification)}
    properties["measurements"] = measurements
    properties.update({k: v for k, v in plain.items() if k not in properties})
    return properties


def _json_value(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, list | tuple | np.ndarray):
        return [_json_value(v) for v in value]
    return value


def _write_geoparquet(frame, target) -> None:
    import geopandas as gpd

    out = frame.copy()
    physical = physical_geometry(frame)
    if physical is not None and physical_column_of(frame) is None:
        out[physical_column(frame)] = gpd.GeoSeries(physical, index=out.index)
    out.attrs = {}
    out.to_parquet(target, index=False)
