"""Fast tests of the Cellpose backend: no network runs (stand-ins replace the model).

Cellpose 4 is covered here with a stand-in ``cellpose.models`` and a faked installed
version: argument mapping, model names, weights lookup and the ``channels`` refusal.
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

INSTALLED_MAJOR = _compat.major_version()
cp3_only = pytest.mark.skipif(INSTALLED_MAJOR != 3, reason="tests Cellpose 3 names/layouts")


@pytest.fixture()
def weights_file(tmp_path):
    """A file standing in for weights (never loaded by these tests)."""
    path = tmp_path / "my_model"
    path.write_bytes(b"not really weights")
    return path


class FakeModel:
    """Stands in for ``CellposeModel``: records eval calls, labels one square per plane."""

    nchan = 2

    def __init__(self, device="cpu", **kwargs):
        self.device = device
        self.kwargs = kwargs
        self.calls = []
        self.inputs = []

    def eval(self, x, **kwargs):
        self.calls.append((x.shape, kwargs))
        self.inputs.append(x)
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


def test_segmenter_pickles_small_and_without_model(weights_file, fake_builds):
    fn = cellpose_fn(weights_file)
    fn(np.zeros((16, 16), np.float32))
    payload = cloudpickle.dumps(fn)
    assert len(payload) < 4000
    clone = cloudpickle.loads(payload)
    assert clone == fn and clone.blockbuster_fingerprint() == fn.blockbuster_fingerprint()
    assert b"FakeModel" not in payload


def test_model_built_once_and_reused(weights_file, fake_builds):
    fn = cellpose_fn(weights_file, diameter=12)
    for _ in range(5):
        fn(np.zeros((16, 16), np.float32))
    clone = cloudpickle.loads(cloudpickle.dumps(fn))
    clone(np.zeros((8, 8), np.float32))
    assert len(fake_builds) == 1 and _loader.CACHE.loads == 1
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


# -- Cellpose 4 mapping (stand-in) ---------------------------------------------------------
#: The parts of cellpose 4.0's ``cellpose/models.py`` that blockbuster reads (with ast).
STANDIN_CP4_MODELS_SOURCE = """
MODEL_NAMES = ["cpsam"]

class CellposeModel():
    def __init__(self, gpu=False, pretrained_model="cpsam", model_type=None,
                 diam_mean=None, device=None, nchan=None, use_bfloat16=True):
        pass

    def eval(self, x, batch_size=8, resample=True, channels=None, channel_axis=None,
             z_axis=None, normalize=True, invert=False, rescale=None, diameter=None,
             flow_threshold=0.4, cellprob_threshold=0.0, do_3D=False, anisotropy=None,
             flow3D_smooth=0, stitch_threshold=0.0, min_size=15, max_size_fraction=0.4,
             niter=None, augment=False, tile_overlap=0.1, bsize=256, compute_masks=True,
             progress=None, active_head="cells"):
        pass
"""


@pytest.fixture()
def cellpose4(monkeypatch):
    """Pretend cellpose 4.0.6 is installed (version metadata and models.py source)."""
    import ast

    monkeypatch.setattr(_compat, "installed_version", lambda: "4.0.6")
    monkeypatch.setattr(_compat, "_models_source",
                        lambda: ast.parse(STANDIN_CP4_MODELS_SOURCE))
    return 4


def test_cp4_names_and_defaults(cellpose4, tmp_path, monkeypatch):
    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="cpsam"):
        cellpose_fn()
    (tmp_path / "cpsam").write_bytes(b"w")
    fn = cellpose_fn()
    assert fn.settings.model == "cpsam" and fn.settings.major == 4
    with pytest.raises(ModelNotFoundError, match="cellpose<4"):
        cellpose_fn("cyto3")
    assert _compat.weights_filename("nuclei", 3) == "nucleitorch_0"
    assert _compat.weights_filename("cpsam", 4) == "cpsam"
    assert "active_head" in _compat.extra_eval_keywords(4)
    assert "interp" not in _compat.extra_eval_keywords(4)


def test_cp4_has_no_channels(cellpose4, weights_file):
    with pytest.raises(BackendOptionError, match="no `channels` option"):
        cellpose_fn(weights_file, channels=[2, 3])
    assert cellpose_fn(weights_file, channels=[0, 0]).settings.channels is None
    with pytest.raises(BackendOptionError, match="only in cellpose 3"):
        cellpose_fn(weights_file, interp=False)


def test_cp4_eval_arguments_and_build(cellpose4, weights_file, monkeypatch):
    """The Cellpose 4 path builds ``CellposeModel(pretrained_model=<path>)`` and never
    passes ``channels``; a stand-in ``cellpose.models`` records what it is given."""
    import types

    cellpose = pytest.importorskip("cellpose")
    built = []

    class CP4Model(FakeModel):
        def __init__(self, gpu=False, pretrained_model="cpsam", device=None, **kw):
            super().__init__(device=device)
            built.append({"gpu": gpu, "pretrained_model": pretrained_model, **kw})

    monkeypatch.setattr(cellpose, "models", types.SimpleNamespace(CellposeModel=CP4Model),
                        raising=False)
    fn = cellpose_fn(weights_file, diameter=25, channel_axis=0)
    labels = fn(np.zeros((3, 32, 40), np.float32))
    assert labels.shape == (32, 40) and labels.max() == 1
    assert built == [{"gpu": False, "pretrained_model": str(weights_file.resolve())}]
    (shape, kwargs), = fn.load_model().calls
    assert shape == (32, 40, 3) and "channels" not in kwargs
    assert kwargs["diameter"] == 25 and kwargs["channel_axis"] == 2


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


def test_no_gpu_warns_once_per_process(monkeypatch, fake_builds, weights_file):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    fn = cellpose_fn(weights_file, gpu=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(6):
            fn(np.zeros((16, 16), np.float32))
    gpu_warnings = [w for w in caught if issubclass(w.category, GPUUnavailableWarning)]
    assert len(gpu_warnings) == 1 and "running on the CPU" in str(gpu_warnings[0].message)
    assert [device for _, _, device in fake_builds] == ["cpu"]


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


@cp3_only
def test_per_slice_tile_keeps_its_shape(weights_file, fake_builds):
    fn = cellpose_fn(weights_file)
    labels = fn(np.zeros((1, 20, 24), np.float32))
    assert labels.shape == (1, 20, 24) and labels.dtype == np.uint32
    (shape, kwargs), = fn.load_model().calls
    assert shape == (20, 24) and kwargs["channels"] == [0, 0] and kwargs["z_axis"] is None


def test_prepare_fixes_normalization_image_wide(weights_file, fake_builds):
    image = np.linspace(0, 100, 200 * 200, dtype=np.float32).reshape(200, 200)
    fn = cellpose_fn(weights_file).prepare(image)
    assert fn.settings.lowhigh == pytest.approx((1.0, 99.0), abs=0.1)
    fn(image[:20, :20])
    (shape, kwargs), = fn.load_model().calls
    assert kwargs["normalize"] is False  # the tile was normalized with the image's bounds
    expected = (image[:20, :20] - fn.settings.lowhigh[0]) / np.ptp(fn.settings.lowhigh)
    np.testing.assert_allclose(fn.load_model().inputs[0], expected, rtol=1e-5, atol=1e-6)
    assert cellpose_fn(weights_file, global_normalization=False).prepare(image).settings \
        .lowhigh is None
    assert cellpose_fn(weights_file, channel_axis=0).prepare(image).settings.lowhigh is None


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
