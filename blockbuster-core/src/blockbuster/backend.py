"""The backend kit: what every model backend (torch, StarDist, Cellpose, yours) needs from the
core, written once.

- **Placement**: :func:`threads_per_worker` (share the cores between a run's workers) and
  :func:`gpu_of_worker` (worker ``i`` takes GPU ``i % n_gpus``), both from
  :func:`blockbuster.current_worker`.
- **Image-wide normalisation**: :func:`image_percentiles`, intensity percentiles of the whole
  image from a small, evenly spread sample of full-resolution blocks, so every tile is scaled
  alike (call it in the segmenter's ``prepare``).
- **Options**: a factory's keyword parameters (with annotations) are its options; the registry
  checks names and types before calling it (:mod:`blockbuster.options`).
  :func:`checked_options` gives direct calls the same one-line errors, and
  :func:`declared_options` declares many options once, as a dataclass.
- **Weights**: :func:`download_weights` fetches a missing weights file into the library's
  cache once, in the parent process, atomically; :func:`offline` is the
  ``BLOCKBUSTER_OFFLINE`` switch and :func:`refuse_offline` raises its error
  (:mod:`blockbuster.downloads`).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from blockbuster.downloads import download_weights, offline, refuse_offline  # noqa: F401 (kit)
from blockbuster.options import check_options
from blockbuster.sampling import read_region
from blockbuster.worker import WorkerInfo, current_worker, usable_cores

DEFAULT_SAMPLE_VOXELS = 2**22  # 4 Mi voxels (16 MiB as float32) per channel at most


# -- placement ----------------------------------------------------------------------------------
def threads_per_worker(worker: WorkerInfo | None = None, cores: int | None = None) -> int:
    """``cores // workers`` (at least 1), so a run's workers do not oversubscribe the machine.

    ``worker`` defaults to the calling worker, ``cores`` to
    :func:`blockbuster.worker.usable_cores`.
    """
    worker = worker or current_worker()
    cores = usable_cores() if cores is None else cores
    return max(1, cores // max(1, worker.count))


def gpu_of_worker(n_gpus: int, worker: WorkerInfo | None = None) -> int | None:
    """The GPU index worker ``i`` uses (``i % n_gpus``), or ``None`` without GPUs."""
    if n_gpus < 1:
        return None
    return (worker or current_worker()).index % n_gpus


# -- image-wide normalisation -------------------------------------------------------------------
def image_percentiles(image: Any, percentiles: Sequence[float] = (1.0, 99.8), *,
                      channel_axis: int | None = None,
                      max_voxels: int = DEFAULT_SAMPLE_VOXELS) -> tuple[Any, Any]:
    """``(low, high)`` intensity percentiles of a whole image, never loading it whole.

    ``image`` is anything with ``shape`` and numpy slicing (a reader, numpy, zarr, dask). An
    image of at most ``max_voxels`` voxels (per channel) is read entirely, so the result equals
    whole-image normalisation exactly; a larger one is sampled by
    :func:`blockbuster.sampling.sample_blocks`. With ``channel_axis``, ``low`` and ``high`` are
    tuples with one value per channel.
    """
    if channel_axis is None:
        return _percentiles(_sample(image, max_voxels), percentiles)
    ranges = [_percentiles(_sample(_ChannelView(image, channel_axis, c), max_voxels), percentiles)
              for c in range(int(image.shape[channel_axis]))]
    return tuple(r[0] for r in ranges), tuple(r[1] for r in ranges)


def _percentiles(values: np.ndarray, percentiles: Sequence[float]) -> tuple[float, float]:
    low, high = np.percentile(np.asarray(values, dtype=np.float64), list(percentiles))
    return float(low), float(high)


def _sample(image: Any, max_voxels: int) -> np.ndarray:
    """All voxels of a small image, else evenly spread full-resolution blocks."""
    from blockbuster.sampling import sample_blocks

    if int(np.prod(image.shape)) <= max_voxels:
        return _computed(read_region(image, tuple(slice(None) for _ in image.shape))).ravel()
    block = int(round(65536 ** (1 / max(1, len(image.shape)))))  # 256 in 2D, 40 in 3D
    return sample_blocks(image, max_voxels=max_voxels, block=block)


def _computed(values: Any) -> np.ndarray:
    return np.asarray(values.compute() if hasattr(values, "compute") else values)


class _ChannelView:
    """One channel of an image as a lazily sliced array (``shape`` + ``__getitem__``)."""

    def __init__(self, image: Any, channel_axis: int, channel: int):
        self.image, self.axis, self.channel = image, channel_axis % len(image.shape), channel
        self.shape = tuple(s for i, s in enumerate(image.shape) if i != self.axis)

    def __getitem__(self, region: tuple[slice, ...]) -> np.ndarray:
        full = region[: self.axis] + (slice(self.channel, self.channel + 1),) + region[self.axis :]
        return np.squeeze(_computed(read_region(self.image, full)), axis=self.axis)


# -- options ------------------------------------------------------------------------------------
def checked_options(factory: Callable) -> Callable:
    """Check a factory's keyword options (names and annotated types) on every call, raising
    :class:`~blockbuster.errors.BackendOptionError` as the registry does for options by name."""

    @functools.wraps(factory)
    def create(*args: Any, **given: Any) -> Any:
        check_options(factory, given, factory.__name__, skip=len(args))
        return factory(*args, **given)

    return create


def declared_options(declaration: type) -> Callable[[Callable], Callable]:
    """Declare a backend factory's options once: the fields (names, types, defaults) of the
    dataclass ``declaration``.

    Write the factory as ``factory(<its own parameters>, *, options: Declaration)``; it is then
    called as ``factory(<its own parameters>, **options)``. Unknown names and values of the wrong
    type raise :class:`~blockbuster.errors.BackendOptionError` (one line, naming the option),
    and the factory receives one ``declaration`` instance. Its signature lists every option, so
    the registry checks options given by name (config files, ``--set``) the same way.
    """
    hints = typing.get_type_hints(declaration)
    fields = dataclasses.fields(declaration)

    def decorate(factory: Callable) -> Callable:
        signature = inspect.signature(factory)
        own = [p for p in signature.parameters.values() if p.name != "options"]
        names = {p.name for p in own}
        declared = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                                      default=_default_of(f), annotation=hints[f.name])
                    for f in fields]

        @functools.wraps(factory)
        def create(*args: Any, **given: Any) -> Any:
            check_options(create, given, factory.__name__, skip=len(args))
            mine = {k: given.pop(k) for k in list(given) if k in names}
            return factory(*args, **mine, options=declaration(**given))

        create.__signature__ = signature.replace(parameters=own + declared)
        return create

    return decorate


def _default_of(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return inspect.Parameter.empty
