"""Turn a model reference (built-in name or path) into a weights file.

A name resolves to a file in Cellpose's model folder (``$CELLPOSE_LOCAL_MODELS_PATH``,
default ``~/.cellpose/models``). When the file is missing it is downloaded there from
Cellpose's own model URL, once, by :func:`cellpose_fn` in the parent process (workers only
ever load the file). Offline (``BLOCKBUSTER_OFFLINE=1``) or when the download fails,
:class:`~blockbuster.errors.ModelNotFoundError` says where Cellpose looks and how to provide
the file. A path is used as given.
"""

from __future__ import annotations

import os
from pathlib import Path

from blockbuster.downloads import download_weights
from blockbuster.errors import ModelNotFoundError
from blockbuster.plugins.cellpose import _compat

MODEL_URLS = {
    3: "https://www.cellpose.org/models/{filename}",
    4: "https://huggingface.co/mouseland/cellpose-sam/resolve/main/{filename}",
}


def resolve_weights(model: str | os.PathLike, major: int) -> Path:
    """Path of the weights file for ``model`` (a built-in/user model name or a file path).

    Raises :class:`ModelNotFoundError` when the file is not on this machine.
    """
    text = os.fspath(model)
    candidate = Path(text).expanduser()
    if candidate.is_file():
        return candidate.resolve()
    if _looks_like_path(model, text):
        raise ModelNotFoundError(
            f"Cellpose weights file {text!r} does not exist. Pass the path of an existing "
            "weights file (e.g. one saved by cellpose training or copied from "
            f"{_compat.models_dir()}), or a built-in model name such as "
            f"{_compat.default_model(major)!r}."
        )
    return _resolve_name(text, major)


def _looks_like_path(model: str | os.PathLike, text: str) -> bool:
    """A reference that names a file rather than a model: PathLike, has a folder or suffix."""
    return (not isinstance(model, str)) or os.sep in text or "/" in text or (
        Path(text).suffix not in ("", ".")
    )


def _resolve_name(name: str, major: int) -> Path:
    """Weights of a built-in (or GUI-registered) model name in the local model folder."""
    directory = _compat.models_dir()
    known = _compat.builtin_models(major) + _compat.user_models(directory)
    if name not in known:
        raise ModelNotFoundError(_unknown_name_message(name, major, directory))
    filename = _compat.weights_filename(name, major)
    path = directory / filename
    if path.is_file():
        return path.resolve()
    download_weights(model_url(filename, major), path,
                     missing=_missing_weights_message(name, major, directory, filename))
    return path.resolve()


def model_url(filename: str, major: int) -> str:
    """Where Cellpose itself downloads ``filename`` from: ``cellpose.models._MODEL_URL`` (the
    base URL of ``cache_model_path`` on Cellpose 3 and 4), read at call time so a mirror
    patched in there is honoured; :data:`MODEL_URLS` when that cannot be read."""
    try:
        from cellpose import models
    except ImportError:
        models = None
    base = getattr(models, "_MODEL_URL", None)
    if isinstance(base, str):
        return f"{base.rstrip('/')}/{filename}"
    return MODEL_URLS[major].format(filename=filename)


def _unknown_name_message(name: str, major: int, directory: Path) -> str:
    other = 3 if major == 4 else 4
    hint = ""
    if name in _compat.BUILTIN_MODELS[other] and name not in _compat.builtin_models(major):
        hint = (f" {name!r} is a Cellpose {other} model; install "
                f"{'cellpose<4' if other == 3 else 'cellpose>=4'} to use it.")
    return (
        f"{name!r} is neither an existing weights file nor a built-in model of cellpose "
        f"{_compat.installed_version()} (built-ins: "
        f"{', '.join(_compat.builtin_models(major))}; custom models registered in "
        f"{directory / 'gui_models.txt'} also count).{hint} Pass the path of a weights file "
        "instead."
    )


def _missing_weights_message(name: str, major: int, directory: Path, filename: str) -> str:
    url = MODEL_URLS[major].format(filename=filename)
    return (
        f"Cellpose model {name!r} is not available offline: no file {directory / filename}. "
        f"Cellpose looks for built-in weights in ${_compat.MODELS_ENV} (default "
        f"~/.cellpose/models; now {directory}). Fix: on a machine with internet, run "
        f"`blockbuster models pull {name}` or download {url} and copy it to "
        f"{directory / filename} (or point {_compat.MODELS_ENV} at a folder holding "
        f"{filename!r}), or pass the weights file's path: cellpose_fn('/path/to/{filename}')."
    )
