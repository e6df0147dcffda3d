"""Label images read tile by tile, for the measurements made after a run (relations, polygons).

:func:`open_labels` opens a label image (a path, URL, zarr/numpy/dask array) through the
readers and checks it holds integer labels; :func:`label_grid` cuts it into tiles aligned
with its chunks; :func:`map_tiles` runs a function on each tile in a few threads, reading
each tile only when a thread starts on it, so only ``workers`` tiles are ever in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from blockbuster.errors import InvalidParameterError
from blockbuster.image import ImageView
from blockbuster.tiling import Tile, TileGrid, auto_tile_shape, validate_tile_shape
from blockbuster.worker import usable_cores

#: what one thread holds per voxel of a tile (the labels, unique/inverse arrays, masks)
BYTES_PER_VOXEL = 40
#: memory all threads together may hold for their tiles
TILE_BUDGET = 512 * 2**20


def open_labels(source: Any, what: str = "labels", *,
                storage_options: dict | None = None) -> ImageView:
    """The spatial view of the label image ``source``; raise when it is not integer labels.

    ``what`` names the image in the errors (``"children"``, ``"parents"``...).
    """
    from blockbuster.registry import Registry

    options = {"storage_options": storage_options} if storage_options else {}
    reader = Registry().open_image(source, **options)
    if not (np.issubdtype(reader.dtype, np.integer) or reader.dtype == np.bool_):
        raise InvalidParameterError(
            f"{what} ({_name(source)}) holds {reader.dtype} values, not integer labels; give "
            "a label image (0 = background, one integer per object), e.g. a tile_process "
            "result.")
    view = ImageView.open(reader, channel_axis=None)
    if view.channel_axis is not None and view.channels > 1:
        raise InvalidParameterError(
            f"{what} ({_name(source)}) has {view.channels} channels; a label image has none. "
            "Give one label image per call.")
    return view


def label_grid(shape: Sequence[int], chunks: Sequence[int] | None,
               tile_shape: Sequence[int] | None, workers: int, *,
               bytes_per_voxel: float = BYTES_PER_VOXEL) -> TileGrid:
    """Tiles over ``shape``: ``tile_shape`` (``None``/-1 entries: the whole axis), or by
    default the largest tiles aligned with ``chunks`` that fit :data:`TILE_BUDGET` across
    ``workers`` when a thread holds ``bytes_per_voxel`` per voxel of its tile."""
    shape = tuple(shape)
    if tile_shape is None:
        tile_shape = auto_tile_shape(shape, bytes_per_voxel=bytes_per_voxel,
                                     overlap=(0,) * len(shape), workers=workers,
                                     budget_bytes=TILE_BUDGET, chunks=chunks)
    else:
        tile_shape = validate_tile_shape(tuple(tile_shape), shape)
    return TileGrid(shape, tile_shape, (0,) * len(shape))


def resolve_workers(workers: int | None) -> int:
    """``workers`` threads, or one per usable core (at most 8) by default."""
    if workers is None:
        return min(usable_cores(), 8)
    if isinstance(workers, bool) or not isinstance(workers, int | np.integer) or workers < 1:
        raise InvalidParameterError(f"workers={workers!r}; give a positive number of threads.")
    return int(workers)


def map_tiles(task: Callable[[Tile], Any], grid: TileGrid, workers: int) -> Iterator[Any]:
    """``task(tile)`` for every tile of ``grid`` in ``workers`` threads, results in tile order.

    Tasks are handed out a few at a time, so a large grid never queues every tile at once.
    """
    if workers == 1:
        yield from (task(tile) for tile in grid)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="blockbuster-measure") as pool:
        pending = []
        for tile in grid:
            pending.append(pool.submit(task, tile))
            if len(pending) >= 2 * workers:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()


def _name(source: Any) -> str:
    return str(source) if isinstance(source, str) or hasattr(source, "__fspath__") else (
        f"a {type(source).__name__}")
