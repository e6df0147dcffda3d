"""Built-in writer: a zarr array (v3 by default)."""

from blockbuster.hookspecs import hookimpl
from blockbuster.writers import ZarrWriter


@hookimpl
def register_writers(register) -> None:
    register("zarr", ZarrWriter, description="zarr v3 (or v2) array, one chunk per tile")
