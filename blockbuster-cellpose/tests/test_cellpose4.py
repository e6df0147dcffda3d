"""The cellpose backend against the real Cellpose 4 (Cellpose-SAM) code.

Runs only where cellpose 4 is installed: ``make test`` builds that environment
(``.venv-cp4``) after the main suite, which has cellpose 3.1 and skips this file.

No Cellpose-SAM weights can be downloaded here, so the stock ViT-L network gets weights that
make it a local blob finder (``_local_cpsam.py``): every layer still runs, and Cellpose's own
``CellposeModel``, ``eval``, tiling and mask dynamics turn its outputs into labels.
Their flows are blur gradients, not Cellpose's diffusion flows, so the tests pass
``flow_threshold=0`` (Cellpose's flow-error check would reject every mask). ViT-L on a CPU
costs ~20 s per 256² patch on 2 cores, so these tests run 5 patches.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from blockbuster import tile_process
from blockbuster.errors import BackendOptionError, ModelNotFoundError
from blockbuster.metrics import match_objects
from blockbuster.plugins.cellpose import _compat, cellpose_fn, model_cache

from ._local_cpsam import blob_cpsam_state, synthetic_blobs
from .conftest import check_tiled_against_whole

# tiled runs of real models on the test images never look like a mask returned as labels
NO_PIXEL_MAP_HINT = pytest.mark.filterwarnings("error::blockbuster.errors.PixelMapWarning")
pytestmark = [
    pytest.mark.slow,
    NO_PIXEL_MAP_HINT,
    pytest.mark.skipif(_compat.major_version() < 4, reason="cellpose 4 is not installed"),
]


@pytest.fixture(scope="module")
def models_folder(tmp_path_factory):
    """A models folder holding the blob-finding Cellpose-SAM weights as ``cpsam``."""
    import torch

    folder = tmp_path_factory.mktemp("models")
    torch.save(blob_cpsam_state(), folder / "cpsam")
    yield folder
    (folder / "cpsam").unlink()  # 1.2 GB: do not leave it in pytest's kept temp folders


@pytest.fixture()
def cpsam(models_folder, monkeypatch):
    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(models_folder))
    return "cpsam"


@pytest.fixture(scope="module")
def blobs():
    """256² image of Gaussian blobs and their true labels (disks around the centres)."""
    return synthetic_blobs((256, 256), seed=3)


def test_names_options_and_default_come_from_the_installed_cellpose(cpsam, tmp_path,
                                                                     monkeypatch):
    from cellpose import models

    assert _compat.builtin_models(4) == tuple(dict.fromkeys(models.MODEL_NAMES))
    init = inspect.signature(models.CellposeModel.__init__).parameters
    assert _compat.default_model(4) == init["pretrained_model"].default
    eval_parameters = set(inspect.signature(models.CellposeModel.eval).parameters) - {"self",
                                                                                       "x"}
    assert _compat.extra_eval_keywords(4) == (eval_parameters - _compat.MANAGED_EVAL_KEYWORDS
                                              - _compat.OWN_EVAL_KEYWORDS)
    assert "interp" not in eval_parameters
    with pytest.raises(BackendOptionError, match="only in cellpose 3"):
        cellpose_fn(cpsam, interp=False)

    fn = cellpose_fn(cpsam, diameter=30)
    assert fn.settings.major == 4 and fn.settings.weights.endswith("cpsam")
    with pytest.raises(BackendOptionError, match="no `channels` option"):
        cellpose_fn(cpsam, channels=[2, 3])
    assert cellpose_fn(cpsam, channels=[0, 0]).settings.channels is None
    with pytest.raises(ModelNotFoundError, match="cellpose<4"):
        cellpose_fn("cyto3")
    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match=init["pretrained_model"].default):
        cellpose_fn()


def test_tiled_matches_whole_image(cpsam, blobs):
    """Per-slice tiles (1, 128, 256) with the default halo agree with one whole-image run."""
    image, truth = blobs
    fn = cellpose_fn(cpsam, flow_threshold=0)
    whole = fn(image[None])
    assert whole.shape == (1, 256, 256) and whole.dtype == np.uint32
    tiled = tile_process(image[None], fn, tile_shape=(1, 128, 256), executor="threads",
                         compute=True)
    check_tiled_against_whole(truth, whole[0], tiled[0], min_f1_truth=0.95)
    assert model_cache.loads == 1


def test_channel_axis_reaches_eval_in_order(cpsam, blobs, monkeypatch):
    """A (C, Y, X) tile reaches ``CellposeModel.eval`` channels-last, channel 0 first, without
    ``channels``; its labels are those of calling Cellpose directly, and find the blobs."""
    image, truth = blobs
    image, truth = image[:128, :160], truth[:128, :160]
    noise = np.random.default_rng(1).random(image.shape, dtype=np.float32)
    tile = np.stack([image, noise])  # the network reads the first channel only
    fn = cellpose_fn(cpsam, channel_axis=0, diameter=30, flow_threshold=0)
    model = fn.load_model()
    real_eval, calls = model.eval, []

    def spy(x, **kwargs):
        calls.append((x.shape, kwargs))
        return real_eval(x, **kwargs)

    monkeypatch.setattr(model, "eval", spy)
    labels = fn(tile)
    assert labels.shape == (128, 160) and labels.dtype == np.uint32
    (shape, kwargs), = calls
    assert shape == (128, 160, 2) and kwargs["channel_axis"] == 2
    assert "channels" not in kwargs and kwargs["diameter"] == 30
    assert kwargs["flow_threshold"] == 0

    direct, _, _ = real_eval(np.moveaxis(tile, 0, -1), channel_axis=-1, diameter=30,
                               flow_threshold=0)
    np.testing.assert_array_equal(labels, direct)
    assert match_objects(truth, labels, iou_threshold=0.5).f1 >= 0.9


# -- first-use download of Cellpose-SAM weights (a tiny stand-in file; never loaded) ----------

SAM_BYTES = b"cellpose-sam stand-in weights " * 1000  # 30 kB, served under the real names


@pytest.fixture
def sam_server(serve_models):
    """``cpsam`` and the default model served at Cellpose 4's ``_MODEL_URL``, downloads on."""
    return serve_models({"cpsam": SAM_BYTES, _compat.default_model(4): SAM_BYTES[::-1]})


def test_cpsam_and_default_download_once_then_run_offline(sam_server, tmp_path, monkeypatch):
    folder = tmp_path / "models"
    fn = cellpose_fn("cpsam")
    assert sam_server.requests == ["cpsam"]
    assert fn.settings.weights == str((folder / "cpsam").resolve())
    assert (folder / "cpsam").read_bytes() == SAM_BYTES
    default = _compat.default_model(4)  # cpsam_v2 on cellpose 4.2: CellposeModel's default
    assert cellpose_fn().settings.weights == str((folder / default).resolve())
    assert sam_server.requests == ["cpsam", default]
    assert sorted(p.name for p in folder.iterdir()) == sorted({"cpsam", default})
    monkeypatch.setenv("BLOCKBUSTER_OFFLINE", "1")  # second use: from the cache, offline
    assert cellpose_fn("cpsam").settings.weights == fn.settings.weights
    assert cellpose_fn().settings.weights.endswith(default)
    assert sam_server.requests == ["cpsam", default]


def test_cpsam_cut_download_never_lands(sam_server, tmp_path):
    sam_server.truncate["cpsam"] = 1000
    with pytest.raises(ModelNotFoundError, match=rf"'cpsam' is not available offline.*"
                                                 rf"connection closed after 1000 of "
                                                 rf"{len(SAM_BYTES)} bytes") as info:
        cellpose_fn("cpsam")
    assert f"{sam_server.url}/cpsam" in str(info.value)  # Cellpose's (patched) model URL
    assert list((tmp_path / "models").iterdir()) == []
    del sam_server.truncate["cpsam"]
    assert cellpose_fn("cpsam").settings.weights.endswith("cpsam")
    assert sam_server.requests == ["cpsam", "cpsam"]


def test_cpsam_offline_switch_refuses(sam_server, tmp_path, monkeypatch):
    monkeypatch.setenv("BLOCKBUSTER_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="BLOCKBUSTER_OFFLINE=1") as info:
        cellpose_fn("cpsam")
    assert str(tmp_path / "models" / "cpsam") in str(info.value)
    assert "blockbuster models pull cpsam" in str(info.value)
    assert sam_server.requests == []


def test_models_cli_lists_cellpose4_names_and_pulls_cpsam(sam_server, tmp_path, capsys):
    import json

    from cellpose import models

    from blockbuster.cli import main

    assert main(["models", "--json"]) == 0
    listed = {m["name"]: m for m in json.loads(capsys.readouterr().out)["cellpose"]}
    assert set(models.MODEL_NAMES) <= set(listed) and not listed["cpsam"]["cached"]
    assert main(["models", "pull", "cpsam"]) == 0
    assert sam_server.requests == ["cpsam"]
    assert str(tmp_path / "models" / "cpsam") in capsys.readouterr().out
    assert main(["models", "--json"]) == 0
    cpsam = {m["name"]: m for m in json.loads(capsys.readouterr().out)["cellpose"]}["cpsam"]
    assert cpsam["cached"] and cpsam["size"] == len(SAM_BYTES)
