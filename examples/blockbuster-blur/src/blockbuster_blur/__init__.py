from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from blockbuster import Needs


@dataclass(frozen=True)
class BlurThreshold:
    """Smooth, threshold at a fixed level, label connected components."""

    sigma: float = 2.0
    level: float = 0.5

    def __call__(self, tile: np.ndarray) -> np.ndarray:
        return ndimage.label(ndimage.gaussian_filter(tile.astype(np.float32), self.sigma) > self.level)[0]

    def blockbuster_needs(self) -> Needs:  # halo for an exact blur at tile borders
        return Needs(halo=int(4 * self.sigma) + 1, bytes_per_voxel=12)
