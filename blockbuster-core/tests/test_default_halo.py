"""Exact by default: with no ``overlap`` from the user or the segmenter, a 1-pixel halo makes
the overlap rule apply, so tiled connected components equal whole-image ones whatever the
function's connectivity (the touch rule joined objects meeting at an edge or corner)."""

import numpy as np
import pytest
from scipy import ndimage

from blockbuster import tile_process
from blockbuster.image import ImageView
from blockbuster.planning import DEFAULT_HALO, plan_tiling
from blockbuster.registry import Registry
from blockbuster.segmenter import Needs
from blockbuster.testing import assert_same_labels


def face_connected(tile):
    """``scipy.ndimage.label`` with its default structure: face neighbours only."""
    return ndimage.label(tile > 0)[0]


def _pixels(shape, *points):
    image = np.zeros(shape, np.uint8)
    for point in points:
        image[point] = 1
    return image


@pytest.mark.parametrize("image, tile_shape", [
    (_pixels((4, 4), (1, 1), (2, 2)), (2, 4)),                  # 2D: diagonal across a face
    (_pixels((4, 4, 4), (1, 1, 1), (2, 2, 1)), (2, 4, 4)),      # 3D: an edge across a face
    (_pixels((4, 4, 4), (1, 1, 1), (2, 2, 2)), (2, 4, 4)),      # 3D: a corner across a face
    (_pixels((4, 4, 4), (1, 1, 1), (2, 2, 2)), (2, 2, 2)),      # 3D: a corner of eight tiles
])
def test_objects_meeting_at_an_edge_or_corner_stay_apart(image, tile_shape):
    tiled = tile_process(image, face_connected, tile_shape=tile_shape, executor="serial",
                         compute=True)
    assert tiled.max() == 2
    assert_same_labels(face_connected(image), tiled)


def test_blob_volume_is_exact_by_default():
    """The issue's case, smaller: face-connected blobs in 3D, 2x3x3 tiles, no overlap given
    (the touch rule made 125 objects of 127)."""
    rng = np.random.default_rng(2)
    smooth = ndimage.gaussian_filter(rng.random((24, 96, 96)).astype(np.float32), 2)
    mask = smooth > np.quantile(smooth, 0.85)
    tiled = tile_process(mask, face_connected, tile_shape=(12, 32, 32), executor="serial",
                         compute=True)
    assert_same_labels(face_connected(mask), tiled)


def _grid(overlap=None, needs=None, shape=(8, 32, 32), tiles=(1, 16, 16), **options):
    image = ImageView.open(Registry().open_image(np.zeros(shape, np.uint8)))
    return plan_tiling(image, tiles, overlap, needs or Needs(), 1, None, **options)


def test_default_halo_skips_per_slice_axes_and_follows_the_alignment():
    assert _grid().overlap == (0, DEFAULT_HALO, DEFAULT_HALO)
    assert _grid(needs=Needs(align=4)).overlap == (0, 4, 4)
    assert _grid(needs=Needs(halo=3)).overlap == (0, 3, 3)


def test_given_overlap_and_chosen_touch_keep_their_grid():
    """Runs with an explicit overlap (or merge='touch') plan the grid they always did, so
    their resume fingerprints do not change."""
    assert _grid(overlap=0).overlap == (0, 0, 0)
    assert _grid(overlap=5).overlap == (0, 5, 5)
    assert _grid(default_halo=False).overlap == (0, 0, 0)
    image = _pixels((4, 4), (1, 1), (2, 2))
    touched = tile_process(image, face_connected, tile_shape=(2, 4), merge="touch",
                           executor="serial", compute=True)
    assert touched.max() == 1  # the touch rule, asked for, still joins across the corner
