"""Cellpose backend with a real (tiny, trained) Cellpose 3 network: marked ``slow``.

The network in ``tests/data/tiny_disks_cp3`` was trained by ``scripts/make_tiny_model.py``
on synthetic disks, so it finds real objects; these tests only run inference.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from blockbuster import tile_process
from blockbuster.metrics import match_objects
from blockbuster.plugins.cellpose import GPUUnavailableWarning, cellpose_fn, model_cache

from .conftest import check_tiled_against_whole, synthetic_disks

# tiled runs of real models on the test images never look like a mask returned as labels
NO_PIXEL_MAP_HINT = pytest.mark.filterwarnings("error::blockbuster.errors.PixelMapWarning")
pytestmark = [pytest.mark.slow, NO_PIXEL_MAP_HINT]


def test_tiled_matches_whole_image(tiny_weights, record_property):
    """A 4 x 4 grid of 128^2 tiles with the default halo agrees with one whole-image Cellpose
    run (244 disks, 9 to 13 across each of the six seams)."""
    image, truth = synthetic_disks((512, 512), seed=123)
    fn = cellpose_fn(tiny_weights)
    t0 = time.perf_counter()
    whole = fn(image)
    t_whole = time.perf_counter() - t0
    t0 = time.perf_counter()
    tiled = tile_process(image, fn, tile_shape=(128, 128), executor="threads", compute=True)
    t_tiled = time.perf_counter() - t0
    record_property("seconds_whole_tiled", (t_whole, t_tiled))
    print(f"whole {t_whole:.1f}s, tiled {t_tiled:.1f}s")
    versus_truth, versus_whole = check_tiled_against_whole(truth, whole, tiled,
                                                           min_f1_truth=0.9)
    record_property("f1_tiled_vs_whole", versus_whole.f1)
    record_property("f1_whole_vs_truth", versus_truth.f1)
    assert model_cache.loads == 1


def test_model_built_once_per_thread_pool(tiny_weights):
    image, _ = synthetic_disks((512, 512), seed=7)
    fn = cellpose_fn(tiny_weights, diameter=24)
    labels = tile_process(image, fn, tile_shape=(128, 128), overlap=48, executor="threads",
                          workers=2, compute=True)
    assert labels.max() > 50
    assert model_cache.loads == 1  # 16 tiles, 2 threads, one model


class _RecordingSegmenter:
    """Wraps a segmenter and appends ``pid loads`` to a file per tile (runs in workers)."""

    def __init__(self, inner, log: Path):
        self.inner, self.log = inner, str(log)

    def blockbuster_needs(self):
        return self.inner.blockbuster_needs()

    def __call__(self, tile):
        labels = self.inner(tile)
        from blockbuster.plugins.cellpose import model_cache as cache

        with open(self.log, "a") as f:
            f.write(f"{os.getpid()} {cache.loads}\n")
        return labels


def test_model_built_once_per_worker_process(tiny_weights, tmp_path):
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers can't import tests
    image, _ = synthetic_disks((384, 384), seed=3)
    log = tmp_path / "loads.txt"
    fn = _RecordingSegmenter(cellpose_fn(tiny_weights, diameter=24), log)
    tile_process(image, fn, tile_shape=(96, 96), overlap=48, executor="processes", workers=2,
                 compute=True)
    records = [line.split() for line in log.read_text().splitlines()]
    assert len(records) == 16
    loads_per_pid = {}
    for pid, loads in records:
        loads_per_pid.setdefault(pid, set()).add(int(loads))
    assert all(loads == {1} for loads in loads_per_pid.values()), loads_per_pid
    assert model_cache.loads == 0  # the parent process never built the model


def test_load_by_name_from_local_models_folder(tiny_weights, tmp_path, monkeypatch):
    """CELLPOSE_LOCAL_MODELS_PATH holding the file under a built-in name loads by name."""
    shutil.copyfile(tiny_weights, tmp_path / "cyto3")
    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(tmp_path))
    image, _ = synthetic_disks((256, 256), seed=11)
    by_name = cellpose_fn("cyto3")(image)
    by_path = cellpose_fn(tiny_weights)(image)
    assert by_name.max() > 10
    np.testing.assert_array_equal(by_name, by_path)


def test_per_slice_3d_tiles(tiny_weights):
    """(1, Y, X) tiles of a stack: each slice segmented in 2D, returned as (1, Y, X).

    The cells continue through the slices (same disks, new noise), so blockbuster's joining
    of touching labels across slices gives one label per cell column.
    """
    base, _ = synthetic_disks((256, 256), seed=40)
    noise = np.random.default_rng(1).normal(0, 0.03, (3, 256, 256)).astype(np.float32)
    stack = base[None] + noise
    fn = cellpose_fn(tiny_weights, diameter=24)
    assert fn(stack[:1]).shape == (1, 256, 256)
    labels = tile_process(stack, fn, tile_shape=(1, 256, 256), overlap=0, compute=True)
    assert labels.shape == stack.shape
    per_slice = [fn(stack[z]) for z in range(3)]
    for z in range(3):
        assert match_objects(per_slice[z], labels[z]).f1 >= 0.97
    assert len(np.unique(labels)) - 1 == pytest.approx(per_slice[0].max(), abs=2)


def test_channel_axis_tiles(tiny_weights):
    """A (C, Y, X) tile with channels=[1, 0] segments like its first channel alone."""
    image, _ = synthetic_disks((192, 192), seed=21)
    other = np.random.default_rng(2).random(image.shape, dtype=np.float32)
    gray = cellpose_fn(tiny_weights, diameter=24)(image)
    with_channels = cellpose_fn(tiny_weights, diameter=24, channel_axis=0, channels=[1, 0])
    labels = with_channels(np.stack([image, other]))
    assert labels.shape == image.shape and gray.max() > 10
    assert match_objects(gray, labels).f1 >= 0.97


def test_do_3d_on_a_volume(tiny_weights):
    """do_3D runs the 2D network along the three axes of a volume of balls."""
    zz, yy, xx = np.indices((24, 64, 64))
    volume = np.zeros((24, 64, 64), np.float32)
    for cz, cy, cx in [(12, 18, 18), (12, 45, 44), (11, 20, 46)]:
        volume[(zz - cz) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2 <= 10 ** 2] = 1.0
    volume += np.random.default_rng(0).normal(0, 0.05, volume.shape).astype(np.float32)
    labels = cellpose_fn(tiny_weights, do_3D=True, diameter=20, min_size=50)(volume)
    assert labels.shape == volume.shape and labels.dtype == np.uint32
    assert 2 <= len(np.unique(labels)) - 1 <= 4


def test_gpu_requested_without_gpu_warns_once(tiny_weights):
    image, _ = synthetic_disks((256, 256), seed=5)
    fn = cellpose_fn(tiny_weights, gpu=True, diameter=24)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tile_process(image, fn, tile_shape=(128, 128), overlap=48, executor="threads",
                     workers=2, compute=True)
    assert sum(issubclass(w.category, GPUUnavailableWarning) for w in caught) == 1


def test_selected_by_name_from_config(tiny_weights, tmp_path):
    """``[segmenter] name = "cellpose"`` in a run config (core's run_config / CLI)."""
    zarr = pytest.importorskip("zarr")
    from blockbuster import config as core_config

    image, _ = synthetic_disks((256, 256), seed=9)
    zarr.create_array(str(tmp_path / "image.zarr"), data=image, chunks=(128, 128))
    config = tmp_path / "run.toml"
    config.write_text(
        '[input]\npath = "image.zarr"\n\n'
        f'[segmenter]\nname = "cellpose"\nmodel = "{tiny_weights.as_posix()}"\ndiameter = 24\n\n'
        '[tiling]\ntile_shape = [128, 128]\n\n'
        '[output]\npath = "labels.zarr"\n'
    )
    labels = np.asarray(core_config.run_config(config))
    direct = cellpose_fn(tiny_weights, diameter=24)
    expected = tile_process(image, direct, tile_shape=(128, 128), compute=True)
    assert match_objects(expected, labels).f1 == 1.0
    assert (tmp_path / "labels.zarr").exists()

    from blockbuster.cli import main  # in this process: a fresh one is test_install's

    assert main(["run", str(config), "--output", str(tmp_path / "cli.zarr")]) == 0
    from_cli = np.asarray(zarr.open_array(str(tmp_path / "cli.zarr"))[:])
    assert match_objects(expected, from_cli).f1 == 1.0
