"""Tiled connected components equal whole-image connected components, up to renumbering."""

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st
from scipy import ndimage

from blockbuster import tile_process
from blockbuster.testing import assert_same_labels


class Components:
    """fn = connected components of a fixed threshold (module level: picklable)."""

    def __init__(self, connectivity):
        self.connectivity = connectivity

    def __call__(self, tile):
        structure = ndimage.generate_binary_structure(tile.ndim, self.connectivity)
        return ndimage.label(tile > 0.5, structure=structure)[0]


@st.composite
def axes(draw, longest, split):
    """``(size, tile, halo)`` of one axis; a ``split`` axis has 2+ tiles and a halo."""
    if split:
        size = draw(st.integers(3, longest))
        tile = draw(st.integers(2, size - 1))
        return size, tile, draw(st.integers(1, min(tile - 1, 3)))
    size = draw(st.integers(1, longest))
    tile = draw(st.integers(1, size + 3))  # 1 px .. larger than the image
    return size, tile, draw(st.integers(0, min(tile - 1, 3)))


@st.composite
def cases(draw, max_ndim=3):
    """Images, tilings and merge modes; every ``"overlap"`` case splits an axis with a halo.

    Without such an axis the overlap rule never runs (``merge=None`` would fall back to
    touching), so the split axis is drawn first and shrinks to a 3 px axis of two tiles.
    """
    ndim = draw(st.integers(2, max_ndim))
    merge = draw(st.sampled_from(["overlap", "touch"]))
    split = draw(st.integers(0, ndim - 1)) if merge == "overlap" else None
    longest = 24 if ndim == 2 else 10
    shape, tile_shape, overlap = zip(*(draw(axes(longest, axis == split))
                                       for axis in range(ndim)))
    connectivity = draw(st.sampled_from([1, ndim]))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    image = rng.random(shape).astype(np.float32)
    if draw(st.booleans()):
        image = ndimage.gaussian_filter(image, 1.0) * 2 - 0.5
    return image, tile_shape, overlap, merge, connectivity


def _check(case, executor):
    image, tile_shape, overlap, merge, connectivity = case
    fn = Components(connectivity)
    split_with_halo = [o > 0 and t < s for o, t, s in zip(overlap, tile_shape, image.shape)]
    assert merge == "touch" or any(split_with_halo)  # the overlap rule really runs
    event(f"merge={merge}")
    tiled = tile_process(image, fn, tile_shape=tile_shape, overlap=overlap, merge=merge,
                         connectivity=connectivity,
                         executor=executor, workers=2, compute=True)
    assert tiled.dtype == np.uint32
    whole = fn(image)
    assert_same_labels(whole, tiled)
    assert tiled.max() == whole.max()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_serial(case):
    _check(case, "serial")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_threads(case):
    _check(case, "threads")


@pytest.mark.slow
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(max_ndim=2))
def test_processes(case):
    _check(case, "processes")


def test_long_thin_object_crossing_a_face_stays_one_object():
    image = np.zeros((40, 40), np.float32)
    image[5, 2:38] = 1  # a 1-pixel line crossing three tile faces
    image[5:35, 30] = 1
    labels = tile_process(image, Components(1), tile_shape=(10, 10), overlap=3, merge="overlap",
                          executor="serial", compute=True)
    assert labels.max() == 1
