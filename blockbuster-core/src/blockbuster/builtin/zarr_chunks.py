"""Whole chunks of a local zarr array written straight to their files.

zarr-python writes each chunk through its one event loop: on a 1024² uint32 chunk of labels,
~2.5 ms of Python beside ~3.5 ms of compression, and every writer thread of a process queues
on that loop. The relabel pass writes whole chunks of an array blockbuster created itself, so
:class:`ChunkFiles` compresses each with numcodecs (which releases the GIL) and writes the
file zarr would have written, byte for byte. Arrays it cannot write exactly so (remote,
sharded, with filters or another codec chain) are left to zarr: :meth:`ChunkFiles.of` returns
``None`` for them.
"""

from __future__ import annotations

import itertools
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np

BLOSC_SHUFFLES = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}


class ChunkFiles:
    """Writes regions made of whole chunks of a local zarr ``array`` as its chunk files."""

    def __init__(self, array: Any, folder: Path, compressor: Any | None):
        self.metadata = array.metadata
        self.shape = tuple(array.shape)
        self.chunks = tuple(array.chunks)
        self.dtype = np.dtype(array.dtype)
        self.fill_value = array.fill_value
        self.folder = folder
        self.compressor = compressor

    @classmethod
    def of(cls, array: Any) -> ChunkFiles | None:
        """The chunk files of ``array``, or ``None`` where zarr must write it: not in a local
        store, or chunks not stored as plain C-order bytes with at most one compressor."""
        from zarr.storage import LocalStore

        if not isinstance(array.store, LocalStore) or array.dtype.byteorder == ">":
            return None
        compressor = (_v3_compressor(array.metadata) if array.metadata.zarr_format == 3
                      else _v2_compressor(array.metadata))
        if compressor is False:
            return None
        return cls(array, Path(array.store.root) / array.path, compressor)

    def write(self, region: tuple[slice, ...], labels: np.ndarray) -> bool:
        """Write ``labels`` at ``region``, chunk by chunk; ``False`` (nothing written) if the
        region does not start on a chunk boundary or ends inside a chunk that is not the
        array's last."""
        if not self._aligned(region):
            return False
        steps = [range(r.start // c, -(-r.stop // c)) for r, c in zip(region, self.chunks)]
        for position in itertools.product(*steps):
            self._write_chunk(position, region, labels)
        return True

    def _aligned(self, region: tuple[slice, ...]) -> bool:
        return all(r.start % c == 0 and (r.stop % c == 0 or r.stop == n)
                   for r, c, n in zip(region, self.chunks, self.shape))

    def _write_chunk(self, position: tuple[int, ...], region: tuple[slice, ...],
                     labels: np.ndarray) -> None:
        inside = tuple(slice(p * c - r.start, min((p + 1) * c, n) - r.start)
                       for p, c, r, n in zip(position, self.chunks, region, self.shape))
        piece = labels[inside]
        if piece.shape != self.chunks:  # an edge chunk: stored whole, padded with the fill
            whole = np.full(self.chunks, self.fill_value, self.dtype)
            whole[tuple(slice(0, s) for s in piece.shape)] = piece
            piece = whole
        data = np.ascontiguousarray(piece, self.dtype)
        encoded = self.compressor.encode(data) if self.compressor is not None else data.tobytes()
        _write_atomically(self.folder / self.metadata.encode_chunk_key(position), encoded)


def _v3_compressor(metadata) -> Any | None | bool:
    """The numcodecs compressor of a zarr v3 array stored as little-endian bytes and at most
    one blosc codec; ``False`` for any other codec chain."""
    from numcodecs import Blosc
    from zarr.codecs import BloscCodec, BytesCodec

    codecs = tuple(metadata.codecs)
    if not codecs or not isinstance(codecs[0], BytesCodec) or len(codecs) > 2:
        return False
    if codecs[0].endian is not None and codecs[0].endian.value != "little":
        return False
    if len(codecs) == 1:
        return None
    blosc = codecs[1]
    if not isinstance(blosc, BloscCodec):
        return False
    return Blosc(cname=blosc.cname.value, clevel=blosc.clevel,
                 shuffle=BLOSC_SHUFFLES[blosc.shuffle.value], blocksize=blosc.blocksize)


def _v2_compressor(metadata) -> Any | None | bool:
    """The numcodecs compressor of a zarr v2 array in C order without filters; ``False``
    otherwise."""
    if metadata.filters or metadata.order != "C":
        return False
    return metadata.compressor


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` whole or not at all, as zarr's local store does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
    try:
        with open(partial, "wb") as file:
            file.write(data)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
