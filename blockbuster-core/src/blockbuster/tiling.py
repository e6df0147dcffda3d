"""Tile geometry: a regular grid of tile cores over the spatial axes, each with a clipped halo.

Pure functions and small value objects, no I/O. The grid starts at the origin, so tile cores
align with zarr chunks of the tile shape and no two tiles ever share an output chunk.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property

from blockbuster.errors import InvalidParameterError

Slices = tuple[slice, ...]


@dataclass(frozen=True)
class Tile:
    """One tile: its linear ``index``, grid ``position``, ``core`` and halo-padded window."""

    index: int
    position: tuple[int, ...]
    core: Slices
    padded: Slices

    @property
    def core_in_padded(self) -> Slices:
        """The core expressed relative to the padded window."""
        return tuple(
            slice(c.start - p.start, c.stop - p.start) for c, p in zip(self.core, self.padded)
        )

    @property
    def core_shape(self) -> tuple[int, ...]:
        return tuple(s.stop - s.start for s in self.core)

    @property
    def padded_shape(self) -> tuple[int, ...]:
        return tuple(s.stop - s.start for s in self.padded)

    def bounds(self) -> str:
        """Human-readable core bounds, e.g. ``[0:256, 256:512]``."""
        return span(self.core)


class TileGrid:
    """The tiles covering ``shape`` with cores of ``tile_shape`` and ``overlap`` halos."""

    def __init__(self, shape: Sequence[int], tile_shape: Sequence[int], overlap: Sequence[int]):
        self.shape = tuple(int(s) for s in shape)
        self.tile_shape = tuple(min(int(t), s) if s else 1 for t, s in zip(tile_shape, self.shape))
        self.overlap = tuple(int(o) for o in overlap)
        self.grid_shape = tuple(
            max(1, math.ceil(s / t)) for s, t in zip(self.shape, self.tile_shape)
        )

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return math.prod(self.grid_shape)

    def __iter__(self) -> Iterator[Tile]:
        return (self.tile(i) for i in range(len(self)))

    def position(self, index: int) -> tuple[int, ...]:
        return tuple(int(p) for p in _unravel(index, self.grid_shape))

    def index(self, position: Sequence[int]) -> int:
        return _ravel(position, self.grid_shape)

    def contains(self, position: Sequence[int]) -> bool:
        return all(0 <= p < g for p, g in zip(position, self.grid_shape))

    def tile(self, index: int) -> Tile:
        position = self.position(index)
        core = tuple(
            slice(p * t, min((p + 1) * t, s))
            for p, t, s in zip(position, self.tile_shape, self.shape)
        )
        padded = tuple(
            slice(max(c.start - o, 0), min(c.stop + o, s))
            for c, o, s in zip(core, self.overlap, self.shape)
        )
        return Tile(index, position, core, padded)

    def neighbours_after(self, tile: Tile, axis: int) -> list[Tile]:
        """Tiles one step after ``tile`` along ``axis``, level with it on the axes before
        ``axis`` and within one step on the axes after.

        Over all axes these are the tiles within one step of ``tile`` that come after it in C
        order, each once: a diagonal neighbour is found along the first axis it differs on.
        """
        ranges = [
            [p] if a < axis else [p + 1] if a == axis else [p - 1, p, p + 1]
            for a, p in enumerate(tile.position)
        ]
        return [
            self.tile(self.index(pos))
            for pos in itertools.product(*ranges)
            if self.contains(pos)
        ]

    @cached_property
    def chunks(self) -> tuple[int, ...]:
        """Chunk shape of arrays aligned with this grid (one chunk per tile core)."""
        return self.tile_shape


def span(region: Sequence[slice]) -> str:
    """A region as ``[0:256, 256:512]``."""
    return "[" + ", ".join(f"{s.start}:{s.stop}" for s in region) + "]"


def _unravel(index: int, shape: Sequence[int]) -> list[int]:
    position = []
    for size in reversed(shape):
        index, rest = divmod(index, size)
        position.append(rest)
    return position[::-1]


def _ravel(position: Sequence[int], shape: Sequence[int]) -> int:
    index = 0
    for p, size in zip(position, shape):
        index = index * size + p
    return index


def validate_tile_shape(tile_shape: Sequence[int], shape: Sequence[int]) -> tuple[int, ...]:
    """Check rank and positivity; ``None`` or ``-1`` entries mean the whole axis."""
    if len(tile_shape) != len(shape):
        raise InvalidParameterError(
            f"tile_shape {tuple(tile_shape)} has {len(tile_shape)} axes but the image has "
            f"{len(shape)} spatial axes {tuple(shape)}; give one size per spatial axis "
            "(a channel axis is never tiled)."
        )
    resolved = []
    for size, full in zip(tile_shape, shape):
        if size is None or size == -1:
            size = full
        if isinstance(size, bool) or not isinstance(size, int | _np_integer()) or size <= 0:
            raise InvalidParameterError(
                f"tile_shape {tuple(tile_shape)} has the entry {size!r}; every entry must be a "
                "positive integer (or None / -1 for the whole axis)."
            )
        resolved.append(int(size))
    return tuple(resolved)


def validate_overlap(
    overlap: int | Sequence[int] | None, tile_shape: Sequence[int]
) -> tuple[int, ...]:
    """Resolve ``overlap`` to one halo per axis.

    An int applies to every axis whose tile is longer than 1 (per-slice axes get no halo); a
    sequence gives each axis its own halo. The halo must be smaller than the tile.
    """
    ndim = len(tile_shape)
    if overlap is None:
        return (0,) * ndim
    if isinstance(overlap, int | _np_integer()) and not isinstance(overlap, bool):
        if overlap < 0:
            raise InvalidParameterError(f"overlap={overlap} is negative; use 0 or more pixels.")
        halo = tuple(int(overlap) if t > 1 else 0 for t in tile_shape)
    else:
        halo = tuple(overlap)
        if len(halo) != ndim or not all(
            isinstance(o, int | _np_integer()) and not isinstance(o, bool) for o in halo
        ):
            raise InvalidParameterError(
                f"overlap {overlap!r} must be an int or {ndim} ints, one per spatial axis."
            )
        if any(o < 0 for o in halo):
            raise InvalidParameterError(f"overlap {halo} has a negative entry; use 0 or more.")
    for axis, (o, t) in enumerate(zip(halo, tile_shape)):
        if o and o >= t:
            raise InvalidParameterError(
                f"overlap {o} on axis {axis} is not smaller than the tile size {t}; "
                "use a larger tile_shape or a smaller overlap."
            )
    return tuple(int(o) for o in halo)


def auto_tile_shape(
    shape: Sequence[int],
    *,
    bytes_per_voxel: float,
    overlap: Sequence[int],
    workers: int,
    budget_bytes: int,
    chunks: Sequence[int] | None = None,
) -> tuple[int, ...]:
    """Largest near-cubic tile whose padded window fits ``budget_bytes`` across ``workers``.

    ``bytes_per_voxel`` counts everything a worker holds per padded voxel (input, the
    function's working memory, labels). Sizes are rounded down to multiples of the input
    ``chunks`` where possible so each tile reads whole chunks.
    """
    per_worker = budget_bytes / max(workers, 1)
    max_voxels = max(per_worker / bytes_per_voxel, 1.0)
    side = max_voxels ** (1 / len(shape))
    tile = [min(s, int(side)) for s in shape]
    for _ in range(64):  # grow axes that were capped by the image so the budget is used
        padded = math.prod(t + 2 * o for t, o in zip(tile, overlap))
        growable = [a for a, (t, s) in enumerate(zip(tile, shape)) if t < s]
        if not growable or padded >= max_voxels:
            break
        scale = (max_voxels / padded) ** (1 / len(growable))
        if scale < 1.01:
            break
        for a in growable:
            tile[a] = min(shape[a], int(tile[a] * scale))
    while math.prod(t + 2 * o for t, o in zip(tile, overlap)) > max_voxels and max(tile) > 1:
        a = max(range(len(tile)), key=lambda i: tile[i])
        tile[a] = max(1, tile[a] * 3 // 4)
    if chunks is not None:
        tile = [max(c, t // c * c) if t >= c else t for t, c in zip(tile, chunks)]
    return tuple(max(1, min(t, s)) for t, s in zip(tile, shape))


def _np_integer():
    import numpy as np

    return np.integer
