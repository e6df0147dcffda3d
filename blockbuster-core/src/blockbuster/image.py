"""The image of a run as the pipeline sees it: spatial axes only, built once from the reader.

A reader describes the stored image, channels included. :class:`ImageView` settles the channel
axis once (the one given, else the reader's ``"c"`` axis) and answers every spatial question the
pipeline asks — shape, chunks, axis names, physical metadata — so planning, the writer, the
object table and the workers never re-derive them. ``read(region)`` takes a spatial region and
returns the tile with its channels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from blockbuster.errors import InvalidParameterError
from blockbuster.readers import PHYSICAL_KEYS, Reader


@dataclass(frozen=True)
class ImageView:
    """The spatial view of a reader (picklable: it travels to the workers with the job).

    Attributes
    ----------
    reader
        The reader, every axis.
    channel_axis
        The reader's channel axis (non-negative), or ``None``.
    shape, chunks, axes
        Spatial shape, spatial chunk shape (or ``None``) and spatial axis names (or ``None``).
    metadata
        Physical metadata per spatial axis: ``scale``, ``translation``, ``units`` and
        ``axis_types`` (each ``None`` when the reader does not know it).
    """

    reader: Reader
    channel_axis: int | None
    shape: tuple[int, ...]
    chunks: tuple[int, ...] | None
    axes: tuple[str, ...] | None
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, reader: Reader, channel_axis: int | None = None) -> ImageView:
        """The view of ``reader`` with ``channel_axis`` (default: its ``"c"`` axis, if named)."""
        ndim = len(reader.shape)
        if ndim == 0:
            raise InvalidParameterError(
                f"the image is a single value (0-D, {reader!r}); blockbuster tiles arrays with "
                "at least one axis. Pass an array, e.g. numpy.atleast_2d(value)."
            )
        names = _per_axis(reader.axes, ndim)
        axis = _channel_axis(channel_axis, names, tuple(reader.shape))
        if axis is not None and ndim == 1:
            raise InvalidParameterError(
                f"channel_axis={axis} leaves no spatial axis in an image of shape {reader.shape}."
            )
        keep = [i for i in range(ndim) if i != axis]

        def spatial(values):
            return tuple(values[i] for i in keep) if values is not None else None

        physical = reader.metadata()
        metadata = {key: spatial(_per_axis(physical.get(key), ndim)) for key in PHYSICAL_KEYS}
        return cls(reader, axis, spatial(tuple(int(s) for s in reader.shape)),
                   spatial(_per_axis(reader.chunks, ndim)), spatial(names), metadata)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.reader.dtype)

    @property
    def channels(self) -> int:
        """Channels per voxel (1 without a channel axis)."""
        return 1 if self.channel_axis is None else int(self.reader.shape[self.channel_axis])

    @property
    def source(self) -> str | None:
        """The input's path, or ``None`` for an in-memory image."""
        return self.reader.source

    def identity(self) -> str:
        return self.reader.identity()

    def read(self, region: tuple[slice, ...]) -> np.ndarray:
        """The tile at the spatial ``region``, channels included (at the channel axis)."""
        return self.reader.read(self._with_channels(region))

    @property
    def reads_into(self) -> bool:
        """Whether the reader decodes into a caller's buffer (its optional ``read_into``)."""
        return bool(getattr(self.reader, "reads_into", False))

    def read_into(self, region: tuple[slice, ...], out: np.ndarray) -> None:
        """The spatial ``region`` read into ``out`` (channels included), where
        :attr:`reads_into`."""
        self.reader.read_into(self._with_channels(region), out)

    def unreadable_chunks(self, region: tuple[slice, ...]) -> list[str]:
        """The stored chunks under the spatial ``region`` the reader cannot read, where it can
        tell (its optional ``unreadable_chunks``); else ``[]``."""
        locate = getattr(self.reader, "unreadable_chunks", None)
        if not callable(locate):
            return []
        try:
            return list(locate(self._with_channels(region)))
        except Exception:  # only a diagnosis: never hide the read error itself
            return []

    def _with_channels(self, region: tuple[slice, ...]) -> tuple[slice, ...]:
        if self.channel_axis is None:
            return region
        return region[: self.channel_axis] + (slice(None),) + region[self.channel_axis :]

    def table_metadata(self) -> dict[str, Any]:
        """Axis names and physical metadata for :func:`blockbuster.table.combine`."""
        return {"axes": self.axes, "scale": self.metadata.get("scale"),
                "units": self.metadata.get("units"),
                "translation": self.metadata.get("translation"), "ndim": self.ndim}


def _channel_axis(channel_axis: int | None, axes, shape: tuple[int, ...]) -> int | None:
    if channel_axis is None:
        return axes.index("c") if axes and "c" in axes else None
    if isinstance(channel_axis, bool) or not isinstance(channel_axis, int | np.integer):
        raise InvalidParameterError(f"channel_axis={channel_axis!r}; give an axis index.")
    if not -len(shape) <= channel_axis < len(shape):
        raise InvalidParameterError(
            f"channel_axis={channel_axis} is out of range for an image of shape {shape}."
        )
    return int(channel_axis) % len(shape)


def _per_axis(values, ndim: int):
    """``values`` if it has one entry per axis, else ``None``."""
    if values is None:
        return None
    values = tuple(values)
    return values if len(values) == ndim else None
