"""``expand_labels``: grow every label by ``distance`` without overlapping its neighbours
(cells from nuclei), out of core and exactly equal to
:func:`skimage.segmentation.expand_labels` on the whole image, voxel spacing included.

Each tile core of the written labels is read with a halo of ``floor(distance / spacing) + 1``
pixels per axis, expanded by skimage, and its core staged. That is exact: a pixel takes the
label of its nearest labelled pixel within ``distance``, which lies inside the halo, and scipy's
feature transform, which settles ties between equidistant labels, picks among the candidates
within ``distance`` of a pixel the same way whatever lies beyond them (each pass along an axis
keeps, of tied parabolas, the first along the line; farther candidates never remove a nearer
one). The tests check it against the whole-image call on dense random labels and many tilings,
isotropic and anisotropic.

Like :func:`blockbuster.tile_process`, the run stages each expanded tile
(:class:`~blockbuster.staging.Stage`, under the output's lock) before writing the output, so an
interrupted run, called again the same way, expands only the tiles not yet staged and writes
the same bytes.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from blockbuster._version import __version__
from blockbuster.errors import InvalidParameterError
from blockbuster.image import ImageView
from blockbuster.progress import Progress
from blockbuster.staging import Stage, TileRecord, stage_root
from blockbuster.tiling import TileGrid, validate_tile_shape
from blockbuster.writers import Writer

DEFAULT_TILE = 1024  # per axis, when the labels are not chunked
RUN = 8  # tiles per task
STAGES = ("expand", "write")  # the progress stages of expand_labels


@dataclass
class ExpandJob:
    """What each worker needs (sent once): the labels, the tiles, the distance and spacing,
    the stage and the writer."""

    labels: ImageView
    grid: TileGrid
    distance: float
    spacing: tuple[float, ...]
    stage: Stage
    writer: Writer


def expand_labels(labels: Any, distance: float, *, write_to: str | os.PathLike,
                  spacing: Sequence[float] | float | str | None = None,
                  tile_shape: Sequence[int] | None = None, overwrite: bool = False,
                  resume: bool = True, stage_dir: str | os.PathLike | None = None,
                  executor: Any = None, workers: int | None = None,
                  executor_options: dict | None = None,
                  reader: str | None = None, reader_options: dict | None = None,
                  writer: str | None = None, writer_options: dict | None = None,
                  storage_options: dict | None = None, compute: bool = False,
                  progress: Any = False, registry: Any = None):
    """Grow every label of ``labels`` by ``distance`` into the background, without
    overlapping its neighbours; write the result to ``write_to``, tile by tile.

    Equal to ``skimage.segmentation.expand_labels(labels, distance, spacing)`` on the whole
    image, never loading it: each tile is read with a halo of ``floor(distance / spacing) + 1``
    pixels per axis.

    Parameters
    ----------
    labels
        Labels (0 = background): a path or URL (e.g. a ``tile_process`` output), a zarr,
        dask or numpy array.
    distance
        How far to grow (Euclidean; may be fractional), in the units of ``spacing``: pixels
        by default.
    spacing
        Size of a voxel along each axis, as skimage's ``spacing``: ``None`` (default) for
        square pixels, so ``distance`` counts pixels exactly as in skimage; a number or one
        number per axis, e.g. ``(2.0, 0.5, 0.5)`` for anisotropic z-stacks; or ``"physical"``
        for the labels' own physical scale (an OME-Zarr's ``scale``), so ``distance`` is in
        its units (e.g. micrometres).
    write_to, overwrite
        The new zarr array; refuses to replace other data unless ``overwrite=True``.
    resume, stage_dir
        As for :func:`blockbuster.tile_process`: expanded tiles are staged (``<write_to>.stage``
        or under ``stage_dir``) and an interrupted run called again skips the staged ones;
        ``resume=False`` starts fresh.
    tile_shape
        Core size of a tile per axis; default the labels' chunks (1024 per axis without).
    executor, workers, executor_options
        As for :func:`blockbuster.tile_process` (``"threads"`` by default).
    reader, reader_options, writer, writer_options, storage_options
        As for :func:`blockbuster.tile_process`.
    compute
        ``True`` returns a numpy array, else a dask array over the written labels.
    progress
        As for :func:`blockbuster.tile_process`: ``True`` shows a progress bar, a callable
        receives every :class:`~blockbuster.progress.ProgressEvent` (stages ``"expand"`` and
        ``"write"``, one step per tile each; tiles a resumed call skips count as done).
    """
    from blockbuster.lock import holding, lock_output
    from blockbuster.pipeline import with_storage_options
    from blockbuster.registry import Registry
    from blockbuster.stores import local_if_file_url

    distance = check_distance(distance)
    registry = registry if registry is not None else Registry()
    reader_options = with_storage_options(reader_options, labels, storage_options)
    view = ImageView.open(registry.open_image(labels, reader=reader, **reader_options), None)
    spacing = resolve_spacing(spacing, view)
    grid = expand_grid(view, tile_shape, distance, spacing)
    writer_options = with_storage_options(writer_options, write_to, storage_options)
    out = registry.writer(writer, write_to, overwrite=overwrite, **writer_options)
    out.set_source(view)
    fingerprint = json.dumps({"expand": distance, "spacing": spacing, "input": view.identity(),
                              "tile_shape": grid.tile_shape, "blockbuster": __version__})
    lock = lock_output(local_if_file_url(write_to), writer_options.get("storage_options"))
    with holding(lock):
        out.check(fingerprint, view.source)
        stage = Stage(stage_root(write_to, fingerprint, stage_dir), grid)
        done = stage.open(fingerprint, resume=resume, replace_other=overwrite)
        job = ExpandJob(view, grid, distance, spacing, stage, out)
        pool_of = registry.executor(executor, workers=workers, **(executor_options or {}))
        with pool_of.start(job) as pool, Progress(progress, len(grid), STAGES) as bar:
            bar.stage("expand")
            bar.advance(len(done))
            _in_runs(pool, expand_task, [i for i in range(len(grid)) if i not in done], bar)
            lock.check()
            out.create(grid.shape, grid.chunks, view.dtype, fingerprint)
            bar.stage("write")
            _in_runs(pool, write_task, list(range(len(grid))), bar)
        lock.check()
        out.finish(version=__version__, expanded_by=distance, spacing=list(spacing))
        stage.remove()
    result = out.open()
    return result.compute() if compute else result


def check_distance(distance: Any) -> float:
    """``distance`` as a non-negative finite number."""
    if not _is_number(distance) or distance < 0:
        raise InvalidParameterError(
            f"distance={distance!r}: give the pixels to grow by, a number >= 0 (e.g. 5).")
    return float(distance)


def resolve_spacing(spacing: Any, view: ImageView) -> tuple[float, ...]:
    """One positive voxel size per axis: ``None`` is 1 (pixels), ``"physical"`` the labels'
    scale, a number every axis."""
    ndim = view.ndim
    if spacing is None:
        return (1.0,) * ndim
    if isinstance(spacing, str):
        if spacing != "physical":
            raise InvalidParameterError(
                f"spacing={spacing!r}: give 'physical' (the labels' scale), a number, or one "
                f"number per axis ({ndim} here).")
        scale = view.metadata.get("scale")
        if scale is None:
            raise InvalidParameterError(
                "spacing='physical' but the labels carry no physical scale (only OME-Zarr "
                "and readers that report a scale do); give the voxel size per axis instead, "
                f"e.g. spacing={(1.0,) * ndim}.")
        spacing = scale
    values = (spacing,) * ndim if _is_number(spacing) else tuple(spacing)
    if len(values) != ndim or not all(_is_number(v) and v > 0 for v in values):
        raise InvalidParameterError(
            f"spacing={spacing!r}: give one voxel size > 0 per axis of the labels ({ndim} "
            f"axes, e.g. spacing={(1.0,) * ndim}), a single number, or 'physical'.")
    return tuple(float(v) for v in values)


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float | np.number) and \
        math.isfinite(value)


def expand_grid(view: ImageView, tile_shape, distance: float,
                spacing: Sequence[float] | None = None) -> TileGrid:
    """The tiles: cores of ``tile_shape`` (the labels' chunks by default), halo
    ``floor(distance / spacing) + 1`` per axis (clipped at the image's edges)."""
    if tile_shape is None:
        tile_shape = view.chunks or tuple(min(s, DEFAULT_TILE) for s in view.shape)
    tiles = validate_tile_shape(tuple(tile_shape), view.shape)
    spacing = spacing or (1.0,) * view.ndim
    halo = tuple(math.floor(distance / step) + 1 for step in spacing)
    return TileGrid(view.shape, tiles, halo)


def _in_runs(pool, task, indices: list[int], bar: Progress) -> None:
    """Run ``task`` over ``indices``, ``RUN`` tiles per call (each returns its tiles done)."""
    for tiles in pool.map_unordered(task, [indices[i:i + RUN]
                                           for i in range(0, len(indices), RUN)]):
        bar.advance(tiles)


def expand_task(job: ExpandJob, indices: list[int]) -> int:
    """Expand a run of tiles and stage each core (its record last: the tile is done)."""
    from skimage.segmentation import expand_labels as expand_whole

    for index in indices:
        tile = job.grid.tile(index)
        window = np.asarray(job.labels.read(tile.padded))
        grown = None
        if window.any():
            check_non_negative(window)
            grown = expand_whole(window, job.distance, spacing=job.spacing)[tile.core_in_padded]
        count = int(grown.max()) if grown is not None else 0
        job.stage.write_tile(tile, grown, TileRecord(count=count, faces={}))
    return len(indices)


def write_task(job: ExpandJob, indices: list[int]) -> int:
    """Write a run of staged tiles to the output, in the labels' dtype."""
    for index in indices:
        count = job.stage.read_record(index).count
        if count:
            tile = job.grid.tile(index)
            grown = job.stage.read_local(tile, count).astype(job.labels.dtype)
            job.writer.write(tile.core, grown)
    return len(indices)


def check_non_negative(window: np.ndarray) -> None:
    """Staged labels are unsigned: refuse negative ids (which skimage would grow too)."""
    if window.dtype.kind == "i" and window.min() < 0:
        raise InvalidParameterError(
            f"the labels hold negative ids (down to {int(window.min())}); expand_labels takes "
            "labels >= 0 (0 = background). Relabel them first, e.g. with "
            "skimage.segmentation.relabel_sequential.")
