"""Shared fixtures of the blockbuster-stardist tests.

Tests that run a model are marked ``slow``. Measured figures (agreement scores, timings) are
collected with the ``figures`` fixture and printed in a section at the end of the run.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np
import pytest

DATA = Path(__file__).parent / "data"
_FIGURES: list[str] = []


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: runs a real model or starts processes (deselect with -m 'not slow')"
    )


def pytest_terminal_summary(terminalreporter):
    if _FIGURES:
        terminalreporter.section("blockbuster-stardist measured figures")
        for line in _FIGURES:
            terminalreporter.write_line(line)


@pytest.fixture
def figures():
    """``figures(text)`` records a line for the end-of-run summary (and prints it)."""

    def record(text: str) -> None:
        print(text)
        _FIGURES.append(text)

    return record


@pytest.fixture(scope="session")
def tiny_2d() -> Path:
    """Tiny StarDist2D (16 rays, grid 2) trained on stardist's real nuclei test image."""
    return DATA / "tiny_2d"


@pytest.fixture(scope="session")
def tiny_rgb() -> Path:
    """Tiny StarDist2D with 3 input channels trained on synthetic H&E-like images."""
    return DATA / "tiny_rgb"


@pytest.fixture(scope="session")
def tiny_3d() -> Path:
    """Tiny StarDist3D (32 rays, grid 1,2,2) trained on synthetic ellipsoids."""
    return DATA / "tiny_3d"


@pytest.fixture
def empty_keras_home(tmp_path, monkeypatch) -> Path:
    """An empty Keras cache, so that no pretrained model is found."""
    home = tmp_path / "keras"
    home.mkdir()
    monkeypatch.setenv("KERAS_HOME", str(home))
    return home


def nuclei_mosaic(blocks: tuple[int, int] = (3, 3), seed: int = 0) -> np.ndarray:
    """A slide-like mosaic of stardist's real 512^2 nuclei image.

    Each block is a rotated/flipped copy with its own brightness (uneven staining or
    illumination across a slide), plus camera noise, as uint16.
    """
    from stardist.data import test_image_nuclei_2d

    img = test_image_nuclei_2d().astype(np.float32)
    rng = np.random.default_rng(seed)
    gains = [1.0, 0.55, 1.5, 0.8, 1.25, 0.65, 1.1, 0.7, 1.35]
    rows = []
    for r in range(blocks[0]):
        row = []
        for c in range(blocks[1]):
            k = r * blocks[1] + c
            block = np.rot90(img, k % 4)
            block = block[:, ::-1] if k % 2 else block
            row.append(block * gains[k % len(gains)])
        rows.append(np.concatenate(row, axis=1))
    mosaic = np.concatenate(rows, axis=0)
    return np.clip(mosaic + rng.normal(0, 1.5, mosaic.shape), 0, None).astype(np.uint16)


@pytest.fixture(scope="session")
def mosaic_2d() -> np.ndarray:
    """1536 x 1536 mosaic of real nuclei, larger than one tile."""
    return nuclei_mosaic((3, 3))


def _fixture_script():
    """``scripts/make_tiny_models.py`` as a module: its image generators are reused here."""
    import importlib.util

    path = Path(__file__).parents[1] / "scripts" / "make_tiny_models.py"
    spec = importlib.util.spec_from_file_location("make_tiny_models", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def blobs_3d() -> np.ndarray:
    """A 32 x 128 x 128 fluorescence volume of random ellipsoids (the tiny 3D model's domain)."""
    script = _fixture_script()
    rng = np.random.default_rng(7)
    labels = script.synthetic_blobs((32, 128, 128), 55, (4, 8), rng)
    return (script.fluorescent_volume(labels, rng) * 1000 + 100).astype(np.float32)


@pytest.fixture(scope="session")
def he_image() -> np.ndarray:
    """A 320 x 640 H&E-like RGB image (uint8, channel last) of random nuclei."""
    script = _fixture_script()
    rng = np.random.default_rng(11)
    labels = script.synthetic_blobs((320, 640), 160, (5, 10), rng)
    return script.he_like_rgb(labels, rng)


@pytest.fixture(autouse=True)
def _downloads_off(monkeypatch):
    """Tests never reach the internet: downloads are off unless a test switches them on."""
    monkeypatch.setenv("BLOCKBUSTER_OFFLINE", "1")
