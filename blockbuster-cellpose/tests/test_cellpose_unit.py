"""Tests of the Cellpose backend's plumbing: options, weights lookup, caching, layouts, devices.

Where a model runs it is the tiny trained Cellpose 3 network (``tests/data``, a few seconds
per test, marked ``slow``), whose ``eval`` a spy records; only the multi-GPU test, which no
CPU can build models for, uses a stand-in.
Cellpose 4 runs for real in ``test_cellpose4.py`` (its own environment in ``make test``).
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import cloudpickle
import numpy as np
import pytest

from blockbuster import Needs, WorkerInfo
from blockbuster.errors import (
    BackendOptionError,
    BlockbusterError,
    InvalidParameterError,
    ModelNotFoundError,
)
from blockbuster.plugins.cellpose import (
    CellposeSegmenter,
    GPUUnavailableWarning,
    _compat,
    _device,
    _layout,
    _loader,
    cellpose_fn,
)
from blockbuster.worker import set_thread_worker

from .conftest import synthetic_disks

INSTALLED_MAJOR = _compat.major_version()
cp3_only = pytest.mark.skipif(INSTALLED_MAJOR != 3, reason="tests Cellpose 3 names/layouts")


@pytest.fixture()
def weights_file(tmp_path):
    """A file standing in for weights (never loaded by these tests)."""
    path = tmp_path / "my_model"
    path.write_bytes(b"not really weights")
    return path


def spy_on_eval(model, monkeypatch) -> list:
    """Record ``(x.shape, kwargs, x)`` of every ``model.eval`` call; the real eval runs."""
    real_eval, calls = model.eval, []

    def spy(x, **kwargs):
        calls.append((x.shape, kwargs, np.array(x)))
        return real_eval(x, **kwargs)

    monkeypatch.setattr(model, "eval", spy)
    return calls


@pytest.fixture(scope="module")
def disks():
    """128² image of the disks the tiny network was trained on."""
    return synthetic_disks((128, 128), seed=8)[0]


class FakeModel:
    """Stands in for ``CellposeModel`` on (pretended) GPUs: labels one square per plane."""

    nchan = 2

    def __init__(self, device="cpu"):
        self.device = device

    def eval(self, x, **kwargs):
        plane = x.shape[:-1] if kwargs.get("channel_axis") is not None else x.shape
        masks = np.zeros(plane, np.uint16)
        masks[..., 2:6, 2:6] = 1
        return masks, None, None


@pytest.fixture()
def fake_builds(monkeypatch):
    """Replace model construction by :class:`FakeModel`; returns the list of builds."""
    builds = []

    def build(weights, major, device):
        builds.append((str(weights), major, str(device)))
        return FakeModel(device=str(device))

    monkeypatch.setattr(_loader, "build_model", build)
    return builds


# -- creation, pickling, needs ------------------------------------------------------------
def test_factory_checks_and_reports_needs(weights_file):
    fn = cellpose_fn(weights_file)
    assert isinstance(fn, CellposeSegmenter)
    assert fn.blockbuster_needs() == Needs(halo=60, bytes_per_voxel=pytest.approx(160.0))
    assert cellpose_fn(weights_file, diameter=17).blockbuster_needs().halo == 34
    assert "my_model" in repr(fn)


@pytest.mark.slow  # the tiny Cellpose 3 network runs
def test_segmenter_pickles_small_and_without_model(tiny_weights, disks):
    fn = cellpose_fn(tiny_weights)
    assert fn(disks).max() > 5
    payload = cloudpickle.dumps(fn)
    assert len(payload) < 4000
    clone = cloudpickle.loads(payload)
    assert clone == fn and clone.blockbuster_fingerprint() == fn.blockbuster_fingerprint()
    assert b"CellposeModel" not in payload and b"CPnet" not in payload


@pytest.mark.slow  # the tiny Cellpose 3 network runs
def test_model_built_once_and_reused(tiny_weights, disks):
    fn = cellpose_fn(tiny_weights, diameter=24)
    first = fn(disks)
    np.testing.assert_array_equal(fn(disks), first)
    clone = cloudpickle.loads(cloudpickle.dumps(fn))
    np.testing.assert_array_equal(clone(disks), first)
    assert _loader.CACHE.loads == 1 and len(_loader.CACHE) == 1
    assert fn.load_model() is clone.load_model()


def test_importing_backend_does_not_import_torch_or_cellpose():
    code = ("import sys, blockbuster.plugins.cellpose, blockbuster.plugins.cellpose._plugin; "
            "print(sorted(m for m in ('torch', 'cellpose') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_registered_by_name_through_entry_point(weights_file):
    from blockbuster.registry import Registry

    registry = Registry()
    assert "cellpose" in registry.names("segmenter")
    fn = registry.segmenter("cellpose", model=str(weights_file), diameter=20)
    assert isinstance(fn, CellposeSegmenter) and fn.settings.diameter == 20
    assert isinstance(registry.segmenter("cp", model=str(weights_file)), CellposeSegmenter)


def test_cli_lists_the_backend():
    cli = "from blockbuster.cli import main; raise SystemExit(main())"
    out = subprocess.run([sys.executable, "-c", cli, "plugins", "--json"], capture_output=True,
                         text=True, check=True).stdout
    assert '"cellpose"' in out and "blockbuster-cellpose" in out


# -- offline weights -----------------------------------------------------------------------
@cp3_only
def test_missing_builtin_name_fails_fast_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(tmp_path))
    with pytest.raises(ModelNotFoundError) as info:
        cellpose_fn("cyto3")
    message = str(info.value)
    assert "CELLPOSE_LOCAL_MODELS_PATH" in message and str(tmp_path / "cyto3") in message
    assert "~/.cellpose/models" in message and "cellpose_fn('/path/to/cyto3')" in message
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, BlockbusterError)


@cp3_only
def test_default_models_dir_is_home_cellpose(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert _compat.models_dir() == tmp_path / ".cellpose" / "models"
    with pytest.raises(ModelNotFoundError, match="nucleitorch_0"):
        cellpose_fn("nuclei")


def test_missing_path_and_unknown_name(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        cellpose_fn(tmp_path / "nope.pth")
    with pytest.raises(ModelNotFoundError, match="neither an existing weights file"):
        cellpose_fn("not_a_model")


@cp3_only
def test_builtin_name_resolves_in_local_models_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(tmp_path))
    (tmp_path / "cyto3").write_bytes(b"w")
    (tmp_path / "nucleitorch_0").write_bytes(b"w")
    assert cellpose_fn("cyto3").settings.weights == str((tmp_path / "cyto3").resolve())
    assert cellpose_fn("nuclei").settings.weights.endswith("nucleitorch_0")
    (tmp_path / "gui_models.txt").write_text("my_custom\n")
    (tmp_path / "my_custom").write_bytes(b"w")
    assert cellpose_fn("my_custom").settings.weights.endswith("my_custom")


def test_download_attempt_is_refused():
    pytest.importorskip("cellpose")
    from cellpose import utils

    with _loader.forbid_downloads():
        with pytest.raises(ModelNotFoundError, match="never downloads"):
            utils.download_url_to_file("https://example.invalid/cyto3", "/tmp/x")
    assert utils.download_url_to_file.__name__ != "refuse"


# -- options -------------------------------------------------------------------------------
def test_bad_options_raise_typed_errors(weights_file):
    with pytest.raises(BackendOptionError, match="no option 'colour'"):
        cellpose_fn(weights_file, colour=True)
    with pytest.raises(BackendOptionError, match="set by blockbuster"):
        cellpose_fn(weights_file, z_axis=0)
    with pytest.raises(InvalidParameterError, match="diameter"):
        cellpose_fn(weights_file, diameter=-3)
    with pytest.raises(BackendOptionError, match="cytoplasm, nucleus"):
        cellpose_fn(weights_file, channels=[1])
    assert cellpose_fn(weights_file, niter=50, augment=True).settings.eval_kwargs == {
        "niter": 50, "augment": True}


def test_weights_file_names():
    assert _compat.weights_filename("nuclei", 3) == "nucleitorch_0"
    assert _compat.weights_filename("cyto3", 3) == "cyto3"
    assert _compat.weights_filename("cpsam", 4) == "cpsam"


# -- devices -------------------------------------------------------------------------------
def test_each_worker_takes_its_own_gpu(monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    try:
        devices = []
        for index in range(5):
            set_thread_worker(WorkerInfo(index, 5))
            devices.append(str(_device.select_device(True)))
    finally:
        set_thread_worker(WorkerInfo(0, 1))
    assert devices == ["cuda:0", "cuda:1", "cuda:2", "cuda:0", "cuda:1"]
    assert str(_device.select_device(False)) == "cpu"


def test_gpu_workers_build_one_model_per_device(monkeypatch, fake_builds, weights_file):
    torch = pytest.importorskip("torch")
    from blockbuster import tile_process

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    fn = cellpose_fn(weights_file, gpu=True, global_normalization=False)
    image = np.zeros((64, 64), np.float32)
    tile_process(image, fn, tile_shape=(16, 16), overlap=0, executor="threads", workers=2,
                 compute=True)
    devices = sorted(device for _, _, device in fake_builds)
    assert set(devices) <= {"cuda:0", "cuda:1"} and len(devices) == len(set(devices))


@pytest.mark.slow  # the tiny Cellpose 3 network runs
def test_no_gpu_warns_once_per_process(monkeypatch, tiny_weights, disks):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    fn = cellpose_fn(tiny_weights, gpu=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            fn(disks[:64, :64])
    gpu_warnings = [w for w in caught if issubclass(w.category, GPUUnavailableWarning)]
    assert len(gpu_warnings) == 1 and "running on the CPU" in str(gpu_warnings[0].message)
    assert fn.load_model().device.type == "cpu" and _loader.CACHE.loads == 1


# -- tile layouts --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("shape", "channel_axis", "volumetric", "data_shape", "spatial"),
    [
        ((30, 40), None, False, (30, 40), (30, 40)),
        ((1, 30, 40), None, False, (30, 40), (1, 30, 40)),
        ((30, 40, 2), -1, False, (30, 40, 2), (30, 40)),
        ((2, 30, 40), 0, False, (30, 40, 2), (30, 40)),
        ((1, 2, 30, 40), 1, False, (30, 40, 2), (1, 30, 40)),
        ((5, 30, 40), None, True, (5, 30, 40), (5, 30, 40)),
        ((5, 3, 30, 40), 1, True, (5, 30, 40, 3), (5, 30, 40)),
    ],
)
def test_tile_layouts(shape, channel_axis, volumetric, data_shape, spatial):
    layout = _layout.to_cellpose(np.zeros(shape), channel_axis=channel_axis,
                                 volumetric=volumetric)
    assert layout.data.shape == data_shape and layout.spatial_shape == spatial
    masks = np.ones(data_shape[:-1] if channel_axis is not None else data_shape, np.uint16)
    assert _layout.from_cellpose(masks, layout).shape == spatial


def test_bad_tile_layouts_say_what_to_do():
    with pytest.raises(InvalidParameterError, match=r"tile_shape=\(1, Y, X\)"):
        _layout.to_cellpose(np.zeros((4, 30, 40)), channel_axis=None, volumetric=False)
    with pytest.raises(InvalidParameterError, match="3 spatial axes"):
        _layout.to_cellpose(np.zeros((30, 40)), channel_axis=None, volumetric=True)
    with pytest.raises(InvalidParameterError, match="out of range"):
        _layout.to_cellpose(np.zeros((30, 40)), channel_axis=3, volumetric=False)


@pytest.mark.slow  # the tiny Cellpose 3 network runs
def test_per_slice_tile_keeps_its_shape(tiny_weights, disks, monkeypatch):
    fn = cellpose_fn(tiny_weights, diameter=24)
    calls = spy_on_eval(fn.load_model(), monkeypatch)
    labels = fn(disks[None, :80, :96])
    assert labels.shape == (1, 80, 96) and labels.dtype == np.uint32
    np.testing.assert_array_equal(labels[0], fn(disks[:80, :96]))
    (shape, kwargs, _), _ = calls
    assert shape == (80, 96) and kwargs["channels"] == [0, 0] and kwargs["z_axis"] is None


@pytest.mark.slow  # the tiny Cellpose 3 network runs
def test_prepare_fixes_normalization_image_wide(tiny_weights, monkeypatch):
    image = np.linspace(0, 100, 200 * 200, dtype=np.float32).reshape(200, 200)
    fn = cellpose_fn(tiny_weights).prepare(image)
    assert fn.settings.lowhigh == pytest.approx((1.0, 99.0), abs=0.1)
    calls = spy_on_eval(fn.load_model(), monkeypatch)
    fn(image[:20, :20])
    (_, kwargs, tile), = calls
    assert kwargs["normalize"] is False  # the tile was normalized with the image's bounds
    expected = (image[:20, :20] - fn.settings.lowhigh[0]) / np.ptp(fn.settings.lowhigh)
    np.testing.assert_allclose(tile, expected, rtol=1e-5, atol=1e-6)
    assert cellpose_fn(tiny_weights, global_normalization=False).prepare(image).settings \
        .lowhigh is None
    assert cellpose_fn(tiny_weights, channel_axis=0).prepare(image).settings.lowhigh is None


@cp3_only
def test_infer_nbase_of_state_dict():
    torch = pytest.importorskip("torch")
    from cellpose.resnet_torch import CPnet

    state = CPnet([2, 8, 16, 32, 64], 3, sz=3).state_dict()
    assert _loader.infer_nbase(state) == [2, 8, 16, 32, 64]
    with pytest.raises(InvalidParameterError, match="not a Cellpose 3 network"):
        _loader.infer_nbase({"w": torch.zeros(1)})



def test_patch_batch_and_workers_follow_the_gpu(monkeypatch):
    import torch

    from blockbuster.plugins.cellpose import _device

    assert _device.patch_batch(torch.device("cpu"), None) == _device.CPU_PATCH_BATCH
    assert _device.patch_batch(torch.device("cpu"), 3) == 3
    assert _device.gpu_workers(False) is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert _device.gpu_workers(True) == 2
    free = {"bytes": 80 * 2**30}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (free["bytes"], 0))
    assert _device.patch_batch(torch.device("cuda:0"), None) == _device.MAX_PATCH_BATCH
    free["bytes"] = 10 * _device.BYTES_PER_PATCH  # half of it planned with: 5 patches
    assert _device.patch_batch(torch.device("cuda:0"), None) == 5
    assert _device.patch_batch(torch.device("cuda:0"), 12) == 12
