"""The Cellpose model store (``register_model_stores``): what ``blockbuster models`` lists and
``blockbuster models pull`` fetches. Imports no cellpose/torch to list."""

from __future__ import annotations

from pathlib import Path

from blockbuster.downloads import ModelInfo
from blockbuster.plugins.cellpose import _compat, _weights


def models() -> list[ModelInfo]:
    """Built-in models of the installed Cellpose (and GUI-registered ones) in its model folder."""
    major = _compat.major_version()
    directory = _compat.models_dir()
    names = _compat.builtin_models(major) + _compat.user_models(directory)
    return [ModelInfo.at(name, directory / _compat.weights_filename(name, major))
            for name in dict.fromkeys(names)]


def pull(name: str) -> Path:
    """Download ``name``'s weights into Cellpose's model folder if missing; their path."""
    return _weights.resolve_weights(name, _compat.major_version())
