"""3D and RGB (H&E) input through tile_process with the tiny 3D and RGB models."""

from __future__ import annotations

import time

import numpy as np
import pytest

from blockbuster import tile_process
from blockbuster.metrics import match_objects
from blockbuster.plugins.stardist import stardist_fn

# tiled runs of real models on the test images never look like a mask returned as labels
NO_PIXEL_MAP_HINT = pytest.mark.filterwarnings("error::blockbuster.errors.PixelMapWarning")
pytestmark = [pytest.mark.slow, NO_PIXEL_MAP_HINT]


def describe(m) -> str:
    return (f"F1={m.f1:.4f} (TP={m.true_positives} FP={m.false_positives} "
            f"FN={m.false_negatives} merges={m.false_merges} splits={m.false_splits})")


def test_3d_tiled_agrees_with_whole_volume(tiny_3d, blobs_3d, figures):
    fn = stardist_fn(tiny_3d)
    needs = fn.blockbuster_needs()
    assert len(needs.halo) == 3 and fn.alignment() == (4, 8, 8)
    whole = fn.with_global_normalization(blobs_3d)(blobs_3d)
    start = time.perf_counter()
    tiled = tile_process(blobs_3d, fn, tile_shape=(32, 64, 64), workers=2, compute=True)
    match = match_objects(whole, tiled)
    figures(f"3D tiny model, {blobs_3d.shape} volume, tiles (32, 64, 64), halo {needs.halo}: "
            f"tiled vs whole {describe(match)} [{time.perf_counter() - start:.1f} s]")
    assert whole.max() >= 30
    assert match.f1 >= 0.98


def test_rgb_channel_last_tiled_agrees_with_whole(tiny_rgb, he_image, figures):
    fn = stardist_fn(tiny_rgb)
    prepared = fn.with_global_normalization(he_image)
    assert len(prepared.global_range.low) == 3  # one range per colour channel
    whole = prepared(he_image)
    tiled = tile_process(he_image, fn, tile_shape=(160, 160), channel_axis=2, workers=2,
                         compute=True)
    match = match_objects(whole, tiled)
    figures(f"RGB tiny model, {he_image.shape} H&E-like image, tiles (160, 160): tiled vs "
            f"whole {describe(match)}")
    assert whole.max() >= 100
    assert match.f1 >= 0.98


def test_rgb_channel_first_is_inferred(tiny_rgb, he_image):
    channel_first = np.ascontiguousarray(np.moveaxis(he_image[:160, :320], -1, 0))
    fn = stardist_fn(tiny_rgb).with_global_normalization(channel_first)
    assert fn.tile_axes(channel_first.shape, fn._config()) == "CYX"
    last = stardist_fn(tiny_rgb).with_global_normalization(he_image[:160, :320])
    np.testing.assert_array_equal(fn(channel_first), last(he_image[:160, :320]))


def test_grayscale_tile_for_rgb_model_names_the_fix(tiny_rgb, he_image):
    from blockbuster.errors import InvalidParameterError

    fn = stardist_fn(tiny_rgb, normalize=None)
    with pytest.raises(InvalidParameterError, match="axes="):
        fn(he_image[:64, :64, 0])
