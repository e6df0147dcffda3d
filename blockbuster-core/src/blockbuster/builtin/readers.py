"""Built-in readers: zarr paths (v2/v3 arrays and groups), zarr, numpy and dask arrays."""

from __future__ import annotations

from typing import Any

from blockbuster.hookspecs import hookimpl
from blockbuster.readers import ArrayReader, is_zarr_path, open_zarr


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
