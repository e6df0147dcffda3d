"""Synthetic images for examples, tests and benchmarks (reproducible from a seed)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


def write_image(path: str | os.PathLike, data: np.ndarray, *, axes: Sequence[str],
                scale: Sequence[float] | None = None, units: dict[str, str] | None = None,
                channel_labels: Sequence[str] | None = None, version: str = "0.5",
                levels: int = 1, chunks: Sequence[int] | None = None) -> Path:
    """Write an in-memory array as an OME-Zarr image (NGFF 0.5 on zarr v3, or 0.4 on v2).

    For examples, tests and benchmarks: ``levels`` halves y and x (nearest) per level.
    ``units`` maps axis names to units, e.g. ``{"y": "micrometer", "x": "micrometer"}``.
    """
    import zarr

    from blockbuster.builtin.ome_zarr import AXIS_TYPES, pyramid_factors, set_ome_attrs
    from blockbuster.errors import InvalidParameterError

    if version not in ("0.4", "0.5"):
        raise InvalidParameterError(f"version={version!r}; use '0.4' or '0.5'.")
    axes = [a.lower() for a in axes]
    if len(axes) != data.ndim:
        raise InvalidParameterError(f"axes {axes} do not match data of shape {data.shape}.")
    fmt = 3 if version == "0.5" else 2
    scale = [float(s) for s in (scale or [1.0] * data.ndim)]
    units = units or {}
    group = zarr.open_group(str(path), mode="w", zarr_format=fmt)
    factors = pyramid_factors(axes)
    chunks = tuple(chunks) if chunks is not None else tuple(min(s, 64) for s in data.shape)
    datasets, level = [], data
    for index in range(levels):
        if index:
            level = level[tuple(slice(None, None, f) for f in factors)]
        group.create_array(str(index), data=level,
                           chunks=tuple(min(c, s) for c, s in zip(chunks, level.shape)),
                           dimension_names=axes if fmt == 3 else None)
        datasets.append({"path": str(index), "coordinateTransformations": [
            {"type": "scale", "scale": [s * f ** index for s, f in zip(scale, factors)]}]})
    axes_meta = []
    for name in axes:
        entry = {"name": name, "type": AXIS_TYPES.get(name, "space")}
        if name in units:
            entry["unit"] = units[name]
        axes_meta.append(entry)
    multiscale = {"name": Path(path).stem, "axes": axes_meta, "datasets": datasets}
    values: dict[str, Any] = {"multiscales": [multiscale]}
    if channel_labels is not None:
        values["omero"] = {"channels": [{"label": str(c), "active": True} for c in
                                        channel_labels]}
    if version == "0.4":
        multiscale["version"] = "0.4"
        if "omero" in values:
            values["omero"]["version"] = "0.4"
    set_ome_attrs(group, fmt, version, values)
    return Path(path)
