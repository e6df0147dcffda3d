"""Per-object intensity statistics, tile by tile, merged exactly across tiles.

:func:`tile_intensity` reduces each tile core to O(objects in the tile) numbers per channel:
voxel count, sum, sum of squared deviations from its mean (``m2``), min and max. The input
image is measured in the segment pass, from the read that fed ``fn`` (a copy of the core taken
before ``fn`` ran), and staged with the tile; another intensity image is read in the relabel
pass, next to the tile's final labels (:mod:`blockbuster.tasks`).
:func:`combine_intensity` merges the tiles' parts of each object exactly: sums add, min/max
take the min/max, and the standard deviation uses Chan et al.'s parallel update
``m2 = Σ m2_i + Σ n_i (mean_i - mean)²`` (numerically stable: deviations, never raw sums of
squares).

Percentiles need every value of an object. An object that lies in one tile (most do) gets its
percentiles in that tile's relabel task (which reads the tile again); the tiles write the
values of each object that spans several tiles (known from the merge, before the relabel pass)
to a spill file in the run's staging area, as ``(label, value, count)`` runs, and the parent
merges the runs of those objects a batch of labels at a time (about :data:`SPILL_BATCH_BYTES`
each). Exact; the parent holds one batch, whose size is bounded below only by the distinct
values of one object (at most 65,536 per channel for 16-bit images).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from blockbuster._intensity_kernels import deviation_runs, float_runs, integer_runs
from blockbuster.errors import IntensityImageError, InvalidParameterError
from blockbuster.runs import LabelRuns

STATISTICS = ("mean", "min", "max", "sum", "std")


@dataclass(frozen=True)
class IntensityRequest:
    """What a run measures: the intensity image (its spatial view), the percentiles, and the
    folder where tiles spill the values of objects that span tiles."""

    image: Any  # an ImageView whose spatial shape is the labels'
    percentiles: tuple[float, ...] = ()
    spill: Path | None = None

    def read(self, region: tuple[slice, ...]) -> np.ndarray:
        """The region's values, channels first (one channel when the image has none)."""
        return channels_first(self.image.read(region), self.image.channel_axis)


@dataclass
class TileIntensity:
    """One tile's parts of its objects (rows as :class:`~blockbuster.table.TileStatistics`)."""

    sum: np.ndarray  # (k, C) float64
    m2: np.ndarray  # (k, C) float64: sum of squared deviations from the part's own mean
    min: np.ndarray  # (k, C) float64
    max: np.ndarray  # (k, C) float64
    percentiles: np.ndarray  # (k, P, C) float64; NaN for objects that span tiles
    spilled: str | None = None  # the spill file of those objects' values


def channels_first(tile: np.ndarray, channel_axis: int | None) -> np.ndarray:
    """``tile`` with its channel axis first (a new axis of 1 when there is none), so that
    each channel is one contiguous block."""
    tile = np.asarray(tile)
    return tile[None] if channel_axis is None else np.moveaxis(tile, channel_axis, 0)


def check_percentiles(percentiles: Sequence[float] | None) -> tuple[float, ...]:
    """The percentiles as floats in ``[0, 100]``."""
    if percentiles is None:
        return ()
    if isinstance(percentiles, int | float):
        percentiles = (percentiles,)
    try:
        values = tuple(float(q) for q in percentiles)
    except (TypeError, ValueError):
        raise InvalidParameterError(
            f"percentiles={percentiles!r}: give a list of numbers in [0, 100], e.g. [50, 95]."
        ) from None
    if any(not 0 <= q <= 100 for q in values):
        raise InvalidParameterError(
            f"percentiles={list(values)}: every percentile must lie in [0, 100].")
    return values


def intensity_view(intensity_image: Any, image, open_image) -> Any:
    """The :class:`~blockbuster.image.ImageView` to measure: the run's ``image`` for ``True``,
    else ``intensity_image`` (a path, reader or array) opened with ``open_image``, its channel
    axis found by name (``"c"``) or as the one extra first or last axis."""
    view = image if intensity_image is True else _spatially_matching(intensity_image, image,
                                                                      open_image)
    dtype = np.dtype(view.dtype)
    if dtype.kind not in "biuf" or dtype.itemsize > 8:
        raise IntensityImageError(
            f"the intensity image has dtype {dtype}: the table measures real numbers (bool, "
            "integers of up to 64 bits, float16/32/64); convert it first, e.g. to float64.")
    return view


def _spatially_matching(intensity_image: Any, image, open_image) -> Any:
    from blockbuster.image import ImageView

    view = ImageView.open(open_image(intensity_image))
    if view.shape == image.shape:
        return view
    shape = tuple(view.reader.shape)
    for axis in (0, len(shape) - 1):
        if view.channel_axis is None and len(shape) == image.ndim + 1 and \
                shape[:axis] + shape[axis + 1:] == image.shape:
            return ImageView.open(view.reader, axis)
    raise IntensityImageError(
        f"intensity_image has shape {shape} but the labels have the spatial shape "
        f"{image.shape}; give an image of the same spatial shape, its channels (if any) on an "
        "axis named 'c' or as the first or last axis (e.g. (2, *labels.shape)).")


def tile_intensity(runs: LabelRuns, intensities, voxels: np.ndarray) -> TileIntensity:
    """The parts of one tile's objects (the rows of ``runs``, ``voxels`` each) in each channel
    of ``intensities`` (channels first, each of the tile's shape): sum, ``m2``, min and max,
    from one fused pass over each channel's foreground runs (:func:`_moments`, C loops in
    :mod:`blockbuster._intensity_kernels`; floats take a second pass for ``m2``).
    The percentiles are left empty (:func:`add_percentiles`)."""
    k, channels = len(runs), len(intensities)
    out = {name: np.empty((k, channels)) for name in ("sum", "m2", "min", "max")}
    first = runs.starts[runs.foreground].astype(np.int64)
    for c, values in enumerate(intensities):
        flat = np.ascontiguousarray(values).reshape(-1)
        (out["sum"][:, c], out["m2"][:, c], out["min"][:, c],
         out["max"][:, c]) = _moments(first, runs, flat, voxels)
    return TileIntensity(percentiles=np.full((k, 0, channels), np.nan), **out)


def _moments(first: np.ndarray, runs: LabelRuns, flat: np.ndarray, voxels: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per object, the sum of ``flat``, the sum of squared deviations from its mean, its min
    and max.

    Booleans and integers of up to 16 bits are summed, squares too, exactly in int64, and
    ``m2`` follows from the exact ``n * sum(v**2) - sum(v)**2``; other values are summed in
    float64 and take a second pass over their deviations from each object's mean (never a raw
    sum of squares of floats)."""
    k, rows, lengths = len(runs), runs.rows.astype(np.int64), runs.lengths
    if flat.dtype.kind in "biu" and flat.dtype.itemsize <= 2:
        total, squares, low, high = integer_runs(flat, first, lengths, rows, k)
        return total.astype(np.float64), _exact_m2(voxels, total, squares), low, high
    total, low, high = float_runs(flat, first, lengths, rows, k)
    return total, deviation_runs(flat, first, lengths, rows, total / voxels), low, high


def _exact_m2(n: np.ndarray, total: np.ndarray, squares: np.ndarray) -> np.ndarray:
    """``sum((v - mean)**2) = (n * sum(v**2) - sum(v)**2) / n`` from exact integer sums: in
    int64 while the products fit, else in Python integers."""
    bound = float(np.max(n.astype(np.float64) * squares.astype(np.float64), initial=0))
    if bound < 2.0**62:
        return (n * squares - total * total) / n
    exact = n.astype(object) * squares.astype(object) - total.astype(object) ** 2
    return (exact / n.astype(object)).astype(np.float64)


def add_percentiles(intensity: TileIntensity, labels: np.ndarray, runs: LabelRuns,
                    ids: np.ndarray, intensities, request: IntensityRequest,
                    spanning: np.ndarray | None, tile_index: int) -> None:
    """Fill ``intensity.percentiles`` (rows of ``runs``, final IDs ``ids``, which may repeat)
    for the objects that lie in this tile alone; spill the values of those in ``spanning``
    (final IDs that span tiles) to ``request.spill``."""
    qs = request.percentiles
    final, row_final = np.unique(ids, return_inverse=True)
    row_final = row_final.reshape(-1)
    inverse = row_final[runs.per_voxel_rows()]
    foreground = labels.reshape(-1) != 0
    crossing = np.isin(final, spanning) if spanning is not None and len(spanning) else \
        np.zeros(len(final), bool)
    found = [value_runs(inverse, np.ascontiguousarray(channel).reshape(-1)[foreground], final)
             for channel in intensities]
    percentiles = np.full((len(final), len(qs), len(found)), np.nan)
    for c, (run_labels, values, counts) in enumerate(found):
        keep = ~np.isin(run_labels, final[crossing])
        percentiles[~crossing, :, c] = percentiles_of_runs(run_labels[keep], values[keep],
                                                           counts[keep], qs)[1]
    intensity.percentiles = percentiles[row_final]
    if crossing.any():
        intensity.spilled = spill_runs(request.spill, tile_index, final[crossing], found)


def value_runs(inverse: np.ndarray, values: np.ndarray, ids: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each object's distinct values with their counts: ``(label, value, count)`` runs, sorted
    by label then value (integers up to 32 bits in one sort of a combined key)."""
    if values.dtype.kind in "iub" and values.dtype.itemsize <= 4 and len(values):
        low = int(values.min())
        key = (inverse.astype(np.int64) << 32) | (values.astype(np.int64) - low)
        key.sort()
        rows, vals = key >> 32, (key & 0xFFFFFFFF) + low
        vals = vals.astype(values.dtype)
    else:
        order = np.lexsort((values, inverse))
        rows, vals = inverse[order], values[order]
    start = np.ones(len(rows), bool)
    start[1:] = (rows[1:] != rows[:-1]) | (vals[1:] != vals[:-1])
    first = np.flatnonzero(start)
    counts = np.diff(np.append(first, len(rows)))
    return ids[rows[first]], vals[first], counts.astype(np.int64)


def percentiles_of_runs(labels: np.ndarray, values: np.ndarray, counts: np.ndarray,
                        qs: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """``np.percentile`` (linear) of each label's values, from runs sorted by label then
    value: ``(labels, (n_labels, len(qs)) percentiles)``."""
    if len(labels) == 0:
        return labels, np.zeros((0, len(qs)))
    new = np.ones(len(labels), bool)
    new[1:] = labels[1:] != labels[:-1]
    starts = np.flatnonzero(new)
    cum = np.cumsum(counts)
    before = np.concatenate([[0], cum])[starts]  # voxels of earlier labels
    n = np.append(before[1:], cum[-1]) - before
    values = values.astype(np.float64)
    result = np.empty((len(starts), len(qs)))
    for j, q in enumerate(qs):
        virtual = np.float64(q) / 100 * (n - 1)
        lo = np.floor(virtual)
        t = virtual - lo
        a = values[np.searchsorted(cum, before + lo.astype(np.int64), side="right")]
        hi = np.minimum(lo + 1, n - 1).astype(np.int64)
        b = values[np.searchsorted(cum, before + hi, side="right")]
        diff = b - a
        result[:, j] = np.where(t >= 0.5, b - diff * (1 - t), a + diff * t)  # numpy's lerp
    return labels[starts], result


def spill_runs(folder: Path | None, tile_index: int, labels: np.ndarray, runs: list) -> str:
    """Write the runs of ``labels`` (per channel) to ``folder/<tile>.npz``; return its path."""
    if folder is None:
        raise InvalidParameterError("percentiles of objects spanning tiles need a spill folder.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for c, (run_labels, vals, counts) in enumerate(runs):
        keep = np.isin(run_labels, labels)
        arrays[f"labels_{c}"], arrays[f"values_{c}"] = run_labels[keep], vals[keep]
        arrays[f"counts_{c}"] = counts[keep]
    path = folder / f"{tile_index}.npz"
    partial = folder / f"{tile_index}.partial.npz"
    np.savez(partial, **arrays)
    os.replace(partial, path)
    return str(path)


def combine_intensity(parts: list[TileIntensity], inverse: np.ndarray, order: np.ndarray,
                      bounds: np.ndarray, part_voxels: np.ndarray, total: np.ndarray,
                      ids: np.ndarray, qs: Sequence[float]) -> dict[str, np.ndarray]:
    """The intensity columns of the table: the parts (rows of the concatenated tiles'
    statistics, object row ``inverse``) merged per object."""
    k, channels = len(ids), parts[0].sum.shape[1]
    columns: dict[str, np.ndarray] = {}
    for c in range(channels):
        # one figure of one channel at a time: the parent stays small
        stacked = partial(_channel_column, parts, c=c)
        suffix = f"_c{c}" if channels > 1 else ""
        part_sum = stacked("sum")
        total_sum = np.bincount(inverse, weights=part_sum, minlength=k)
        mean = total_sum / np.maximum(total, 1)
        deviation = part_sum / part_voxels - mean[inverse]
        m2 = np.bincount(inverse, weights=stacked("m2") + part_voxels * deviation ** 2,
                         minlength=k)
        columns[f"intensity_mean{suffix}"] = mean
        columns[f"intensity_min{suffix}"] = np.minimum.reduceat(stacked("min")[order], bounds)
        columns[f"intensity_max{suffix}"] = np.maximum.reduceat(stacked("max")[order], bounds)
        columns[f"intensity_sum{suffix}"] = total_sum
        columns[f"intensity_std{suffix}"] = np.sqrt(m2 / np.maximum(total, 1))
    if qs:
        columns.update(_percentile_columns(parts, inverse, ids, qs, channels))
    return columns


def _channel_column(parts: list[TileIntensity], name: str, c: int) -> np.ndarray:
    """Figure ``name`` of channel ``c`` of every part, concatenated."""
    return np.concatenate([getattr(p, name)[:, c] for p in parts])


def _percentile_columns(parts: list[TileIntensity], inverse: np.ndarray, ids: np.ndarray,
                        qs: Sequence[float], channels: int) -> dict[str, np.ndarray]:
    """Percentiles of objects within one tile from their tile, of the others from the spill."""
    k = len(ids)
    local = np.concatenate([p.percentiles for p in parts])
    result = np.full((k, len(qs), channels), np.nan)
    known = ~np.isnan(local).all(axis=(1, 2))
    result[inverse[known]] = local[known]
    spills = [p.spilled for p in parts if p.spilled]
    spanning = ids[np.isnan(result).all(axis=(1, 2))]
    for lo, hi in _label_batches(spanning, sum(os.path.getsize(s) for s in spills)):
        for c in range(channels):
            runs = [_runs_between(path, c, lo, hi) for path in spills]
            labels, values, counts = _merged_runs(*(np.concatenate(r) for r in zip(*runs)))
            found, merged = percentiles_of_runs(labels, values, counts, qs)
            result[np.searchsorted(ids, found), :, c] = merged
    columns = {}
    for j, q in enumerate(qs):
        for c in range(channels):
            suffix = f"_c{c}" if channels > 1 else ""
            columns[f"intensity_p{percentile_name(q)}{suffix}"] = result[:, j, c]
    return columns


SPILL_BATCH_BYTES = 64 * 2**20  # spilled runs merged at a time, about (the parent's memory)


def _label_batches(labels: np.ndarray, spilled_bytes: int) -> list[tuple[int, int]]:
    """Label ranges ``[lo, hi)`` splitting ``labels`` (sorted) so that each batch's runs are
    about :data:`SPILL_BATCH_BYTES` (the runs are read again from the spill for each batch)."""
    if len(labels) == 0:
        return []
    n = max(1, min(len(labels), -(-4 * spilled_bytes // SPILL_BATCH_BYTES)))
    edges = [int(labels[i * len(labels) // n]) for i in range(n)] + [int(labels[-1]) + 1]
    return list(zip(edges[:-1], edges[1:]))


def _runs_between(path: str, channel: int, lo: int, hi: int):
    """The runs of one channel in a spill file whose labels lie in ``[lo, hi)``."""
    with np.load(path) as spill:
        labels = spill[f"labels_{channel}"]
        a, b = np.searchsorted(labels, [lo, hi])
        return (labels[a:b], spill[f"values_{channel}"][a:b],
                spill[f"counts_{channel}"][a:b])


def _merged_runs(labels, values, counts):
    """Runs from several tiles, sorted by label then value, equal runs added up."""
    order = np.lexsort((values, labels))
    labels, values, counts = labels[order], values[order], counts[order]
    start = np.ones(len(labels), bool)
    start[1:] = (labels[1:] != labels[:-1]) | (values[1:] != values[:-1])
    first = np.flatnonzero(start)
    return labels[first], values[first], np.add.reduceat(counts, first) if len(first) else counts


def intensity_columns(channels: int, qs: Sequence[float]) -> list[str]:
    """The intensity columns' names, in the table's order (for a table without objects)."""
    suffixes = [f"_c{c}" if channels > 1 else "" for c in range(channels)]
    names = [f"intensity_{name}{suffix}" for suffix in suffixes for name in STATISTICS]
    return names + [f"intensity_p{percentile_name(q)}{suffix}" for q in qs for suffix in suffixes]


def percentile_name(q: float) -> str:
    """``50`` for 50.0, ``99_5`` for 99.5 (column names)."""
    return f"{q:g}".replace(".", "_")
