"""Train a tiny Cellpose-3 network on synthetic disks and save its weights.

The weights written by this script (``tests/data/tiny_disks_cp3``) let the test
suite run real Cellpose inference offline: no pretrained weights can be
downloaded in CI, and random weights find no cells. The network is a small
``cellpose.resnet_torch.CPnet`` (``nbase=TINY_NBASE``) trained with
``cellpose.train.train_seg`` on images of bright, non-touching disks.

Usage (CPU, about two minutes on two cores)::

    python scripts/make_tiny_model.py            # writes tests/data/tiny_disks_cp3
    python scripts/make_tiny_model.py --evaluate  # also reports AP@0.5 on fresh images

The synthetic image generator :func:`synthetic_disks` is also imported by the
tests so that training and test images come from the same distribution.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

#: Channel widths of the tiny network (input channels first, as in CPnet).
TINY_NBASE = [2, 8, 16, 32, 64]
#: Mean disk diameter in pixels of the synthetic images.
DISK_DIAMETER = 24
DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "tiny_disks_cp3"


def synthetic_disks(
    shape: tuple[int, int] = (256, 256),
    *,
    diameter: float = DISK_DIAMETER,
    density: float = 0.5,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(image, labels)``: noisy bright disks on a dark background.

    Disks have a radius of ``diameter / 2 +- 15 %``, random brightness, never
    overlap (they keep a gap of at least 3 px) and may be cut by the image
    border. ``density`` is the fraction of the area the placement tries to
    cover. ``image`` is float32 in roughly [0, 1]; ``labels`` is int32.
    """
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    occupied = np.zeros(shape, bool)
    mean_r = diameter / 2
    n_target = int(density * labels.size / (np.pi * mean_r**2))
    label = 0
    for _ in range(n_target * 20):
        if label >= n_target:
            break
        r = mean_r * rng.uniform(0.85, 1.15)
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        window, dist2 = _local_distances(shape, cy, cx, r + 4)
        if occupied[window][dist2 <= (r + 3) ** 2].any():
            continue
        disk = dist2 <= r**2
        if disk.sum() < 20:
            continue
        label += 1
        labels[window][disk] = label
        occupied[window] |= disk
    brightness = rng.uniform(0.5, 1.0, label + 1)
    brightness[0] = 0.0
    image = ndimage.gaussian_filter(brightness[labels], 1.0)
    image = image + 0.1 + rng.normal(0, 0.05, shape)
    return image.astype(np.float32), labels


def _local_distances(shape, cy: float, cx: float, reach: float):
    """Window of the image within ``reach`` of ``(cy, cx)`` and squared distances in it."""
    y0, y1 = max(0, int(cy - reach)), min(shape[0], int(cy + reach) + 2)
    x0, x1 = max(0, int(cx - reach)), min(shape[1], int(cx + reach) + 2)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    return (slice(y0, y1), slice(x0, x1)), (yy - cy) ** 2 + (xx - cx) ** 2


def build_tiny_net():
    """Return an untrained tiny ``CPnet`` (3 outputs: two flows and cell probability).

    Its ``diam_mean`` is the disks' diameter, so inference needs no rescaling (Cellpose
    resizes images by ``diam_mean / diameter``), which keeps the tests fast.
    """
    from cellpose.resnet_torch import CPnet

    return CPnet(list(TINY_NBASE), nout=3, sz=3, mkldnn=False, diam_mean=float(DISK_DIAMETER))


def train(
    output: Path, *, n_images: int = 16, n_epochs: int = 60, bsize: int = 112, seed: int = 0
) -> Path:
    """Train the tiny network on ``n_images`` synthetic 256x256 images and save it to ``output``.

    ``bsize`` is the side of the random training crops (Cellpose's default is 224;
    112 is four times cheaper and plenty for disks rescaled to a diameter of 30).
    """
    import torch
    from cellpose import train as cp_train

    torch.manual_seed(seed)
    pairs = [synthetic_disks(seed=seed + i) for i in range(n_images)]
    images = [img for img, _ in pairs]
    labels = [lbl for _, lbl in pairs]
    net = build_tiny_net()
    with tempfile.TemporaryDirectory() as tmp:
        path, _, _ = cp_train.train_seg(
            net,
            train_data=images,
            train_labels=labels,
            channels=[0, 0],
            normalize=True,
            n_epochs=n_epochs,
            learning_rate=0.01,
            weight_decay=1e-5,
            batch_size=8,
            bsize=bsize,
            save_path=tmp,
            model_name="tiny",
            min_train_masks=1,
        )
        output.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, output)
    return output


def evaluate(weights: Path, *, n_images: int = 4, seed: int = 1000) -> float:
    """Return the mean AP@0.5 of the tiny network on fresh synthetic 512x512 images."""
    from cellpose import metrics

    from blockbuster.plugins.cellpose import cellpose_fn

    fn = cellpose_fn(str(weights))
    aps = []
    for i in range(n_images):
        image, truth = synthetic_disks((512, 512), seed=seed + i)
        masks = fn(image)
        ap, _, _, _ = metrics.average_precision([truth], [masks], threshold=[0.5])
        aps.append(float(ap[0, 0]))
    return float(np.mean(aps))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--evaluate", action="store_true", help="report AP@0.5 afterwards")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(message)s")
    logging.getLogger("cellpose.train").setLevel(logging.INFO)  # loss every 10 epochs
    t0 = time.perf_counter()
    out = train(args.output, n_images=args.images, n_epochs=args.epochs)
    size_kb = out.stat().st_size / 1024
    print(f"wrote {out} ({size_kb:.0f} KiB) in {time.perf_counter() - t0:.0f} s")
    if args.evaluate:
        print(f"AP@0.5 on fresh images: {evaluate(out):.3f}")


if __name__ == "__main__":
    main()
