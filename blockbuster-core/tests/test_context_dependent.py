"""A context-dependent fn (watershed splitting touching disks): overlap merging vs touch merging."""

import numpy as np
import pytest

from blockbuster import tile_process
from blockbuster.metrics import match_objects
from blockbuster.builtin.segmenters import Watershed

from blockbuster.synthetic import touching_disks


@pytest.fixture(scope="module")
def dense_disks():
    image = touching_disks((768, 768), radius=9, spacing=17, seed=3)
    fn = Watershed(threshold=0.5, min_distance=5, diameter=20)
    return image, fn, fn(image)


def test_overlap_merge_matches_whole_image(dense_disks):
    image, fn, whole = dense_disks
    tiled = tile_process(image, fn, tile_shape=(128, 128), overlap=40, merge="overlap",
                         compute=True)
    score = match_objects(whole, tiled)
    n = whole.max()
    print(f"overlap merge on {n} disks: F1={score.f1:.4f} merges={score.false_merges} "
          f"splits={score.false_splits}")
    assert score.f1 >= 0.995
    assert score.false_merges <= 0.001 * n


def test_touch_merge_over_merges_where_overlap_does_not(dense_disks):
    image, fn, whole = dense_disks
    touched = tile_process(image, fn, tile_shape=(128, 128), overlap=40, merge="touch",
                           compute=True)
    overlapped = tile_process(image, fn, tile_shape=(128, 128), overlap=40, merge="overlap",
                              compute=True)
    touch_score = match_objects(whole, touched)
    overlap_score = match_objects(whole, overlapped)
    print(f"false merges: touch={touch_score.false_merges} overlap={overlap_score.false_merges}")
    assert touch_score.false_merges > 0
    assert overlap_score.false_merges < touch_score.false_merges


def test_overlap_merge_keeps_touching_objects_apart_in_a_stack_tiled_in_y_and_x_only():
    # tiles hold every plane (no halo along z): pixel pairs that cross a y/x face and step to
    # the next plane were predicted by both tiles too, so the overlap rule must judge them
    disks = touching_disks((384, 384), radius=9, spacing=17, seed=5)
    stack = np.stack([disks] * 3)
    fn = Watershed(threshold=0.5, min_distance=5, diameter=20)
    whole = fn(stack)
    tiled = tile_process(stack, fn, tile_shape=(3, 128, 128), overlap=(0, 40, 40),
                         merge="overlap", compute=True)
    score = match_objects(whole, tiled)
    print(f"stack: {whole.max()} objects, F1={score.f1:.4f} merges={score.false_merges}")
    assert score.false_merges == 0 and score.f1 >= 0.995
