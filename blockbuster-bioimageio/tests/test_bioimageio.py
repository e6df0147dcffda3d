"""A bioimage.io model package tiled: the model's description drives halo, tile sizes and
normalisation, and tiled labels equal the model on the whole image."""

from __future__ import annotations

import numpy as np
import pytest
import zoo_models

from blockbuster import tile_process
from blockbuster.errors import InvalidParameterError, ModelNotFoundError, UnsupportedModelError
from blockbuster.metrics import match_objects
from blockbuster.plugins.bioimageio import bioimageio_fn
from blockbuster.testing import assert_same_labels, check_segmenter


def blobs_on_the_left(shape=(160, 224), seed=3) -> np.ndarray:
    """Objects only in the left half: per-tile statistics would label noise on the right."""
    image = zoo_models.test_image(shape, seed=seed)
    right = image[:, shape[1] // 2:]
    right[...] = np.random.default_rng(seed).normal(100, 10, right.shape).clip(0).astype(np.uint16)
    return image


def test_description_drives_halo_alignment_and_kind(packages):
    fn = bioimageio_fn(packages["instances"])
    assert fn.layout.spatial == ("y", "x")
    assert fn.layout.sizes == ((zoo_models.MIN_SIZE, zoo_models.STEP),) * 2
    assert fn.layout.halo == (zoo_models.HALO,) * 2  # from the output's halo
    assert fn.layout.kind == "instances"
    assert bioimageio_fn(packages["unet"]).blockbuster_needs().output == "probability"
    needs = fn.blockbuster_needs()
    assert needs.halo == 16 and needs.align == zoo_models.STEP  # halo 8 rounded up to the step
    assert fn.layout.valid_size((40, 33)) == (48, 48)


def test_tiled_equals_whole_image_exactly(packages):
    image = blobs_on_the_left()
    fn = bioimageio_fn(packages["instances"])
    whole = fn.prepare(image)(image)
    assert len(np.unique(whole)) > 20
    tiled = tile_process(image, fn, tile_shape=(64, 64), executor="threads", workers=2,
                         compute=True)
    assert_same_labels(whole, tiled)


def test_whole_image_equals_bioimageio_core(packages):
    """Our windowing reproduces bioimageio.core's own whole-image run given the same statistics,
    and those statistics are the image's own (mean and standard deviation, every voxel)."""
    from bioimageio.core import Sample, Tensor, create_prediction_pipeline, predict
    from bioimageio.spec import load_model_description

    image = blobs_on_the_left()
    fn = bioimageio_fn(packages["instances"]).prepare(image)
    values = {m.name: float(np.asarray(getattr(v, "data", v)).item()) for m, v in fn.stats.items()}
    assert (values["mean"], values["std"]) == pytest.approx((image.mean(), image.std()), rel=1e-12)
    ours = fn(image)
    description = load_model_description(packages["instances"])
    with create_prediction_pipeline(description, fixed_dataset_statistics=fn.stats) as pipeline:
        sample = Sample(members={"raw": Tensor(image[None, None], dims=("batch", "channel", "y",
                                                                         "x"))},
                        stat=dict(fn.stats), id=None)
        theirs = pipeline.predict_sample_without_blocking(sample).members["prediction"]
    assert_same_labels(theirs.to_numpy()[0, 0], ours)
    # bioimageio.core's plain predict takes statistics of the halo-padded image: nearly equal
    plain = predict(model=description, inputs=image[None, None]).members["prediction"]
    assert match_objects(plain.to_numpy()[0, 0], ours).f1 >= 0.99


def test_segmenter_contract(packages):
    fn = bioimageio_fn(packages["instances"])
    tile = zoo_models.test_image((80, 96), seed=4)
    labels = check_segmenter(fn.prepare(tile), tile)
    assert labels.max() > 3


def test_2d_model_on_a_stack_runs_plane_by_plane(packages):
    stack = np.stack([blobs_on_the_left((96, 128), seed=s) for s in (5, 6)])
    fn = bioimageio_fn(packages["instances"])
    tiled = np.asarray(tile_process(stack, fn, tile_shape=(1, 64, 64), compute=True))
    whole = fn.prepare(stack)  # statistics of the whole stack
    for z in range(2):
        assert_same_labels(whole(stack[z:z + 1])[0], tiled[z])
    both = whole(stack)  # one tile holding both planes: no label shared between them
    assert not set(np.unique(both[0])[1:]) & set(np.unique(both[1])[1:])
    assert_same_labels(whole(stack[1:])[0], both[1])


def test_selected_by_name_from_config(packages, tmp_path):
    """``[segmenter] name = "bioimageio"`` with ``source =`` a package path, from a config."""
    zarr = pytest.importorskip("zarr")
    from blockbuster import config as core_config

    image = blobs_on_the_left()
    zarr.create_array(str(tmp_path / "image.zarr"), data=image, chunks=(64, 64))
    config = tmp_path / "run.toml"
    config.write_text(
        '[input]\npath = "image.zarr"\n\n'
        f'[segmenter]\nname = "bioimageio"\nsource = "{packages["instances"].as_posix()}"\n\n'
        '[tiling]\ntile_shape = [64, 64]\n\n'
        '[output]\npath = "labels.zarr"\n'
    )
    labels = np.asarray(core_config.run_config(config))
    fn = bioimageio_fn(packages["instances"])
    assert_same_labels(fn.prepare(image)(image), labels)


def test_probability_model_tiled_equals_whole_image_exactly(packages):
    """A semantic-output U-Net (probability after a sigmoid): blockbuster forms the objects of
    the stitched map, equal to those of the whole-image map; pooling stays in phase because
    windows start on the model's size step."""
    from blockbuster.pixelmaps import whole_image_objects

    image = blobs_on_the_left()
    fn = bioimageio_fn(packages["unet"], probability_threshold=0.4)
    prepared = fn.prepare(image)
    probability = prepared(image)
    assert probability.dtype == np.float32 and 0.05 < (probability > 0.4).mean() < 0.5
    whole = whole_image_objects(prepared, image)
    assert len(np.unique(whole)) > 5
    tiled = tile_process(image, fn, tile_shape=(64, 64), executor="threads", workers=2,
                         compute=True)
    assert_same_labels(whole, tiled)


def test_semantic_model_tiled_equals_whole_image_and_the_probability_model(packages):
    """Two score channels: each pixel's class is its highest channel. The objects equal the
    whole-image map's, and those of the same U-Net as a probability at 0.5."""
    from blockbuster.pixelmaps import whole_image_objects

    image = blobs_on_the_left()
    fn = bioimageio_fn(packages["semantic"])
    assert fn.blockbuster_needs().output == "semantic"
    classes = fn.prepare(image)(image)
    assert classes.dtype == np.int32 and set(np.unique(classes)) == {0, 1}
    tiled = tile_process(image, fn, tile_shape=(64, 64), compute=True)
    assert_same_labels(whole_image_objects(fn.prepare(image), image), tiled)
    probability = tile_process(image, bioimageio_fn(packages["unet"]), tile_shape=(64, 64),
                               compute=True)
    assert_same_labels(probability, tiled)


def test_unknown_options_and_missing_packages(packages, tmp_path):
    from blockbuster.errors import BackendOptionError

    with pytest.raises(BackendOptionError):
        bioimageio_fn(packages["instances"], tile_size=3)
    with pytest.raises(ModelNotFoundError, match="No bioimage.io model package"):
        bioimageio_fn(tmp_path / "missing.zip")
    with pytest.raises(ModelNotFoundError, match="folder without bioimageio.yaml or rdf.yaml"):
        bioimageio_fn(tmp_path)
    with pytest.raises(InvalidParameterError, match="halo="):
        bioimageio_fn(packages["instances"], halo=(1, 2, 3))
    with pytest.raises(UnsupportedModelError, match="output='blobs'"):
        bioimageio_fn(packages["instances"], output="blobs")
    with pytest.raises(InvalidParameterError, match="probability_threshold=0.3 applies"):
        bioimageio_fn(packages["instances"], probability_threshold=0.3)
    with pytest.raises(InvalidParameterError, match="takes 1 channel"):
        bioimageio_fn(packages["instances"]).prepare(np.zeros((2, 64, 64)), channel_axis=0)
    with pytest.raises(InvalidParameterError, match="has space axes"):
        bioimageio_fn(packages["instances"])(np.zeros(64))


@pytest.mark.slow
def test_worker_processes_load_the_local_package(packages):
    image = blobs_on_the_left((128, 160), seed=8)
    fn = bioimageio_fn(packages["instances"])
    tiled = tile_process(image, fn, tile_shape=(64, 64), executor="processes", workers=2,
                         compute=True)
    assert_same_labels(fn.prepare(image)(image), tiled)
