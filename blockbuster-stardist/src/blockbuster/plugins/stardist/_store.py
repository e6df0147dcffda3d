"""The StarDist model store (``register_model_stores``): what ``blockbuster models`` lists and
``blockbuster models pull`` fetches. Listing imports no TensorFlow."""

from __future__ import annotations

from pathlib import Path

from blockbuster.downloads import ModelInfo

from . import _pretrained


def models() -> list[ModelInfo]:
    """StarDist's registered pretrained models and their folders in the Keras cache."""
    return [_pretrained.model_info(key, model_class)
            for key, model_class in _pretrained.PRETRAINED.items()]


def pull(name: str) -> Path:
    """Download ``name`` into the Keras cache if missing (as first use would); its folder."""
    return _pretrained.pretrained_folder(name)[2]
