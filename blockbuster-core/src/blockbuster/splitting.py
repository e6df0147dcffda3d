"""Splitting touching objects: a seeded watershed on the distance transform of a foreground.

``instances="watershed"`` (with a pixel-map ``output``, :mod:`blockbuster.pixelmaps`) forms
objects from the foreground by this rule instead of by connected components:

1. ``distance``: the Euclidean distance transform of the foreground;
2. seeds: the maxima of ``distance`` at least ``min_distance`` apart within each connected
   piece of foreground (``skimage.feature.peak_local_max(distance, min_distance=...,
   labels=pieces, exclude_border=False, threshold_abs=0)``), one seed per piece at least;
3. ``skimage.segmentation.watershed(-distance, seeds, mask=foreground)``.

:func:`watershed_split` is that rule on one array. A tiled run applies it to each tile's
*split window* -- its core plus ``split_halo`` pixels of the stitched map, whose values are
exact (the map's own halo lies beyond it) -- keeps the core, and joins tiles by the overlap
rule (:mod:`blockbuster.merge`). The distance transform is exact wherever the nearest
background lies inside the window; seeds are local maxima, and flood ties are broken by a rank
of the image coordinates (not by flood order, which depends on the whole window), so the
window's split of an object equals the whole image's when the object's seed and the basin it
floods lie inside the window: ``split_halo`` at least the largest object's diameter. The tests
check it pixel for pixel; with a smaller halo an object whose seed lies outside a tile's window
is merged into a neighbour there (``verify`` measures it).
"""

from __future__ import annotations

import numpy as np

from blockbuster.errors import InvalidParameterError

INSTANCES = ("components", "watershed")
DEFAULT_MIN_DISTANCE = 5
SPLIT_HALO_PER_MIN_DISTANCE = 4  # default split halo: about two object diameters
TIE_BREAK = 1e-7  # below the least gap between two distances under 10^5 (1 / (2 * distance))


def watershed_split(foreground: np.ndarray, min_distance: int = DEFAULT_MIN_DISTANCE,
                    connectivity: int = 1, origin: tuple[int, ...] | None = None) -> np.ndarray:
    """Objects of a boolean ``foreground``: touching blobs split by a seeded watershed on its
    distance transform (seeds ``min_distance`` apart). int32 labels, 0 = background.

    With ``origin`` (where ``foreground`` starts in the image), pixels the flood reaches at
    the same height are ordered by a fixed pseudo-random rank of their image coordinates, not
    by when the flood happened to reach them: every window of an image then draws a boundary
    between two touching objects where the whole image draws it. Without it (a tile that
    does not know where it lies), ties go by flood order, as in skimage.
    """
    from scipy import ndimage
    from skimage.feature import peak_local_max
    from skimage.measure import label
    from skimage.segmentation import watershed

    foreground = np.asarray(foreground, bool)
    pieces = label(foreground, background=0, connectivity=min(connectivity, foreground.ndim))
    if foreground.size == 0 or pieces.max() == 0:
        return pieces.astype(np.int32)
    distance = ndimage.distance_transform_edt(foreground)
    peaks = peak_local_max(distance, min_distance=max(1, int(min_distance)), labels=pieces,
                           exclude_border=False, threshold_abs=0)
    seeds = np.zeros(foreground.shape, np.int32)
    seeds[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    seed_unseeded_pieces(seeds, pieces)
    height = -distance if origin is None else (
        TIE_BREAK * pixel_rank(foreground.shape, origin) - distance)
    return watershed(height, seeds, mask=foreground,
                     connectivity=min(connectivity, foreground.ndim)).astype(np.int32)


def pixel_rank(shape: tuple[int, ...], origin: tuple[int, ...]) -> np.ndarray:
    """A pseudo-random number in ``[0, 1)`` for every pixel of a window at ``origin``, a
    function of its image coordinates alone (a multiplicative hash of them)."""
    key = np.zeros(shape, np.uint64)
    with np.errstate(over="ignore"):
        for axis, (start, size) in enumerate(zip(origin, shape)):
            coordinate = np.arange(start, start + size, dtype=np.uint64) + np.uint64(1)
            key = (key + coordinate.reshape([-1 if a == axis else 1 for a in range(len(shape))])
                   ) * np.uint64(0x9E3779B97F4A7C15)
            key ^= key >> np.uint64(29)
    return (key >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def seed_unseeded_pieces(seeds: np.ndarray, pieces: np.ndarray) -> None:
    """Give every piece of foreground without a seed one (the whole piece), so none is lost."""
    seeded = np.unique(pieces[seeds > 0])
    missing = np.setdiff1d(np.arange(1, int(pieces.max()) + 1), seeded)
    if len(missing):
        where = np.isin(pieces, missing)
        _, order = np.unique(pieces[where], return_inverse=True)
        seeds[where] = int(seeds.max()) + 1 + order.ravel()


def check_instances(instances: str, min_distance, split_halo, kind: str) -> None:
    """Refuse an unknown ``instances``, watershed options without it, and a class map split."""
    if instances not in INSTANCES:
        raise InvalidParameterError(f"instances={instances!r}; use one of {list(INSTANCES)}.")
    if instances == "components":
        given = [f"{name}={value!r}" for name, value in
                 (("min_distance", min_distance), ("split_halo", split_halo)) if value is not None]
        if given:
            raise InvalidParameterError(
                f"{', '.join(given)} applies only to instances='watershed' (splitting touching "
                "objects of a mask or probability map); drop it or pass instances='watershed'."
            )
        return
    if kind == "semantic":
        raise InvalidParameterError(
            "instances='watershed' splits the foreground of output='mask' or 'probability'; a "
            "class map's objects are the connected regions of each class. Use output='mask' "
            "with a foreground, or instances='components'."
        )
    for name, value in (("min_distance", min_distance), ("split_halo", split_halo)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | np.integer)
                                  or value < 1):
            raise InvalidParameterError(f"{name}={value!r}; use a whole number of pixels >= 1.")


def default_split_halo(min_distance: int) -> int:
    """The split window's halo when none is given: ``4 * min_distance`` (about two diameters
    of the objects the seed rule separates)."""
    return SPLIT_HALO_PER_MIN_DISTANCE * int(min_distance)
