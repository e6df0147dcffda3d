"""Make the pictures of docs/napari.md in a headless napari (Qt offscreen, no OpenGL needed):
the Run widget as Qt draws it (``QWidget.grab()``), and the result as the labels layer colours
it (its own colormap) over the image, written with imageio. ``viewer.screenshot()`` needs an
OpenGL framebuffer, which offscreen Qt does not have.

    QT_QPA_PLATFORM=offscreen .venv/bin/python docs/make_napari_pictures.py
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import imageio.v3 as iio  # noqa: E402
import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent / "images"


def main() -> None:
    import napari

    from blockbuster.synthetic import nuclei, write_image
    from blockbuster_napari import RunWidget

    os.chdir(tempfile.mkdtemp())  # short relative paths in the picture
    image = nuclei((512, 512), seed=2)
    write_image("nuclei.ome.zarr", image, axes="yx", scale=(0.5, 0.5),
                units={"y": "micrometer", "x": "micrometer"}, chunks=(128, 128))
    viewer = napari.Viewer(show=False)
    widget = RunWidget(viewer)
    widget.path.value = "nuclei.ome.zarr"
    widget.output.value = "nuclei-labels.zarr"
    widget.merge_log.value = True
    widget.start()
    widget.wait()
    widget.native.resize(420, 900)
    widget.native.grab().save(str(HERE / "napari-widget.png"))
    labels = viewer.layers["nuclei-labels"]
    picture = overlay(image, np.asarray(labels.data), labels)
    draw_seams(picture, viewer.layers["nuclei-labels seams"])
    iio.imwrite(HERE / "napari-result.png", picture)
    print(widget.status.value)
    viewer.close()


def overlay(image: np.ndarray, labels: np.ndarray, layer) -> np.ndarray:
    """The image in grey with the labels in the layer's colours at its opacity on top."""
    grey = (image - image.min()) / max(float(np.ptp(image)), 1e-9)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    colours = np.asarray(layer.colormap.map(labels.ravel())).reshape(*labels.shape, 4)
    alpha = colours[..., 3:] * layer.opacity
    mixed = rgb * (1 - alpha) + colours[..., :3] * alpha
    return (mixed * 255).round().astype(np.uint8)


def draw_seams(picture: np.ndarray, seams) -> None:
    """The seams layer's lines, one pixel wide, in its edge colours (yellow, red if contested)."""
    for (start, stop), colour in zip(seams.data, seams.edge_color):
        (y0, x0), (y1, x1) = np.asarray(start, int), np.asarray(stop, int)
        ys = slice(min(y0, picture.shape[0] - 1), max(y1, y0 + 1))
        xs = slice(min(x0, picture.shape[1] - 1), max(x1, x0 + 1))
        picture[ys, xs] = (np.asarray(colour[:3]) * 255).astype(np.uint8)


if __name__ == "__main__":
    sys.exit(main())
