"""Built-in readers ``zarr`` and ``array``: zarr paths (v2/v3 arrays and groups), ``zarr.Array``,
numpy and dask arrays, read one region at a time and never loaded whole."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from blockbuster.errors import BlockbusterError, ImageReadError
from blockbuster.hookspecs import hookimpl
from blockbuster.readers import BaseReader
from blockbuster.stores import Location, is_url, local_if_file_url
from blockbuster.tiling import span

ZARR_MARKERS = ("zarr.json", ".zarray", ".zgroup")


@hookimpl
def register_readers(register) -> None:
    register("zarr", open_zarr, description="zarr v2/v3 array or group path")
    register("array", ArrayReader, aliases=("numpy", "dask"),
             description="in-memory or lazy array: numpy, dask, zarr.Array")


@hookimpl(trylast=True)
def pick_reader(source: Any) -> str | None:
    if is_zarr_path(source):
        return "zarr"
    if hasattr(source, "shape") and hasattr(source, "dtype") and hasattr(source, "__getitem__"):
        return "array"
    return None


class ArrayReader(BaseReader):
    """Reads regions of any array-like supporting numpy slicing (numpy, zarr, dask)."""

    def __init__(self, array: Any, *, source: str | None = None, axes: Sequence[str] | None = None,
                 physical: dict[str, Any] | None = None):
        self.array = array
        self.shape = tuple(int(s) for s in array.shape)
        self.dtype = np.dtype(array.dtype)
        self.chunks = _chunks_of(array)
        self.axes = tuple(axes) if axes is not None else None
        self.source = source
        self.physical = dict(physical or {})

    @property
    def reads_into(self) -> bool:
        """Whether :meth:`read_into` decodes straight into the caller's buffer (zarr arrays)."""
        return type(self.array).__module__.startswith("zarr") and hasattr(
            self.array, "get_basic_selection")

    def read_into(self, region: tuple[slice, ...], out: np.ndarray) -> None:
        """Decode ``region`` of a zarr array into ``out`` (a view of the caller's buffer),
        without the output array of zarr's own that :meth:`read` copies from: from the chunk
        files themselves where it can (:mod:`blockbuster.builtin.zarr_chunks`)."""
        files = self._files()
        if files is not None and files.read_into(region, out):
            return
        from zarr.core.buffer.cpu import NDBuffer

        self.array.get_basic_selection(region, out=NDBuffer.from_numpy_array(out))

    def _files(self):
        """The zarr array's :class:`~blockbuster.builtin.zarr_chunks.ChunkFiles`, ``None``
        where zarr reads it (and for other arrays)."""
        if "_chunk_files" not in self.__dict__:
            from blockbuster.builtin.zarr_chunks import ChunkFiles

            self._chunk_files = ChunkFiles.of(self.array)
        return self._chunk_files

    def metadata(self) -> dict[str, Any]:
        """The physical metadata given (``physical``): scale, units... per axis."""
        return dict(self.physical)

    def read(self, region: tuple[slice, ...]) -> np.ndarray:
        """The voxels of ``region``, never a view of the caller's numpy array: a user function
        that writes into its tile (``tile -= tile.mean()``) must not change the input."""
        files = self._files()
        block = files.read(region) if files is not None else None
        if block is not None:
            return block
        block = self.array[region]
        if hasattr(block, "compute"):
            block = block.compute()
        block = np.asarray(block)
        if isinstance(self.array, np.ndarray) and np.may_share_memory(block, self.array):
            return block.copy()
        return block

    def unreadable_chunks(self, region: tuple[slice, ...]) -> list[str]:
        """The stored zarr chunks under ``region`` that fail to read (see
        :func:`unreadable_zarr_chunks`); empty for other arrays."""
        return unreadable_zarr_chunks(self.array, region, self.source)

    def identity(self) -> str:
        """A description of the input that changes when the input does (for job fingerprints).

        Paths and zarr arrays by location, dask arrays by their (content-derived) name, numpy
        arrays by a hash of their bytes — so a crashed run never resumes on different data.
        """
        kind = type(self.array).__module__.split(".")[0]
        origin = self.source
        if origin is None and kind == "dask":
            origin = self.array.name
        elif origin is None and kind == "zarr":
            origin = str(getattr(self.array, "store_path", ""))
        elif origin is None and isinstance(self.array, np.ndarray):
            origin = "sha1:" + hashlib.sha1(np.ascontiguousarray(self.array).data).hexdigest()
        return json.dumps(
            {"kind": kind, "source": origin, "shape": self.shape, "dtype": str(self.dtype)}
        )

    def __repr__(self) -> str:
        source = self.source or type(self.array).__name__
        return f"{type(self).__name__}({source}, shape={self.shape}, dtype={self.dtype})"


def unreadable_zarr_chunks(array: Any, region: tuple, where: str | None) -> list[str]:
    """The stored chunks (shards) of the zarr ``array`` under ``region`` that fail to read on
    their own, as ``'<where>/<key>' [bounds]``; empty when ``array`` is not a zarr array.

    Called only after a read of ``region`` failed, to name the damaged chunk in the error.
    """
    grid = getattr(array, "shards", None) or getattr(array, "chunks", None)
    if not hasattr(getattr(array, "metadata", None), "encode_chunk_key") or not grid:
        return []
    where = (where or str(array.store_path)).rstrip("/")
    spans = [range(*s.indices(n)) if isinstance(s, slice) else range(s, s + 1)
             for s, n in zip(region, array.shape)]
    found = []
    for position in itertools.product(*(range(r.start // c, -(-r.stop // c))
                                        for r, c in zip(spans, grid))):
        bounds = tuple(slice(p * c, min((p + 1) * c, n))
                       for p, c, n in zip(position, grid, array.shape))
        try:
            array[bounds]
        except Exception:
            found.append(f"{where}/{array.metadata.encode_chunk_key(position)} {span(bounds)}")
    return found


def _chunks_of(array: Any) -> tuple[int, ...] | None:
    chunks = getattr(array, "chunks", None)
    if chunks is None:
        return None
    if chunks and isinstance(chunks[0], tuple):  # dask: tuple of per-axis chunk tuples
        return tuple(int(c[0]) for c in chunks)
    return tuple(int(c) for c in chunks)


def is_zarr_path(source: Any) -> bool:
    """True for a path or URL (:class:`~blockbuster.stores.Location`) of a zarr v2 or v3 array
    or group."""
    if isinstance(source, Location):
        return any(_has(source / marker) for marker in ZARR_MARKERS)
    if not isinstance(source, str | os.PathLike) or is_url(source):
        return False
    path = Path(local_if_file_url(os.fspath(source)))
    return path.is_dir() and any((path / m).exists() for m in ZARR_MARKERS)


def _has(location: Location) -> bool:
    try:
        location.read_bytes()
    except FileNotFoundError:
        return False
    return True


def open_zarr(path: str | os.PathLike, *, component: str | None = None,
              storage_options: dict | None = None) -> ArrayReader:
    """Open a zarr array, or the image array of a zarr group, read-only (a local path or a
    URL, see :mod:`blockbuster.stores`)."""
    import zarr

    location = Location(path, storage_options)
    if not location.remote and not location.exists():
        raise ImageReadError(f"{path!s} does not exist; give the path of a zarr array or group.")
    if not is_zarr_path(location):
        raise ImageReadError(
            f"{path!s} is not a zarr array or group (no zarr.json, .zarray or .zgroup "
            f"{'at that URL' if location.remote else 'inside'}); give a zarr path, a zarr.Array, "
            "a numpy array or a dask array."
        )
    try:
        node = zarr.open(store=location.zarr_store(read_only=True), mode="r")
        if component is not None:
            node = node[component]
    except BlockbusterError:
        raise
    except Exception as error:
        raise ImageReadError(
            f"{path!s} could not be opened as zarr ({type(error).__name__}: {error}); check that "
            "its metadata (zarr.json, .zarray, .zgroup) is complete and that the component exists."
        ) from error
    if isinstance(node, zarr.Group):
        node = _image_array_of_group(node, path)
    axes, physical = _recorded_source(node)
    return ArrayReader(node, source=location.key() + (f"/{component}" if component else ""),
                       axes=axes, physical=physical)


def _recorded_source(array: Any) -> tuple[list[str] | None, dict[str, Any]]:
    """The axes and physical metadata a blockbuster writer recorded with labels it wrote (its
    ``source``, see :mod:`blockbuster.builtin.zarr_writer`): labels in a plain zarr keep the
    image's scale. Each value is kept only with one entry per axis."""
    from blockbuster.builtin.zarr_writer import ATTRS_KEY
    from blockbuster.readers import PHYSICAL_KEYS

    recorded = array.attrs.get(ATTRS_KEY, {}).get("source") or {}
    per_axis = {key: list(value) for key, value in recorded.items()
                if isinstance(value, list) and len(value) == array.ndim}
    return per_axis.get("axes"), {key: per_axis[key] for key in PHYSICAL_KEYS if key in per_axis}


def _image_array_of_group(group: Any, path: Any) -> Any:
    """Level 0 of an OME-Zarr multiscale group, or the only array of a plain group."""
    multiscales = group.attrs.get("multiscales") or group.attrs.get("ome", {}).get("multiscales")
    if multiscales:
        return group[multiscales[0]["datasets"][0]["path"]]
    arrays = sorted(name for name, _ in group.arrays())
    if len(arrays) == 1:
        return group[arrays[0]]
    if not arrays:
        raise ImageReadError(f"zarr group {path!s} holds no array; give the path of an array.")
    raise ImageReadError(
        f"zarr group {path!s} holds several arrays {arrays}; give the path of one, "
        f"e.g. {str(Location(path) / arrays[0])!r}."
    )
