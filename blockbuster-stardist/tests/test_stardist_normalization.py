"""Global vs per-tile normalization arithmetic: fast, no model is run."""

from __future__ import annotations

import numpy as np
import pytest

from blockbuster.plugins.stardist._normalization import (
    Intensities,
    Percentiles,
    apply_intensities,
    image_percentiles,
    tile_percentiles,
)


def test_apply_matches_csbdeep_normalize():
    from csbdeep.utils import normalize

    rng = np.random.default_rng(0)
    img = rng.integers(0, 4000, (64, 80)).astype(np.uint16)
    lo, hi = np.percentile(img, [1, 99.8])
    ours = apply_intensities(img, Intensities(float(lo), float(hi)), None)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, normalize(img, 1, 99.8), rtol=1e-5, atol=1e-6)


def test_per_channel_intensities_follow_the_channel_axis():
    img = np.ones((2, 4, 5, 3), np.float32) * np.array([10, 20, 30], np.float32)
    out = apply_intensities(img, Intensities((0, 0, 0), (10, 40, 60)), channel_axis=3)
    np.testing.assert_allclose(out[0, 0, 0], [1.0, 0.5, 0.5])
    with pytest.raises(ValueError, match="per-channel"):
        apply_intensities(img, Intensities((0, 0), (1, 1)), channel_axis=3)


def test_small_image_is_read_whole_so_global_equals_whole_image():
    img = np.random.default_rng(1).gamma(2, 100, (300, 500)).astype(np.float32)
    rng = image_percentiles(img, Percentiles(1, 99.8), None)
    assert (rng.low, rng.high) == tuple(np.percentile(img, [1, 99.8]))


def test_large_image_is_sampled_not_read(monkeypatch):
    """A 4096^2 image: the sample is ~1/4 of the voxels yet the percentiles are close."""
    img = np.random.default_rng(2).gamma(2, 100, (4096, 4096)).astype(np.float32)

    class CountingArray:
        shape, dtype, read = img.shape, img.dtype, 0

        def __getitem__(self, region):
            block = img[region]
            CountingArray.read += block.size
            return block

    rng = image_percentiles(CountingArray(), Percentiles(1, 99.8), None, max_voxels=2**22)
    assert CountingArray.read <= 2**22
    exact = np.percentile(img, [1, 99.8])
    np.testing.assert_allclose([rng.low, rng.high], exact, rtol=0.02)


def test_channels_get_their_own_percentiles():
    rng = np.random.default_rng(3)
    img = np.stack([rng.uniform(0, 10, (50, 60)), rng.uniform(100, 200, (50, 60))], axis=0)
    per_image = image_percentiles(img, Percentiles(0, 100), channel_axis=0)
    per_tile = tile_percentiles(img, Percentiles(0, 100), channel_axis=0)
    assert per_image == per_tile
    assert per_image.low[1] > per_image.high[0]


def test_flat_tile_keeps_a_finite_range():
    rng = tile_percentiles(np.zeros((8, 8)), Percentiles(), None)
    assert rng.high > rng.low


def test_prepare_accepts_the_channel_axis(tiny_rgb):
    """prepare(image, channel_axis=k) uses the axis tile_process was given."""
    from blockbuster.plugins.stardist import stardist_fn

    img = np.zeros((3, 40, 50), np.float32) + np.array([1, 2, 3], np.float32)[:, None, None]
    img[:, 0, 0] = [0, 0, 0]
    fn = stardist_fn(tiny_rgb, normalize=(0, 100))
    prepared = fn.prepare(img, channel_axis=0)
    assert prepared.global_range == fn.prepare(img).global_range  # inferred: 'CYX'
    assert prepared.global_range.high == (1.0, 2.0, 3.0)
