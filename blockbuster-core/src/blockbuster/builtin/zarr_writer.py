"""Built-in writer ``zarr`` and the base both zarr label writers share.

:class:`ZarrLabelsWriter` holds what writing labels into zarr needs whatever the layout: the
``blockbuster`` attributes (job fingerprint, ``complete``), fast tile writes, the lazy
``open()``. :class:`ZarrWriter` writes one plain array; the OME-Zarr writer
(:mod:`blockbuster.builtin.ome_zarr`) writes ``labels/<name>`` of an image with a pyramid.
"""

from __future__ import annotations

import json
import os
from abc import abstractmethod
from typing import Any

import numpy as np

from blockbuster.builtin.zarr_chunks import ChunkFiles
from blockbuster.errors import InvalidParameterError, OutputExistsError
from blockbuster.hookspecs import hookimpl
from blockbuster.stores import Location
from blockbuster.writers import Writer

ATTRS_KEY = "blockbuster"


@hookimpl
def register_writers(register) -> None:
    register("zarr", ZarrWriter, description="zarr v3 (or v2) array, one chunk per tile")


def label_compressors():
    """A fast compressor for label images (long runs of equal values).

    lz4 without byte shuffling: on 1024² uint32 labels it wrote in 8.2 ms and read in 2.0 ms
    (0.25 MB) against 10.6 / 3.5 ms (0.37 MB) with shuffling.
    """
    from zarr.codecs import BloscCodec

    return (BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle"),)


def open_for_tile_writes(location: Location):
    """Open a label array for writers that only ever write whole, non-empty chunks.

    Writers skip all-zero tiles themselves, so zarr's own empty-chunk check (a full compare of
    every chunk against the fill value: over half the cost of writing a 1024² uint32 chunk) is
    switched off.
    """
    import zarr

    return zarr.open_array(store=location.zarr_store(), mode="r+").with_config(
        {"write_empty_chunks": True})


class ZarrLabelsWriter(Writer):
    """Labels in a zarr node: ``labels_node`` holds the ``blockbuster`` attributes, ``array_path``
    the full-resolution array the tiles are written to."""

    overwrite: bool = False
    _array: Any = None
    _chunk_files: ChunkFiles | None = None
    source: dict[str, Any] | None = None  # the run's axes and physical metadata (set_source)

    @property
    @abstractmethod
    def labels_node(self) -> Location:
        """The zarr array or group whose attributes hold the job fingerprint."""

    @property
    @abstractmethod
    def array_path(self) -> Location:
        """The full-resolution label array."""

    def previous_fingerprint(self) -> str | None:
        """The fingerprint of the job that wrote the labels there, if any."""
        import zarr

        try:
            store = self.labels_node.zarr_store(read_only=True)
            attrs = zarr.open(store=store, mode="r").attrs.asdict()
        except Exception:
            return None
        return attrs.get(ATTRS_KEY, {}).get("fingerprint")

    def refuse_unless_same_job(self, fingerprint: str, message: str) -> None:
        """Raise ``OutputExistsError(message)`` when labels of another job are there."""
        if self.overwrite or self.previous_fingerprint() == fingerprint:
            return
        raise OutputExistsError(message)

    def set_source(self, image: Any) -> None:
        """Keep the run's spatial axis names and physical metadata (scale, units...), recorded
        as ``source`` in the ``blockbuster`` attributes: whoever opens the labels alone (a
        viewer) places them at the image's scale."""
        found = {"axes": image.axes, **image.metadata}
        self.source = {key: list(value) for key, value in found.items() if value is not None}

    def start_attrs(self, node, fingerprint: str) -> None:
        attrs = {"fingerprint": fingerprint, "complete": False}
        if self.source:
            attrs["source"] = self.source
        node.attrs[ATTRS_KEY] = json.loads(json.dumps(attrs))

    def mark_complete(self, node, info: dict[str, Any]) -> None:
        attrs = dict(node.attrs.get(ATTRS_KEY, {}))
        attrs.update(info, complete=True)
        node.attrs[ATTRS_KEY] = json.loads(json.dumps(attrs))

    def write(self, region: tuple[slice, ...], labels: np.ndarray) -> None:
        """Write a tile's labels (none if all zero); whole chunks of a local array straight
        to their files (:mod:`blockbuster.builtin.zarr_chunks`), anything else through zarr."""
        if self._array is None:
            array = open_for_tile_writes(self.array_path)
            self._chunk_files, self._array = ChunkFiles.of(array), array
        if not labels.any():
            return
        if self._chunk_files is None or not self._chunk_files.write(region, labels):
            self._array[region] = labels

    def open(self):
        """The written labels as a lazy dask array."""
        import dask.array as da

        return da.from_zarr(self._written())

    def read_all(self) -> np.ndarray:
        """The written labels in memory, read with zarr alone (no dask import)."""
        return self._written()[...]

    def _written(self):
        import zarr

        return zarr.open_array(store=self.array_path.zarr_store(read_only=True), mode="r")

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_array"] = state["_chunk_files"] = None
        return state


class ZarrWriter(ZarrLabelsWriter):
    """Writes labels to a zarr array at ``path`` (zarr v3 by default, v2 with ``zarr_format=2``):
    a local path or a URL with its ``storage_options`` (see :mod:`blockbuster.stores`)."""

    name = "zarr"

    def __init__(self, path: str | os.PathLike, *, zarr_format: int = 3, overwrite: bool = False,
                 storage_options: dict | None = None):
        if zarr_format not in (2, 3):
            raise InvalidParameterError(f"zarr_format={zarr_format!r}; use 2 or 3.")
        self.path = Location(path, storage_options)
        self.path.require_writable("write_to")
        self.zarr_format = zarr_format
        self.overwrite = overwrite
        self._array = None

    @property
    def labels_node(self) -> Location:
        return self.path

    @property
    def array_path(self) -> Location:
        return self.path

    def check(self, fingerprint: str, source: str | None = None) -> None:
        """Refuse to write over the input or over data that is not an earlier run of this job."""
        if source and Location(source.split("::")[0]) == self.path:
            raise OutputExistsError(
                f"write_to {str(self.path)!r} is the input image; blockbuster never overwrites "
                "image data. Write the labels to another path."
            )
        if self.path.is_empty():
            return
        self.refuse_unless_same_job(
            fingerprint,
            f"write_to {str(self.path)!r} already holds data that is not the output of this same "
            "job; choose another path, or pass overwrite=True to replace it.",
        )

    def create(self, shape, chunks, dtype, fingerprint: str) -> None:
        import zarr

        self.path.remove()
        array = zarr.create_array(
            store=self.path.zarr_store(),
            shape=shape,
            chunks=chunks,
            dtype=dtype,
            fill_value=0,
            zarr_format=self.zarr_format,
            compressors=label_compressors() if self.zarr_format == 3 else "auto",
        )
        self.start_attrs(array, fingerprint)

    def finish(self, **info: Any) -> None:
        import zarr

        self.mark_complete(zarr.open_array(store=self.path.zarr_store(), mode="r+"), info)
