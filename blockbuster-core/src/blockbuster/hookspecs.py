"""The plugin contract: pluggy hook specifications of project ``blockbuster``.

A plugin is a module (or object) with functions marked ``@hookimpl`` whose names match the
specs below. Packages expose their plugin module through the ``blockbuster`` entry-point group::

    [project.entry-points.blockbuster]
    mybackend = "my_package._plugin"

The built-in backends (:mod:`blockbuster.builtin`) register through exactly these hooks, each
module next to the implementations it registers.

Registration hooks (``register_*``) are **collect-all**: every plugin is called with a
``register`` callback and calls it once per backend it provides::

    register(name, factory, *, aliases=(), description="")

``factory`` is a callable or a ``"module:attribute"`` string, imported only when the backend is
first created, so discovery never imports torch, TensorFlow or cellpose. Options from a config
file or from keyword arguments are passed to the factory as keyword arguments.
"""

from __future__ import annotations

from typing import Any

import pluggy

PROJECT = "blockbuster"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_readers(register) -> None:
    """Register image readers (collect-all).

    Receives ``register(name, factory, *, aliases=(), description="")``. The factory is
    called as ``factory(source, **options)`` and returns a reader fulfilling
    :class:`~blockbuster.readers.Reader`: ``shape``, ``dtype``, ``chunks``, ``axes``,
    ``source``, ``read(region)``, ``identity()`` and ``metadata()``
    (:class:`~blockbuster.readers.BaseReader` provides the optional ones). Returns nothing.
    """


@hookspec
def register_segmenters(register) -> None:
    """Register segmenters (collect-all).

    Receives ``register(name, factory, *, aliases=(), description="")``. The factory is
    called as ``factory(**options)`` and returns a picklable callable ``tile -> labels``
    (see :mod:`blockbuster.segmenter` for the optional ``blockbuster_needs``, ``prepare`` and
    ``segment_batch`` extras). Options are the factory's annotated keyword parameters; the
    registry checks names and types before calling it (:mod:`blockbuster.options`). Returns
    nothing.
    """


@hookspec
def register_executors(register) -> None:
    """Register executors (collect-all).

    Receives ``register(name, factory, *, aliases=(), description="")``. The factory is
    called as ``factory(workers=None, **options)`` and returns an
    :class:`~blockbuster.executors.Executor`. Returns nothing.
    """


@hookspec
def register_writers(register) -> None:
    """Register label writers (collect-all).

    Receives ``register(name, factory, *, aliases=(), description="")``. The factory is
    called as ``factory(path, overwrite=False, **options)`` and returns a writer fulfilling
    :class:`~blockbuster.writers.Writer`: ``set_source(image)`` (the run's
    :class:`~blockbuster.image.ImageView`: axes, scale, units), ``check(fingerprint, source)``,
    ``create(shape, chunks, dtype, fingerprint)``, ``write(region, labels)``,
    ``finish(**info)`` and ``open() -> dask array``. Returns nothing.
    """


@hookspec
def register_model_stores(register) -> None:
    """Register the pretrained models a backend can fetch (collect-all; optional).

    Receives ``register(name, store, *, description="")``: ``name`` is the backend's name
    (``"cellpose"``) and ``store`` an object, or a ``"module:attribute"`` string imported only
    when used, with two functions: ``models() -> list[ModelInfo]`` (every model name the
    backend knows, whether its weights are cached and their size, see
    :class:`blockbuster.downloads.ModelInfo`) and ``pull(name) -> pathlib.Path`` (download the
    weights into the library's cache if missing, as first use would; raises
    :class:`~blockbuster.errors.ModelNotFoundError` offline or when the download fails).
    ``blockbuster models`` and ``blockbuster models pull NAME`` use them. Returns nothing.
    """


@hookspec(firstresult=True)
def pick_reader(source: Any) -> str | None:
    """Name the reader for ``source`` (first result wins).

    Receives the ``image`` argument of a run (a path, an array, ...) when no reader was named;
    a URL (``s3://``, ``https://``...) arrives as a :class:`~blockbuster.stores.Location`, whose
    ``read_bytes()`` and ``exists()`` look into the store with the run's ``storage_options``.
    Returns a registered reader name, or ``None`` to let other plugins decide. Format plugins
    claim their paths (e.g. by suffix or metadata). The core's ``tiff`` and ``ome-zarr``
    implementations are ``tryfirst``, its ``zarr``/``array`` one ``trylast``; a plain
    implementation is asked in between.
    """


@hookspec(firstresult=True)
def segmenter_needs(segmenter: Any) -> Any | None:
    """Advertise what a segmenter needs from the tiling (first result wins).

    Receives a segmenter (a callable). Returns a :class:`~blockbuster.segmenter.Needs` (halo
    and bytes per voxel), or ``None`` if this plugin does not know it. The built-in
    implementation (``trylast``) asks the segmenter's own ``blockbuster_needs()`` method, so a
    plugin can advertise needs for callables it does not own.
    """
