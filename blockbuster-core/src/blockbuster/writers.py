"""The writer contract: where the final labels go, in the order the pipeline calls it.

1. ``factory(path, overwrite=False, **options)`` in the parent;
2. ``set_source(image)``: the run's :class:`~blockbuster.image.ImageView` (spatial axes,
   chunks, physical metadata), before anything else;
3. ``check(fingerprint, source)``: refuse, raising
   :class:`~blockbuster.errors.OutputExistsError`, to write over ``source`` (the input's path,
   or ``None``) or over data that is not an earlier run of this same job (whose
   ``fingerprint`` the writer stored in ``create``), unless created with ``overwrite=True``;
4. ``create(shape, chunks, dtype, fingerprint)`` once the label dtype is known;
5. ``write(region, labels)`` from the workers, one tile core (one output chunk) per call, so
   the writer is pickled to each worker once;
6. ``finish(n_objects=..., version=...)`` in the parent after every tile is written;
7. ``open()``: the written labels as a lazy dask array;
8. ``read_all()`` (optional) for ``compute=True``: the written labels as a numpy array. The
   default computes ``open()``; a writer that can read its output without dask overrides it, so
   a run asked for a numpy result never imports dask (whose import pulls pandas, pyarrow and
   xarray where they are installed: ~100 MB of resident memory).

:class:`Writer` declares them; subclass it to get the default ``set_source`` (ignore the image).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

WRITER_MEMBERS = ("set_source", "check", "create", "write", "finish", "open")


class Writer(ABC):
    """Base class of label writers (see the module docstring for the call order)."""

    def set_source(self, image: Any) -> None:  # noqa: B027 - optional for subclasses
        """Receive the run's image view before ``check``; the default ignores it."""

    @abstractmethod
    def check(self, fingerprint: str, source: str | None = None) -> None:
        """Raise ``OutputExistsError`` unless writing here is safe."""

    @abstractmethod
    def create(self, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: np.dtype,
               fingerprint: str) -> None:
        """Create the (empty) output, replacing an earlier run's."""

    @abstractmethod
    def write(self, region: tuple[slice, ...], labels: np.ndarray) -> None:
        """Write one tile core (called in the workers)."""

    @abstractmethod
    def finish(self, **info: Any) -> None:
        """Mark the output complete, recording ``info`` (``n_objects``, ``version``)."""

    @abstractmethod
    def open(self):
        """The written labels as a lazy dask array."""

    def read_all(self) -> np.ndarray:
        """The written labels in memory (``compute=True``); by default ``open()`` computed."""
        return np.asarray(self.open().compute())
