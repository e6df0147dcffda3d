"""Pixel-map outputs (``output="mask" | "semantic" | "probability"``): blockbuster forms the
objects itself, and they equal connected components of the whole-image map exactly."""

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from scipy import ndimage
from skimage.measure import label

from blockbuster import Needs, hookimpl, tile_process
from blockbuster.errors import ContractViolationError, InvalidParameterError, PixelMapWarning
from blockbuster.synthetic import touching_disks
from blockbuster.testing import assert_same_labels

TRUNCATE = 2.0  # blur radius = int(TRUNCATE * sigma + 0.5) = 2 px for sigma 1


def blurred(tile: np.ndarray) -> np.ndarray:
    return ndimage.gaussian_filter(tile.astype(np.float64), 1.0, truncate=TRUNCATE)


class BlurMap:
    """A blur (exact in a tile's core with a 2 px halo) turned into each kind of map."""

    def __init__(self, kind: str, level: float = 0.5):
        self.kind, self.level = kind, level

    def __call__(self, tile):
        smooth = blurred(tile)
        if self.kind == "mask":
            return smooth > self.level
        if self.kind == "semantic":
            return np.digitize(smooth, [0.4, 0.5, 0.6]).astype(np.uint8)  # classes 0..3
        return smooth  # probability

    def whole_image(self, image, threshold, connectivity):
        values = self(image)
        classes = values > threshold if self.kind == "probability" else values
        return label(classes, background=0, connectivity=connectivity)


@st.composite
def textures(draw, ndim):
    """A dense random texture and a tiling that cuts it on every axis (2 px halo)."""
    longest = 40 if ndim == 2 else 14
    shape = tuple(draw(st.integers(6, longest)) for _ in range(ndim))
    tiles = tuple(draw(st.integers(3, max(3, s - 2))) for s in shape)
    seed = draw(st.integers(0, 2**16))
    return np.random.default_rng(seed).random(shape), tiles


@pytest.mark.parametrize("ndim", [2, 3])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_blur_threshold_components_equal_the_whole_image(ndim, data):
    image, tiles = data.draw(textures(ndim))
    kind = data.draw(st.sampled_from(["mask", "semantic", "probability"]))
    connectivity = data.draw(st.integers(1, ndim))
    threshold = data.draw(st.sampled_from([0.45, 0.5, 0.55])) if kind == "probability" else None
    fn = BlurMap(kind)
    result = tile_process(image, fn, tile_shape=tiles, overlap=2, output=kind,
                          probability_threshold=threshold, connectivity=connectivity,
                          executor="serial", compute=True)
    expected = fn.whole_image(image, 0.5 if threshold is None else threshold, connectivity)
    assert_same_labels(expected, result)


def test_blur_threshold_label_with_instances_is_not_exact_but_the_mask_is():
    """What the pixel-map path fixes: labelling inside the tile joins objects through the
    halo's inexact values (this exact case gives 3 false merges as instances)."""
    image = np.random.default_rng(7).random((256, 256))
    mask = BlurMap("mask")
    expected = mask.whole_image(image, 0.5, 1)
    as_instances = tile_process(image, lambda t: ndimage.label(mask(t))[0], tile_shape=(32, 32),
                                overlap=2, compute=True)
    as_mask = tile_process(image, mask, tile_shape=(32, 32), overlap=2, output="mask",
                           compute=True)
    assert as_instances.max() < expected.max()  # false merges: why the path exists
    assert_same_labels(expected, as_mask)


def argmax_of_two_classes(tile):
    """The seed's PyTorch line without torch: a 2-class 'model' whose argmax is the mask."""
    logits = np.stack([0.5 - tile, tile - 0.5])
    return logits.argmax(0)


def disks():
    """512² disks, many touching: 167 face-connected objects."""
    return touching_disks((512, 512), radius=8, spacing=17)


def test_the_seeds_argmax_lambda_with_output_mask_gives_every_disk():
    image = disks()
    expected = label(image > 0.5, connectivity=1)
    result = tile_process(image, argmax_of_two_classes, tile_shape=(128, 128), overlap=20,
                          output="mask", compute=True)
    assert expected.max() == 167
    assert_same_labels(expected, result)


def test_the_seeds_argmax_lambda_without_output_warns_once_and_keeps_its_result():
    image = disks()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = tile_process(image, argmax_of_two_classes, tile_shape=(128, 128), overlap=20,
                              compute=True)
    hints = [w for w in caught if issubclass(w.category, PixelMapWarning)]
    assert len(hints) == 1
    message = str(hints[0].message)
    assert "\n" not in message
    assert "output='mask'" in message and "label 1 in" in message and "tile " in message
    assert hints[0].filename == __file__  # it points at the caller's line
    assert result.max() == 1  # the result is what the merge of the labels gives, unchanged


def test_real_instance_labels_do_not_warn():
    image = touching_disks((256, 256))
    with warnings.catch_warnings():
        warnings.simplefilter("error", PixelMapWarning)
        tile_process(image, "watershed", tile_shape=(64, 64), compute=True)
        tile_process(image, lambda t: label(t > 0.5), tile_shape=(64, 64), overlap=4,
                     compute=True)


def test_semantic_keeps_touching_objects_of_two_classes_apart():
    classes = np.zeros((20, 30), np.uint8)
    classes[5:15, 3:15] = 1
    classes[5:15, 15:27] = 2  # touches class 1 along the tile seam at x = 15
    result = tile_process(classes, lambda t: t, tile_shape=(10, 15), output="semantic",
                          compute=True)
    assert_same_labels(label(classes, background=0, connectivity=1), result)
    assert result.max() == 2
    merged = tile_process(classes, lambda t: t, tile_shape=(10, 15), output="mask",
                          compute=True)
    assert merged.max() == 1


def test_connectivity_decides_whether_diagonal_pixels_join_across_a_face():
    image = np.zeros((8, 8), np.uint8)
    image[3, 3] = image[4, 4] = 1  # diagonal neighbours across the seam at row 4
    apart = tile_process(image, lambda t: t, tile_shape=(4, 8), output="mask", compute=True)
    joined = tile_process(image, lambda t: t, tile_shape=(4, 8), output="mask", connectivity=2,
                          compute=True)
    assert (apart.max(), joined.max()) == (2, 1)


class DeclaresProbability:
    """A segmenter that says in its Needs that it returns a probability map."""

    def __call__(self, tile):
        return blurred(tile)

    def blockbuster_needs(self):
        return Needs(halo=2, output="probability", probability_threshold=0.55)


def test_a_segmenter_declares_its_output_in_its_needs_and_the_caller_may_override_it():
    image = np.random.default_rng(3).random((60, 50))
    declared = tile_process(image, DeclaresProbability(), tile_shape=(16, 16), compute=True)
    assert_same_labels(label(blurred(image) > 0.55, connectivity=1), declared)
    given = tile_process(image, DeclaresProbability(), tile_shape=(16, 16),
                         probability_threshold=0.45, compute=True)
    assert_same_labels(label(blurred(image) > 0.45, connectivity=1), given)


@pytest.mark.parametrize("arguments, message", [
    ({"output": "masks"}, "output='masks'; use one of"),
    ({"output": "mask", "merge": "overlap"}, "merge='overlap' does not apply"),
    ({"output": "mask", "probability_threshold": 0.3}, "applies only to output='probability'"),
])
def test_wrong_output_arguments_say_what_to_do(arguments, message):
    with pytest.raises(InvalidParameterError, match=message):
        tile_process(np.zeros((8, 8)), lambda t: t, tile_shape=(4, 4), overlap=1, **arguments)


def test_a_semantic_map_must_hold_class_ids():
    with pytest.raises(ContractViolationError, match="output='semantic' wants integer class"):
        tile_process(np.zeros((8, 8)), lambda t: t + 0.5, tile_shape=(4, 4), output="semantic")


def test_a_map_of_the_wrong_shape_is_refused():
    with pytest.raises(ContractViolationError, match="reduce the channel axis"):
        tile_process(np.zeros((8, 8)), lambda t: np.stack([t, t]), tile_shape=(4, 4),
                     output="probability")


class MapSegmenter:
    """A backend with its own ``output`` option: it says in its Needs what it returns (here
    nothing at all unless it is asked for its mask, so a lost option shows)."""

    def __init__(self, output: str = "instances"):
        self.output = output

    def __call__(self, tile):
        mask = blurred(tile) > 0.5
        return mask if self.output == "mask" else np.zeros(tile.shape, np.int32)

    def blockbuster_needs(self):
        return Needs(halo=2, output=self.output)


class MapPlugin:
    @hookimpl
    def register_segmenters(self, register):
        register("map", MapSegmenter)


def test_output_goes_to_a_named_segmenter_that_has_that_option(blockbuster_registry):
    image = np.random.default_rng(4).random((96, 96))
    registry = blockbuster_registry(MapPlugin())
    result = tile_process(image, "map", output="mask", tile_shape=(24, 24), registry=registry,
                          compute=True)
    assert_same_labels(label(blurred(image) > 0.5, connectivity=1), result)


@pytest.mark.parametrize("kind", ["mask", "probability", "semantic"])
@pytest.mark.parametrize("shape", [(40, 50), (9, 12, 14)])
def test_components_are_numbered_one_to_n_as_a_tile_stages_them(kind, shape):
    """The staged local labels come straight from the labelling, without a renumbering pass:
    every label 1..n present, n returned, and the partition skimage's labelling gives."""
    from blockbuster.pixelmaps import PixelMap

    values = np.random.default_rng(3).choice(3, shape, p=[0.92, 0.04, 0.04])  # small pieces
    for connectivity in range(1, len(shape) + 1):
        pixel_map = PixelMap(kind, threshold=0.5, connectivity=connectivity)
        classes = pixel_map.classes(values if kind == "semantic" else values.astype(np.float32))
        labels, count = pixel_map.components(classes)
        assert count > 3
        assert np.array_equal(np.unique(labels), np.arange(count + 1))
        assert_same_labels(label(classes, background=0, connectivity=connectivity), labels)
