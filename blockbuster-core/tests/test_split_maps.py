"""``instances="watershed"``: touching objects of a stitched mask or probability map split by a
seeded watershed, tile by tile, equal to the same split of the whole-image map."""

import warnings

import numpy as np
import pytest
from scipy import ndimage

from blockbuster import tile_process
from blockbuster.builtin.segmenters import Watershed
from blockbuster.errors import InvalidParameterError, OutputExistsError
from blockbuster.metrics import match_objects
from blockbuster.pixelmaps import label_map, whole_image_objects
from blockbuster.segmenter import Needs
from blockbuster.splitting import watershed_split
from blockbuster.synthetic import nuclei, touching_disks
from blockbuster.testing import assert_same_labels

MIN_DISTANCE = 5


def skimage_split(foreground: np.ndarray, min_distance: int = MIN_DISTANCE) -> np.ndarray:
    """The textbook seeded watershed, written out from skimage alone (ties by flood order)."""
    from skimage.feature import peak_local_max
    from skimage.measure import label
    from skimage.segmentation import watershed

    distance = ndimage.distance_transform_edt(foreground)
    peaks = peak_local_max(distance, min_distance=min_distance,
                           labels=label(foreground, connectivity=1), exclude_border=False)
    seeds = np.zeros(foreground.shape, np.int32)
    seeds[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-distance, seeds, mask=foreground)


def above_half(tile):
    return tile > 0.5


@pytest.fixture(scope="module")
def disks():
    return touching_disks((512, 512), radius=9, spacing=17, seed=1)


@pytest.fixture(scope="module")
def blurred_nuclei():
    """Dense nuclei, many in touching clumps, as a probability map made by a blur (exact in a
    tile's core with a halo of 4)."""
    image = nuclei((384, 384), density=0.006, seed=0).astype(np.float32) / 65535
    return image, lambda tile: ndimage.gaussian_filter(tile, 1.0) / 0.8


@pytest.mark.parametrize("tile_shape", [(64, 64), (128, 128), (50, 70)])
def test_split_of_the_stitched_mask_equals_the_whole_image_split(disks, tile_shape):
    whole = label_map(above_half(disks), "mask", instances="watershed",
                      min_distance=MIN_DISTANCE)
    tiled = tile_process(disks, above_half, output="mask", instances="watershed",
                         min_distance=MIN_DISTANCE, tile_shape=tile_shape, compute=True)
    assert whole.max() > 800
    assert_same_labels(whole, tiled)


def test_split_of_a_blurred_probability_map_equals_the_whole_image_split(blurred_nuclei):
    image, blur = blurred_nuclei
    whole = label_map(blur(image), "probability", probability_threshold=0.35,
                      instances="watershed")
    tiled = tile_process(image, blur, output="probability", probability_threshold=0.35,
                         overlap=4, instances="watershed", split_halo=40, tile_shape=(96, 96),
                         compute=True)
    assert whole.max() > 250 and whole.max() > label_map(blur(image) > 0.35, "mask").max() + 20
    assert_same_labels(whole, tiled)


def test_split_in_3d_equals_the_whole_image_split():
    balls = nuclei((40, 96, 96), density=0.01, radius=(4, 7), seed=2).astype(np.float32) / 65535
    whole = label_map(balls, "probability", probability_threshold=0.3, instances="watershed",
                      min_distance=3)
    tiled = tile_process(balls, lambda t: t, output="probability", probability_threshold=0.3,
                         instances="watershed", min_distance=3, split_halo=16,
                         tile_shape=(20, 48, 48), compute=True)
    assert whole.max() > 20
    assert_same_labels(whole, tiled)


@pytest.mark.parametrize("image", ["disks", "blurred_nuclei"])
def test_within_the_bound_of_the_textbook_skimage_split(image, request):
    """Against skimage's own recipe, whose ties go by flood order: F1 >= 0.99, 0 false merges."""
    if image == "disks":
        mask, tiled = request.getfixturevalue("disks") > 0.5, None
        tiled = tile_process(request.getfixturevalue("disks"), above_half, output="mask",
                             instances="watershed", tile_shape=(64, 64), compute=True)
    else:
        picture, blur = request.getfixturevalue("blurred_nuclei")
        mask = blur(picture) > 0.35
        tiled = tile_process(picture, blur, output="probability", probability_threshold=0.35,
                             overlap=4, instances="watershed", split_halo=40,
                             tile_shape=(96, 96), compute=True)
    score = match_objects(skimage_split(mask), tiled)
    assert score.f1 >= 0.99 and score.false_merges == 0


def test_connected_components_of_the_same_map_join_the_touching_disks(disks):
    split = tile_process(disks, above_half, output="mask", instances="watershed",
                         tile_shape=(64, 64), compute=True)
    joined = tile_process(disks, above_half, output="mask", tile_shape=(64, 64), compute=True)
    assert joined.max() < split.max() / 10


def test_the_same_split_inside_each_tile_is_not_exact_where_the_stitched_one_is(disks):
    """The same seeded watershed run by fn inside each tile, the same window around the core,
    merged by the overlap rule (what a user could do before): boundaries drawn by flood order
    disagree from tile to tile and with the whole image."""
    whole = label_map(above_half(disks), "mask", instances="watershed")
    in_tile = tile_process(disks, lambda tile: watershed_split(above_half(tile)), overlap=20,
                           tile_shape=(64, 64), compute=True)
    pairs = np.unique(np.stack([whole.ravel(), in_tile.ravel()], axis=1), axis=0)
    assert len(pairs) - len(np.unique(whole)) > 100  # objects sharing pixels with a second one
    with pytest.raises(AssertionError):
        assert_same_labels(whole, in_tile)


class SplitsItsMap:
    """A segmenter that returns a probability map and asks blockbuster to split it."""

    def __call__(self, tile):
        return tile

    def blockbuster_needs(self):
        return Needs(output="probability", instances="watershed", min_distance=4, split_halo=24)


def test_a_segmenter_declares_the_split_in_its_needs(disks):
    fn = SplitsItsMap()
    tiled = tile_process(disks, fn, tile_shape=(64, 64), compute=True)
    assert_same_labels(whole_image_objects(fn, disks), tiled)
    assert_same_labels(label_map(disks, "probability", instances="watershed", min_distance=4),
                       tiled)
    components = tile_process(disks, fn, instances="components", tile_shape=(64, 64),
                              compute=True)
    assert components.max() < tiled.max() / 10  # the caller's instances= wins


def test_min_distance_goes_to_a_named_segmenter_that_has_it(disks):
    named = tile_process(disks, "watershed", segmenter_options={"threshold": 0.5},
                         min_distance=7, overlap=40, tile_shape=(128, 128), compute=True)
    given = tile_process(disks, Watershed(threshold=0.5, min_distance=7), overlap=40,
                         tile_shape=(128, 128), compute=True)
    assert np.array_equal(named, given)


def test_verify_passes_a_split_map():
    """Each window is split with its ties ranked by image coordinates, as the tiles were."""
    image = touching_disks((384, 384), radius=9, spacing=17, seed=1)
    labels, report = tile_process(image, above_half, output="mask",
                                  instances="watershed", tile_shape=(64, 64), verify=8,
                                  compute=True)
    assert report.passed and report.f1 == 1.0 and len(report.checks) == 8


def test_the_split_is_part_of_the_job_fingerprint(tmp_path, disks):
    """Same tiles and halo, another seed rule: another job, whose output is not replaced."""
    out = tmp_path / "labels.zarr"
    run = {"output": "mask", "instances": "watershed", "split_halo": 20,
           "tile_shape": (128, 128), "write_to": out}
    tile_process(disks, above_half, min_distance=5, **run)
    tile_process(disks, above_half, min_distance=5, **run)  # the same job: resumes
    with pytest.raises(OutputExistsError, match="overwrite"):
        tile_process(disks, above_half, min_distance=4, **run)


@pytest.mark.parametrize("arguments, message", [
    ({"output": "semantic", "instances": "watershed"}, "class map"),
    ({"output": "mask", "instances": "voronoi"}, "use one of"),
    ({"output": "mask", "min_distance": 3}, "applies only to instances='watershed'"),
    ({"output": "mask", "instances": "watershed", "min_distance": 0}, "min_distance=0"),
    ({"output": "mask", "instances": "watershed", "split_halo": -1}, "split_halo=-1"),
    ({"instances": "watershed"}, "fn returns instances"),
    ({"output": "mask", "instances": "watershed", "merge": "touch"}, "overlap rule"),
])
def test_bad_split_options_are_refused_with_what_to_do(arguments, message):
    with pytest.raises(InvalidParameterError, match=message):
        tile_process(np.zeros((64, 64)), above_half, tile_shape=(32, 32), compute=True,
                     **arguments)


def test_a_split_halo_as_large_as_the_tile_is_refused_naming_both():
    with pytest.raises(InvalidParameterError, match="split_halo 20"):
        tile_process(np.zeros((64, 64)), above_half, output="mask", instances="watershed",
                     tile_shape=(16, 16), compute=True)


def test_no_pixel_map_warning_for_a_split_map(disks):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tile_process(disks[:128, :128], above_half, output="mask", instances="watershed",
                     tile_shape=(64, 64), compute=True)
