"""Model sources (nn.Module, TorchScript, torch.export, factory + state dict) and
the per-process model cache.

A :class:`ModelSource` is small and picklable; it describes *where* the model
comes from.  :func:`load_model` turns it into a module on a device, once per
process and device: loaded models live in the module-level ``_MODEL_CACHE``.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import os
import re
import threading
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blockbuster.errors import BackendOptionError, ModelNotFoundError

_MODEL_CACHE: dict[tuple, Any] = {}
_CACHE_LOCK = threading.Lock()
_FACTORY_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
EXPORT_SUFFIXES = (".pt2",)


@dataclass
class ModelSource:
    """Where a model comes from.

    kind: ``"module"`` (an in-memory ``nn.Module``), ``"torchscript"``, ``"export"``
    (a ``torch.export`` program file) or ``"factory"`` (callable + state dict).
    """

    kind: str
    module: Any = None
    path: str | None = None
    factory: Callable[..., Any] | str | None = None
    weights: str | None = None
    factory_kwargs: dict = field(default_factory=dict)
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    def cache_key(self) -> tuple:
        """Identity of the model, stable across pickling into worker processes."""
        if self.kind in ("torchscript", "export"):
            return (self.kind, self.path, _mtime(self.path))
        if self.kind == "factory" and isinstance(self.factory, str):
            return (
                self.kind,
                self.factory,
                self.weights,
                _mtime(self.weights),
                repr(sorted(self.factory_kwargs.items())),
            )
        return (self.kind, self.token)

    def fingerprint(self) -> str:
        """Stable identity of the model's *content* for job fingerprints (resume checks).

        Files: path, size and modification time; an in-memory module: a hash of its
        class and weights; a factory: its name, kwargs and the weights file.
        """
        if self.kind in ("torchscript", "export"):
            return f"{self.kind}:{_file_identity(self.path)}"
        if self.kind == "factory":
            kwargs = repr(sorted(self.factory_kwargs.items()))
            return f"factory:{_qualname(self.factory)}({kwargs}):{_file_identity(self.weights)}"
        return f"module:{_qualname(type(self.module))}:{_weights_hash(self.module)}"

    def describe(self) -> str:
        """Short human-readable description for error messages."""
        if self.kind == "module":
            return f"nn.Module {type(self.module).__name__}"
        if self.kind == "factory":
            return f"factory {self.factory!r} with weights {self.weights!r}"
        return f"{self.kind} file {self.path!r}"


def _file_identity(path: str | None) -> str:
    try:
        stat = os.stat(path) if path else None
    except OSError:
        stat = None
    return f"{path}:{stat.st_size}:{stat.st_mtime_ns}" if stat else f"{path}:missing"


def _qualname(obj: Any) -> str:
    if isinstance(obj, str):
        return obj
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"


def _weights_hash(module: Any) -> str:
    """sha1 over the names, shapes and bytes of a module's parameters and buffers."""
    digest = hashlib.sha1()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _mtime(path: str | None) -> float | None:
    try:
        return os.path.getmtime(path) if path else None
    except OSError:
        return None


def make_source(
    model: Any, weights: str | os.PathLike | None = None, model_kwargs: dict | None = None
) -> ModelSource:
    """Classify the user's ``model`` argument into a :class:`ModelSource`.

    Accepted: an ``nn.Module``; a path to a TorchScript file or a ``torch.export``
    ``.pt2`` file; a factory (class/function or ``"package.module:attr"`` string)
    together with ``weights=`` (a state-dict file).
    """
    kwargs = dict(model_kwargs or {})
    if _is_nn_module(model):
        _reject_weights_for(weights, "an nn.Module")
        return ModelSource(kind="module", module=model)
    if isinstance(model, (str, os.PathLike)):
        text = os.fspath(model)
        if weights is None and not kwargs and (os.path.exists(text) or not _FACTORY_RE.match(text)):
            return _file_source(text)
        if _FACTORY_RE.match(text):
            return _factory_source(text, weights, kwargs)
        raise BackendOptionError(
            f"model={text!r} with weights= is neither a file nor a 'package.module:attr' factory; "
            "pass the model factory (class or 'package.module:Class') as model= and the state "
            "dict as weights=."
        )
    if callable(model):
        return _factory_source(model, weights, kwargs)
    raise BackendOptionError(
        f"model= got {type(model).__name__}; expected an nn.Module, a TorchScript or torch.export "
        "(.pt2) file path, or a factory (class, function or 'package.module:attr') with "
        "weights='state_dict.pt'."
    )


def _is_nn_module(obj: Any) -> bool:
    """True for torch.nn.Module instances, without importing torch for other types."""
    if not any((cls.__module__ or "").startswith("torch") for cls in type(obj).__mro__):
        return False
    import torch

    return isinstance(obj, torch.nn.Module)


def _reject_weights_for(weights: Any, what: str) -> None:
    if weights is not None:
        raise BackendOptionError(
            f"weights= is only used with a model factory, not with {what}; load the state dict "
            "into the module yourself or pass the factory as model=."
        )


def _file_source(path: str) -> ModelSource:
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise ModelNotFoundError(
            f"model file {path!r} not found (looked at {resolved.resolve()}); the torch backend "
            "loads models only from local files: save yours with "
            "torch.jit.save(torch.jit.script(net), 'net.pt'), "
            "torch.export.save(torch.export.export(net, ...), 'net.pt2'), or pass model=<factory> "
            "with weights='state_dict.pt'."
        )
    kind = "export" if resolved.suffix in EXPORT_SUFFIXES else "torchscript"
    return ModelSource(kind=kind, path=str(resolved.resolve()))


def _factory_source(factory: Any, weights: Any, kwargs: dict) -> ModelSource:
    if weights is None:
        raise BackendOptionError(
            f"model={factory!r} is a factory but no weights= was given; pass "
            "weights='state_dict.pt' (a file saved with torch.save(net.state_dict(), ...)), or "
            "pass an nn.Module instance."
        )
    weights_path = Path(os.fspath(weights)).expanduser()
    if not weights_path.is_file():
        raise ModelNotFoundError(
            f"state-dict file {os.fspath(weights)!r} not found (looked at "
            f"{weights_path.resolve()}); save one with torch.save(net.state_dict(), path) and pass "
            "that path as weights=."
        )
    return ModelSource(
        kind="factory", factory=factory, weights=str(weights_path.resolve()), factory_kwargs=kwargs
    )


def load_model(source: ModelSource, device: str, dtype: Any) -> Any:
    """Return the model for ``source`` on ``device`` in ``dtype``, eval mode; cached per process."""
    key = (source.cache_key(), device, str(dtype))
    with _CACHE_LOCK:
        model = _MODEL_CACHE.get(key)
        if model is None:
            model = _prepare(_load_cpu(source), source, device, dtype)
            _MODEL_CACHE[key] = model
    return model


def clear_model_cache() -> None:
    """Forget every loaded model (frees their memory once no segmenter holds them)."""
    with _CACHE_LOCK:
        _MODEL_CACHE.clear()


def _load_cpu(source: ModelSource) -> Any:
    import torch

    if source.kind == "module":
        return source.module
    if source.kind == "export":
        return _load_export(source.path)
    if source.kind == "torchscript":
        return _load_torchscript(source.path)
    factory = _resolve_factory(source.factory)
    net = factory(**source.factory_kwargs)
    state = torch.load(source.weights, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    net.load_state_dict(state)
    return net


def _load_export(path: str) -> Any:
    import torch

    try:
        program = torch.export.load(path)
    except Exception as exc:  # torch raises several types for a bad archive
        raise BackendOptionError(
            f"could not load {path!r} as a torch.export program ({type(exc).__name__}: {exc}); "
            "save it with torch.export.save(torch.export.export(net, (example,), "
            "dynamic_shapes=...), path)."
        ) from exc
    return program.module()


def _load_torchscript(path: str) -> Any:
    import torch

    try:
        # the user chose TorchScript; torch >= 2.10 flags it as deprecated
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(path, map_location="cpu")
    except Exception as exc:  # not a TorchScript archive: maybe a state dict or pickled model
        raise BackendOptionError(
            f"could not load {path!r} as TorchScript ({type(exc).__name__}); if it is a state "
            "dict, pass model=<factory> (class or 'package.module:Class') and weights=that file; "
            "if it is a torch.export program, give it the .pt2 suffix."
        ) from exc


def _resolve_factory(factory: Callable[..., Any] | str) -> Callable[..., Any]:
    if callable(factory):
        return factory
    module_name, _, attr = factory.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise BackendOptionError(
            f"model factory {factory!r} cannot be imported ({exc}); make sure the package is "
            "installed in the worker's environment and the name is 'package.module:attr'."
        ) from exc
    return target


def _prepare(net: Any, source: ModelSource, device: str, dtype: Any) -> Any:
    """Move ``net`` to ``device``/``dtype`` and switch it to eval mode.

    A user's in-memory module is deep-copied when it must change device or dtype,
    so the caller's object (and other workers' copies) stay untouched.
    """
    import torch

    current_device, current_dtype = _placement_of(net)
    moves = current_device != str(torch.device(device)) or (
        dtype is not None and dtype != current_dtype
    )
    if source.kind == "module" and moves:
        net = copy.deepcopy(net)
    net = net.to(device=device, dtype=dtype) if dtype is not None else net.to(device)
    if (
        source.kind != "export"
    ):  # exported programs are already in eval form; .eval() raises on them
        net.eval()
    return net


def _placement_of(net: Any) -> tuple[str, Any]:
    """(device, dtype) of the module's first floating-point parameter or buffer."""
    for tensor in list(net.parameters()) + list(net.buffers()):
        if tensor.is_floating_point():
            return str(tensor.device), tensor.dtype
    return "cpu", None
