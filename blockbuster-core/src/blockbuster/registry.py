"""The registry: one pluggy plugin manager per :class:`Registry` object, never a global one.

It registers the built-in backends as ordinary plugins, then loads each entry point of group
``blockbuster`` on its own: a plugin that fails to import is recorded (distribution, version,
error) and never takes the core down. ``BLOCKBUSTER_DISABLE_PLUGIN_AUTOLOAD=1`` skips entry
points (built-ins stay); ``block=[...]`` (config ``[plugins] block``) skips named plugins.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from blockbuster import hookspecs
from blockbuster.builtin import PLUGINS as BUILTIN_PLUGINS
from blockbuster.errors import (
    BackendBlockedError,
    BackendBrokenError,
    BackendNotInstalledError,
    BlockbusterError,
    ImageReadError,
    InvalidParameterError,
    PluginContractError,
    UnknownBackendError,
)
from blockbuster.options import check_options
from blockbuster.readers import READER_MEMBERS
from blockbuster.writers import WRITER_MEMBERS

ENTRY_POINT_GROUP = "blockbuster"
DISABLE_AUTOLOAD_ENV = "BLOCKBUSTER_DISABLE_PLUGIN_AUTOLOAD"
KINDS = ("reader", "segmenter", "executor", "writer")
# Backends that live in packages of their own: name -> distribution to install.
KNOWN_PACKAGES = {
    ("segmenter", "cellpose"): "blockbuster-cellpose",
    ("segmenter", "stardist"): "blockbuster-stardist",
    ("segmenter", "torch"): "blockbuster-torch",
    ("segmenter", "bioimageio"): "blockbuster-bioimageio",
    ("executor", "dask"): "blockbuster-core[distributed]",
}


@dataclass(frozen=True)
class Backend:
    """A registered reader, segmenter, executor or writer."""

    kind: str
    name: str
    factory: Callable | str | Any
    aliases: tuple[str, ...] = ()
    description: str = ""
    plugin: str = ""

    def load(self) -> Callable:
        """The factory, importing it now if it was registered as ``"module:attribute"`` (or
        ``"module"``, for a model store that is a module)."""
        if not isinstance(self.factory, str):
            return self.factory
        module, _, attribute = self.factory.partition(":")
        try:
            target = importlib.import_module(module)
            for part in attribute.split(".") if attribute else ():
                target = getattr(target, part)
        except Exception as error:
            raise BackendBrokenError(
                f"{self.kind} {self.name!r} (plugin {self.plugin}) failed to import "
                f"{self.factory}: {type(error).__name__}: {error}. Reinstall its package or "
                "check its dependencies."
            ) from error
        return target

    def create(self, *args: Any, **options: Any) -> Any:
        """Call the factory with ``options`` after checking it accepts them.

        A ``ValueError``/``TypeError`` from the factory (``sigma must be > 0``) becomes an
        :class:`InvalidParameterError` naming this backend and the option concerned.
        """
        factory = self.load()
        check_options(factory, options, f"{self.kind} {self.name!r}", skip=len(args))
        try:
            return factory(*args, **options)
        except (ValueError, TypeError) as error:
            if isinstance(error, BlockbusterError) and not isinstance(error, InvalidParameterError):
                raise
            raise self._rejected(options, error) from error

    def _rejected(self, options: dict, error: Exception) -> InvalidParameterError:
        """One line naming this backend and the option the factory's message mentions."""
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        named = [k for k in options if k in reason]
        what = f"{self.kind} {self.name!r} (plugin {self.plugin})"
        if len(named) == 1:
            return InvalidParameterError(
                f"{what} rejected option {named[0]}={options[named[0]]!r}: {reason}. Change "
                "that value in the config or call."
            )
        given = ", ".join(f"{k}={v!r}" for k, v in options.items() if v is not None)
        return InvalidParameterError(
            f"{what} could not be created{f' with {given}' if given else ''}: "
            f"{type(error).__name__}: {reason}."
        )


@dataclass(frozen=True)
class PluginFailure:
    """An entry point that could not be loaded."""

    name: str
    distribution: str
    version: str
    error: str
    traceback: str = ""


@dataclass
class PluginInfo:
    """A loaded plugin and the backends it registered."""

    name: str
    distribution: str
    version: str
    backends: dict[str, list[str]] = field(default_factory=dict)


class Registry:
    """Discovers plugins and resolves backends by name.

    Parameters
    ----------
    autoload
        Load entry-point plugins (default: unless ``BLOCKBUSTER_DISABLE_PLUGIN_AUTOLOAD`` is set).
    block
        Entry-point or distribution names not to load.
    plugins
        Extra plugin objects or modules to register (handy in tests).
    """

    def __init__(self, *, autoload: bool | None = None, block: Iterable[str] = (),
                 plugins: Iterable[Any] = ()):
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.failures: list[PluginFailure] = []
        self.blocked = set(block)
        self.skipped: list[PluginFailure] = []  # entry points left out by ``block``
        if autoload is None:
            autoload = not os.environ.get(DISABLE_AUTOLOAD_ENV)
        self.autoload = autoload
        self._sources: dict[int, tuple[str, str, str]] = {}
        for module in BUILTIN_PLUGINS:
            self._register(importlib.import_module(module), module, "blockbuster-core",
                           _core_version())
        if self.autoload:
            self._load_entry_points()
        for plugin in plugins:
            self._register(plugin, self._code_plugin_name(plugin), "", "")
        self.pm.check_pending()
        self._backends: dict[str, dict[str, Backend]] | None = None

    # -- discovery --------------------------------------------------------------------------
    def _register(self, plugin: Any, name: str, distribution: str, version: str) -> None:
        self.pm.register(plugin, name=name)
        self._sources[id(plugin)] = (name, distribution, version)

    def _code_plugin_name(self, plugin: Any) -> str:
        """A module's name, else its class name (its ``repr`` if that name is taken)."""
        name = getattr(plugin, "__name__", None) or type(plugin).__name__
        return repr(plugin) if self.pm.has_plugin(name) else name

    def _load_entry_points(self) -> None:
        for ep, dist, version in installed_entry_points(ENTRY_POINT_GROUP):
            if ep.name in self.blocked or dist in self.blocked:
                blocked_by = ep.name if ep.name in self.blocked else dist
                self.skipped.append(
                    PluginFailure(ep.name, dist, version, f"blocked as {blocked_by!r}"))
                continue
            if self.pm.has_plugin(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as error:
                self.failures.append(PluginFailure(
                    ep.name, dist, version, f"{type(error).__name__}: {error}",
                    traceback.format_exc(),
                ))
                continue
            self._register(plugin, ep.name, dist, version)

    def _collect(self) -> dict[str, dict[str, Backend]]:
        if self._backends is not None:
            return self._backends
        backends: dict[str, dict[str, Backend]] = {kind: {} for kind in KINDS}
        for kind in KINDS:
            hook = getattr(self.pm.hook, f"register_{kind}s")
            for impl in hook.get_hookimpls():  # registration order: built-ins first
                plugin_name = self._sources.get(id(impl.plugin), (impl.plugin_name,))[0]

                def register(name, factory, *, aliases=(), description="", _kind=kind,
                             _plugin=plugin_name):
                    backend = Backend(_kind, name, factory, tuple(aliases), description, _plugin)
                    for key in (name, *aliases):
                        backends[_kind].setdefault(key, backend)

                impl.function(register)
        self._backends = backends
        return backends

    def model_stores(self) -> list[Backend]:
        """Backends' model stores (``register_model_stores``), kind ``"model store"``: each
        ``load()`` gives an object with ``models()`` and ``pull(name)``."""
        stores: dict[str, Backend] = {}
        for impl in self.pm.hook.register_model_stores.get_hookimpls():
            plugin_name = self._sources.get(id(impl.plugin), (impl.plugin_name,))[0]

            def register(name, store, *, description="", _plugin=plugin_name):
                stores.setdefault(name, Backend("model store", name, store, (), description,
                                                _plugin))

            impl.function(register)
        return [stores[name] for name in sorted(stores)]

    # -- lookup -----------------------------------------------------------------------------
    def names(self, kind: str) -> list[str]:
        """Primary names of the installed backends of ``kind``."""
        return sorted({b.name for b in self._collect()[kind].values()})

    def get(self, kind: str, name: str) -> Backend:
        """The backend called ``name`` (or an alias), or a precise error.

        Broken (its plugin failed to import), blocked, known but not installed, or unknown:
        each says what to do.
        """
        table = self._collect()[kind]
        if name in table:
            return table[name]
        for failure in self.failures:
            if _may_provide(failure, kind, name):
                raise BackendBrokenError(
                    f"{kind} {name!r}: its plugin {failure.name!r} ({failure.distribution} "
                    f"{failure.version}) is installed but failed to import: {failure.error}. Fix "
                    "or reinstall that package (`blockbuster plugins` shows every failure)."
                )
        for skipped in self.skipped:
            if _may_provide(skipped, kind, name):
                raise BackendBlockedError(
                    f"{kind} {name!r}: its plugin {skipped.name!r} ({skipped.distribution}) is "
                    f"installed but {skipped.error}; remove that name from `[plugins] block` in "
                    "the config (or from `block=`) to use it."
                )
        if (kind, name) in KNOWN_PACKAGES:
            raise BackendNotInstalledError(
                f"{kind} {name!r} is not installed; install it with "
                f"`pip install {KNOWN_PACKAGES[(kind, name)]}`.{self._autoload_note()}"
            )
        raise self._unknown(kind, name, table)

    def _unknown(self, kind: str, name: str, table: dict) -> UnknownBackendError:
        close = difflib.get_close_matches(name, list(table), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        installed = ", ".join(self.names(kind)) or "none"
        others = [f"{f.name!r} failed to import ({f.error})" for f in self.failures]
        others += [f"{f.name!r} is {f.error}" for f in self.skipped]
        note = f" Plugins that may provide it: {'; '.join(others)}." if others else ""
        return UnknownBackendError(
            f"unknown {kind} {name!r}.{hint} Installed {kind}s: {installed}.{note}"
            f"{self._autoload_note()}"
        )

    def _autoload_note(self) -> str:
        if self.autoload:
            return ""
        return (f" Entry-point plugins were not loaded ({DISABLE_AUTOLOAD_ENV} is set or "
                "autoload=False); unset it to use installed plugins.")

    # -- creation ---------------------------------------------------------------------------
    def segmenter(self, spec: Callable | str, **options: Any) -> Callable:
        """A segmenter from a name (with options) or a callable (returned as is)."""
        if callable(spec):
            if options:
                raise InvalidParameterError(
                    "segmenter options were given with a callable; options apply only to a "
                    "segmenter chosen by name."
                )
            return spec
        return self.get("segmenter", spec).create(**options)

    def executor(self, spec: Any = None, *, workers: int | None = None, **options: Any):
        from blockbuster.executors import Executor

        if isinstance(spec, Executor):
            return spec
        return self.get("executor", spec or "threads").create(workers=workers, **options)

    def writer(self, spec: str | None, path: Any, *, overwrite: bool = False, **options: Any):
        """A writer (default ``zarr``) for ``path``, checked against the writer contract."""
        from blockbuster.stores import local_if_file_url

        backend = self.get("writer", spec or "zarr")
        path = local_if_file_url(path)
        return _fulfils(backend.create(path, overwrite=overwrite, **options), WRITER_MEMBERS,
                        backend, "blockbuster.writers.Writer")

    def open_image(self, source: Any, *, reader: str | None = None, **options: Any):
        """A reader for ``source``: the named one, or the one the ``pick_reader`` hook picks.

        A URL reaches ``pick_reader`` as a :class:`~blockbuster.stores.Location` (holding the
        ``storage_options`` option), so a plugin can look into the store; a ``file://`` URL
        is a plain local path everywhere.
        """
        from blockbuster.stores import Location, is_url, local_if_file_url

        source = local_if_file_url(source)
        probe = Location(source, options.get("storage_options")) if is_url(source) else source
        name = reader or self.pm.hook.pick_reader(source=probe)
        if name is None:
            tried = ", ".join(
                f"{b.name} ({b.description})" for b in self._unique("reader")
            )
            raise ImageReadError(
                f"no reader accepts {source!r}. Readers tried: {tried}. Convert the image to one "
                "of these formats or install a reader plugin."
            )
        backend = self.get("reader", name)
        return _fulfils(backend.create(source, **options), READER_MEMBERS, backend,
                        "blockbuster.readers.BaseReader")

    def needs(self, segmenter: Callable):
        """What ``segmenter`` needs from the tiling, through the ``segmenter_needs`` hook."""
        from blockbuster.segmenter import Needs

        return self.pm.hook.segmenter_needs(segmenter=segmenter) or Needs()

    # -- reporting --------------------------------------------------------------------------
    def _unique(self, kind: str) -> list[Backend]:
        seen, unique = set(), []
        for backend in self._collect()[kind].values():
            if backend.name not in seen:
                seen.add(backend.name)
                unique.append(backend)
        return unique

    def plugins(self) -> list[PluginInfo]:
        """Loaded plugins with the backends each registered: built-ins first, then entry points
        by name, each kind's backends by name (a stable order for ``blockbuster plugins``)."""
        infos = {name: PluginInfo(name, dist, version)
                 for name, dist, version in self._sources.values()}
        for kind in KINDS:
            for backend in self.backends(kind):
                if backend.plugin in infos:
                    infos[backend.plugin].backends.setdefault(kind, []).append(backend.name)
        return list(infos.values())

    def backends(self, kind: str) -> list[Backend]:
        """The installed backends of ``kind`` (each once, aliases on it), sorted by name."""
        return sorted(self._unique(kind), key=lambda backend: backend.name)


def _may_provide(plugin: PluginFailure, kind: str, name: str) -> bool:
    """Whether an entry point that did not load is the likely home of backend ``name``.

    Its entry-point name, its distribution (``blockbuster-<name>``) or the package known to
    ship that backend gives it away; anything else cannot be known without importing it.
    """
    dist = plugin.distribution.lower().replace("_", "-")
    known = KNOWN_PACKAGES.get((kind, name), "").split("[")[0]
    own_names = (plugin.name, dist.removeprefix("blockbuster-"))
    return name in own_names or (bool(known) and known == dist)


def _fulfils(made: Any, members: tuple[str, ...], backend: Backend, base: str) -> Any:
    """``made``, if it has every member of its kind's contract; else a precise error."""
    missing = [m for m in members if not hasattr(made, m)]
    if missing:
        raise PluginContractError(
            f"{backend.kind} {backend.name!r} (plugin {backend.plugin}) made a "
            f"{type(made).__name__} without {', '.join(missing)}, which the {backend.kind} "
            f"contract requires; subclass {base} for the defaults."
        )
    return made


def _core_version() -> str:
    from blockbuster._version import __version__

    return __version__


# -- the scan for installed plugins -----------------------------------------------------------
# Finding the entry points reads the metadata of every installed distribution (~45 ms with the
# test environment's 276), more than the rest of a small run. The scan's result, never a plugin
# manager, is kept for as long as the environment looks the same: the same ``sys.path`` with
# the same modification times (installing or removing a distribution adds or removes its
# ``.dist-info`` folder, which changes its parent's time), and the same scanning function.
_scans: dict[str, tuple[tuple, tuple]] = {}  # group -> (what it was scanned under, found)


def installed_entry_points(group: str) -> tuple[tuple[Any, str, str], ...]:
    """The entry points of ``group`` of the installed distributions by name, each with its
    distribution's name and version (``""`` when unknown), scanned again only when the
    environment changed (:func:`environment_stamp`)."""
    from importlib_metadata import entry_points

    key = (entry_points, environment_stamp())
    scanned = _scans.get(group)
    if scanned is None or scanned[0] != key:
        found = sorted(entry_points(group=group), key=lambda ep: ep.name)
        scanned = _scans[group] = (key, tuple(
            (ep, ep.dist.name if ep.dist else "", ep.dist.version if ep.dist else "")
            for ep in found))
    return scanned[1]


def environment_stamp() -> tuple:
    """Each ``sys.path`` entry with its modification time (``None`` where it does not exist)."""
    stamp = []
    for entry in sys.path:
        try:
            stamp.append((entry, os.stat(entry or ".").st_mtime_ns))
        except OSError:
            stamp.append((entry, None))
    return tuple(stamp)
