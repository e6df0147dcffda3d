"""TIFF, OME-TIFF and BigTIFF through tifffile's zarr store: tiles straight from the file.

The reader opens the file with :class:`tifffile.TiffFile` and wraps a series level as a zarr
array (``series.aszarr(level=...)``), so each ``read(region)`` decodes only the TIFF tiles or
strips the region touches. The whole image is never loaded. Axes come from tifffile's series
axes (``TZCYX``...; RGB samples ``S`` become the ``c`` axis); the physical pixel size comes from
OME-XML (``PhysicalSizeX/Y/Z``), else from ImageJ metadata and the resolution tags.
"""

from __future__ import annotations

import json
import os
import threading
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np

from blockbuster.builtin.channels import ChannelSelectingReader, channel_index
from blockbuster.errors import BackendNotInstalledError, ImageReadError, InvalidParameterError
from blockbuster.hookspecs import hookimpl
from blockbuster.readers import OpensPerProcess
from blockbuster.stores import Location

TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf2", ".tf8", ".ome.tif", ".ome.tiff", ".ome.btf")
UNIT_NAMES = {"µm": "micrometer", "um": "micrometer", "\\u00B5m": "micrometer",
              "micron": "micrometer", "nm": "nanometer", "mm": "millimeter", "cm": "centimeter",
              "m": "meter", "s": "second", "ms": "millisecond", "pixel": None, "": None}


@hookimpl
def register_readers(register) -> None:
    register("tiff", TiffReader, aliases=("tif", "ome-tiff", "ome-tif", "bigtiff"),
             description="TIFF / OME-TIFF / BigTIFF file (.tif, .tiff, .ome.tif, .btf), read "
                         "tile by tile; options series=, level=, channel=")


@hookimpl(tryfirst=True)
def pick_reader(source: Any) -> str | None:
    return "tiff" if is_tiff_path(source) else None


def is_tiff_path(source: Any) -> bool:
    """True for a path or URL whose name ends like a TIFF file (.tif, .tiff, .ome.tif, .btf...)."""
    if isinstance(source, Location):
        return source.name.lower().endswith(TIFF_SUFFIXES)
    if not isinstance(source, str | os.PathLike):
        return False
    name = Path(source).name.lower()
    return name.endswith(TIFF_SUFFIXES)


def _axis_names(tiff_axes: str) -> tuple[str, ...]:
    letters = tiff_axes.upper()
    names = []
    for letter in letters:
        name = letter.lower()
        if letter == "S" and "C" not in letters:
            name = "c"
        names.append(name)
    return tuple(names)


class TiffReader(OpensPerProcess, ChannelSelectingReader):
    """Reads regions of a TIFF / OME-TIFF / BigTIFF series without loading the file.

    Parameters
    ----------
    path
        The TIFF file: a local path or a URL (``s3://``, ``https://``...), whose TIFF tiles are
        then fetched with ranged reads.
    series
        Series (image) in the file (default 0).
    level
        Pyramid level of the series (default 0, full resolution).
    channel
        Keep only this channel: index on the ``c`` axis or its OME channel name; the ``c``
        axis is then dropped.
    storage_options
        Options of the remote store of a URL (see :mod:`blockbuster.stores`).

    Attributes: ``shape``, ``dtype``, ``chunks`` (TIFF tile or strip shape), ``axes``,
    ``scale``, ``units``, ``translation``, ``channel_labels``, ``source``.
    """

    per_process = ("_tif", "_zarr")

    def __init__(self, path: str | os.PathLike, *, series: int = 0, level: int = 0,
                 channel: int | str | None = None, storage_options: dict | None = None):
        self.location = Location(path, storage_options).resolved()
        self.path = self.location.path if not self.location.remote else self.location.url
        if not self.location.is_file():
            raise ImageReadError(f"{str(path)!r} does not exist or is not a file.")
        self.series = series
        self.level = level
        self._lock = threading.Lock()
        try:
            tif = self._tiff()
        except ImportError as error:
            raise BackendNotInstalledError(
                f"reader 'tiff' needs tifffile: `pip install tifffile` ({error})."
            ) from error
        except Exception as error:
            raise ImageReadError(f"{str(path)!r} is not a readable TIFF: {error}") from error
        if not 0 <= series < len(tif.series):
            raise InvalidParameterError(
                f"series={series!r}; {str(path)!r} has {len(tif.series)} series.")
        s = tif.series[series]
        n_levels = len(getattr(s, "levels", [s]))
        if not 0 <= level < n_levels:
            raise InvalidParameterError(
                f"level={level!r}; series {series} of {str(path)!r} has {n_levels} levels.")
        self.n_levels = n_levels
        full_axes = _axis_names(s.axes)
        array = self._source()
        full_shape = tuple(int(n) for n in array.shape)
        chunks = tuple(int(c) for c in array.chunks)
        scale, units, labels = _physical(tif, s, full_axes)
        if level:
            base = tuple(int(n) for n in s.levels[0].shape)
            scale = tuple(sc * b / n if a in "zyx" else sc
                          for sc, b, n, a in zip(scale, base, full_shape, full_axes))
        self.channel_labels = labels
        self._channel_axis = full_axes.index("c") if "c" in full_axes else None
        self.channel = channel
        self.channel_index = self._resolve_channel(channel, full_shape)
        keep = [i for i in range(len(full_axes))
                if self.channel_index is None or i != self._channel_axis]
        self.shape = tuple(full_shape[i] for i in keep)
        self.chunks = tuple(chunks[i] for i in keep)
        self.axes = tuple(full_axes[i] for i in keep)
        self.scale = tuple(scale[i] for i in keep)
        self.units = tuple(units[i] for i in keep)
        self.translation = (0.0,) * len(keep)
        self.dtype = np.dtype(array.dtype)
        self.tiff_axes = s.axes
        self.is_ome = bool(tif.is_ome)
        self.source = self.location.key()
        self._stamp = _stamp(self.location)

    def _resolve_channel(self, channel, full_shape) -> int | None:
        if channel is None:
            return None
        if self._channel_axis is None:
            raise InvalidParameterError(
                f"channel={channel!r}, but {str(self.path)!r} has no channel axis "
                f"(TIFF axes {getattr(self, 'tiff_axes', '')!s})."
            )
        count = full_shape[self._channel_axis]
        return channel_index(channel, self.channel_labels, count, repr(str(self.path)))

    # -- lazily opened, per process -----------------------------------------------------------
    def _tiff(self):
        tif = self.__dict__.get("_tif")
        if tif is None:
            import tifffile

            with self._lock:
                tif = self.__dict__.get("_tif")
                if tif is None:
                    tif = tifffile.TiffFile(_open(self.location))
                    self._tif = tif
        return tif

    def _source(self):
        array = self.__dict__.get("_zarr")
        if array is None:
            import zarr

            tif = self._tiff()
            with self._lock:
                array = self.__dict__.get("_zarr")
                if array is None:
                    store = tif.series[self.series].aszarr(level=self.level)
                    array = zarr.open_array(store=store, mode="r")
                    self._zarr = array
        return array

    def identity(self) -> str:
        return json.dumps({
            "kind": "tiff", "source": self.source, "series": self.series, "level": self.level,
            "channel": self.channel_index, "shape": self.shape, "dtype": str(self.dtype),
            "stamp": self._stamp,
        })

    def metadata(self) -> dict[str, Any]:
        """Units, scale and translation of the axes this reader returns."""
        return {"units": self.units, "scale": self.scale, "translation": self.translation}

    def close(self) -> None:
        tif = self.__dict__.pop("_tif", None)
        self.__dict__.pop("_zarr", None)
        if tif is not None:
            tif.close()

    def __repr__(self) -> str:
        return (f"TiffReader({self.source!r}, series={self.series}, level={self.level}, "
                f"shape={self.shape}, axes={''.join(self.axes)}, dtype={self.dtype})")


def _open(location: Location):
    """A local path as a string (tifffile opens it), a remote file as an fsspec file object."""
    if not location.remote:
        return str(location.path)
    with location.translated_errors():
        return location.fs.open(location.url, "rb")


def _stamp(location: Location) -> tuple:
    """Size and modification stamp (mtime, or the object's ETag / Last-Modified)."""
    if not location.remote:
        stat = location.path.stat()
        return (stat.st_size, int(stat.st_mtime))
    with location.translated_errors():
        info = location.fs.info(location.url)
    modified = info.get("ETag") or info.get("LastModified") or info.get("mtime")
    return (info.get("size"), str(modified))


def _physical(tif, series, axes: tuple[str, ...]):
    """Per-axis scale, units and channel names from OME-XML, ImageJ metadata or resolution."""
    scale = [1.0] * len(axes)
    units: list[str | None] = [None] * len(axes)
    labels: tuple[str | None, ...] = ()
    found: dict[str, tuple[float, str | None]] = {}
    if tif.is_ome and tif.ome_metadata:
        try:
            found, labels = _ome_xml(tif.ome_metadata, tif.series.index(series)
                                     if series in tif.series else 0)
        except Exception:  # malformed OME-XML: fall back to the tags
            found, labels = {}, ()
    if not found:
        found = _tags(tif)
    for i, axis in enumerate(axes):
        if axis in found:
            scale[i], units[i] = found[axis]
    return tuple(scale), tuple(units), labels


def _ome_xml(xml: str, index: int):
    root = ET.fromstring(xml)
    ns = root.tag.split("}")[0] + "}" if root.tag.startswith("{") else ""
    images = root.findall(f"{ns}Image")
    if not images:
        return {}, ()
    pixels = images[min(index, len(images) - 1)].find(f"{ns}Pixels")
    if pixels is None:
        return {}, ()
    found = {}
    for axis in ("x", "y", "z"):
        size = pixels.get(f"PhysicalSize{axis.upper()}")
        if size is not None:
            unit = pixels.get(f"PhysicalSize{axis.upper()}Unit", "µm")
            found[axis] = (float(size), UNIT_NAMES.get(unit, unit))
    increment = pixels.get("TimeIncrement")
    if increment is not None:
        unit = pixels.get("TimeIncrementUnit", "s")
        found["t"] = (float(increment), UNIT_NAMES.get(unit, unit))
    labels = tuple(c.get("Name") for c in pixels.findall(f"{ns}Channel"))
    return found, labels


def _tags(tif) -> dict[str, tuple[float, str | None]]:
    found = {}
    page = tif.pages.first
    unit = None
    ij = tif.imagej_metadata or {}
    if ij.get("unit"):
        unit = UNIT_NAMES.get(ij["unit"], ij["unit"])
    for axis, tag in (("x", "XResolution"), ("y", "YResolution")):
        value = page.tags.get(tag)
        if value is None:
            continue
        num, den = value.value
        if num and den and (num, den) != (1, 1) and (ij or unit):
            found[axis] = (den / num, unit)
    if ij.get("spacing"):
        found["z"] = (float(ij["spacing"]), unit)
    return found
