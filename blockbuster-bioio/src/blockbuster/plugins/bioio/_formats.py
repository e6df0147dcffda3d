"""Which bioio plugin reads a path (bioio's own lookup), and which extra adds a missing one.

Claiming a path is always bioio's decision (:func:`plugin_for`: ``BioImage.determine_plugin``,
which probes the installed plugins in bioio's order). :data:`EXTRAS` is used only when no
installed plugin reads a path: it names the extra of this package whose plugin would, so the
error says what to install.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Extra:
    """An extra of ``blockbuster-bioio``: the bioio plugin it installs and what that reads."""

    name: str
    distribution: str
    suffixes: tuple[str, ...]
    format: str

    @property
    def installed(self) -> bool:
        try:
            version(self.distribution)
        except PackageNotFoundError:
            return False
        return True

    @property
    def pip(self) -> str:
        return f'pip install "blockbuster-bioio[{self.name}]"'


EXTRAS = (
    Extra("ome-tiff", "bioio-ome-tiff", (".ome.tif", ".ome.tiff", ".tif", ".tiff"), "OME-TIFF"),
    Extra("ome-zarr", "bioio-ome-zarr", (".zarr",), "OME-Zarr"),
    Extra("czi", "bioio-czi", (".czi",), "Zeiss CZI"),
    Extra("nd2", "bioio-nd2", (".nd2",), "Nikon ND2"),
    Extra("lif", "bioio-lif", (".lif",), "Leica LIF"),
)


def extra_for(path: str | os.PathLike) -> Extra | None:
    """The extra whose (not installed) plugin reads ``path``'s format, or ``None``."""
    name = Path(path).name.lower()
    for extra in EXTRAS:
        if name.endswith(extra.suffixes) and not extra.installed:
            return extra
    return None


def plugin_for(path: str | os.PathLike) -> Any | None:
    """bioio's plugin entry for ``path`` (``None`` when no installed plugin reads it)."""
    from bioio_base.exceptions import UnsupportedFileFormatError

    from bioio import BioImage

    try:
        return BioImage.determine_plugin(str(path), use_plugin_cache=True)
    except (UnsupportedFileFormatError, FileNotFoundError):
        return None


def installed_plugins() -> list[str]:
    """Distribution names of the installed bioio reader plugins."""
    from importlib.metadata import entry_points

    return sorted({ep.dist.name if ep.dist else ep.name
                   for ep in entry_points(group="bioio.readers")})
