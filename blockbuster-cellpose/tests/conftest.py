"""Fixtures for the Cellpose backend tests: the tiny trained network and synthetic disks."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
PACKAGE_ROOT = HERE.parent
TINY_WEIGHTS = HERE / "data" / "tiny_disks_cp3"


def _load_script():
    """``scripts/make_tiny_model.py`` as a module (its generator made the training data)."""
    name = "blockbuster_cellpose_make_tiny_model"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, PACKAGE_ROOT / "scripts" /
                                                  "make_tiny_model.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


make_tiny_model = _load_script()


def synthetic_disks(shape=(256, 256), *, seed=0, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """Image and true labels of noisy disks (same distribution the tiny network saw)."""
    return make_tiny_model.synthetic_disks(shape, seed=seed, **kwargs)


@pytest.fixture(scope="session")
def tiny_weights() -> Path:
    """Path of the tiny Cellpose 3 network trained on disks (``scripts/make_tiny_model.py``)."""
    from blockbuster.plugins.cellpose import _compat

    if _compat.major_version() != 3:
        pytest.skip("the tiny test network is a Cellpose 3 CPnet; cellpose 4 is installed")
    if not TINY_WEIGHTS.is_file():
        pytest.fail(f"{TINY_WEIGHTS} is missing: run python scripts/make_tiny_model.py")
    return TINY_WEIGHTS


@pytest.fixture(autouse=True)
def _fresh_cellpose_state(monkeypatch):
    """Every test starts with an empty model cache, no GPU warning given, default env."""
    from blockbuster.plugins.cellpose import _device, _loader

    monkeypatch.delenv("CELLPOSE_LOCAL_MODELS_PATH", raising=False)
    _loader.CACHE.clear()
    _loader.CACHE.loads = 0
    monkeypatch.setattr(_device, "_warned", False)
    yield
    _loader.CACHE.clear()
