from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from blockbuster import Needs
from blockbuster.errors import InvalidParameterError


@dataclass(frozen=True)
class BlurThreshold:
    """Smooth and threshold at a fixed level; blockbuster labels the connected components."""

    sigma: float = 2.0
    level: float = 0.5

    def __post_init__(self):  # runs when the backend is created: reject bad options early
        if self.sigma <= 0:
            raise InvalidParameterError(f"sigma must be > 0, got {self.sigma}")

    def __call__(self, tile: np.ndarray) -> np.ndarray:  # a mask: blockbuster labels it
        return ndimage.gaussian_filter(tile.astype(np.float32), self.sigma) > self.level

    def blockbuster_needs(self) -> Needs:  # the blur's radius: exact values in every core
        return Needs(halo=int(4 * self.sigma) + 1, bytes_per_voxel=12, output="mask")
