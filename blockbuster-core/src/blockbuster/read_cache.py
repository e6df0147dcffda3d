"""Reading each input chunk once, although tiles overlap.

A tile's halo reaches into the chunks of its neighbours, which the neighbouring tiles read
again. Two caches keep that from costing a read each time:

- :class:`BlockCache` keeps *decoded* blocks of whole chunks for the run, and
  :func:`plan_block_reads` walks the tiles in bands so the blocks a tile shares with its
  neighbours are still there when they are read: each chunk is decoded about once, on any
  reader with chunks (zarr local or remote, TIFF tiles, dask);
- :class:`ReadCache` keeps the *encoded* objects a remote zarr store returned (see
  :mod:`blockbuster.stores`), for the reads the block cache does not cover (worker processes
  each have their own block cache).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import threading
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from zarr.storage import WrapperStore

if TYPE_CHECKING:
    from blockbuster.image import ImageView
    from blockbuster.tiling import TileGrid


def read_cache_bytes() -> int:
    """Bytes of whole objects each remote reader keeps (``$BLOCKBUSTER_READ_CACHE_MB``, default
    128; 0 switches the cache off)."""
    return int(float(os.environ.get("BLOCKBUSTER_READ_CACHE_MB", "128")) * 2**20)


class ReadCache(WrapperStore):
    """A read-only zarr store that keeps the last objects it fetched (least recently used out
    first, up to :func:`read_cache_bytes`), still compressed.

    A tile's halo reads the edge chunks of its neighbours, which the neighbouring tiles read
    again: on a remote store each is a GET (with an 8-pixel halo on 32² chunks, 5.4 GETs per
    chunk without this cache). Entries are whole objects, so a cached chunk is the bytes
    the store would return; the cache lives per process and is not pickled.
    """

    def __init__(self, store, *, max_bytes: int | None = None):
        super().__init__(store)
        self.max_bytes = read_cache_bytes() if max_bytes is None else max_bytes
        self._cached: OrderedDict[str, Any] = OrderedDict()
        self._fetching: dict[str, asyncio.Future] = {}
        self._size = 0

    def _with_store(self, store):
        return type(self)(store, max_bytes=self.max_bytes)

    async def get(self, key, prototype, byte_range=None):
        if byte_range is not None or not self.max_bytes:
            return await self._store.get(key, prototype, byte_range)
        if key in self._cached:  # zarr's one event loop runs these: no lock needed
            self._cached.move_to_end(key)
            return self._cached[key]
        if key in self._fetching:  # another tile asked first: share its GET
            return await asyncio.shield(self._fetching[key])
        fetch = asyncio.ensure_future(self._store.get(key, prototype))
        self._fetching[key] = fetch
        try:
            value = await fetch
        finally:
            del self._fetching[key]
        if value is not None and len(value) <= self.max_bytes:
            self._cached[key] = value
            self._size += len(value)
            while self._size > self.max_bytes:
                self._size -= len(self._cached.popitem(last=False)[1])
        return value

    def __getstate__(self):
        return {"_store": self._store, "max_bytes": self.max_bytes}

    def __setstate__(self, state):
        self.__init__(state["_store"], max_bytes=state["max_bytes"])


# -- decoded blocks -----------------------------------------------------------------------------
DEFAULT_BLOCK_CACHE_MB = 256


def block_cache_bytes(memory_budget: int | None = None) -> int:
    """Bytes of decoded input one run may keep for reuse (``$BLOCKBUSTER_BLOCK_CACHE_MB``, else
    256 MiB, at most a quarter of ``memory_budget``; 0 switches the cache off)."""
    mb = os.environ.get("BLOCKBUSTER_BLOCK_CACHE_MB")
    if mb is not None:
        return int(float(mb) * 2**20)
    limit = DEFAULT_BLOCK_CACHE_MB * 2**20
    return min(limit, memory_budget // 4) if memory_budget else limit


class BlockCache:
    """Decoded blocks of the input, kept so that each stored chunk is decoded about once.

    A block is a box of whole stored chunks (:func:`block_shape`): a tile's padded window is
    assembled from the blocks it touches, each read from the reader once and then served from
    memory to the neighbouring tiles whose halos reach into it. Least recently used blocks go
    first beyond ``max_bytes``; threads share one cache (a block two threads want at once is
    read once), and each worker process has its own, as the blocks are not pickled.

    Told which regions will be read (:meth:`expect`), the cache keeps of each block only the
    part those still to come will read: a block whose own tile has been read shrinks to the
    halo strips its later neighbours want, and goes when the last of them has read it. A
    reader that decodes into a caller's buffer (zarr) decodes a block that a region to come
    reads whole straight into that region's padded buffer, so reading the region copies only
    its halo into it; the strips its neighbours still want are copied out when it is read,
    as the caller may change it.
    """

    def __init__(self, block_shape: tuple[int, ...], max_bytes: int):
        self.block_shape = tuple(block_shape)
        self.max_bytes = int(max_bytes)
        self._blocks: OrderedDict[tuple[int, ...], _Part] = OrderedDict()
        self._loading: dict[tuple[int, ...], Future] = {}
        self._wanted: dict[tuple[int, ...], list[tuple[slice, ...]]] = {}
        self._buffers: dict[tuple, np.ndarray | None] = {}  # by _key(region); None: being read
        self._size = 0
        self._lock = threading.Lock()

    def expect(self, regions) -> None:
        """Note the spatial ``regions`` about to be read, to keep only what they read."""
        with self._lock:
            for region in regions:
                for position in self._positions(region):
                    self._wanted.setdefault(position, []).append(tuple(region))

    def forget(self, regions) -> None:
        """Take back ``regions`` told to :meth:`expect` that will not be read here after all:
        drop their buffers and the parts of blocks kept only for them or decoded into them
        (never handed to a caller, so nothing else reads them)."""
        with self._lock:
            for region in map(tuple, regions):
                self._buffers.pop(_key(region), None)
                for position in self._positions(region):
                    wanted = self._wanted.get(position, [])
                    if region in wanted:
                        wanted.remove(region)
                    if not wanted:
                        self._wanted.pop(position, None)
                    part = self._blocks.get(position)
                    if part is not None and (not wanted
                                             or getattr(part, "buffer", None) == region):
                        del self._blocks[position]
                        self._size -= part.nbytes

    def read(self, image: ImageView, region: tuple[slice, ...],
             tile: int | None = None) -> np.ndarray:
        """The tile at the spatial ``region``, as ``image.read(region)`` returns it (``tile``:
        the index of the tile read, for caches shared between tasks)."""
        region = tuple(region)
        with self._lock:  # blocks decoded into its buffer already; none from now on
            out = self._buffers.get(_key(region))
            self._buffers[_key(region)] = None
        prebuilt = out is not None
        positions = self._positions(region)
        for position in positions:
            inside = _intersection(region, self._bounds(position, image.shape))
            part = self._part(image, position, inside)
            if prebuilt and part.buffer == region:
                continue  # decoded in place
            if out is None:
                shape = [s.stop - s.start for s in region]
                if image.channel_axis is not None:
                    shape.insert(image.channel_axis, part.data.shape[image.channel_axis])
                out = np.empty(shape, part.data.dtype)
            self._copy(out, region, part, position, inside, image)
        self._served(positions, region, image)
        return out

    def _copy(self, out: np.ndarray, region: tuple[slice, ...], part: _Part,
              position: tuple[int, ...], inside: tuple[slice, ...], image: ImageView) -> None:
        """``inside`` of ``part`` into ``out`` (holding ``region``). A part in the buffer of
        another region is copied before that region is handed to its caller, who may change
        it; if it has been meanwhile, the strips kept in its place are copied instead."""
        target = out[image._with_channels(_shifted(inside, region))]
        while part.buffer is not None:
            with self._lock:
                if _key(part.buffer) in self._buffers:  # not handed over yet
                    target[...] = part.data[image._with_channels(_shifted(inside, part.box))]
                    return
            part = self._part(image, position, inside)
        target[...] = part.data[image._with_channels(_shifted(inside, part.box))]

    def clear(self) -> None:
        with self._lock:
            self._blocks.clear()
            self._wanted.clear()
            self._buffers.clear()
            self._size = 0

    @property
    def size(self) -> int:
        """Bytes held now."""
        return self._size

    def _positions(self, region: tuple[slice, ...]) -> list[tuple[int, ...]]:
        return list(itertools.product(*(range(s.start // b, -(-s.stop // b))
                                        for s, b in zip(region, self.block_shape))))

    def _bounds(self, position: tuple[int, ...], shape: tuple[int, ...]) -> tuple[slice, ...]:
        return tuple(slice(p * b, min((p + 1) * b, n))
                     for p, b, n in zip(position, self.block_shape, shape))

    def _part(self, image: ImageView, position: tuple[int, ...],
              inside: tuple[slice, ...]) -> _Part:
        """The cached part of the block at ``position`` holding ``inside``, read if need be."""
        with self._lock:
            found = self._blocks.get(position)
            held = found.holding(inside) if found is not None else None
            if held is not None:
                self._blocks.move_to_end(position)
                return held
            pending = self._loading.get(position)
            mine = pending is None
            if mine:
                pending = self._loading[position] = Future()
        if not mine:  # another thread is reading it: share its read (if it holds this one)
            part = pending.result()
            return part if part.holds(inside) else self._part(image, position, inside)
        try:
            part = self._load(image, position, inside)
        except BaseException as error:
            with self._lock:
                del self._loading[position]
            pending.set_exception(error)
            raise
        with self._lock:
            del self._loading[position]
            self._keep(position, part)
        pending.set_result(part)
        return part

    def _load(self, image: ImageView, position: tuple[int, ...],
              inside: tuple[slice, ...]) -> _Part:
        """The block at ``position`` read from the image (a decode), holding ``inside``:
        into the buffer of a region to come that reads it whole, where the reader can."""
        box = self._bounds(position, image.shape)
        into = self._buffer_for(image, position, box) if image.reads_into else None
        if into is None:
            return _Part(box, image.read(box))
        region, buffer = into
        view = buffer[image._with_channels(_shifted(box, region))]
        image.read_into(box, view)
        return _Part(box, view, region)

    def _buffer_for(self, image: ImageView, position: tuple[int, ...],
                    box: tuple[slice, ...]) -> tuple[tuple[slice, ...], np.ndarray] | None:
        """The first region told (and not being read yet) that reads all of ``box``, and its
        padded buffer, made here for its first block; ``None`` if there is none."""
        with self._lock:
            for region in self._wanted.get(position, ()):
                if not _Part(region, None).holds(box):
                    continue
                if _key(region) not in self._buffers:
                    shape = [s.stop - s.start for s in region]
                    if image.channel_axis is not None:
                        shape.insert(image.channel_axis, image.channels)
                    self._buffers[_key(region)] = np.empty(shape, image.dtype)
                buffer = self._buffers[_key(region)]
                if buffer is not None:
                    return region, buffer
        return None

    def _keep(self, position: tuple[int, ...], part: _Part) -> None:
        old = self._blocks.pop(position, None)
        if old is not None:
            self._size -= old.nbytes
        if part.nbytes > self.max_bytes:
            return
        self._blocks[position] = part
        self._size += part.nbytes
        while self._size > self.max_bytes:
            self._size -= self._blocks.popitem(last=False)[1].nbytes

    def _served(self, positions: list[tuple[int, ...]], region: tuple[slice, ...],
                image: ImageView) -> None:
        """``region`` is read: keep of each of its blocks only what later reads want."""
        with self._lock:
            self._buffers.pop(_key(region), None)  # no block to come is decoded for it any more
            for position in positions:
                wanted = self._wanted.get(position)
                if not wanted or region not in wanted:
                    continue
                wanted.remove(region)
                part = self._blocks.get(position)
                if not wanted:
                    del self._wanted[position]
                    if part is not None:
                        del self._blocks[position]
                        self._size -= part.nbytes
                elif part is not None:
                    smaller = part.kept_for(wanted, self._bounds(position, image.shape), region,
                                            image)
                    self._size += smaller.nbytes - part.nbytes
                    self._blocks[position] = smaller

    def __getstate__(self):
        return {"block_shape": self.block_shape, "max_bytes": self.max_bytes}

    def __setstate__(self, state):
        self.__init__(state["block_shape"], state["max_bytes"])

    def __repr__(self) -> str:
        return f"BlockCache(block_shape={self.block_shape}, max_bytes={self.max_bytes})"


@dataclass(frozen=True)
class _Part:
    """A cached box of one block: its spatial ``box`` and the decoded ``data`` there (a view
    of the padded buffer of the region ``buffer`` when it was decoded into one)."""

    box: tuple[slice, ...]
    data: np.ndarray
    buffer: tuple[slice, ...] | None = None

    @property
    def nbytes(self) -> int:
        return self.data.nbytes

    def holds(self, inside: tuple[slice, ...]) -> bool:
        return all(b.start <= i.start and i.stop <= b.stop for b, i in zip(self.box, inside))

    def holding(self, inside: tuple[slice, ...]) -> _Part | None:
        return self if self.holds(inside) else None

    def kept_for(self, wanted: list[tuple[slice, ...]], bounds: tuple[slice, ...],
                 read: tuple[slice, ...], image: ImageView) -> _Part | _Strips:
        """What to keep of this part of the block within ``bounds`` once the region ``read``
        has been read, for the regions still ``wanted``: the box holding them all; copies of
        each one's strip if this part lives in ``read``'s buffer (handed to the caller)."""
        if self.buffer != read:  # a part published for one task may hold less than wanted
            return self.cropped(_intersection(_hull(wanted, bounds), self.box), image)
        boxes = []
        for box in (_intersection(w, bounds) for w in wanted):
            if box not in boxes:
                boxes.append(box)
        boxes = [b for b in boxes if not any(o != b and _Part(o, None).holds(b) for o in boxes)]
        return _Strips(tuple(_Part(b, self.data[image._with_channels(_shifted(b, self.box))]
                                   .copy()) for b in boxes))

    def cropped(self, box: tuple[slice, ...], image: ImageView) -> _Part:
        """This part cut down to ``box`` (a copy, so the rest is freed); itself if no smaller."""
        if box == self.box:
            return self
        return _Part(box, self.data[image._with_channels(_shifted(box, self.box))].copy())


@dataclass(frozen=True)
class _Strips:
    """Separate parts of one block: the strips later regions read of a block whose own
    region has been read from its buffer."""

    parts: tuple[_Part, ...]

    @property
    def nbytes(self) -> int:
        return sum(part.nbytes for part in self.parts)

    def holding(self, inside: tuple[slice, ...]) -> _Part | None:
        return next((part for part in self.parts if part.holds(inside)), None)

    def kept_for(self, wanted: list[tuple[slice, ...]], bounds: tuple[slice, ...],
                 read: tuple[slice, ...], image: ImageView) -> _Strips:
        """The strips some region still ``wanted`` reads."""
        boxes = [_intersection(w, bounds) for w in wanted]
        return _Strips(tuple(p for p in self.parts if any(p.holds(b) for b in boxes)))


def _key(region: tuple[slice, ...]) -> tuple[tuple[int, int], ...]:
    """``region`` as a dict key (slices are not hashable before Python 3.12)."""
    return tuple((s.start, s.stop) for s in region)


def _intersection(a: tuple[slice, ...], b: tuple[slice, ...]) -> tuple[slice, ...]:
    return tuple(slice(max(x.start, y.start), min(x.stop, y.stop)) for x, y in zip(a, b))


def _shifted(box: tuple[slice, ...], origin: tuple[slice, ...]) -> tuple[slice, ...]:
    """``box`` relative to the start of ``origin``."""
    return tuple(slice(s.start - o.start, s.stop - o.start) for s, o in zip(box, origin))


def _hull(regions: list[tuple[slice, ...]], bounds: tuple[slice, ...]) -> tuple[slice, ...]:
    """The smallest box holding each of ``regions`` within ``bounds``."""
    inside = [_intersection(r, bounds) for r in regions]
    return tuple(slice(min(s.start for s in axis), max(s.stop for s in axis))
                 for axis in zip(*inside))


@dataclass(frozen=True)
class BlockReads:
    """How a run reads its input: the :class:`BlockCache` (or ``None``: tiles are read
    straight from the reader) and the order in which to segment the tiles."""

    cache: BlockCache | None
    order: list[int]
    band: int  # tiles per band along the last axis


def plan_block_reads(image: ImageView, grid: TileGrid, *, max_bytes: int, shared: bool,
                     tiles_in_flight: int = 0) -> BlockReads:
    """The block cache of a run and the walk over its tiles that lets the cache work.

    Tiles are walked in bands of ``band`` tiles along the last axis, row by row within a band,
    so the blocks a tile shares with its neighbours are still cached when those neighbours
    are read. A ``shared`` cache (threads) is told every read of the run and holds only the
    *frontier*: the blocks decoded for a halo whose own tile comes later, about one row of
    blocks across the band (plus ``tiles_in_flight``), and halo strips. A cache of its own per
    worker process is told only the reads of its task and the next
    (:class:`~blockbuster.shared_blocks.SharedBlockCache`), is not told the tasks other
    processes run, keeps blocks least recently used out, and needs about three rows. The band
    is the widest whose blocks fit in ``max_bytes``; each band edge is decoded twice. No cache
    when no block would be read twice (no halo, tiles made of whole blocks), when the input
    has no chunks, or when ``max_bytes`` is 0.
    """
    row_major = list(range(len(grid)))
    blocks = block_shape(image.chunks, grid.tile_shape)
    if blocks is None or not max_bytes or not reuses_blocks(grid, blocks):
        return BlockReads(None, row_major, grid.grid_shape[-1])
    block_bytes = math.prod(blocks) * image.dtype.itemsize * image.channels
    if block_bytes * 4 > max_bytes:  # not even a few blocks: the cache could not help
        return BlockReads(None, row_major, grid.grid_shape[-1])

    def need(band: int) -> int:
        if shared:  # the frontier, twice over for the strips and the tiles in flight
            return 2 * (frontier(grid, blocks, band) + tiles_in_flight) * block_bytes
        return working_set(grid, blocks, band, tiles_in_flight) * block_bytes

    band = grid.grid_shape[-1]
    while band > 1 and need(band) > max_bytes:
        band -= 1
    slow, _ = _slowest_reusing(grid, blocks, band)
    order = sorted(row_major, key=lambda i: _band_key(grid.position(i), band, slow))
    keep = max_bytes if shared else min(need(band), max_bytes)
    return BlockReads(BlockCache(blocks, keep), order, band)


def block_shape(chunks: tuple[int, ...] | None, tiles: tuple[int, ...]) -> tuple[int, ...] | None:
    """The cache's block on each axis: the largest whole number of chunks within a tile, or
    one chunk where a tile is smaller; ``None`` without chunks."""
    if chunks is None or len(chunks) != len(tiles) or not all(chunks):
        return None
    return tuple(c if t <= c else t // c * c for c, t in zip(chunks, tiles))


def reuses_blocks(grid: TileGrid, blocks: tuple[int, ...]) -> bool:
    """Whether some block is read by more than one tile (a halo, or tiles not made of whole
    blocks) on an axis with more than one tile."""
    return any(g > 1 and (o > 0 or t % b)
               for g, o, t, b in zip(grid.grid_shape, grid.overlap, grid.tile_shape, blocks))


def working_set(grid: TileGrid, blocks: tuple[int, ...], band: int, tiles_in_flight: int) -> int:
    """Blocks a least-recently-used cache must hold for a walk in bands of ``band`` tiles to
    read each block about once: the rows of blocks a padded tile spans (plus those the tiles
    in flight span) on the slowest axis that reuses blocks, across everything faster."""
    slow, across = _slowest_reusing(grid, blocks, band)
    tiles_per_row = (math.prod(grid.grid_shape[slow + 1:-1]) * min(band, grid.grid_shape[-1])
                     if slow < grid.ndim - 1 else 1)
    return _spanned(grid, blocks, slow, 1 + -(-tiles_in_flight // tiles_per_row)) * across


def frontier(grid: TileGrid, blocks: tuple[int, ...], band: int) -> int:
    """Blocks decoded ahead of their own tile by a walk in bands of ``band`` tiles: those a
    padded tile reaches on the slowest axis that reuses blocks, across everything faster."""
    slow, across = _slowest_reusing(grid, blocks, band)
    return (_spanned(grid, blocks, slow, 1) - -(-grid.tile_shape[slow] // blocks[slow])) * across \
        + _spanned(grid, blocks, slow, 1)


def _slowest_reusing(grid: TileGrid, blocks: tuple[int, ...], band: int) -> tuple[int, int]:
    """The slowest axis on which tiles share blocks, and the blocks across the band faster."""
    slow = next(k for k, (g, o, t, b) in enumerate(
        zip(grid.grid_shape, grid.overlap, grid.tile_shape, blocks)) if g > 1 and (o > 0 or t % b))
    across = math.prod(_spanned(grid, blocks, k, band) if k == grid.ndim - 1
                       else -(-grid.shape[k] // blocks[k]) for k in range(slow + 1, grid.ndim))
    return slow, across


def _spanned(grid: TileGrid, blocks: tuple[int, ...], axis: int, tiles: int) -> int:
    """Blocks that ``tiles`` consecutive padded tiles span on ``axis`` (at most all of them)."""
    length = tiles * grid.tile_shape[axis] + 2 * grid.overlap[axis]
    return min(-(-grid.shape[axis] // blocks[axis]), -(-length // blocks[axis]) + 1)


def _band_key(position: tuple[int, ...], band: int, slow: int) -> tuple:
    """Where a tile comes in the walk: by the axes whose tiles share no block (planes of a
    stack segmented slice by slice, say), then by band, then row by row within the band."""
    return (*position[:slow], position[-1] // band, *position[slow:])
