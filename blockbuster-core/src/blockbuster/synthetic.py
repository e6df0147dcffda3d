"""Synthetic images for examples, tests and benchmarks (reproducible from a seed)."""

from __future__ import annotations

import numpy as np


def touching_disks(shape=(512, 512), radius=9, spacing=17, jitter=2, seed=0) -> np.ndarray:
    """A dense grid of disks (1 inside, 0 outside) whose neighbours touch or overlap."""
    rng = np.random.default_rng(seed)
    image = np.zeros(shape, np.float32)
    for cy in range(radius, shape[0] - radius, spacing):
        for cx in range(radius, shape[1] - radius, spacing):
            y = cy + rng.integers(-jitter, jitter + 1)
            x = cx + rng.integers(-jitter, jitter + 1)
            _paint_disk(image, y, x, radius + rng.integers(-1, 2), 1.0)
    return image


def nuclei(shape=(1024, 1024), *, density=0.004, radius=(5, 10), seed=0,
           dtype=np.uint16) -> np.ndarray:
    """A fluorescence-like nuclei image: bright blurred disks on a noisy dark background.

    ``density`` is nuclei per pixel. Works for 2D and 3D shapes (spheres in 3D).
    """
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    image = np.zeros(shape, np.float32)
    n = max(1, int(density * np.prod(shape) / (1 if len(shape) == 2 else 20)))
    centres = rng.integers(0, shape, size=(n, len(shape)))
    radii = rng.uniform(*radius, size=n)
    brightness = rng.uniform(0.6, 1.0, size=n)
    for centre, r, b in zip(centres, radii, brightness):
        _paint_disk(image, *centre, r, b)
    image = ndimage.gaussian_filter(image, 1.0)
    image += rng.normal(0.05, 0.02, size=shape).astype(np.float32)
    top = np.iinfo(dtype).max * 0.8 if np.issubdtype(dtype, np.integer) else 1.0
    return np.clip(image * top, 0, top).astype(dtype)


def _paint_disk(image: np.ndarray, *centre_and_radius_value) -> None:
    *centre, radius, value = centre_and_radius_value
    lo = [max(0, int(c - radius)) for c in centre]
    hi = [min(s, int(c + radius) + 1) for c, s in zip(centre, image.shape)]
    grids = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi))]
    inside = sum((g - c) ** 2 for g, c in zip(grids, centre)) <= radius**2
    view = image[tuple(slice(a, b) for a, b in zip(lo, hi))]
    view[inside] = np.maximum(view[inside], value)
