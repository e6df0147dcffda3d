"""Headless Qt for napari (offscreen platform, set before pytest-qt makes the QApplication),
a small OME-Zarr image with a physical scale, and a registry with a slow segmenter."""

from __future__ import annotations

import os
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from blockbuster import hookimpl  # noqa: E402
from blockbuster.builtin.segmenters import Watershed  # noqa: E402
from blockbuster.registry import Registry  # noqa: E402
from blockbuster.synthetic import touching_disks, write_image  # noqa: E402

SCALE = (0.5, 0.25)
TIMEOUT = 60_000  # ms


@pytest.fixture
def scale() -> tuple[float, float]:
    """The physical pixel size of ``ome_image``."""
    return SCALE


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


@pytest.fixture
def run_and_wait(qtbot):
    """Press a widget's Run and wait until its worker thread has finished (the UI thread kept
    going meanwhile)."""

    def run(widget) -> None:
        widget.run_button.clicked.emit()
        assert widget.worker is not None, widget.status.value
        assert widget.running
        qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT)

    return run


@pytest.fixture(scope="session")
def image() -> np.ndarray:
    return touching_disks((128, 96), seed=3)


@pytest.fixture
def ome_image(tmp_path, image):
    """The image as an OME-Zarr, 0.5 x 0.25 micrometer pixels, 32 x 32 chunks."""
    return write_image(tmp_path / "cells.ome.zarr", image, axes="yx", scale=SCALE,
                       units={"y": "micrometer", "x": "micrometer"}, chunks=(32, 32))


class SlowWatershed(Watershed):
    """The built-in watershed, a little slower per tile: room to press Cancel midway."""

    def __init__(self, delay: float = 0.05, **options):
        super().__init__(**options)
        self.delay = delay

    def __call__(self, tile):
        time.sleep(self.delay)
        return super().__call__(tile)


class SlowPlugin:
    @hookimpl
    def register_segmenters(self, register):
        register("slow-watershed", SlowWatershed, description="watershed, 50 ms a tile")


@pytest.fixture
def registry() -> Registry:
    return Registry(plugins=[SlowPlugin()])


@pytest.fixture(autouse=True)
def gl_answers_offscreen(monkeypatch):
    """Offscreen Qt has no OpenGL context, so napari's questions to GL (float textures? largest
    texture?) come back empty. Answer them as napari's own tests do: no float textures (napari's
    path for such GPUs) and 2048-pixel textures."""
    import napari._vispy.layers.base as vispy_base
    import napari._vispy.layers.image as vispy_image
    import napari._vispy.layers.labels as vispy_labels

    monkeypatch.setattr(vispy_image, "get_gl_extensions", lambda: "")
    for module in (vispy_image, vispy_base, vispy_labels):
        monkeypatch.setattr(module, "get_max_texture_sizes", lambda: (2048, 2048))
