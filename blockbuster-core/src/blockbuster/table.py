"""Per-object table: one row per final object, computed tile by tile, never from the whole image.

:func:`tile_statistics` measures each tile core (its runs of equal labels, one pass over the
tile: :mod:`blockbuster.runs`); the parent gathers the small partial results (O(objects in the
tile) each) and :func:`combine` merges them: voxel counts and coordinate sums add up, bounding
boxes take the min of starts and the max of stops, the tiles an object spans are collected.
:func:`write_table` saves CSV or Parquet from the suffix.

Columns of the table (axes ``z, y, x`` for 3D, ``y, x`` for 2D; ``axis<i>`` beyond 5 axes):

``label``, ``voxels``, ``bbox_min_<axis>`` (first voxel), ``bbox_max_<axis>`` (one past the
last, as ``regionprops`` ``bbox``), ``centroid_<axis>`` (pixels), and with a physical
``scale``: ``centroid_<axis>_<unit>`` (``centroid_<axis>_physical`` when the unit is unknown)
and ``volume_<unit>`` (``volume_physical``); then ``n_tiles`` and ``tiles`` (the indices of the
tiles the object spans).
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from blockbuster.errors import InvalidParameterError, OptionalDependencyError
from blockbuster.intensity import (
    IntensityRequest,
    TileIntensity,
    add_percentiles,
    combine_intensity,
    intensity_columns,
    tile_intensity,
)
from blockbuster.memory import release_free_memory
from blockbuster.runs import LabelRuns
from blockbuster.stores import Location

TABLE_EXTRA = 'pip install "blockbuster-core[formats]"'
PARQUET_TABLE_SUFFIXES = (".parquet", ".pq")
UNIT_ABBREVIATIONS = {"micrometer": "um", "nanometer": "nm", "millimeter": "mm",
                      "centimeter": "cm", "meter": "m", "second": "s", "millisecond": "ms"}


@dataclass
class TileStatistics:
    """The objects of one tile core: per object, sums that add up across tiles."""

    tile: int
    labels: np.ndarray  # (k,) uint64, sorted
    voxels: np.ndarray  # (k,) int64
    sums: np.ndarray  # (k, ndim) float64: sum of voxel coordinates (global pixels)
    starts: np.ndarray  # (k, ndim) int64: bounding box start (global)
    stops: np.ndarray  # (k, ndim) int64: bounding box stop, exclusive (global)
    intensity: TileIntensity | None = None  # with an intensity image

    @property
    def ndim(self) -> int:
        return self.sums.shape[1]

    def __len__(self) -> int:
        return len(self.labels)


def tile_statistics(labels_core: np.ndarray, origin: Sequence[int], tile_index: int,
                    intensities: np.ndarray | None = None, *,
                    request: IntensityRequest | None = None,
                    spanning: np.ndarray | None = None,
                    lut: np.ndarray | None = None) -> TileStatistics:
    """Voxel counts, coordinate sums and bounding boxes of the objects in one tile core.

    ``labels_core`` holds final IDs (0 = background), or, with ``lut``, local labels whose
    final IDs are ``lut[local]``: then there is one row per local label, and two rows of a tile
    may name the same object (:func:`combine` adds them up). ``origin`` is the global position
    of its first voxel. With ``intensities`` (the core's values, channels first) also the
    intensity parts of each object (:func:`blockbuster.intensity.tile_intensity`; ``request``
    says which percentiles, ``spanning`` which final IDs span other tiles). One pass over the
    tile cuts it into runs of equal labels (:mod:`blockbuster.runs`); every figure is reduced
    from those. The result is O(objects in the tile), small enough to send to the parent.
    """
    labels_core = np.asarray(labels_core)
    ndim = labels_core.ndim
    origin = tuple(int(o) for o in origin)
    if len(origin) != ndim:
        raise InvalidParameterError(f"origin {origin} does not match a {ndim}-D tile.")
    runs = LabelRuns.of(labels_core)
    if not len(runs):
        empty = np.zeros((0, ndim))
        return TileStatistics(int(tile_index), np.zeros(0, np.uint64), np.zeros(0, np.int64),
                              empty.astype(np.float64), empty.astype(np.int64),
                              empty.astype(np.int64))
    voxels, sums, starts, stops = _geometry(runs)
    ids = (runs.ids if lut is None else np.asarray(lut)[runs.ids]).astype(np.uint64)
    intensity = None
    if intensities is not None:
        intensity = tile_intensity(runs, intensities, voxels)
        if request is not None and request.percentiles:
            add_percentiles(intensity, labels_core, runs, ids, intensities, request, spanning,
                            int(tile_index))
    origin = np.array(origin, np.int64)
    return TileStatistics(int(tile_index), ids, voxels, sums + voxels[:, None] * origin,
                          starts + origin, stops + origin, intensity)


def _geometry(runs: LabelRuns) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per object of ``runs``: voxels, coordinate sums, bounding box start and exclusive stop
    (tile coordinates), each from the runs' starts and lengths."""
    k, ndim = len(runs), len(runs.shape)
    lead, along = runs.positions()
    n = runs.lengths
    voxels = runs.total(n)
    sums = np.empty((k, ndim))
    starts = np.empty((k, ndim), np.int64)
    stops = np.empty((k, ndim), np.int64)
    for axis, coordinate in enumerate(lead):
        coordinate = coordinate.astype(np.int64)
        sums[:, axis] = runs.total(n * coordinate)
        starts[:, axis] = runs.least(coordinate)
        stops[:, axis] = runs.greatest(coordinate) + 1
    along = along.astype(np.int64)
    sums[:, -1] = runs.total(n * along + n * (n - 1) // 2)  # along + (along + 1) + ...
    starts[:, -1] = runs.least(along)
    stops[:, -1] = runs.greatest(along + n)
    return voxels, sums, starts, stops


def require_table_packages(what: str, path: str | os.PathLike | None = None) -> None:
    """Check that ``what`` (a table) can be made, and written to ``path``: pandas, and pyarrow
    for a Parquet path. Called before a run does any work, so a missing package costs nothing;
    :class:`OptionalDependencyError` names the package and the ``pip install`` that brings it."""
    needed = ["pandas"]
    if path is not None and str(path).lower().endswith(PARQUET_TABLE_SUFFIXES):
        needed.append("pyarrow")
    for package in needed:
        try:
            importlib.import_module(package)
        except ImportError as error:
            raise OptionalDependencyError(
                f"{what} needs {package}, which is not installed ({error}); pip install "
                f"{package} (or {TABLE_EXTRA}) brings it, then run again.") from error


def combine(partials: Iterable[TileStatistics], scale: Sequence[float] | None = None, *,
            axes: Sequence[str] | None = None, units: Sequence[str | None] | None = None,
            translation: Sequence[float] | None = None, ndim: int | None = None,
            percentiles: Sequence[float] = (), channels: int | None = None):
    """Merge the tiles' partial statistics into one table (a :class:`pandas.DataFrame`).

    ``scale`` (and ``translation``) per axis, physical, add physical centroids and volumes;
    ``axes`` names the axes (default ``z, y, x`` / ``y, x``); ``units`` (per axis, e.g.
    ``"micrometer"``) name the physical columns. Partials with intensities add the intensity
    columns (``percentiles``: those the tiles measured; ``channels``: the intensity image's,
    which name the columns of a table without objects). Given an iterator that lets go of
    each partial as it yields it (as the pipeline does), the partials are freed as soon as
    their rows are stacked and their intensities merged: the table is built without them.
    """
    import pandas as pd

    parts = [p for p in partials if p is not None]
    if ndim is None:
        ndim = parts[0].ndim if parts else (len(scale) if scale is not None else
                                            len(axes) if axes is not None else 2)
    axes = _axis_names(axes, ndim)
    nonempty = [p for p in parts if len(p)]
    measured = [p.intensity for p in nonempty if p.intensity is not None]
    if measured and len(measured) != len(nonempty):
        raise InvalidParameterError("some tiles' statistics have intensities, others not.")
    geometry = _stacked_geometry(nonempty, ndim)
    any_rows = bool(nonempty)
    del parts, nonempty  # given an iterator, the partials' geometry is freed here
    release_free_memory()

    def stacked(name: str, axis: int | None = None) -> np.ndarray:
        return geometry[name] if axis is None else geometry[name][:, axis]

    ids, inverse = np.unique(geometry.pop("labels"), return_inverse=True)
    inverse = inverse.reshape(-1)
    k = len(ids)
    voxels = stacked("voxels")
    total = np.bincount(inverse, weights=voxels, minlength=k).astype(np.int64)
    columns: dict[str, Any] = {"label": ids.astype(np.uint64), "voxels": total}
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(k))
    for axis, name in enumerate(axes):
        columns[f"bbox_min_{name}"] = np.minimum.reduceat(stacked("starts", axis)[order],
                                                          bounds) if k else np.zeros(0, np.int64)
        columns[f"bbox_max_{name}"] = np.maximum.reduceat(stacked("stops", axis)[order],
                                                          bounds) if k else np.zeros(0, np.int64)
    del geometry["starts"], geometry["stops"]
    centroid = np.zeros((k, ndim))
    for axis, name in enumerate(axes):
        centroid[:, axis] = np.bincount(inverse, weights=stacked("sums", axis),
                                        minlength=k) / np.maximum(total, 1)
        columns[f"centroid_{name}"] = centroid[:, axis]
    del geometry["sums"]
    if scale is not None:
        scale = [float(s) for s in scale]
        if len(scale) != ndim:
            raise InvalidParameterError(f"scale {scale} does not match {ndim} axes {axes}.")
        offset = [float(t) for t in translation] if translation is not None else [0.0] * ndim
        units = list(units) if units is not None else [None] * ndim
        for axis, name in enumerate(axes):
            suffix = _unit_suffix(units[axis])
            columns[f"centroid_{name}_{suffix}"] = centroid[:, axis] * scale[axis] + offset[axis]
        spatial = [i for i, a in enumerate(axes) if a in ("z", "y", "x")] or list(range(ndim))
        spatial_units = {units[i] for i in spatial}
        suffix = _unit_suffix(spatial_units.pop()) if len(spatial_units) == 1 else "physical"
        power = {1: "", 2: "2", 3: "3"}.get(len(spatial), "")
        columns[f"volume_{suffix}{power if suffix != 'physical' else ''}"] = (
            total * float(np.prod([scale[i] for i in spatial])))
    if measured:
        columns.update(combine_intensity(measured, inverse, order, bounds, voxels, total, ids,
                                         tuple(percentiles)))
        measured.clear()  # the intensity parts, before the tiles' lists are made
        release_free_memory()
    elif channels and not any_rows:
        columns.update({name: np.zeros(0) for name in intensity_columns(channels, percentiles)})
    columns["n_tiles"], columns["tiles"] = _tiles_spanned(inverse, geometry.pop("tiles"), k)
    table = pd.DataFrame(columns, copy=False)
    table.attrs.update({"axes": list(axes), "scale": list(scale) if scale is not None else None,
                        "units": list(units) if units is not None else None})
    return table


def _stacked_geometry(parts: list[TileStatistics], ndim: int) -> dict[str, np.ndarray]:
    """The rows of all ``parts`` (non-empty) in one array per figure, and each row's tile."""
    def stacked(name: str, dtype) -> np.ndarray:
        arrays = [getattr(p, name) for p in parts]
        return np.concatenate(arrays) if arrays else np.zeros((0, ndim) if name in (
            "sums", "starts", "stops") else 0, dtype)

    geometry = {name: stacked(name, dtype) for name, dtype in (
        ("labels", np.uint64), ("voxels", np.int64), ("sums", np.float64),
        ("starts", np.int64), ("stops", np.int64))}
    geometry["tiles"] = np.concatenate([np.full(len(p), p.tile, np.int64) for p in parts]) \
        if parts else np.zeros(0, np.int64)
    return geometry


def _tiles_spanned(rows: np.ndarray, tiles: np.ndarray, k: int) -> tuple[np.ndarray, list]:
    """Per object (``rows`` of the partials' rows, ``k`` objects), how many tiles it spans
    and their sorted indices (one list each)."""
    many = int(tiles.max()) + 1 if len(tiles) else 1
    pairs = np.unique(rows.astype(np.int64) * many + tiles)  # by object, then tile
    row, tile = np.divmod(pairs, many)
    counts = np.bincount(row, minlength=k)
    first = np.searchsorted(row, np.arange(k))
    lists = [[t] for t in tile[first].tolist()]  # most objects lie in one tile
    for r in np.flatnonzero(counts > 1).tolist():
        lists[r] = tile[first[r]:first[r] + counts[r]].tolist()
    return counts.astype(np.int64), lists


def write_table(table, path: str | os.PathLike, *,
                storage_options: dict | None = None) -> Path | str:
    """Save the table as CSV (``.csv``, tiles as ``"3;4"``) or Parquet (``.parquet``/``.pq``),
    to a local path or a URL (with ``storage_options``).

    Written whole or not at all: a failed write leaves an earlier table at ``path`` intact
    (locally a partial file renamed over it, remotely one PUT).
    """
    location = Location(path, storage_options)
    suffix = os.path.splitext(location.name)[1].lower()
    if suffix not in (".csv", *PARQUET_TABLE_SUFFIXES):
        raise InvalidParameterError(
            f"table path {str(path)!r}: use a .csv or .parquet suffix.")
    return write_whole(location, lambda target: _write_table_as(table, target, suffix))


def write_whole(location: Location, write) -> Path | str:
    """Call ``write(target)`` (a path or a binary file object) so that ``location`` ends up
    holding the whole file or its earlier content: locally a partial file renamed over it,
    remotely one PUT of the bytes written to memory."""
    import io

    if location.remote:
        buffer = io.BytesIO()
        write(buffer)
        location.write_bytes(buffer.getvalue())
        return location.url
    path = location.path
    partial = path.with_name(path.name + ".partial")
    try:
        write(partial)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path


def _write_table_as(table, target, suffix: str) -> None:
    """Write the table to ``target`` (a path or a binary file object) in ``suffix``'s format."""
    if suffix == ".csv":
        _write_csv(table, target)
    else:
        import json

        import pyarrow as pa
        import pyarrow.parquet as pq

        arrow = pa.Table.from_pandas(table, preserve_index=False)
        meta = dict(arrow.schema.metadata or {})
        meta[b"blockbuster"] = json.dumps(table.attrs).encode()
        pq.write_table(arrow.replace_schema_metadata(meta), target)


CSV_BATCH_ROWS = 16384  # rows formatted at a time (the tiles' strings are made per batch)


def _write_csv(table, target) -> None:
    """``table`` as CSV, ``tiles`` as ``3;4``: through Arrow's writer when pyarrow is installed
    (ten times faster than pandas' for a table of many objects, and a batch of rows at a time),
    else through pandas. Either way a float is written with its decimal point (``3.0``), so a
    float column of whole values (the mean of a uint image) reads back as floats."""
    try:
        import pyarrow as pa
        import pyarrow.csv as pa_csv
    except ImportError:
        table.assign(tiles=_tile_strings(table["tiles"])).to_csv(target, index=False)
        return
    # our columns (numbers, tiles, floats as text) never need quotes: plain, as pandas writes
    ours = all(table[name].dtype.kind in "biuf" or name == "tiles" for name in table.columns)
    options = pa_csv.WriteOptions(quoting_style="none" if ours else "needed")
    batches = (pa.record_batch({name: _tile_strings(table[name][start:start + CSV_BATCH_ROWS])
                                if name == "tiles" else
                                _csv_values(table[name].to_numpy()[start:start + CSV_BATCH_ROWS])
                                for name in table.columns})
               for start in range(0, max(len(table), 1), CSV_BATCH_ROWS))
    first = next(batches)
    with contextlib.ExitStack() as stack:
        if isinstance(target, str | os.PathLike):  # Python's file: its errors keep their errno
            target = stack.enter_context(open(target, "wb"))
        with pa_csv.CSVWriter(target, first.schema, write_options=options) as writer:
            writer.write_batch(first)
            del first  # one batch alive at a time: the next is made once this one is gone
            for batch in batches:
                writer.write_batch(batch)
                del batch


def _csv_values(values: np.ndarray):
    """One column's batch for Arrow's CSV writer; floats as the text Arrow would write, with
    ``.0`` added to whole numbers (Arrow writes ``3``, which pandas reads back as an int)."""
    if values.dtype.kind != "f":
        return values
    import pyarrow as pa
    import pyarrow.compute as pc

    text = pc.cast(pa.array(values), pa.string())
    if not (np.isfinite(values) & (values == np.floor(values))).any():
        return text  # no whole number in the batch: nothing to mend
    whole = pc.match_substring_regex(text, r"^-?[0-9]+$")  # not 1e+15, inf, nan
    return pc.if_else(whole, pc.binary_join_element_wise(text, ".0", ""), text)


def _tile_strings(tiles) -> list[str]:
    return [str(t[0]) if len(t) == 1 else ";".join(map(str, t)) for t in tiles]


def read_table(path: str | os.PathLike, *, storage_options: dict | None = None):
    """Read a table written by :func:`write_table` (``tiles`` back as lists; from Parquet
    also ``attrs``: axes, scale, units)."""
    import io

    import pandas as pd

    location = Location(path, storage_options)
    path = io.BytesIO(location.read_bytes()) if location.remote else location.path
    if location.name.lower().endswith(".csv"):
        table = pd.read_csv(path)
        if "tiles" in table:
            table["tiles"] = [[int(t) for t in str(v).split(";") if t != ""] if v == v else []
                              for v in table["tiles"]]
        return table
    import json

    import pyarrow.parquet as pq

    arrow = pq.read_table(path)
    table = arrow.to_pandas()
    if "tiles" in table:
        table["tiles"] = [list(map(int, t)) for t in table["tiles"]]
    saved = (arrow.schema.metadata or {}).get(b"blockbuster")
    table.attrs.update(json.loads(saved) if saved else {})  # axes, scale, units
    return table


def _axis_names(axes: Sequence[str] | None, ndim: int) -> tuple[str, ...]:
    if axes is not None and len(axes) == ndim:
        return tuple(str(a) for a in axes)
    if ndim <= 3:
        return ("z", "y", "x")[-ndim:]
    if ndim <= 5:
        return ("t", "c", "z", "y", "x")[-ndim:]
    return tuple(f"axis{i}" for i in range(ndim))


def _unit_suffix(unit: str | None) -> str:
    if not unit:
        return "physical"
    return UNIT_ABBREVIATIONS.get(unit, str(unit).replace(" ", "_"))
