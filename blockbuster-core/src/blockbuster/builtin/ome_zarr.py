"""OME-Zarr (OME-NGFF 0.4 on zarr v2, 0.5 on zarr v3): a reader and a labels writer.

Reader ``"ome-zarr"``
    Reads the ``multiscales`` metadata of an image group (or of series ``0`` of a
    bioformats2raw layout): axis names, types and units, and the scale and translation of every
    resolution level. ``level=`` picks a level, ``channel=`` picks one channel by index or by
    its ``omero`` label (the ``c`` axis is then dropped). Regions are read straight from the
    zarr chunks; the image is never loaded whole.

Writer ``"ome-zarr"``
    Writes the labels as ``labels/<name>`` of an OME-Zarr image (the input itself, or a new
    OME-Zarr), with ``image-label`` metadata, the image's axes, units and scale, and a
    multiscale pyramid built level by level, chunk by chunk, in ``finish()``. Image data is
    never touched; an existing labels group of the same name is replaced only with
    ``overwrite=True`` (or when it is an unfinished earlier run of the same job).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from blockbuster.builtin.channels import ChannelSelectingReader, channel_index
from blockbuster.builtin.zarr_writer import ZarrLabelsWriter, label_compressors
from blockbuster.errors import ImageReadError, InvalidParameterError, OutputExistsError
from blockbuster.hookspecs import hookimpl
from blockbuster.stores import Location, is_url

DEFAULT_AXES = ("t", "c", "z", "y", "x")
AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}


@hookimpl
def register_readers(register) -> None:
    register("ome-zarr", OmeZarrReader, aliases=("ome_zarr", "omezarr", "ngff"),
             description="OME-Zarr image (NGFF 0.4/0.5, zarr v2/v3, bioformats2raw layout); "
                         "options level=, channel= (index or omero label), series=")


@hookimpl
def register_writers(register) -> None:
    register("ome-zarr", OmeZarrLabelsWriter, aliases=("ome_zarr", "omezarr", "ngff"),
             description="labels/<name> of an OME-Zarr image (image-label metadata, the image's "
                         "axes, units and scale, multiscale pyramid); options name=, image=, "
                         "levels=, downsample=")


@hookimpl(tryfirst=True)
def pick_reader(source: Any) -> str | None:
    """OME-Zarr paths go to this reader rather than the plain ``zarr`` one."""
    return "ome-zarr" if is_ome_zarr(source) else None


# -- metadata ---------------------------------------------------------------------------------
@dataclass
class Level:
    """One resolution level: its array path, shape and physical transform (per axis)."""

    path: str
    shape: tuple[int, ...]
    scale: tuple[float, ...]
    translation: tuple[float, ...]


@dataclass
class Multiscales:
    """The parsed ``multiscales`` (and ``omero``) metadata of one OME-Zarr image group."""

    group: Location
    version: str
    zarr_format: int
    axes: tuple[str, ...]
    axis_types: tuple[str | None, ...]
    units: tuple[str | None, ...]
    levels: list[Level]
    name: str | None = None
    channel_labels: tuple[str | None, ...] = ()
    raw_axes: list[dict] = field(default_factory=list)

    def level_for_shape(self, shape: Sequence[int], drop: Sequence[str] = ("c",)) -> int | None:
        """Index of the level whose shape (without the ``drop`` axes) is ``shape``."""
        for index, level in enumerate(self.levels):
            full = tuple(level.shape)
            if full == tuple(shape):
                return index
            kept = tuple(s for s, a in zip(full, self.axes) if a not in drop)
            if kept == tuple(shape):
                return index
        return None


def _group_attrs(path: Location) -> tuple[dict, int] | None:
    """The attributes of the zarr group at ``path`` and its zarr format, read as plain JSON."""
    meta = (path / "zarr.json").read_json()
    if isinstance(meta, dict):
        if meta.get("node_type") != "group":
            return None
        return meta.get("attributes", {}) or {}, 3
    if (path / ".zgroup").read_json() is not None:
        attrs = (path / ".zattrs").read_json()
        return (attrs if isinstance(attrs, dict) else {}), 2
    return None


def _ome(attrs: dict) -> tuple[dict, str | None]:
    """The OME part of a group's attributes (0.5 nests it under ``ome``) and its version."""
    if isinstance(attrs.get("ome"), dict):
        ome = attrs["ome"]
        return ome, ome.get("version")
    version = None
    if attrs.get("multiscales"):
        version = attrs["multiscales"][0].get("version")
    return attrs, version


def _image_group(path: Location, series: int | str | None) -> Location | None:
    """The image group at ``path``: itself, or a series of a bioformats2raw layout."""
    found = _group_attrs(path)
    if found is None:
        return None
    ome, _ = _ome(found[0])
    if ome.get("multiscales") and series in (None, 0, "0"):
        return path
    if "bioformats2raw.layout" in ome:
        child = path / str(series if series is not None else 0)
        found = _group_attrs(child)
        if found is not None and _ome(found[0])[0].get("multiscales"):
            return child
    return None


def is_ome_zarr(source: Any) -> bool:
    """True for a path or URL (:class:`~blockbuster.stores.Location`) of an OME-Zarr image
    group or bioformats2raw layout."""
    if isinstance(source, Location):
        return _image_group(source, None) is not None
    if not isinstance(source, str | os.PathLike) or is_url(source):
        return False
    path = Location(source)
    return path.path.is_dir() and _image_group(path, None) is not None


def read_multiscales(path: str | os.PathLike | Location, *, series: int | str | None = None,
                     storage_options: dict | None = None) -> Multiscales:
    """Parse the multiscales metadata of the OME-Zarr image at ``path`` (a path or URL)."""
    root = Location(path, storage_options).resolved()
    if not root.remote and not root.exists():
        raise ImageReadError(f"{str(root)!r} does not exist; give the path of an OME-Zarr image.")
    group = _image_group(root, series)
    if group is None:
        raise ImageReadError(
            f"{str(root)!r} is not an OME-Zarr image (no 'multiscales' metadata, and no "
            "bioformats2raw layout" + (f" with series {series!r}" if series is not None else "")
            + "); use reader 'zarr' for a plain zarr array."
        )
    attrs, zarr_format = _group_attrs(group)
    ome, version = _ome(attrs)
    multiscale = ome["multiscales"][0]
    version = str(version or multiscale.get("version") or "0.4")
    datasets = multiscale.get("datasets") or []
    if not datasets:
        raise ImageReadError(f"OME-Zarr image {str(group)!r} lists no datasets.")
    shapes = [_array_shape(group / d["path"]) for d in datasets]
    ndim = len(shapes[0])
    names, types, units, raw = _axes(multiscale.get("axes"), ndim)
    global_scale, global_translation = _transform(multiscale.get("coordinateTransformations"), ndim)
    levels = []
    for dataset, shape in zip(datasets, shapes):
        scale, translation = _transform(dataset.get("coordinateTransformations"), ndim)
        levels.append(Level(
            str(dataset["path"]), shape,
            tuple(float(g * s) for g, s in zip(global_scale, scale)),
            tuple(float(g * t + gt) for g, t, gt in zip(global_scale, translation,
                                                       global_translation)),
        ))
    omero = ome.get("omero") or attrs.get("omero") or {}
    labels = tuple(c.get("label") for c in omero.get("channels", []) if isinstance(c, dict))
    return Multiscales(group, version, zarr_format, names, types, units, levels,
                       multiscale.get("name"), labels, raw)


def _array_shape(path: Location) -> tuple[int, ...]:
    for name in ("zarr.json", ".zarray"):
        meta = (path / name).read_json()
        if isinstance(meta, dict) and "shape" in meta:
            return tuple(meta["shape"])
    raise ImageReadError(f"OME-Zarr dataset {str(path)!r} is missing (no zarr array there).")


def _axes(axes: Any, ndim: int):
    if not axes:  # NGFF <= 0.2: always (t, c, z, y, x), trailing axes when fewer
        names = DEFAULT_AXES[-ndim:] if ndim <= 5 else tuple(f"dim{i}" for i in range(ndim))
        raw = [{"name": n, "type": AXIS_TYPES.get(n)} for n in names]
    else:
        raw = [{"name": a} if isinstance(a, str) else dict(a) for a in axes]  # 0.3: strings
    if len(raw) != ndim:
        raise ImageReadError(f"OME-Zarr axes {[a.get('name') for a in raw]} do not match the "
                             f"array's {ndim} dimensions.")
    names = tuple(str(a["name"]).lower() for a in raw)
    types = tuple(a.get("type") or AXIS_TYPES.get(n) for a, n in zip(raw, names))
    units = tuple(a.get("unit") for a in raw)
    for a, n, t in zip(raw, names, types):
        a["name"] = n
        if t is not None:
            a["type"] = t
    return names, types, units, raw


def _transform(transforms: Any, ndim: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    scale, translation = [1.0] * ndim, [0.0] * ndim
    for t in transforms or []:
        if t.get("type") == "scale" and "scale" in t:
            scale = [float(s) * p for s, p in zip(t["scale"], scale)]
            translation = [float(s) * p for s, p in zip(t["scale"], translation)]
        elif t.get("type") == "translation" and "translation" in t:
            translation = [p + float(v) for p, v in zip(translation, t["translation"])]
    return tuple(scale), tuple(translation)


# -- reader -----------------------------------------------------------------------------------
class OmeZarrReader(ChannelSelectingReader):
    """Reads regions of one resolution level (and optionally one channel) of an OME-Zarr image.

    Parameters
    ----------
    path
        The OME-Zarr image group (``image.ome.zarr``), or the root of a bioformats2raw layout:
        a local path or a URL (``s3://``, ``gs://``, ``https://``...).
    level
        Resolution level, 0 = full resolution (default).
    channel
        Keep only this channel: its index on the ``c`` axis or its ``omero`` label. The ``c``
        axis is then dropped from ``shape``, ``axes``, ``scale`` and ``units``.
    series
        Series of a bioformats2raw layout (default 0).
    storage_options
        Options of the remote store of a URL (credentials, ``endpoint_url``...), see
        :mod:`blockbuster.stores`.

    Attributes: ``shape``, ``dtype``, ``chunks``, ``axes`` (lowercase names of every axis),
    ``scale``, ``translation`` and ``units`` (per axis, physical), ``axis_types``,
    ``channel_labels``, ``n_levels``, ``source``.
    """

    def __init__(self, path: str | os.PathLike, *, level: int = 0, channel: int | str | None = None,
                 series: int | str | None = None, storage_options: dict | None = None):
        self.location = Location(path, storage_options).resolved()
        self.path = self.location.key()
        meta = read_multiscales(self.location, series=series)
        if not isinstance(level, int) or isinstance(level, bool) or not (
                -len(meta.levels) <= level < len(meta.levels)):
            raise InvalidParameterError(
                f"level={level!r}; {str(path)!r} has {len(meta.levels)} resolution levels "
                f"(0..{len(meta.levels) - 1})."
            )
        self.level = level % len(meta.levels)
        self.n_levels = len(meta.levels)
        self.version = meta.version
        self.zarr_format = meta.zarr_format
        self.group = str(meta.group)
        chosen = meta.levels[self.level]
        self._array_location = meta.group / chosen.path
        self.array_path = str(self._array_location)
        self.channel_labels = meta.channel_labels
        self._channel_axis = meta.axes.index("c") if "c" in meta.axes else None
        self.channel_index = self._resolve_channel(channel, meta, chosen)
        self.channel = channel
        keep = [i for i in range(len(meta.axes))
                if not (self.channel_index is not None and i == self._channel_axis)]
        self._keep = keep
        array = self._source()
        chunks = getattr(array, "shards", None) or array.chunks
        self.dtype = np.dtype(array.dtype)
        self.shape = tuple(int(chosen.shape[i]) for i in keep)
        self.chunks = tuple(int(chunks[i]) for i in keep)
        self.axes = tuple(meta.axes[i] for i in keep)
        self.axis_types = tuple(meta.axis_types[i] for i in keep)
        self.units = tuple(meta.units[i] for i in keep)
        self.scale = tuple(chosen.scale[i] for i in keep)
        self.translation = tuple(chosen.translation[i] for i in keep)
        self.source = self.path

    def _resolve_channel(self, channel, meta: Multiscales, level: Level) -> int | None:
        if channel is None:
            return None
        if self._channel_axis is None:
            raise InvalidParameterError(
                f"channel={channel!r}, but {str(self.path)!r} has no 'c' axis "
                f"(axes: {', '.join(meta.axes)})."
            )
        count = level.shape[self._channel_axis]
        return channel_index(channel, meta.channel_labels, count, repr(str(self.path)))

    def _source(self):
        array = self.__dict__.get("_array")
        if array is None:
            import zarr

            array = zarr.open_array(store=self._array_location.zarr_store(read_only=True),
                                    mode="r")
            self._array = array
        return array

    def identity(self) -> str:
        return json.dumps({
            "kind": "ome-zarr", "source": self.array_path, "level": self.level,
            "channel": self.channel_index, "shape": self.shape, "dtype": str(self.dtype),
        })

    def metadata(self) -> dict[str, Any]:
        """Types, units, scale and translation of the axes this reader returns."""
        return {"axis_types": self.axis_types, "units": self.units, "scale": self.scale,
                "translation": self.translation}

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_array", None)
        return state

    def __repr__(self) -> str:
        extra = f", channel={self.channel!r}" if self.channel is not None else ""
        return (f"OmeZarrReader({self.source!r}, level={self.level}{extra}, shape={self.shape}, "
                f"axes={''.join(self.axes)}, dtype={self.dtype})")


# -- writer -----------------------------------------------------------------------------------
DEFAULT_LABELS_NAME = "segmentation"  # labels/<name> of the ome-zarr writer


class OmeZarrLabelsWriter(ZarrLabelsWriter):
    """Writes labels as ``labels/<name>`` of an OME-Zarr image, with a multiscale pyramid.

    Parameters
    ----------
    path
        An OME-Zarr image (usually the input itself: the labels go into its ``labels`` group)
        or a new path (a new OME-Zarr holding only ``labels/<name>``).
    name
        Name of the labels image (``labels/<name>``).
    image
        The OME-Zarr image whose axes, units and scale the labels take, when ``path`` is a new
        path (default: ``path`` itself).
    level
        The image level the labels correspond to (default: the level whose shape matches).
    levels
        Number of pyramid levels (default: halve y and x until one chunk holds a level).
    downsample
        ``"nearest"`` (default) or ``"mode"`` (most frequent label of each 2x2 block).
    zarr_format
        For a new OME-Zarr without ``image``: 3 (NGFF 0.5, default) or 2 (NGFF 0.4).
    overwrite
        Replace an existing labels image of the same name.
    storage_options
        Options of the remote store when ``path`` (and ``image``) are URLs, e.g.
        ``s3://bucket/image.zarr`` (see :mod:`blockbuster.stores`).
    """

    name = "ome-zarr"

    def __init__(self, path: str | os.PathLike, *, name: str = DEFAULT_LABELS_NAME,
                 image: str | os.PathLike | None = None, level: int | None = None,
                 levels: int | None = None, downsample: str = "nearest",
                 zarr_format: int | None = None, overwrite: bool = False,
                 storage_options: dict | None = None):
        if not name or "/" in name or name in (".", ".."):
            raise InvalidParameterError(f"name={name!r}; give a plain name such as 'cells'.")
        if downsample not in ("nearest", "mode"):
            raise InvalidParameterError(f"downsample={downsample!r}; use 'nearest' or 'mode'.")
        if zarr_format not in (None, 2, 3):
            raise InvalidParameterError(f"zarr_format={zarr_format!r}; use 2 or 3.")
        if levels is not None and (not isinstance(levels, int) or levels < 1):
            raise InvalidParameterError(f"levels={levels!r}; give a number >= 1.")
        self.path = Location(path, storage_options).resolved()
        self.path.require_writable("the labels' image")
        self.label_name = name
        self.image = Location(image, storage_options).resolved() if image is not None else None
        self.level = level
        self.levels = levels
        self.downsample = downsample
        self.zarr_format = zarr_format
        self.overwrite = overwrite
        self.source_metadata: dict[str, Any] | None = None
        self._array = None

    # -- where things go ------------------------------------------------------------------------
    @property
    def container(self) -> Location:
        """The image group holding ``labels/``: ``path``, or its series 0 (bioformats2raw)."""
        return _image_group(self.path, None) or self.path

    @property
    def labels_path(self) -> Location:
        return self.container / "labels" / self.label_name

    @property
    def labels_node(self) -> Location:
        return self.labels_path

    @property
    def array_path(self) -> Location:
        return self.labels_path / "0"

    def set_source(self, image: Any) -> None:
        """Take the spatial axes, units, scale and translation of the run's image view."""
        physical = image.metadata
        if image.axes is None or physical.get("scale") is None:
            return
        self.source_metadata = {"axes": image.axes, **physical}

    # -- writer interface -------------------------------------------------------------------
    def check(self, fingerprint: str, source: str | None = None) -> None:
        """Refuse to touch image data or a labels image that is not an earlier run of this job."""
        if self.path.is_file():
            raise OutputExistsError(f"{str(self.path)!r} is a file, not an OME-Zarr image.")
        if not self.path.is_empty() and _image_group(self.path, None) is None:
            raise OutputExistsError(
                f"{str(self.path)!r} exists and is not an OME-Zarr image; the 'ome-zarr' writer "
                "adds labels only to an OME-Zarr image or creates a new one at a new path."
            )
        target = self.labels_path
        if source:
            src = Location(source.split("::")[0])
            if target.contains(src):
                raise OutputExistsError(
                    f"labels {self.label_name!r} would replace the input {str(src)!r}; "
                    "choose another name."
                )
        if target.is_empty():
            return
        self.refuse_unless_same_job(
            fingerprint,
            f"{str(self.container)!r} already has a labels image {self.label_name!r} that is not "
            "the output of this same job; choose another name=, or pass overwrite=True to "
            "replace it (the image data is never touched).",
        )

    def create(self, shape, chunks, dtype, fingerprint: str) -> None:
        import zarr

        shape, chunks = tuple(int(s) for s in shape), tuple(int(c) for c in chunks)
        meta = self._label_metadata(shape)
        self._meta = meta
        fmt = meta["zarr_format"]
        container = self.container
        if _group_attrs(container) is None:
            root = zarr.open_group(container.zarr_store(), mode="w", zarr_format=fmt)
        else:
            root = zarr.open_group(container.zarr_store(), mode="r+")
            fmt = root.metadata.zarr_format
            meta["zarr_format"] = fmt
        labels_dir = container / "labels"
        if _group_attrs(labels_dir) is None:
            labels = root.create_group("labels")
        else:
            labels = zarr.open_group(labels_dir.zarr_store(), mode="r+")
        self.labels_path.remove()  # only labels/<name>: checked in check()
        names = list(_ome_attrs(labels.attrs.asdict(), fmt).get("labels", []))
        if self.label_name not in names:
            names.append(self.label_name)
        set_ome_attrs(labels, fmt, meta["version"], {"labels": names})
        group = labels.create_group(self.label_name)
        array = group.create_array(
            "0", shape=shape, chunks=chunks, dtype=dtype, fill_value=0,
            dimension_names=list(meta["axes"]) if fmt == 3 else None,
            **_compressor_kwargs(fmt),
        )
        del array
        self._write_group_metadata(group, [(shape, 1)], meta)
        self.start_attrs(group, fingerprint)

    def finish(self, **info: Any) -> None:
        import zarr

        group = zarr.open_group(self.labels_path.zarr_store(), mode="r+")
        level0 = group["0"]
        meta = getattr(self, "_meta", None) or self._label_metadata(level0.shape)
        meta["zarr_format"] = group.metadata.zarr_format
        factors = pyramid_factors(meta["axes"])
        built = build_pyramid(group, factors, levels=self.levels, method=self.downsample,
                              dimension_names=meta["axes"])
        self._write_group_metadata(group, built, meta)
        self.mark_complete(group, info)

    # -- metadata ---------------------------------------------------------------------------
    def _label_metadata(self, shape: tuple[int, ...]) -> dict[str, Any]:
        """Axes (dicts), scale, translation, version and zarr format of the labels."""
        ndim = len(shape)
        image = self.image or (self.container if _image_group(self.container, None) else None)
        ms = read_multiscales(image) if image is not None else None
        version = ms.version if ms else ("0.4" if self.zarr_format == 2 else "0.5")
        fmt = ms.zarr_format if ms else (self.zarr_format or 3)
        if version not in ("0.4", "0.5"):
            version = "0.5" if fmt == 3 else "0.4"
        src = self.source_metadata
        if src is None and ms is not None:
            level = self.level if self.level is not None else ms.level_for_shape(shape)
            if level is None:
                raise InvalidParameterError(
                    f"the labels' shape {shape} matches no level of {str(ms.group)!r} "
                    f"({[lv.shape for lv in ms.levels]}, axes {''.join(ms.axes)}); give level=."
                )
            chosen = ms.levels[level]
            keep = list(range(len(ms.axes)))
            if len(keep) != ndim:
                keep = [i for i, a in enumerate(ms.axes) if a != "c"]
            if len(keep) != ndim:
                raise InvalidParameterError(
                    f"the labels have {ndim} axes, the image {str(ms.group)!r} has "
                    f"{len(ms.axes)} ({''.join(ms.axes)})."
                )
            src = {"axes": [ms.axes[i] for i in keep], "units": [ms.units[i] for i in keep],
                   "axis_types": [ms.axis_types[i] for i in keep],
                   "scale": [chosen.scale[i] for i in keep],
                   "translation": [chosen.translation[i] for i in keep]}
        if src is None or len(src["axes"]) != ndim:
            names = ("z", "y", "x")[-ndim:] if ndim <= 3 else DEFAULT_AXES[-ndim:]
            src = {"axes": list(names), "units": [None] * ndim, "axis_types": None,
                   "scale": [1.0] * ndim, "translation": [0.0] * ndim}
        axes = []
        types = src.get("axis_types") or [AXIS_TYPES.get(a) for a in src["axes"]]
        units = src.get("units") or [None] * ndim
        for name, kind, unit in zip(src["axes"], types, units):
            entry: dict[str, Any] = {"name": name}
            if kind:
                entry["type"] = kind
            if unit:
                entry["unit"] = unit
            axes.append(entry)
        return {"axes": [a["name"] for a in axes], "axes_meta": axes, "version": version,
                "zarr_format": fmt, "scale": [float(s) for s in src["scale"]],
                "translation": [float(t) for t in (src.get("translation") or [0.0] * ndim)]}

    def _write_group_metadata(self, group, built: list[tuple[tuple[int, ...], int]],
                              meta: dict[str, Any]) -> None:
        factors = pyramid_factors(meta["axes"])
        datasets = []
        for index, _ in enumerate(built):
            scale = [s * f ** index for s, f in zip(meta["scale"], factors)]
            transforms: list[dict] = [{"type": "scale", "scale": scale}]
            if any(meta["translation"]):
                transforms.append({"type": "translation", "translation": meta["translation"]})
            datasets.append({"path": str(index), "coordinateTransformations": transforms})
        multiscale: dict[str, Any] = {"name": self.label_name, "axes": meta["axes_meta"],
                                      "datasets": datasets,
                                      "type": self.downsample if len(built) > 1 else None,
                                      "metadata": {"method": f"blockbuster {self.downsample}"}}
        multiscale = {k: v for k, v in multiscale.items() if v is not None}
        image_label: dict[str, Any] = {}
        if _image_group(self.container, None) == self.container:
            image_label["source"] = {"image": "../../"}
        elif self.image is not None:
            image_label["source"] = {"image": self.labels_path.relative_link(self.image)}
        if meta["version"] == "0.4":
            multiscale = {"version": "0.4", **multiscale}
            image_label = {"version": "0.4", **image_label}
        set_ome_attrs(group, group.metadata.zarr_format, meta["version"],
                       {"multiscales": [multiscale], "image-label": image_label})


def pyramid_factors(axes: Sequence[str]) -> tuple[int, ...]:
    """Pyramid downsampling factors: 2 along y and x, 1 along every other axis."""
    return tuple(2 if a in ("y", "x") else 1 for a in axes)


def _ome_attrs(attrs: dict, zarr_format: int) -> dict:
    return attrs.get("ome", {}) if zarr_format == 3 and "ome" in attrs else attrs


def set_ome_attrs(node, zarr_format: int, version: str, values: dict) -> None:
    """Set OME keys: under ``ome`` (NGFF 0.5, zarr v3) or at the top level (NGFF 0.4, v2)."""
    if version == "0.5" and zarr_format == 3:
        ome = dict(node.attrs.get("ome", {}))
        ome.update(values, version="0.5")
        node.attrs["ome"] = ome
    else:
        node.attrs.update(values)


def _compressor_kwargs(zarr_format: int) -> dict:
    if zarr_format == 3:
        return {"compressors": label_compressors()}
    from numcodecs import Blosc

    return {"compressors": Blosc(cname="lz4", clevel=5, shuffle=Blosc.BITSHUFFLE)}


# -- pyramid --------------------------------------------------------------------------------
def build_pyramid(group, factors: Sequence[int], *, levels: int | None = None,
                  method: str = "nearest", dimension_names: Sequence[str] | None = None,
                  max_levels: int = 12) -> list[tuple[tuple[int, ...], int]]:
    """Add levels ``1, 2, ...`` to a labels group holding level ``"0"``, chunk by chunk.

    Each level is made from the one before by taking every ``factor``-th voxel (``nearest``)
    or the most frequent label of each block (``mode``), one output chunk at a time, so memory
    stays at a few chunks whatever the image size. Without ``levels``, levels are added until
    one chunk holds a whole level along the downsampled axes. Returns ``(shape, index)`` per
    level, level 0 included.
    """
    previous = group["0"]
    chunks = tuple(previous.chunks)
    fmt = group.metadata.zarr_format
    built = [(tuple(previous.shape), 0)]
    for name in [k for k, _ in group.arrays() if k != "0" and k.isdigit()]:
        del group[name]  # stale levels of an earlier run
    index = 0
    while True:
        shape = tuple(previous.shape)
        if levels is not None and index + 1 >= levels:
            break
        if levels is None and (index + 1 >= max_levels or all(
                s <= c for s, c, f in zip(shape, chunks, factors) if f > 1)):
            break
        if not any(f > 1 and s > 1 for s, f in zip(shape, factors)):
            break
        index += 1
        new_shape = tuple(-(-s // f) for s, f in zip(shape, factors))
        new_chunks = tuple(min(c, s) for c, s in zip(chunks, new_shape))
        array = group.create_array(
            str(index), shape=new_shape, chunks=new_chunks, dtype=previous.dtype, fill_value=0,
            dimension_names=list(dimension_names) if fmt == 3 and dimension_names else None,
            **_compressor_kwargs(fmt),
        )
        grid = [math.ceil(s / c) for s, c in zip(new_shape, new_chunks)]
        for position in np.ndindex(*grid):
            out = tuple(slice(p * c, min((p + 1) * c, s))
                        for p, c, s in zip(position, new_chunks, new_shape))
            src = tuple(slice(o.start * f, min(o.stop * f, s))
                        for o, f, s in zip(out, factors, shape))
            block = np.asarray(previous[src])
            if not block.any():
                continue
            array[out] = downsample_block(block, factors, method)
        built.append((new_shape, index))
        previous = array
    return built


def downsample_block(block: np.ndarray, factors: Sequence[int], method: str = "nearest"):
    """Downsample a label block by integer ``factors`` (``nearest`` or ``mode``)."""
    factors = tuple(factors)
    if method == "nearest" or all(f == 1 for f in factors):
        return block[tuple(slice(None, None, f) for f in factors)]
    out_shape = tuple(-(-s // f) for s, f in zip(block.shape, factors))
    padded_shape = tuple(o * f for o, f in zip(out_shape, factors))
    if padded_shape != block.shape:  # repeat the last row/column to fill whole blocks
        pad = [(0, p - s) for p, s in zip(padded_shape, block.shape)]
        block = np.pad(block, pad, mode="edge")
    split = []
    for o, f in zip(out_shape, factors):
        split += [o, f]
    view = block.reshape(split)
    ndim = len(factors)
    order = [2 * i for i in range(ndim)] + [2 * i + 1 for i in range(ndim)]
    candidates = view.transpose(order).reshape(*out_shape, -1)
    counts = (candidates[..., :, None] == candidates[..., None, :]).sum(-1)
    counts = counts * 2 + (candidates != 0)  # ties: a label beats background
    pick = counts.argmax(-1)
    return np.take_along_axis(candidates, pick[..., None], -1)[..., 0]
