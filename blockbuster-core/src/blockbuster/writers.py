"""Writers: where the final labels go. The built-in writer streams them into a zarr array.

A writer is created in the parent, ``check``-ed before anything is written (so a run never
destroys data it should not), ``create``-d once the label dtype is known, and then ``write``-s
one tile core at a time from the workers (each tile is exactly one output chunk).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from blockbuster.errors import InvalidParameterError, OutputExistsError

ATTRS_KEY = "blockbuster"


def label_compressors():
    """A fast compressor for label images (long runs of equal values).

    lz4 without byte shuffling: on 1024² uint32 labels it wrote in 8.2 ms and read in 2.0 ms
    (0.25 MB) against 10.6 / 3.5 ms (0.37 MB) with shuffling.
    """
    from zarr.codecs import BloscCodec

    return (BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle"),)


def open_for_tile_writes(path: str | os.PathLike):
    """Open a label array for writers that only ever write whole, non-empty chunks.

    Writers skip all-zero tiles themselves, so zarr's own empty-chunk check (a full compare of
    every chunk against the fill value: over half the cost of writing a 1024² uint32 chunk) is
    switched off.
    """
    import zarr

    return zarr.open_array(store=str(path), mode="r+").with_config({"write_empty_chunks": True})


class ZarrWriter:
    """Writes labels to a zarr array at ``path`` (zarr v3 by default, v2 with ``zarr_format=2``)."""

    name = "zarr"

    def __init__(self, path: str | os.PathLike, *, zarr_format: int = 3, overwrite: bool = False):
        if zarr_format not in (2, 3):
            raise InvalidParameterError(f"zarr_format={zarr_format!r}; use 2 or 3.")
        self.path = Path(path)
        self.zarr_format = zarr_format
        self.overwrite = overwrite
        self._array = None

    def check(self, fingerprint: str, source: str | None = None) -> None:
        """Refuse to write over the input or over data that is not an earlier run of this job."""
        if source and Path(source.split("::")[0]).resolve() == self.path.resolve():
            raise OutputExistsError(
                f"write_to {str(self.path)!r} is the input image; blockbuster never overwrites "
                "image data. Write the labels to another path."
            )
        if not self.path.exists() or not any(self.path.iterdir()) or self.overwrite:
            return
        if self.previous_fingerprint() == fingerprint:
            return
        raise OutputExistsError(
            f"write_to {str(self.path)!r} already holds data that is not the output of this same "
            "job; choose another path, or pass overwrite=True to replace it."
        )

    def previous_fingerprint(self) -> str | None:
        import zarr

        try:
            attrs = zarr.open(store=str(self.path), mode="r").attrs.asdict()
        except Exception:
            return None
        return attrs.get(ATTRS_KEY, {}).get("fingerprint")

    def create(self, shape, chunks, dtype, fingerprint: str) -> None:
        import zarr

        if self.path.exists():
            shutil.rmtree(self.path)
        array = zarr.create_array(
            store=str(self.path),
            shape=shape,
            chunks=chunks,
            dtype=dtype,
            fill_value=0,
            zarr_format=self.zarr_format,
            compressors=label_compressors() if self.zarr_format == 3 else "auto",
        )
        array.attrs[ATTRS_KEY] = {"fingerprint": fingerprint, "complete": False}

    def write(self, region: tuple[slice, ...], labels: np.ndarray) -> None:
        if self._array is None:
            self._array = open_for_tile_writes(self.path)
        if labels.any():
            self._array[region] = labels

    def finish(self, **info: Any) -> None:
        import zarr

        array = zarr.open_array(store=str(self.path), mode="r+")
        attrs = dict(array.attrs.get(ATTRS_KEY, {}))
        attrs.update(info, complete=True)
        array.attrs[ATTRS_KEY] = json.loads(json.dumps(attrs))

    def open(self):
        """The written labels as a lazy dask array."""
        import dask.array as da
        import zarr

        return da.from_zarr(zarr.open_array(store=str(self.path), mode="r"))

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_array"] = None
        return state
