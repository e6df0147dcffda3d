"""The tiny 2D model on real nuclei through tile_process: agreement with a whole-image run.

Reference = StarDist on the whole image at once (whole-image percentile normalization).
"""

from __future__ import annotations

import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

from blockbuster import tile_process
from blockbuster.metrics import match_objects
from blockbuster.plugins.stardist import Intensities, stardist_fn

# tiled runs of real models on the test images never look like a mask returned as labels
NO_PIXEL_MAP_HINT = pytest.mark.filterwarnings("error::blockbuster.errors.PixelMapWarning")
pytestmark = [pytest.mark.slow, NO_PIXEL_MAP_HINT]

TILE = (600, 600)  # the 1536^2 mosaic makes 3 x 3 tiles whose seams cut through nuclei
BIG_BLOCK = 800  # predict_instances_big: 2 x 2 blocks (fewer blocks keep the test short)


def describe(m) -> str:
    return (f"F1={m.f1:.4f} (TP={m.true_positives} FP={m.false_positives} "
            f"FN={m.false_negatives} merges={m.false_merges} splits={m.false_splits})")


@pytest.fixture(scope="module")
def whole(tiny_2d, mosaic_2d):
    """Whole-image StarDist labels of the mosaic (the reference)."""
    fn = stardist_fn(tiny_2d).with_global_normalization(mosaic_2d)
    return fn(mosaic_2d)


@pytest.fixture(scope="module")
def tiled_global(tiny_2d, mosaic_2d):
    """tile_process with the defaults: halo from blockbuster_needs, global percentiles."""
    start = time.perf_counter()
    labels = tile_process(mosaic_2d, stardist_fn(tiny_2d), tile_shape=TILE, workers=2,
                          compute=True)
    return np.asarray(labels), time.perf_counter() - start


def test_tiled_agrees_with_whole_image(whole, tiled_global, mosaic_2d, figures):
    labels, seconds = tiled_global
    match = match_objects(whole, labels)
    figures(f"2D tiny model, {mosaic_2d.shape} mosaic, tiles {TILE}: blockbuster tiled vs "
            f"whole: {describe(match)} [{seconds:.1f} s, 2 threads]")
    assert whole.max() > 500  # real nuclei found, not an empty comparison
    assert match.f1 >= 0.98


def test_predict_instances_big_agreement(tiny_2d, mosaic_2d, whole, figures):
    """StarDist's own block-wise prediction on the same image, for comparison."""
    fn = stardist_fn(tiny_2d).with_global_normalization(mosaic_2d)
    x = fn.normalized(mosaic_2d, None)
    start = time.perf_counter()
    labels, _ = fn.model().predict_instances_big(
        x, axes="YX", block_size=BIG_BLOCK, min_overlap=64, show_progress=False
    )
    match = match_objects(whole, labels)
    figures(f"2D tiny model, same mosaic: predict_instances_big(block_size={BIG_BLOCK}, "
            f"min_overlap=64) vs whole: {describe(match)} [{time.perf_counter() - start:.1f} s, "
            "1 process]")
    assert match.f1 >= 0.98


def test_global_normalization_beats_per_tile(tiny_2d, mosaic_2d, whole, tiled_global, figures):
    per_tile = tile_process(mosaic_2d, stardist_fn(tiny_2d, normalize_scope="tile"),
                            tile_shape=TILE, workers=2, compute=True)
    per_tile_match = match_objects(whole, per_tile)
    global_match = match_objects(whole, tiled_global[0])
    figures(f"2D normalization: global percentiles {describe(global_match)} vs per-tile "
            f"percentiles {describe(per_tile_match)}")
    assert global_match.f1 >= per_tile_match.f1 + 0.03


def test_halo_is_receptive_field_on_the_network_lattice(tiny_2d, mosaic_2d, whole, figures):
    """Why the halo is rounded up to the downsampling factor (8 for this model).

    StarDist's receptive field (46 px here) used as is puts interior tile windows off the
    8-pixel pooling/grid lattice of a whole-image run, and seam objects come out different.
    """
    fn = stardist_fn(tiny_2d)
    field = fn.receptive_field()
    assert field == tuple(int(o) for o in fn.model()._axes_tile_overlap("YX"))
    assert fn.alignment() == (8, 8)
    halo = fn.blockbuster_needs().halo
    assert halo == tuple(-(-f // 8) * 8 for f in field)
    off_lattice = tile_process(mosaic_2d, fn, tile_shape=TILE, overlap=field, workers=2,
                               compute=True)
    match = match_objects(whole, off_lattice)
    figures(f"2D halo = raw receptive field {field} (off the 8-px lattice): {describe(match)}; "
            f"the default halo {halo} gives the agreement of the first test")
    assert match.f1 < 0.99


def test_needs_memory_estimate(tiny_2d):
    needs = stardist_fn(tiny_2d).blockbuster_needs()
    assert 150 < needs.bytes_per_voxel < 200  # measured ~175 B/voxel for this model


def test_instance_and_path_give_identical_labels(tiny_2d, mosaic_2d):
    from stardist.models import StarDist2D

    crop = mosaic_2d[:400, :700]
    instance = StarDist2D(None, name=tiny_2d.name, basedir=str(tiny_2d.parent))
    by_path = stardist_fn(tiny_2d).with_global_normalization(crop)(crop)
    by_instance = stardist_fn(instance).with_global_normalization(crop)(crop)
    np.testing.assert_array_equal(by_path, by_instance)
    # the resume fingerprint hashes the weights, not the per-call token
    assert (stardist_fn(instance).blockbuster_fingerprint()
            == stardist_fn(instance).blockbuster_fingerprint())


def test_instance_runs_in_worker_processes(tiny_2d, mosaic_2d):
    """An in-memory model is shipped to worker processes as weights and rebuilt there."""
    from stardist.models import StarDist2D

    crop = mosaic_2d[:512, :1024]
    instance = StarDist2D(None, name=tiny_2d.name, basedir=str(tiny_2d.parent))
    fn = stardist_fn(instance)
    reference = fn.with_global_normalization(crop)(crop)
    labels = tile_process(crop, fn, tile_shape=(512, 512), executor="processes", workers=2,
                          compute=True)
    assert match_objects(reference, labels).f1 >= 0.98


def test_fixed_intensities_equal_global_percentiles(tiny_2d, mosaic_2d):
    crop = mosaic_2d[:300, :300]
    prepared = stardist_fn(tiny_2d).with_global_normalization(mosaic_2d)
    fixed = stardist_fn(tiny_2d, normalize={"low": prepared.global_range.low,
                                            "high": prepared.global_range.high})
    np.testing.assert_array_equal(prepared(crop), fixed(crop))
    assert isinstance(fixed.normalization, Intensities)


def test_unprepared_global_segmenter_warns_once(tiny_2d, mosaic_2d):
    fn = stardist_fn(tiny_2d)
    with pytest.warns(RuntimeWarning, match="never prepared"):
        fn(mosaic_2d[:128, :128])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fn(mosaic_2d[:128, :128])


def test_prepare_reads_the_image_through_tile_process_readers(tiny_2d, mosaic_2d, tmp_path):
    """A zarr path works for with_global_normalization, like for tile_process."""
    import zarr

    path = tmp_path / "mosaic.zarr"
    zarr.create_array(str(path), data=mosaic_2d, chunks=(512, 512))
    from_path = stardist_fn(tiny_2d).with_global_normalization(str(path)).global_range
    from_array = stardist_fn(tiny_2d).with_global_normalization(mosaic_2d).global_range
    assert from_path == from_array


def test_tensorflow_threads_follow_worker_count(tiny_2d):
    """In worker 0 of 2 on this machine, TensorFlow gets cores // 2 threads."""
    code = (
        "from blockbuster.worker import WorkerInfo, set_process_worker\n"
        "set_process_worker(WorkerInfo(0, 2))\n"
        "from blockbuster.plugins.stardist import stardist_fn\n"
        "from blockbuster.backend import threads_per_worker\n"
        f"stardist_fn({str(tiny_2d)!r}).model()\n"
        "import tensorflow as tf\n"
        "t = tf.config.threading\n"
        "print(t.get_intra_op_parallelism_threads(), t.get_inter_op_parallelism_threads(),"
        " threads_per_worker(WorkerInfo(0, 2)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr
    intra, inter, expected = done.stdout.split()[-3:]
    assert intra == inter == expected


def test_config_selects_stardist_by_name(tiny_2d, mosaic_2d, tmp_path):
    """`blockbuster run CONFIG` with [segmenter] name = "stardist" and a model option."""
    import zarr

    from blockbuster.cli import main

    crop = mosaic_2d[:512, :900]
    zarr.create_array(str(tmp_path / "in.zarr"), data=crop, chunks=(512, 450))
    (tmp_path / "run.toml").write_text(
        '[input]\npath = "in.zarr"\n\n'
        f'[segmenter]\nname = "stardist"\nmodel = "{tiny_2d.as_posix()}"\nnms_thresh = 0.3\n\n'
        '[executor]\nname = "threads"\nworkers = 2\n\n'
        '[output]\npath = "out.zarr"\n'
    )
    assert main(["run", str(tmp_path / "run.toml")]) == 0
    labels = np.asarray(zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[:])
    reference = stardist_fn(tiny_2d, nms_thresh=0.3).with_global_normalization(crop)(crop)
    assert match_objects(reference, labels).f1 >= 0.98
