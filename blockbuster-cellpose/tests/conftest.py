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


def check_tiled_against_whole(truth, whole, tiled, *, min_f1_truth: float):
    """Object F1 at IoU >= 0.5: the whole-image run finds the truth, the tiled run agrees with
    it (F1 >= 0.97, no false merges or splits). Returns both matches."""
    from blockbuster.metrics import match_objects

    versus_truth = match_objects(truth, whole, iou_threshold=0.5)
    versus_whole = match_objects(whole, tiled, iou_threshold=0.5)
    print(f"{truth.max()} objects, F1 whole vs truth {versus_truth.f1:.4f}, "
          f"tiled vs whole {versus_whole.f1:.4f}")
    assert versus_truth.f1 >= min_f1_truth, f"whole-image run vs truth: {versus_truth}"
    assert versus_whole.f1 >= 0.97, f"tiled vs whole-image run: {versus_whole}"
    assert versus_whole.false_merges == 0 and versus_whole.false_splits == 0, versus_whole
    return versus_truth, versus_whole


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
    """Every test starts with an empty model cache, no GPU warning given, default env, and
    downloads off (tests never reach the internet; download tests switch them back on)."""
    from blockbuster.plugins.cellpose import _device, _loader

    monkeypatch.delenv("CELLPOSE_LOCAL_MODELS_PATH", raising=False)
    monkeypatch.setenv("BLOCKBUSTER_OFFLINE", "1")
    _loader.CACHE.clear()
    _loader.CACHE.loads = 0
    monkeypatch.setattr(_device, "_warned", False)
    yield
    _loader.CACHE.clear()


@pytest.fixture
def serve_models(tmp_path, monkeypatch):
    """``serve_models({"cyto3": bytes, ...})``: downloads on, an empty model folder
    (``tmp_path / "models"``) and Cellpose's own model URL (``cellpose.models._MODEL_URL``)
    on a local server serving those files; returns the :class:`FileServer`."""
    import contextlib

    from blockbuster.testing import serve_files

    models = pytest.importorskip("cellpose.models")
    monkeypatch.delenv("BLOCKBUSTER_OFFLINE", raising=False)
    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(tmp_path / "models"))
    with contextlib.ExitStack() as stack:

        def serve(files: dict[str, bytes]):
            server = stack.enter_context(serve_files(files))
            monkeypatch.setattr(models, "_MODEL_URL", server.url)
            return server

        yield serve
