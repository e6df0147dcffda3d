"""``expand_labels``: grow every label by ``distance`` pixels without overlapping its
neighbours (cells from nuclei), out of core and exactly equal to
:func:`skimage.segmentation.expand_labels` on the whole image.

Each tile core of the written labels is read with a halo of ``floor(distance) + 1`` pixels,
expanded by skimage, and its core written to a new array. That is exact: a pixel takes the label
of its nearest labelled pixel within ``distance``, which lies inside the halo, and scipy's
feature transform, which settles ties between equidistant labels, picks among the candidates
within ``distance`` of a pixel the same way whatever lies beyond them (each pass along an axis
keeps, of tied parabolas, the first along the line; farther candidates never remove a nearer
one). The tests check it against the whole-image call on dense random labels and many tilings.
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
from blockbuster.tiling import TileGrid, validate_tile_shape
from blockbuster.writers import Writer

DEFAULT_TILE = 1024  # per axis, when the labels are not chunked


@dataclass
class ExpandJob:
    """What each worker needs (sent once): the labels, the tiles, the distance, the writer."""

    labels: ImageView
    grid: TileGrid
    distance: float
    writer: Writer


def expand_labels(labels: Any, distance: float, *, write_to: str | os.PathLike,
                  tile_shape: Sequence[int] | None = None, overwrite: bool = False,
                  executor: Any = None, workers: int | None = None,
                  executor_options: dict | None = None,
                  reader: str | None = None, reader_options: dict | None = None,
                  writer: str | None = None, writer_options: dict | None = None,
                  storage_options: dict | None = None, compute: bool = False,
                  registry: Any = None):
    """Grow every label of ``labels`` by ``distance`` pixels into the background, without
    overlapping its neighbours; write the result to ``write_to``, tile by tile.

    Equal to ``skimage.segmentation.expand_labels(labels, distance)`` on the whole image,
    never loading it: each tile is read with a halo of ``floor(distance) + 1``.

    Parameters
    ----------
    labels
        Labels (0 = background): a path or URL (e.g. a ``tile_process`` output), a zarr,
        dask or numpy array.
    distance
        Pixels to grow by (Euclidean; may be fractional).
    write_to, overwrite
        The new zarr array; refuses to replace other data unless ``overwrite=True``.
    tile_shape
        Core size of a tile per axis; default the labels' chunks (1024 per axis without).
    executor, workers, executor_options
        As for :func:`blockbuster.tile_process` (``"threads"`` by default).
    reader, reader_options, writer, writer_options, storage_options
        As for :func:`blockbuster.tile_process`.
    compute
        ``True`` returns a numpy array, else a dask array over the written labels.
    """
    from blockbuster.pipeline import with_storage_options
    from blockbuster.registry import Registry

    distance = check_distance(distance)
    registry = registry if registry is not None else Registry()
    reader_options = with_storage_options(reader_options, labels, storage_options)
    view = ImageView.open(registry.open_image(labels, reader=reader, **reader_options), None)
    grid = expand_grid(view, tile_shape, distance)
    writer_options = with_storage_options(writer_options, write_to, storage_options)
    out = registry.writer(writer, write_to, overwrite=overwrite, **writer_options)
    out.set_source(view)
    fingerprint = json.dumps({"expand": distance, "input": view.identity(),
                              "tile_shape": grid.tile_shape, "blockbuster": __version__})
    out.check(fingerprint, view.source)
    out.create(grid.shape, grid.chunks, view.dtype, fingerprint)
    job = ExpandJob(view, grid, distance, out)
    pool_of = registry.executor(executor, workers=workers, **(executor_options or {}))
    with pool_of.start(job) as pool:
        runs = [list(range(i, min(i + 8, len(grid)))) for i in range(0, len(grid), 8)]
        for _ in pool.map_unordered(expand_task, runs):
            pass
    out.finish(version=__version__, expanded_by=distance)
    result = out.open()
    return result.compute() if compute else result


def check_distance(distance: Any) -> float:
    """``distance`` as a non-negative finite number."""
    if isinstance(distance, bool) or not isinstance(distance, int | float | np.number) or \
            not math.isfinite(distance) or distance < 0:
        raise InvalidParameterError(
            f"distance={distance!r}: give the pixels to grow by, a number >= 0 (e.g. 5).")
    return float(distance)


def expand_grid(view: ImageView, tile_shape, distance: float) -> TileGrid:
    """The tiles: cores of ``tile_shape`` (the labels' chunks by default), halo
    ``floor(distance) + 1`` on every axis (clipped at the image's edges)."""
    if tile_shape is None:
        tile_shape = view.chunks or tuple(min(s, DEFAULT_TILE) for s in view.shape)
    tiles = validate_tile_shape(tuple(tile_shape), view.shape)
    halo = math.floor(distance) + 1
    return TileGrid(view.shape, tiles, (halo,) * view.ndim)


def expand_task(job: ExpandJob, indices: list[int]) -> int:
    """Expand and write a run of tiles; returns how many."""
    from skimage.segmentation import expand_labels as expand_whole

    for index in indices:
        tile = job.grid.tile(index)
        window = np.asarray(job.labels.read(tile.padded))
        if not window.any():
            continue
        grown = expand_whole(window, job.distance)[tile.core_in_padded]
        if grown.any():
            job.writer.write(tile.core, np.ascontiguousarray(grown))
    return len(indices)
