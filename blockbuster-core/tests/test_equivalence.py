"""Tiled connected components equal whole-image connected components, up to renumbering."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
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
def cases(draw, max_ndim=3):
    ndim = draw(st.integers(2, max_ndim))
    shape = tuple(draw(st.lists(st.integers(1, 24 if ndim == 2 else 10), min_size=ndim,
                                max_size=ndim)))
    tile_shape = tuple(draw(st.integers(1, s + 3)) for s in shape)  # 1 px .. larger than image
    overlap = tuple(draw(st.integers(0, max(0, min(t - 1, 3)))) for t in tile_shape)
    merge = draw(st.sampled_from(["touch", "overlap"])) if any(overlap) else "touch"
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
    if merge == "overlap" and not any(
        o for o, t, s in zip(overlap, tile_shape, image.shape) if t < s
    ):
        merge = None  # nothing is split along an axis with a halo: the default applies
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
