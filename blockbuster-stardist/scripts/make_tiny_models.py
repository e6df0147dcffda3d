"""Train the tiny StarDist models committed as test fixtures.

The models are deliberately minuscule (a 2-level U-Net with 8 base filters) so that they
train in about a minute on a 2-core CPU, weigh a few hundred KB and run fast in tests.
They are *not* meant to be good segmenters, only real StarDist models with a real receptive
field, real thresholds and real non-maximum suppression.

Usage (from the repository root)::

    python blockbuster-stardist/scripts/make_tiny_models.py            # all models
    python blockbuster-stardist/scripts/make_tiny_models.py --only 2d  # one of 2d, rgb, 3d

Output: ``blockbuster-stardist/tests/data/<name>/{config.json,weights_best.h5,thresholds.json}``.
Everything is seeded; TensorFlow on CPU is close to, but not bit-for-bit, reproducible.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np

DATA_DIR = Path(__file__).resolve().parents[1] / "tests" / "data"
KEEP_FILES = ("config.json", "weights_best.h5", "thresholds.json")


def seed_everything(seed: int) -> np.random.Generator:
    """Seed numpy, python and TensorFlow; return a numpy generator."""
    import random

    import tensorflow as tf

    random.seed(seed)
    np.random.seed(seed)
    tf.random.set_seed(seed)
    return np.random.default_rng(seed)


def percentile_normalize(img: np.ndarray, axis=None) -> np.ndarray:
    """Normalize with the (1, 99.8) percentiles, StarDist's usual choice."""
    from csbdeep.utils import normalize

    return normalize(img, 1, 99.8, axis=axis).astype(np.float32)


def dihedral_variants(img: np.ndarray, lbl: np.ndarray):
    """Yield the 8 rotations/flips of a 2D (or channel-last 2D) image with its labels."""
    for k in range(4):
        r_img, r_lbl = np.rot90(img, k, axes=(0, 1)), np.rot90(lbl, k, axes=(0, 1))
        yield r_img, r_lbl
        yield r_img[:, ::-1], r_lbl[:, ::-1]


def nuclei_training_patches(patch: int = 128):
    """Real nuclei (stardist's 512^2 DSB image and mask) in patches, 8 dihedral variants each."""
    from stardist.data import test_image_nuclei_2d

    img, lbl = test_image_nuclei_2d(return_mask=True)
    img = percentile_normalize(img)
    X, Y = [], []
    for y0 in range(0, img.shape[0], patch):
        for x0 in range(0, img.shape[1], patch):
            window = (slice(y0, y0 + patch), slice(x0, x0 + patch))
            for a, b in dihedral_variants(img[window], lbl[window]):
                X.append(np.ascontiguousarray(a))
                Y.append(np.ascontiguousarray(b))
    return X, Y


def synthetic_blobs(shape, n_objects: int, radius: tuple[float, float], rng: np.random.Generator):
    """Non-overlapping random ellipsoids in an n-D volume: (label image, object mask)."""
    lbl = np.zeros(shape, np.uint16)
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    label = 0
    for _ in range(n_objects * 20):
        if label == n_objects:
            break
        centre = [rng.uniform(0, s) for s in shape]
        radii = [rng.uniform(*radius) for _ in shape]
        inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii, strict=True)) <= 1
        if inside.sum() < 8 or (lbl[inside] > 0).any():
            continue
        label += 1
        lbl[inside] = label
    return lbl


def he_like_rgb(lbl: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Render labels as an H&E-like RGB image: purple nuclei on pink tissue, with noise."""
    pink = np.array([232, 170, 205], np.float32)
    purple = np.array([95, 55, 150], np.float32)
    img = np.where((lbl > 0)[..., None], purple, pink)
    img = img + rng.normal(0, 18, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def fluorescent_volume(lbl: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Render labels as a noisy fluorescence volume with per-object brightness."""
    from scipy.ndimage import gaussian_filter

    brightness = rng.uniform(0.5, 1.0, int(lbl.max()) + 1)
    brightness[0] = 0
    img = gaussian_filter(brightness[lbl].astype(np.float32), 1.0)
    return img + rng.normal(0, 0.08, lbl.shape).astype(np.float32)


def save_fixture(model, name: str) -> Path:
    """Keep only the files a model folder needs and report its size."""
    folder = Path(model.basedir) / model.name
    for path in folder.iterdir():
        if path.name not in KEEP_FILES:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    size = sum(p.stat().st_size for p in folder.iterdir())
    print(f"[{name}] saved {folder} ({size / 1024:.0f} KB)")
    return folder


def fresh_basedir(name: str, out: Path) -> Path:
    """Remove a previous fixture folder of that name (StarDist refuses to overwrite silently)."""
    target = out / name
    if target.exists():
        shutil.rmtree(target)
    out.mkdir(parents=True, exist_ok=True)
    return out


def train_tiny_2d(out: Path) -> Path:
    """Tiny 2D fluorescence model trained on real nuclei (stardist's DSB test image)."""
    from stardist.models import Config2D, StarDist2D

    seed_everything(0)
    X, Y = nuclei_training_patches()
    val = slice(0, len(X), 16)
    conf = Config2D(
        n_rays=16, grid=(2, 2), n_channel_in=1, unet_n_depth=2, unet_n_filter_base=8,
        train_patch_size=(96, 96), train_batch_size=8, train_epochs=25,
        train_steps_per_epoch=30, train_tensorboard=False, use_gpu=False,
    )
    model = StarDist2D(conf, name="tiny_2d", basedir=str(fresh_basedir("tiny_2d", out)))
    model.train(X, Y, validation_data=(X[val], Y[val]), augmenter=None)
    model.optimize_thresholds(X[val], Y[val])
    return save_fixture(model, "tiny_2d")


def train_tiny_rgb(out: Path) -> Path:
    """Tiny 2D RGB model on synthetic H&E-like images (checks the colour-input path)."""
    from stardist.models import Config2D, StarDist2D

    rng = seed_everything(1)
    X, Y = [], []
    for _ in range(24):
        lbl = synthetic_blobs((128, 128), 14, (5, 10), rng)
        X.append(percentile_normalize(he_like_rgb(lbl, rng), axis=(0, 1)))
        Y.append(lbl)
    conf = Config2D(
        n_rays=16, grid=(2, 2), n_channel_in=3, unet_n_depth=2, unet_n_filter_base=8,
        train_patch_size=(96, 96), train_batch_size=8, train_epochs=12,
        train_steps_per_epoch=25, train_tensorboard=False, use_gpu=False,
    )
    model = StarDist2D(conf, name="tiny_rgb", basedir=str(fresh_basedir("tiny_rgb", out)))
    model.train(X[4:], Y[4:], validation_data=(X[:4], Y[:4]))
    model.optimize_thresholds(X[:4], Y[:4])
    return save_fixture(model, "tiny_rgb")


def train_tiny_3d(out: Path) -> Path:
    """Tiny 3D model on synthetic fluorescent ellipsoids."""
    from stardist import Rays_GoldenSpiral
    from stardist.models import Config3D, StarDist3D

    rng = seed_everything(2)
    X, Y = [], []
    for _ in range(10):
        lbl = synthetic_blobs((32, 64, 64), 14, (4, 8), rng)
        X.append(percentile_normalize(fluorescent_volume(lbl, rng)))
        Y.append(lbl)
    conf = Config3D(
        rays=Rays_GoldenSpiral(32), grid=(1, 2, 2), n_channel_in=1, unet_n_depth=2,
        unet_n_filter_base=8, train_patch_size=(32, 48, 48), train_batch_size=2,
        train_epochs=12, train_steps_per_epoch=20, train_tensorboard=False, use_gpu=False,
    )
    model = StarDist3D(conf, name="tiny_3d", basedir=str(fresh_basedir("tiny_3d", out)))
    model.train(X[2:], Y[2:], validation_data=(X[:2], Y[:2]))
    model.optimize_thresholds(X[:2], Y[:2])
    return save_fixture(model, "tiny_3d")


TRAINERS = {"2d": train_tiny_2d, "rgb": train_tiny_rgb, "3d": train_tiny_3d}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(TRAINERS), action="append",
                        help="train only this model (repeatable); default: all")
    parser.add_argument("--out", type=Path, default=DATA_DIR, help="output folder")
    args = parser.parse_args(argv)
    for key in args.only or list(TRAINERS):
        start = time.perf_counter()
        TRAINERS[key](args.out)
        print(f"[{key}] trained in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
