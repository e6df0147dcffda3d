"""The reader contract: what the pipeline asks of an image source, and nothing more.

A reader is created in the parent by its factory (``factory(source, **options)``, see
:func:`~blockbuster.hookspecs.register_readers`) and then sent to every worker, so it must
pickle (open file handles lazily, per process). The pipeline uses exactly the members of
:class:`Reader`; :class:`BaseReader` gives the optional ones their defaults. A reader may also
have ``describe()`` (``{label: text}``: scenes, channel names, levels...), which
``blockbuster info`` lists.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol, runtime_checkable

import numpy as np

READER_MEMBERS = ("shape", "dtype", "chunks", "axes", "source", "read", "identity", "metadata")
PHYSICAL_KEYS = ("scale", "translation", "units", "axis_types")


@runtime_checkable
class Reader(Protocol):
    """What the pipeline needs from an image source.

    Attributes
    ----------
    shape, dtype
        Of the whole image, every axis (channels included).
    chunks
        The stored chunk shape (one entry per axis), or ``None``: the default tile shape.
    axes
        Lowercase axis names (``("c", "z", "y", "x")``) or ``None``. A ``"c"`` axis is taken as
        the channel axis unless the run names one.
    source
        The path the image was read from (resolved), or ``None`` (an in-memory array). Writers
        use it to refuse writing over their own input.
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    chunks: tuple[int, ...] | None
    axes: tuple[str, ...] | None
    source: str | None

    def read(self, region: tuple[slice, ...]) -> np.ndarray:
        """The voxels of ``region`` (one slice per axis, steps of 1) as a numpy array."""

    def identity(self) -> str:
        """A string that changes whenever the image does (the job fingerprint holds it)."""

    def metadata(self) -> dict[str, Any]:
        """Physical metadata, each value one entry per axis: any of ``scale``, ``translation``,
        ``units`` (e.g. ``"micrometer"``) and ``axis_types`` (``"space"``, ``"channel"``...).
        An empty dict when the image has none."""


def describe(reader: Reader) -> dict[str, Any]:
    """What ``blockbuster info`` lists for ``reader`` beyond shape, dtype, chunks and axes: its
    optional ``describe()`` (scenes, channel names, levels... ``{label: text}``), else nothing."""
    method = getattr(reader, "describe", None)
    return dict(method()) if callable(method) else {}


class BaseReader:
    """Defaults for a reader's optional members; subclass it and set ``shape``, ``dtype`` and
    implement ``read`` and ``identity``."""

    shape: tuple[int, ...]
    dtype: np.dtype
    chunks: tuple[int, ...] | None = None
    axes: tuple[str, ...] | None = None
    source: str | None = None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def read(self, region: tuple[slice, ...]) -> np.ndarray:
        raise NotImplementedError

    def identity(self) -> str:
        raise NotImplementedError

    def metadata(self) -> dict[str, Any]:
        return {}

    def unreadable_chunks(self, region: tuple[slice, ...]) -> list[str]:
        """Optional: after a failed ``read(region)``, the stored chunks there that cannot be
        read (``'<path>/<key>' [bounds]``), so the error can name them; ``[]`` if unknown."""
        return []

    def describe(self) -> dict[str, Any]:
        """Optional: ``{label: text}`` lines ``blockbuster info`` adds (scenes, channels...)."""
        return {}

    def __getitem__(self, region) -> np.ndarray:
        """Numpy-style slicing (for :func:`blockbuster.sampling.sample_blocks` and friends)."""
        return self.read(region if isinstance(region, tuple) else (region,))


class OpensPerProcess:
    """Mixin for readers that open their file lazily, once per process.

    Pickling drops the attributes named in ``per_process`` (open files, zarr stores) and the
    ``_lock`` that guards their creation; unpickling makes a new lock, so each worker process
    opens the file itself on its first read.
    """

    per_process: tuple[str, ...] = ()

    def __getstate__(self):
        state = dict(self.__dict__)
        for key in (*self.per_process, "_lock"):
            state.pop(key, None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()
