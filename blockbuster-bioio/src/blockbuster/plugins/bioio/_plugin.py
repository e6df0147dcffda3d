"""Entry point of the ``bioio`` reader (group ``blockbuster``).

Kept tiny on purpose: discovery must not import bioio, xarray or a format plugin. The reader
is named by a ``"module:attr"`` string the core imports only when a ``bioio`` reader is made.

Picking: this ``pick_reader`` runs after the core's ``tryfirst`` pickers (``tiff`` for
``.tif``/``.ome.tif`` paths, ``ome-zarr`` for OME-Zarr groups), which read those formats tile by
tile, and before the core's ``trylast`` one (plain zarr, arrays). It never claims a zarr path
either, nor a URL or a path that does not exist. For any other path it asks bioio's own plugin
lookup; a path no installed bioio plugin reads is claimed only when its format is one an extra
of this package would add, so that opening it says which extra to install.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from blockbuster import hookimpl


@hookimpl
def register_readers(register) -> None:
    """Register the ``bioio`` reader with the blockbuster registry."""
    register(
        "bioio",
        "blockbuster.plugins.bioio._reader:BioioReader",
        aliases=("bioimage",),
        description=(
            "any format an installed bioio plugin reads (OME-TIFF, CZI, ND2, LIF, OME-Zarr, ...); "
            "options scene=, channel=, level=, t="
        ),
    )


@hookimpl
def pick_reader(source: Any) -> str | None:
    """``"bioio"`` for a file path an installed bioio plugin reads (or a known format whose
    plugin is missing); ``None`` for anything else, zarr paths included."""
    if not isinstance(source, str | os.PathLike) or "://" in str(source):
        return None  # arrays, and URLs: local files only
    from blockbuster.builtin.arrays import is_zarr_path

    if not Path(source).exists() or is_zarr_path(source):
        return None
    from blockbuster.plugins.bioio._formats import extra_for, plugin_for

    try:
        found = plugin_for(source)
    except Exception:  # a broken bioio plugin must not stop other readers from being picked
        found = None
    return "bioio" if found is not None or extra_for(source) is not None else None
