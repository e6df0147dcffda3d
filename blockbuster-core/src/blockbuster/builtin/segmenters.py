"""Built-in model-free segmenters: ``threshold`` (connected components) and ``watershed``.

Both fix their threshold once per image (Otsu on a sample of blocks, see
:mod:`blockbuster.sampling`) when the pipeline calls ``prepare``, so every tile uses the same
threshold and tiled output equals whole-image output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from blockbuster.errors import InvalidParameterError
from blockbuster.hookspecs import hookimpl
from blockbuster.sampling import otsu_threshold, sample_blocks
from blockbuster.segmenter import Needs
from blockbuster.splitting import watershed_split


@hookimpl
def register_segmenters(register) -> None:
    register("threshold", Threshold, aliases=("otsu",),
             description="global threshold (Otsu or given), smoothing, min size, components")
    register("watershed", Watershed,
             description="threshold, then distance-transform watershed splits touching blobs")


@hookimpl(trylast=True)
def segmenter_needs(segmenter: Any) -> Needs | None:
    """The default: ask the segmenter's own ``blockbuster_needs()`` method."""
    method = getattr(segmenter, "blockbuster_needs", None)
    needs = method() if callable(method) else None
    return needs if isinstance(needs, Needs) else None


@dataclass(frozen=True)
class Threshold:
    """Foreground above a threshold, split into connected components.

    Parameters
    ----------
    threshold
        Intensity threshold (foreground is ``> threshold``); ``None`` computes Otsu's
        threshold once from a sample of the whole image.
    sigma
        Gaussian smoothing before thresholding (0 = none).
    min_size
        Remove objects with fewer voxels (exact when the halo covers the objects).
    connectivity
        1 = face neighbours only; up to ``ndim`` = also edge and corner neighbours.
    """

    threshold: float | None = None
    sigma: float = 0.0
    min_size: int = 0
    connectivity: int = 1

    def __post_init__(self):
        if self.sigma < 0 or self.min_size < 0 or self.connectivity < 1:
            raise InvalidParameterError(
                f"{type(self).__name__}: sigma and min_size must be >= 0 and connectivity >= 1 "
                f"(got sigma={self.sigma}, min_size={self.min_size}, "
                f"connectivity={self.connectivity})."
            )

    def prepare(self, image) -> Threshold:
        """Fix Otsu's threshold from a sample of ``image`` (no-op when one is given)."""
        if self.threshold is not None:
            return self
        return replace(self, threshold=otsu_threshold(sample_blocks(image)))

    def blockbuster_needs(self) -> Needs:
        return Needs(halo=math.ceil(4 * self.sigma) if self.sigma else None, bytes_per_voxel=13)

    def foreground(self, tile: np.ndarray) -> np.ndarray:
        image = tile
        if self.sigma:
            from scipy import ndimage

            image = ndimage.gaussian_filter(tile.astype(np.float32), self.sigma)
        threshold = self.threshold
        if threshold is None:  # called outside a pipeline: this tile's own Otsu
            threshold = otsu_threshold(image.ravel())
        return image > threshold

    def components(self, mask: np.ndarray) -> np.ndarray:
        from scipy import ndimage

        structure = ndimage.generate_binary_structure(mask.ndim, min(self.connectivity, mask.ndim))
        labels, _ = ndimage.label(mask, structure=structure)
        return self.remove_small(labels)

    def remove_small(self, labels: np.ndarray) -> np.ndarray:
        if self.min_size <= 1:
            return labels
        sizes = np.bincount(labels.ravel())
        small = sizes < self.min_size
        small[0] = False
        labels[small[labels]] = 0
        return labels

    def __call__(self, tile: np.ndarray) -> np.ndarray:
        return self.components(self.foreground(tile))


@dataclass(frozen=True)
class Watershed(Threshold):
    """Threshold, then split touching blobs by a watershed on the distance transform.

    Parameters
    ----------
    min_distance
        Minimum distance between object centres (about the smallest object radius).
    diameter
        Typical object diameter; the halo asked for is twice it (default ``4 * min_distance``).
    """

    min_distance: int = 5
    diameter: float | None = None

    def blockbuster_needs(self) -> Needs:
        diameter = self.diameter or 2 * self.min_distance
        halo = math.ceil(2 * diameter) + math.ceil(4 * self.sigma)
        return Needs(halo=halo, bytes_per_voxel=40)

    def __call__(self, tile: np.ndarray) -> np.ndarray:
        """Labels of the tile: the rule of :func:`blockbuster.splitting.watershed_split` (the
        one ``tile_process(..., instances="watershed")`` applies to a stitched map) run on this
        tile's own foreground, then small objects removed."""
        return self.remove_small(watershed_split(self.foreground(tile), self.min_distance))
