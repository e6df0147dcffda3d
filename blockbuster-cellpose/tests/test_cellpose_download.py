"""First-use download of Cellpose weights from a local server (no internet needed).

The tiny committed network is served as ``cyto3`` at Cellpose's own model URL
(``cellpose.models._MODEL_URL``, monkeypatched to a 127.0.0.1 server) into Cellpose's own
model folder (``CELLPOSE_LOCAL_MODELS_PATH``).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from blockbuster import tile_process
from blockbuster.errors import ModelNotFoundError
from blockbuster.plugins.cellpose import cellpose_fn

from .conftest import synthetic_disks

pytestmark = pytest.mark.slow  # imports cellpose (torch); the worker test starts processes


@pytest.fixture
def cellpose_server(tiny_weights, serve_models):
    """The tiny network served as ``cyto3`` at Cellpose's model URL, an empty model folder."""
    return serve_models({"cyto3": tiny_weights.read_bytes()})


def test_first_use_downloads_once_then_runs_offline(cellpose_server, tiny_weights, tmp_path):
    fn = cellpose_fn("cyto3", diameter=24)
    cached = tmp_path / "models" / "cyto3"
    assert cellpose_server.requests == ["cyto3"]
    assert fn.settings.weights == str(cached.resolve())
    assert cached.read_bytes() == tiny_weights.read_bytes()
    again = cellpose_fn("cyto3", diameter=24)
    assert cellpose_server.requests == ["cyto3"]  # second use: from the cache
    image, _ = synthetic_disks((128, 128), seed=5)
    np.testing.assert_array_equal(again(image), cellpose_fn(tiny_weights, diameter=24)(image))


def test_workers_never_download(cellpose_server, tmp_path):
    """By name from tile_process with 2 worker processes: one request, from the parent."""
    image, _ = synthetic_disks((192, 192), seed=7)
    labels = tile_process(image, "cellpose", segmenter_options={"model": "cyto3",
                                                                "diameter": 24},
                          tile_shape=(96, 96), overlap=48, executor="processes", workers=2,
                          compute=True)
    assert np.asarray(labels).max() > 5
    assert cellpose_server.requests == ["cyto3"]


def test_cut_download_never_lands_in_the_cache(cellpose_server, tmp_path):
    cellpose_server.truncate["cyto3"] = 100
    with pytest.raises(ModelNotFoundError, match=r"not available offline.*connection closed "
                                                 r"after 100 of \d+ bytes") as info:
        cellpose_fn("cyto3")
    assert "CELLPOSE_LOCAL_MODELS_PATH" in str(info.value)
    assert os.listdir(tmp_path / "models") == []
    del cellpose_server.truncate["cyto3"]
    cellpose_fn("cyto3")  # the next try downloads it whole
    assert cellpose_server.requests == ["cyto3", "cyto3"]


def test_offline_switch_refuses_with_where_to_put_the_file(cellpose_server, tmp_path,
                                                           monkeypatch):
    monkeypatch.setenv("BLOCKBUSTER_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="BLOCKBUSTER_OFFLINE=1") as info:
        cellpose_fn("cyto3")
    assert str(tmp_path / "models" / "cyto3") in str(info.value)
    assert cellpose_server.requests == []


def test_models_cli_lists_and_pulls(cellpose_server, tiny_weights, tmp_path, capsys):
    from blockbuster.cli import main

    assert main(["models", "--json"]) == 0
    listed = {m["name"]: m for m in json.loads(capsys.readouterr().out)["cellpose"]}
    assert {"cyto3", "nuclei"} <= set(listed) and not listed["cyto3"]["cached"]
    assert listed["nuclei"]["path"] == str(tmp_path / "models" / "nucleitorch_0")
    assert main(["models", "pull", "cyto3", "--backend", "cellpose"]) == 0
    assert cellpose_server.requests == ["cyto3"]
    assert str(tmp_path / "models" / "cyto3") in capsys.readouterr().out
    assert main(["models", "--json"]) == 0
    cyto3 = {m["name"]: m for m in json.loads(capsys.readouterr().out)["cellpose"]}["cyto3"]
    assert cyto3["cached"] and cyto3["size"] == tiny_weights.stat().st_size
