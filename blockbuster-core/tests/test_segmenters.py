"""Built-in segmenters tiled equal the whole image under one image-wide threshold.

The expectation is computed independently of blockbuster: skimage's Otsu threshold of the
whole image, then scipy's connected components. Tiles see very different intensities (some
are background only), so a threshold chosen per tile would not match.
"""

import numpy as np
import pytest
from scipy import ndimage
from skimage.filters import threshold_otsu

from blockbuster import tile_process
from blockbuster.builtin.segmenters import Threshold
from blockbuster.testing import assert_same_labels


def dim_and_bright_blobs(shape=(200, 240), seed=4):
    """Noisy background, bright blobs on the left, dim blobs in the middle, nothing right.

    Every side is at most 256 px, so Otsu on blockbuster's sample is Otsu on the whole image.
    """
    rng = np.random.default_rng(seed)
    image = rng.normal(0.1, 0.03, shape)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for y in range(15, shape[0] - 10, 30):
        for x, level in ((20, 1.0), (50, 1.0), (90, 0.35), (120, 0.35)):
            x += rng.integers(-3, 4)
            image[(yy - y) ** 2 + (xx - x) ** 2 <= rng.integers(25, 80)] = level
    return image.astype(np.float32)


@pytest.mark.parametrize("fn", ["threshold", Threshold()], ids=["by-name", "instance"])
def test_tiled_threshold_equals_whole_image_otsu(fn):
    image = dim_and_bright_blobs()
    expected = ndimage.label(image > threshold_otsu(image))[0]
    tiled = tile_process(image, fn, tile_shape=(50, 60), overlap=0, executor="serial",
                         compute=True)
    assert_same_labels(expected, tiled)
    assert expected.max() >= 10
    # a threshold of each tile's own would differ: tiles of dim blobs would keep them, the
    # empty right tiles would find noise
    middle = image[:, 60:120]
    assert threshold_otsu(middle) < 0.35 < threshold_otsu(image)
    right = image[:, 180:]
    assert (right > threshold_otsu(right)).sum() > 100
