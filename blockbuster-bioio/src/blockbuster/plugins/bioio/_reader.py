"""The ``bioio`` reader: one scene, level, time point and channel of any file bioio opens.

Regions are read through bioio's dask access (``BioImage.dask_data``), built with
``chunk_dims="YX"`` so one dask chunk is one plane (one zarr chunk for OME-Zarr): a region read
computes only the chunks it overlaps, never the whole scene. Axes are bioio's standard
``T, C, Z, Y, X`` (``S``, RGB samples, becomes the ``c`` axis when the file has one channel).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from blockbuster.builtin.channels import channel_index
from blockbuster.errors import BackendNotInstalledError, ImageReadError, InvalidParameterError
from blockbuster.plugins.bioio._formats import extra_for, installed_plugins, plugin_for
from blockbuster.readers import BaseReader, OpensPerProcess

AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
ONE_PLANE = ["Y", "X"]  # bioio's chunk_dims: one dask chunk per plane, not per Z-stack


class BioioReader(OpensPerProcess, BaseReader):
    """Reads regions of one scene of a microscope file through bioio, lazily.

    Parameters
    ----------
    path
        The file (or directory image) an installed bioio plugin reads.
    scene
        Scene index or scene id (``BioImage.scenes``, e.g. ``"Image:1"``); default 0.
    channel
        Keep only this channel: index on the ``c`` axis or its channel name; the ``c`` axis
        is then dropped.
    level
        Resolution level where the format has several (default 0, full resolution).
    t
        Keep only this time point (index); the ``t`` axis is then dropped. ``time`` is the
        same option.

    Attributes: ``shape``, ``dtype``, ``chunks``, ``axes`` (lowercase), ``scale``, ``units``,
    ``axis_types``, ``translation`` (per axis), ``scenes``, ``scene_id``, ``channel_labels``,
    ``levels`` (shape of each resolution level), ``plugin`` (the bioio plugin's distribution),
    ``source``.
    """

    per_process = ("_bioimage", "_data")

    def __init__(self, path: str | os.PathLike, *, scene: int | str = 0,
                 channel: int | str | None = None, level: int = 0, t: int | None = None,
                 time: int | None = None):
        if time is not None and t is not None and time != t:
            raise InvalidParameterError(f"t={t!r} and time={time!r} disagree; give one of them.")
        self.path = Path(path).resolve()
        if not self.path.exists():
            raise ImageReadError(f"{str(path)!r} does not exist; give the path of an image file.")
        self._lock = threading.Lock()
        self._reader_class, self.plugin = _reader_class(self.path)
        image = self._image()
        self._select(image, scene, level)
        data = image.dask_data
        dims = tuple(str(image.dims.order).lower())
        names = _axis_names(dims, data.shape)
        self.dtype = np.dtype(data.dtype)
        self.channel_labels = tuple(str(c) for c in (image.channel_names or ()))
        if "s" in dims and "s" not in names:
            self.channel_labels = ()  # RGB samples as c: the one channel's name labels none
        self.t = time if t is None else t
        self.channel = channel
        self._fixed = {i: 0 for i, n in enumerate(names) if n is None}  # axis -> index read
        self._fix_time(names, data.shape)
        self.channel_index = self._fix_channel(names, data.shape)
        self._keep = [i for i, n in enumerate(names) if n is not None and i not in self._fixed]
        self._ndim_full = len(names)
        self.shape = tuple(int(data.shape[i]) for i in self._keep)
        self.axes = tuple(names[i] for i in self._keep)
        self.chunks = _sub_plane_chunks(data, self._keep, self.axes, self.shape)
        self.scale, self.units = _physical(image, self.axes)
        self.axis_types = tuple(AXIS_TYPES.get(a) for a in self.axes)
        self.translation = (0.0,) * len(self.axes)
        self.source = str(self.path)
        stat = self.path.stat()
        self._stamp = (stat.st_size, int(stat.st_mtime))

    def _select(self, image, scene: int | str, level: int) -> None:
        """Check and set the scene, then the resolution level (each scene has its own)."""
        self.scenes = tuple(str(s) for s in image.scenes)
        self.scene_index = _scene_index(scene, self.scenes, self.path)
        image.set_scene(self.scene_index)
        self.scene_id = self.scenes[self.scene_index]
        self.levels = {int(k): tuple(int(n) for n in v)
                       for k, v in image.resolution_level_dims.items()}
        self.level = _level(level, self.levels, self.path)
        image.set_resolution_level(self.level)

    def _fix_time(self, names: list[str | None], shape) -> None:
        if self.t is not None:
            axis = names.index("t")
            self._fixed[axis] = _index(self.t, shape[axis], "t", self.path)

    def _fix_channel(self, names: list[str | None], shape) -> int | None:
        if self.channel is None:
            return None
        axis = names.index("c") if "c" in names else None
        if axis is None:
            raise InvalidParameterError(f"channel={self.channel!r}, but {str(self.path)!r} has "
                                        "no channel axis.")
        index = channel_index(self.channel, list(self.channel_labels), shape[axis],
                              repr(str(self.path)))
        self._fixed[axis] = index
        return index

    # -- lazily opened, per process -----------------------------------------------------------
    def _image(self):
        image = self.__dict__.get("_bioimage")
        if image is None:
            from bioio import BioImage

            with self._lock:
                image = self.__dict__.get("_bioimage")
                if image is None:
                    image = BioImage(str(self.path), reader=self._reader_class,
                                     **_plane_chunks(self._reader_class))
                    if "scene_index" in self.__dict__:
                        image.set_scene(self.scene_index)
                        image.set_resolution_level(self.level)
                    self._bioimage = image
        return image

    def _dask(self):
        data = self.__dict__.get("_data")
        if data is None:
            data = self._image().dask_data
            self._data = data
        return data

    def read(self, region: tuple[slice, ...]) -> np.ndarray:
        """The voxels of ``region``: only the dask chunks (planes, zarr chunks) it overlaps."""
        region = tuple(region) + (slice(None),) * (len(self.shape) - len(region))
        full: list[Any] = [slice(None)] * self._ndim_full
        for axis, index in self._fixed.items():
            full[axis] = index
        for axis, part in zip(self._keep, region):
            full[axis] = part
        block = self._dask()[tuple(full)].compute(scheduler="synchronous")
        return np.asarray(block)

    def identity(self) -> str:
        return json.dumps({
            "kind": "bioio", "source": self.source, "plugin": self.plugin,
            "scene": self.scene_index, "level": self.level, "t": self.t,
            "channel": self.channel_index, "shape": self.shape, "dtype": str(self.dtype),
            "stamp": self._stamp,
        })

    def metadata(self) -> dict[str, Any]:
        """Types, units, scale and translation of the axes this reader returns."""
        return {"axis_types": self.axis_types, "units": self.units, "scale": self.scale,
                "translation": self.translation}

    def describe(self) -> dict[str, Any]:
        """What ``blockbuster info`` lists beyond shape, dtype and axes."""
        levels = [f"{k}: {v}" for k, v in sorted(self.levels.items())]
        return {
            "plugin": self.plugin,
            "scenes": ", ".join(f"{i}={s}" for i, s in enumerate(self.scenes))
                      + f" (reading {self.scene_index})",
            "channels": ", ".join(f"{i}={c}" for i, c in enumerate(self.channel_labels)),
            "levels": "; ".join(levels) + f" (reading {self.level})",
            "read unit": ("chunks " + str(self.chunks)) if self.chunks else "one plane per read",
        }

    def __repr__(self) -> str:
        return (f"BioioReader({self.source!r}, scene={self.scene_id!r}, level={self.level}, "
                f"shape={self.shape}, axes={''.join(self.axes)}, dtype={self.dtype})")


def _reader_class(path: Path):
    """The reader class of the bioio plugin that reads ``path`` and the plugin's distribution
    name, or a typed error naming the extra to install."""
    plugin = plugin_for(path)
    if plugin is not None:
        point = plugin.entrypoint
        return plugin.metadata.get_reader(), point.dist.name if point.dist else point.name
    extra = extra_for(path)
    if extra is not None:
        raise BackendNotInstalledError(
            f"reader 'bioio' cannot read {str(path)!r}: {extra.format} files need the bioio "
            f"plugin {extra.distribution}, which is not installed; install it with "
            f"`{extra.pip}`."
        )
    raise ImageReadError(
        f"no installed bioio plugin reads {str(path)!r} (installed: "
        f"{', '.join(installed_plugins()) or 'none'}); install the bioio plugin for its format "
        '(`pip install "blockbuster-bioio[all]"` adds OME-TIFF, OME-Zarr, CZI, ND2 and LIF).'
    )


def _plane_chunks(reader_class) -> dict[str, Any]:
    """``chunk_dims=["Y", "X"]`` for plugins that chunk by dimension (TIFF family: by default
    a chunk is a whole Z-stack); nothing for those that chunk by their own storage (zarr)."""
    import inspect

    accepts = "chunk_dims" in inspect.signature(reader_class.__init__).parameters
    return {"chunk_dims": ONE_PLANE} if accepts else {}


def _scene_index(scene: int | str, scenes: tuple[str, ...], path: Path) -> int:
    if isinstance(scene, str) and not scene.lstrip("-").isdigit():
        if scene not in scenes:
            raise InvalidParameterError(
                f"scene={scene!r} is not a scene of {str(path)!r}; scenes: "
                f"{', '.join(repr(s) for s in scenes)} (or give an index 0..{len(scenes) - 1})."
            )
        return scenes.index(scene)
    return _index(scene, len(scenes), "scene", path)


def _index(value: Any, count: int, what: str, path: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer | str):
        raise InvalidParameterError(f"{what}={value!r}; give an index 0..{count - 1}.")
    index = int(value)
    if not -count <= index < count:
        raise InvalidParameterError(
            f"{what}={value!r} is out of range; {str(path)!r} has {count} (0..{count - 1}).")
    return index % count


def _level(level: Any, levels: dict[int, tuple[int, ...]], path: Path) -> int:
    if isinstance(level, bool) or not isinstance(level, int) or level not in levels:
        raise InvalidParameterError(
            f"level={level!r}; {str(path)!r} has resolution levels {sorted(levels)}.")
    return level


def _axis_names(dims: tuple[str, ...], shape: tuple[int, ...]) -> list[str | None]:
    """bioio's dims as blockbuster axis names; ``s`` (RGB samples) becomes ``c`` when the file
    has a single channel (that size-1 ``c`` is then read at index 0: named ``None``)."""
    names: list[str | None] = list(dims)
    if "s" in dims and "c" in dims and shape[dims.index("c")] == 1:
        names[dims.index("c")] = None
        names[dims.index("s")] = "c"
    return names


def _sub_plane_chunks(data, keep, axes, shape) -> tuple[int, ...] | None:
    """The stored chunk shape when it is smaller than a plane (OME-Zarr), else ``None``:
    whole-plane chunks are no guide for the tile shape."""
    chunks = tuple(int(data.chunks[i][0]) for i in keep)
    plane = [i for i, a in enumerate(axes) if a in ("y", "x")]
    if all(chunks[i] >= shape[i] for i in plane):
        return None
    return chunks


def _physical(image, axes: tuple[str, ...]):
    """Per-axis scale and units from bioio (``scale``, ``dimension_properties``), completed
    with the OME metadata's sizes, time increment and units where bioio leaves them out."""
    scale = [1.0] * len(axes)
    units: list[str | None] = [None] * len(axes)
    sizes = image.scale
    properties = _try(lambda: image.dimension_properties)
    ome = _ome_sizes(image)
    for i, axis in enumerate(axes):
        if axis == "c":
            continue
        value = getattr(sizes, axis.upper(), None)
        value, ome_unit = (value, ome.get(axis, (None, None))[1]) if value is not None \
            else ome.get(axis, (None, None))
        if value is None:
            continue
        scale[i] = float(value)
        prop = getattr(properties, axis.upper(), None) if properties is not None else None
        unit = getattr(prop, "unit", None) if prop is not None else None
        units[i] = _unit_name(unit) if unit is not None else ome_unit
    return tuple(scale), tuple(units)


def _ome_sizes(image) -> dict[str, tuple[float, str]]:
    """``{axis: (size, unit)}`` of the scene's OME metadata: physical sizes and the time
    increment (OME's defaults, micrometer and second, where a unit is left out)."""
    ome = _try(lambda: image.ome_metadata)
    try:
        pixels = ome.images[image.current_scene_index].pixels
    except (AttributeError, IndexError, TypeError):
        return {}
    found = {}
    for axis in "zyx":
        size = getattr(pixels, f"physical_size_{axis}", None)
        if size is not None:
            unit = getattr(pixels, f"physical_size_{axis}_unit", None)
            found[axis] = (float(size), _unit_name(unit or "micrometer"))
    if getattr(pixels, "time_increment", None) is not None:
        unit = getattr(pixels, "time_increment_unit", None)
        found["t"] = (float(pixels.time_increment), _unit_name(unit or "second"))
    return found


def _unit_name(unit: Any) -> str:
    """``"micrometer"`` from a pint unit, an ome-types enum (``UnitsLength.MICROMETER``) or a
    symbol string."""
    from blockbuster.builtin.tiff import UNIT_NAMES

    name = getattr(unit, "name", None)
    if isinstance(name, str):
        return name.lower()
    text = str(unit)
    return UNIT_NAMES.get(text) or text


def _try(get):
    try:
        return get()
    except Exception:  # a plugin without that metadata (NotImplementedError, parse errors)
        return None
