"""Planning a run: turning ``tile_process``'s arguments into a tile grid, a merge mode and the
other validated settings (pure functions of the :class:`~blockbuster.image.ImageView`, no I/O)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from blockbuster.errors import InvalidParameterError
from blockbuster.image import ImageView
from blockbuster.merge import MERGE_MODES
from blockbuster.stores import is_url
from blockbuster.tiling import TileGrid, auto_tile_shape, validate_overlap, validate_tile_shape

DEFAULT_HALO = 1  # the least halo with which the overlap rule makes connected components exact


def plan_tiling(image: ImageView, tile_shape, overlap, needs, workers, memory_budget, *,
                default_halo: bool = True, split_halo: int = 0) -> TileGrid:
    """The tile grid of a run from the user's arguments.

    ``tile_shape`` and ``overlap`` may be given per axis, by axis name, or left to the
    segmenter's :class:`~blockbuster.segmenter.Needs` and the memory budget. When neither
    gives a halo, ``default_halo`` adds :data:`DEFAULT_HALO` pixels (rounded up to the
    segmenter's alignment) on every axis whose tile is longer than 1, so the overlap rule
    applies and connected components are exact whatever their connectivity. ``split_halo``
    (a watershed on a pixel map, :mod:`blockbuster.splitting`) is read on top of the halo on
    those axes.
    """
    halo = _by_axis_name(overlap if overlap is not None else needs.halo, image.axes, "overlap", 0)
    defaulted = halo is None and default_halo
    planned = DEFAULT_HALO if defaulted else halo
    if split_halo:
        planned = np.add(planned or 0, split_halo).tolist()
    tiles = _resolve_tile_shape(_by_axis_name(tile_shape, image.axes, "tile_shape", None), image,
                                planned, needs, workers, memory_budget)
    tiles = _aligned(tiles, needs.align, image.shape, chosen=tile_shape in (None, "auto"))
    if defaulted:
        halo = _default_halo(tiles, needs.align)
    halo = validate_overlap(halo, tiles)
    if split_halo:
        halo = _with_split_halo(halo, tiles, split_halo)
    grid = TileGrid(image.shape, tiles, halo)
    _warn_if_misaligned(grid, needs.align)
    return grid


def _with_split_halo(halo: tuple[int, ...], tiles, split_halo: int) -> tuple[int, ...]:
    """``halo`` plus ``split_halo`` on every axis whose tile is longer than 1, smaller than
    the tile (a tile's window reaches its neighbours, not beyond)."""
    total = tuple(h + split_halo if t > 1 else h for h, t in zip(halo, tiles))
    for axis, (h, t) in enumerate(zip(total, tiles)):
        if h >= t:
            raise InvalidParameterError(
                f"instances='watershed' reads split_halo {split_halo} + overlap "
                f"{h - split_halo} = {h} pixels around each tile, not smaller than the tile "
                f"size {t} on axis {axis}; use a tile_shape larger than {h} there."
            )
    return total


def _default_halo(tiles, align) -> tuple[int, ...]:
    """:data:`DEFAULT_HALO` on every axis whose tile is longer than 1, rounded up to the
    segmenter's alignment (a network's window stays on its lattice) but smaller than the tile."""
    align = _per_axis(align, len(tiles)) or (1,) * len(tiles)
    return tuple(0 if t == 1 else min(max(DEFAULT_HALO, a), t - 1) for t, a in zip(tiles, align))


def resolve_table_path(table, write_to) -> Path | str | None:
    """The table's path: ``table``, or named after ``write_to`` for ``table=True`` (a URL stays
    a string, see :mod:`blockbuster.stores`)."""
    return path_beside_output(table, write_to, argument="table", what="table",
                              beside=".objects.csv", suffixes=(".csv", ".parquet", ".pq"),
                              kinds="a .csv or .parquet path", give="a table path")


def path_beside_output(value, write_to, *, argument: str, what: str, beside: str,
                       suffixes: tuple[str, ...], kinds: str, give: str) -> Path | str | None:
    """Where a file written with the labels goes: ``None`` for ``None``/``False``, beside
    ``write_to`` (its name plus ``beside``) for ``True``, else the path given, whose suffix
    must be one of ``suffixes`` (a URL stays a string, see :mod:`blockbuster.stores`)."""
    if value is None or value is False:
        return None
    if value is True:
        if write_to is None:
            raise InvalidParameterError(
                f"{argument}=True names the {what} after write_to; give write_to= or {give}."
            )
        value = f"{write_to}{beside}"
    path = value if is_url(value) else Path(value)
    if not str(path).lower().endswith(suffixes):
        raise InvalidParameterError(f"{argument}={str(value)!r}: use {kinds}.")
    return path


def one_segmenter(fn, segmenter):
    if fn is not None and segmenter is not None:
        raise InvalidParameterError("give fn or segmenter=, not both (they are the same argument).")
    if fn is None and segmenter is None:
        raise InvalidParameterError(
            "no segmenter given: pass fn (a callable tile -> labels) or a segmenter name "
            "such as 'threshold'."
        )
    return fn if fn is not None else segmenter


def _per_axis(value, ndim: int) -> tuple[int, ...] | None:
    if value is None:
        return None
    return (int(value),) * ndim if np.isscalar(value) else tuple(int(v) for v in value)


def _aligned(tiles, align, spatial, *, chosen: bool):
    """Round tile sizes blockbuster chose down to the segmenter's lattice (not below it)."""
    align = _per_axis(align, len(spatial))
    if align is None or not chosen:
        return tiles
    return tuple(t if t >= s else max(a, t // a * a) for t, a, s in zip(tiles, align, spatial))


def _warn_if_misaligned(grid: TileGrid, align) -> None:
    import warnings

    align = _per_axis(align, grid.ndim)
    if align is None:
        return
    off = [axis for axis, (t, o, a, g) in enumerate(
        zip(grid.tile_shape, grid.overlap, align, grid.grid_shape))
        if g > 1 and t > 1 and (t % a or o % a)]  # a tile of 1 is per-slice: no lattice
    if off:
        warnings.warn(
            f"tile_shape {grid.tile_shape} or overlap {grid.overlap} is not a multiple of the "
            f"segmenter's alignment {align} on axes {off}; tiles may disagree at the seams. "
            "Use multiples of it (or leave overlap=None for the segmenter's own halo).",
            stacklevel=3,
        )


def check_retries(retries: int) -> None:
    if not isinstance(retries, int) or retries < 0:
        raise InvalidParameterError(f"retries={retries!r}; use 0 or more.")


def _by_axis_name(value, names: tuple[str, ...] | None, what: str, missing):
    """Turn ``{"y": 1024, "x": 1024}`` into a tuple in the reader's axis order."""
    if not isinstance(value, dict):
        return value
    if names is None:
        raise InvalidParameterError(
            f"{what} is given by axis name {value}, but this image's axes are not named; "
            "give one value per spatial axis instead."
        )
    unknown = sorted(set(value) - set(names))
    if unknown:
        raise InvalidParameterError(
            f"{what} names axes {unknown} that the image does not have; its spatial axes are "
            f"{list(names)}."
        )
    return tuple(value.get(name, missing) for name in names)


def _resolve_tile_shape(tile_shape, image: ImageView, halo, needs, workers, budget):
    if isinstance(tile_shape, str):
        if tile_shape != "auto":
            raise InvalidParameterError(
                f"tile_shape={tile_shape!r}; use a tuple, None (the input's chunks) or 'auto'."
            )
        return _auto_tiles(image, halo, needs, workers, budget)
    if tile_shape is None:
        if image.chunks is None or tuple(image.chunks) == tuple(image.shape):
            return _auto_tiles(image, halo, needs, workers, budget)
        return validate_tile_shape(image.chunks, image.shape)
    if isinstance(tile_shape, int | np.integer):
        tile_shape = (tile_shape,) * image.ndim
    return validate_tile_shape(tuple(tile_shape), image.shape)


def _auto_tiles(image: ImageView, halo, needs, workers, budget):
    # the tile in hand and the one read ahead, raw + local labels, fn's own working memory
    per_voxel = 2 * image.dtype.itemsize * image.channels + 8 + 4 + (needs.bytes_per_voxel or 16)
    if halo is None:
        halo = 0
    halo_per_axis = (halo,) * image.ndim if isinstance(halo, int) else tuple(halo)
    return auto_tile_shape(
        image.shape,
        bytes_per_voxel=per_voxel,
        overlap=halo_per_axis,
        workers=workers,
        budget_bytes=budget or _default_budget(),
        chunks=image.chunks,
    )


def _default_budget() -> int:
    """A quarter of physical memory."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return 4 * 2**30


def resolve_merge(merge: str | None, grid: TileGrid, pixel_map=None) -> str:
    """The merge mode: given, or ``"overlap"`` when there is a halo, else ``"touch"``.

    A pixel map's cores hold exact values, so its objects join by touch with the same class
    (:mod:`blockbuster.pixelmaps`); the overlap rule, made for instances, does not apply.
    """
    if pixel_map is not None and pixel_map.splits:
        if merge not in (None, "overlap"):
            raise InvalidParameterError(
                f"merge={merge!r} does not apply to instances='watershed': each tile splits its "
                "window of the stitched map and tiles are joined by the overlap rule. Leave "
                "merge unset."
            )
        return "overlap"
    if pixel_map is not None:
        if merge not in (None, "touch"):
            raise InvalidParameterError(
                f"merge={merge!r} does not apply to output={pixel_map.kind!r}: blockbuster "
                "labels the map's exact core values and joins them across tiles itself (exact "
                "connected components). Leave merge unset."
            )
        return "touch"
    if merge is None:
        return "overlap" if any(grid.overlap) else "touch"
    if merge not in MERGE_MODES:
        raise InvalidParameterError(f"merge={merge!r}; use one of {list(MERGE_MODES)}.")
    if merge == "iou":
        from blockbuster.stitching import stack_axis

        stack_axis(grid)  # refuses tiles that are not one plane thick
    if merge == "overlap" and not any(
        o > 0 for o, g in zip(grid.overlap, grid.grid_shape) if g > 1
    ) and len(grid) > 1:
        raise InvalidParameterError(
            "merge='overlap' asks each tile's halo prediction, but overlap is 0; give "
            "overlap >= 1 (ideally 2x the object diameter) or use merge='touch'."
        )
    return merge
