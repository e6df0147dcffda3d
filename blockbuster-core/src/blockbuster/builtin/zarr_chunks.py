"""Chunks of a local zarr array read and written straight from and to their files.

zarr-python reads and writes each chunk through its one event loop: for a 1024² chunk,
~2-2.5 ms of Python beside the ~3 ms of decompression or compression, and every thread of a
process queues on that loop. :class:`ChunkFiles` does the same work for arrays stored as
plain bytes with at most one compressor (blosc, zstd or gzip; the arrays blockbuster writes,
and most images in zarr): it reads a chunk's file and decodes it with numcodecs, straight
into the caller's buffer where the chunk lands whole, and writes the file zarr would have
written, byte for byte. numcodecs releases the GIL while it works. Arrays it cannot handle
exactly so (remote, sharded, with filters or another codec chain, big-endian) are left to
zarr: :meth:`ChunkFiles.of` returns ``None`` for them.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np

from blockbuster.stores import write_atomically

BLOSC_SHUFFLES = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}


class ChunkFiles:
    """The chunk files of a local zarr ``array`` (see the module)."""

    def __init__(self, array: Any, folder: Path, compressor: Any | None):
        self.metadata = array.metadata
        self.shape = tuple(array.shape)
        self.chunks = tuple(array.chunks)
        self.dtype = np.dtype(array.dtype)
        self.fill_value = 0 if array.fill_value is None else array.fill_value
        self.folder = folder
        self.compressor = compressor

    @classmethod
    def of(cls, array: Any) -> ChunkFiles | None:
        """The chunk files of ``array``, or ``None`` where zarr must read and write it: not a
        zarr array in a local store, or chunks not stored as plain C-order bytes with at most one
        compressor."""
        import zarr
        from zarr.storage import LocalStore

        if (not isinstance(array, zarr.Array) or not isinstance(array.store, LocalStore)
                or array.dtype.byteorder == ">"):
            return None
        compressor = (_v3_compressor(array.metadata) if array.metadata.zarr_format == 3
                      else _v2_compressor(array.metadata))
        if compressor is False:
            return None
        return cls(array, Path(array.store.root) / array.path, compressor)

    # -- reading ----------------------------------------------------------------------------
    def read(self, selection: tuple) -> np.ndarray | None:
        """``array[selection]`` in a new array, for a selection of one slice (without a step)
        or index per axis, as numpy gives it (the indexed axes dropped); ``None`` for any
        other selection, which zarr reads."""
        region = _region_of(selection, self.shape)
        if region is None:
            return None
        out = np.empty([r.stop - r.start for r in region], self.dtype)
        self.read_into(region, out)
        return out.reshape([r.stop - r.start for r, s in zip(region, selection)
                            if isinstance(s, slice)])

    def read_into(self, region: tuple[slice, ...], out: np.ndarray) -> bool:
        """Decode ``region`` into ``out``; a chunk without a file reads as the fill value, as
        in zarr. ``False`` (nothing read) unless ``region`` is one slice per axis, without
        steps, inside the array."""
        if not self._plain(region):
            return False
        for position in self._positions(region):
            self._read_chunk(position, region, out)
        return True

    def _plain(self, region: tuple[slice, ...]) -> bool:
        return len(region) == len(self.shape) and all(
            isinstance(r, slice) and r.step in (None, 1) and r.start is not None
            and 0 <= r.start <= r.stop <= n for r, n in zip(region, self.shape))

    def _read_chunk(self, position: tuple[int, ...], region: tuple[slice, ...],
                    out: np.ndarray) -> None:
        box = self._box(position)
        inside = tuple(slice(max(b.start, r.start), min(b.stop, r.stop))
                       for b, r in zip(box, region))
        target = out[_shifted(inside, region)]
        try:
            data = (self.folder / self._key(position)).read_bytes()
        except FileNotFoundError:
            target[...] = self.fill_value
            return
        whole = inside == box and box == self._full_box(position)
        if whole and target.flags.c_contiguous:
            self._decode(data, target)  # straight into the caller's buffer
            return
        chunk = self._decode(data, np.empty(self.chunks, self.dtype))
        target[...] = chunk[_shifted(inside, self._full_box(position))]

    def _decode(self, data: bytes, out: np.ndarray) -> np.ndarray:
        if self.compressor is None:
            out[...] = np.frombuffer(data, self.dtype).reshape(out.shape)
        else:
            self.compressor.decode(data, out=out)
        return out

    # -- writing ----------------------------------------------------------------------------
    def write(self, region: tuple[slice, ...], labels: np.ndarray) -> bool:
        """Write ``labels`` at ``region``, chunk by chunk; ``False`` (nothing written) if the
        region does not start on a chunk boundary or ends inside a chunk that is not the
        array's last."""
        if not (self._plain(region) and self._aligned(region)):
            return False
        for position in self._positions(region):
            self._write_chunk(position, region, labels)
        return True

    def _aligned(self, region: tuple[slice, ...]) -> bool:
        return all(r.start % c == 0 and (r.stop % c == 0 or r.stop == n)
                   for r, c, n in zip(region, self.chunks, self.shape))

    def _write_chunk(self, position: tuple[int, ...], region: tuple[slice, ...],
                     labels: np.ndarray) -> None:
        piece = labels[_shifted(self._box(position), region)]
        if piece.shape != self.chunks:  # an edge chunk: stored whole, padded with the fill
            whole = np.full(self.chunks, self.fill_value, self.dtype)
            whole[tuple(slice(0, s) for s in piece.shape)] = piece
            piece = whole
        data = np.ascontiguousarray(piece, self.dtype)
        encoded = self.compressor.encode(data) if self.compressor is not None else data.tobytes()
        path = self.folder / self._key(position)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, encoded)

    # -- where chunks are -------------------------------------------------------------------
    def _positions(self, region: tuple[slice, ...]) -> itertools.product:
        return itertools.product(*(range(r.start // c, -(-r.stop // c))
                                   for r, c in zip(region, self.chunks)))

    def _full_box(self, position: tuple[int, ...]) -> tuple[slice, ...]:
        return tuple(slice(p * c, (p + 1) * c) for p, c in zip(position, self.chunks))

    def _box(self, position: tuple[int, ...]) -> tuple[slice, ...]:
        """The chunk's voxels inside the array."""
        return tuple(slice(b.start, min(b.stop, n))
                     for b, n in zip(self._full_box(position), self.shape))

    def _key(self, position: tuple[int, ...]) -> str:
        return self.metadata.encode_chunk_key(position)


def _region_of(selection: tuple, shape: tuple[int, ...]) -> tuple[slice, ...] | None:
    """The box ``selection`` (slices without steps, and indices) reads, or ``None``."""
    if not isinstance(selection, tuple) or len(selection) != len(shape):
        return None
    region = []
    for item, size in zip(selection, shape):
        if isinstance(item, slice) and item.step in (None, 1):
            start, stop, _ = item.indices(size)
            region.append(slice(start, max(start, stop)))
        elif (isinstance(item, int | np.integer) and not isinstance(item, bool)
              and -size <= item < size):
            region.append(slice(item % size, item % size + 1))
        else:
            return None
    return tuple(region)


def _shifted(region: tuple[slice, ...], origin: tuple[slice, ...]) -> tuple[slice, ...]:
    return tuple(slice(r.start - o.start, r.stop - o.start) for r, o in zip(region, origin))


def _v3_compressor(metadata) -> Any | None | bool:
    """The numcodecs compressor of a zarr v3 array on a regular chunk grid, stored as
    little-endian bytes and at most one blosc, zstd or gzip codec; ``False`` otherwise."""
    from zarr.codecs import BytesCodec
    from zarr.core.chunk_grids import RegularChunkGrid

    codecs = tuple(metadata.codecs)
    if (not isinstance(metadata.chunk_grid, RegularChunkGrid) or not codecs
            or not isinstance(codecs[0], BytesCodec) or len(codecs) > 2):
        return False
    if codecs[0].endian is not None and codecs[0].endian.value != "little":
        return False
    return _numcodecs_of(codecs[1]) if len(codecs) == 2 else None


def _numcodecs_of(codec) -> Any | bool:
    """The numcodecs codec that does what zarr's v3 ``codec`` does; ``False`` for others."""
    import numcodecs
    from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

    if isinstance(codec, BloscCodec):
        return numcodecs.Blosc(cname=codec.cname.value, clevel=codec.clevel,
                               shuffle=BLOSC_SHUFFLES[codec.shuffle.value],
                               blocksize=codec.blocksize)
    if isinstance(codec, ZstdCodec):
        return numcodecs.Zstd(level=codec.level, checksum=codec.checksum)
    if isinstance(codec, GzipCodec):
        return numcodecs.GZip(level=codec.level)
    return False


def _v2_compressor(metadata) -> Any | None | bool:
    """The numcodecs compressor of a zarr v2 array in C order without filters; ``False``
    otherwise."""
    if metadata.filters or metadata.order != "C":
        return False
    return metadata.compressor
