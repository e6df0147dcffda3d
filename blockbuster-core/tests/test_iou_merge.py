"""``merge="iou"``: per-slice 2D labels joined across planes by IoU, as Cellpose's ``stitch3D``
does on the whole stack, but tile by tile (also across XY tiles) and out of core."""

from types import SimpleNamespace

import numpy as np
import pytest
from skimage.measure import label
from skimage.segmentation import expand_labels

from blockbuster import tile_process
from blockbuster.errors import InvalidParameterError
from blockbuster.metrics import match_objects
from blockbuster.testing import assert_same_labels

stitch3D = pytest.importorskip("cellpose.utils").stitch3D


def per_plane(tile):
    """A per-slice 2D segmenter: the face-connected regions of each value of the plane."""
    return label(tile[0], connectivity=1, background=0)[None]


def cellpose_stitched(stack, threshold=0.25):
    """Cellpose's own answer: each plane labelled whole, then ``stitch3D``."""
    masks = np.stack([per_plane(plane[None])[0] for plane in stack]).astype(np.int32)
    return stitch3D(masks, stitch_threshold=threshold)


def cells(shape=(14, 96, 96), n=60, seed=0):
    """Dense touching 3D cells whose sections shift and change size from plane to plane."""
    rng = np.random.default_rng(seed)
    seeds = np.zeros(shape, np.int32)
    seeds[tuple(rng.integers(0, s, n) for s in shape)] = np.arange(1, n + 1)
    volume = expand_labels(seeds, distance=9)
    volume[4] = 0                                  # an empty plane after stitching began
    volume[9:11] = 0                               # two empty planes
    return volume


@pytest.mark.parametrize("threshold", [0.25, 0.5])
def test_a_stack_tiled_in_xy_gives_cellpose_stitch3d_objects(threshold):
    stack = cells()
    expected = cellpose_stitched(stack, threshold)
    tiled = tile_process(stack, per_plane, tile_shape=(1, 32, 32), merge="iou",
                         iou_threshold=threshold, executor="threads", workers=2, compute=True)
    score = match_objects(expected, tiled)
    assert score.f1 >= 0.999, score
    assert_same_labels(expected, tiled)


def _stack(*planes):
    return np.stack(planes).astype(np.int32)


def _plane(*boxes, shape=(32, 64)):
    plane = np.zeros(shape, np.int32)
    for value, (rows, cols) in enumerate(boxes, start=1):
        plane[rows, cols] = value
    return plane


SQUARE = (slice(0, 10), slice(0, 10))
INSIDE = (slice(1, 9), slice(1, 9))                # 64 of 100 pixels: IoU 0.64
SMALL_INSIDE = (slice(3, 7), slice(3, 7))          # 16 of 100 pixels: IoU 0.16
WIDE = (slice(20, 30), slice(0, 64))               # spans the four 16-pixel tiles
WIDE_START = (slice(20, 30), slice(0, 12))         # IoU 12/64 with WIDE, 12/16 with its piece


@pytest.mark.parametrize("stack, n_objects", [
    (_stack(_plane(INSIDE), _plane(SQUARE)), 1),             # a mask inside the next one's
    (_stack(_plane(SQUARE), _plane(INSIDE)), 1),
    (_stack(_plane(SMALL_INSIDE), _plane(SQUARE)), 2),       # inside, but IoU < 0.25
    (_stack(_plane(WIDE), _plane(WIDE_START)), 2),           # IoU of whole objects, not pieces
    (_stack(_plane(SQUARE), _plane(), _plane(SQUARE)), 2),   # an empty plane between
    (_stack(_plane(), _plane(SQUARE), _plane(SQUARE)), 1),   # a leading empty plane
])
def test_small_stacks_across_xy_tiles(stack, n_objects):
    tiled = tile_process(stack, per_plane, tile_shape=(1, 16, 16), merge="iou",
                         executor="serial", compute=True)
    assert tiled.max() == n_objects
    if n_objects == 2 and not stack[1].any():
        return  # stitch3D reuses plane 0's IDs after an empty plane before any stitch
    assert_same_labels(cellpose_stitched(stack), tiled)


def test_iou_keeps_apart_cells_that_only_overlap_where_touch_joins_them():
    stack = _stack(_plane(SQUARE, (slice(0, 10), slice(20, 30))),
                   _plane((slice(0, 10), slice(8, 22))))     # a thin bridge over both
    touched = tile_process(stack, per_plane, tile_shape=(1, 16, 16), executor="serial",
                           compute=True)
    stitched = tile_process(stack, per_plane, tile_shape=(1, 16, 16), merge="iou",
                            executor="serial", compute=True)
    assert touched.max() == 1 and stitched.max() == 3


def test_iou_merge_refuses_tiles_not_one_plane_thick_and_stray_thresholds():
    stack = _stack(_plane(SQUARE), _plane(SQUARE))
    with pytest.raises(InvalidParameterError, match="one plane thick.*tile_shape=\\(1, 1024"):
        tile_process(stack, per_plane, tile_shape=(2, 16, 16), merge="iou")
    with pytest.raises(InvalidParameterError, match="applies only to merge='iou'"):
        tile_process(stack, per_plane, tile_shape=(1, 16, 16), iou_threshold=0.3)
    with pytest.raises(InvalidParameterError, match=r"iou_threshold=1.5; use a number in \(0, 1\]"):
        tile_process(stack, per_plane, tile_shape=(1, 16, 16), merge="iou", iou_threshold=1.5)


def test_the_iou_threshold_is_part_of_the_job_and_absent_from_other_jobs(tmp_path):
    from blockbuster.errors import OutputExistsError
    from blockbuster.fingerprint import job_fingerprint

    stack = _stack(_plane(INSIDE), _plane(SQUARE))
    out = tmp_path / "labels.zarr"
    options = dict(tile_shape=(1, 16, 16), merge="iou", executor="serial", write_to=out)
    tile_process(stack, per_plane, iou_threshold=0.25, **options)
    tile_process(stack, per_plane, iou_threshold=0.25, **options)   # the same job: accepted
    with pytest.raises(OutputExistsError, match="not the output of this same job"):
        tile_process(stack, per_plane, iou_threshold=0.7, **options)
    image = SimpleNamespace(identity=lambda: "image", channel_axis=None)
    segmenter = SimpleNamespace(describe=lambda: "fn")
    grid = SimpleNamespace(tile_shape=(1, 16, 16), overlap=(0, 1, 1))
    assert "iou_threshold" not in job_fingerprint(image, segmenter, grid, "overlap", None)
    assert '"iou_threshold": 0.25' in job_fingerprint(image, segmenter, grid, "iou", None,
                                                      iou_threshold=0.25)
