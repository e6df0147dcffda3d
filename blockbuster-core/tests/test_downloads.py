"""Weights downloads (blockbuster.downloads) against a local server: atomic, checked, offline."""

from __future__ import annotations

import hashlib
import os

import pytest

from blockbuster.config import load_config
from blockbuster.downloads import (
    OFFLINE_ENV,
    download_weights,
    offline,
    offline_mode,
    refuse_offline,
)
from blockbuster.errors import ModelNotFoundError
from blockbuster.testing import serve_files

BODY = bytes(range(256)) * 4096  # 1 MiB, more than one read chunk


@pytest.fixture(autouse=True)
def online(monkeypatch):
    monkeypatch.delenv(OFFLINE_ENV, raising=False)


def test_download_lands_complete_and_once(tmp_path):
    destination = tmp_path / "cache" / "model"
    with serve_files({"model": BODY}) as server:
        path = download_weights(f"{server.url}/model", destination, missing="no model.",
                                sha256=hashlib.sha256(BODY).hexdigest(), progress=False)
    assert path == destination and destination.read_bytes() == BODY
    assert server.requests == ["model"]
    assert os.listdir(destination.parent) == ["model"]  # no temporary file left behind


def test_cut_connection_never_lands(tmp_path):
    destination = tmp_path / "model"
    with serve_files({"model": BODY}) as server:
        server.truncate["model"] = 1000
        with pytest.raises(ModelNotFoundError, match=r"no model\. .*1000 of 1048576 bytes"):
            download_weights(f"{server.url}/model", destination, missing="no model.",
                             progress=False)
    assert os.listdir(tmp_path) == []


def test_wrong_checksum_never_lands(tmp_path):
    with serve_files({"model": BODY}) as server:
        with pytest.raises(ModelNotFoundError, match="SHA-256"):
            download_weights(f"{server.url}/model", tmp_path / "model", missing="no model.",
                             sha256="0" * 64, progress=False)
    assert os.listdir(tmp_path) == []


def test_network_failure_gives_the_cause(tmp_path):
    with serve_files({}) as server:
        with pytest.raises(ModelNotFoundError, match=r"put it in /x\. .*HTTP Error 404"):
            download_weights(f"{server.url}/model", tmp_path / "model",
                             missing="put it in /x.", progress=False)


def test_offline_switch_refuses_without_a_request(tmp_path, monkeypatch):
    monkeypatch.setenv(OFFLINE_ENV, "1")
    assert offline()
    with serve_files({"model": BODY}) as server:
        with pytest.raises(ModelNotFoundError, match=f"put it in /x.*{OFFLINE_ENV}=1"):
            download_weights(f"{server.url}/model", tmp_path / "model",
                             missing="put it in /x.", progress=False)
    assert server.requests == [] and not (tmp_path / "model").exists()


def test_refuse_offline_raises_only_when_offline():
    refuse_offline("no model.")  # online: nothing happens
    with offline_mode(), pytest.raises(ModelNotFoundError,
                                       match=rf"^no model\. \(Downloads are off: {OFFLINE_ENV}=1"):
        refuse_offline("no model.")


def test_offline_mode_restores_the_environment(monkeypatch):
    assert not offline()
    with offline_mode():
        assert offline()
        with offline_mode(False):
            assert not offline()
        assert offline()
    assert not offline() and OFFLINE_ENV not in os.environ


def test_config_offline_switch_reaches_the_segmenter(tmp_path, monkeypatch):
    """``offline = true`` in [run] holds while the segmenter is created from the config."""
    import numpy as np

    import blockbuster.registry
    from blockbuster import hookimpl
    from blockbuster.config import run_config

    seen = []

    def factory():
        seen.append(offline())
        return lambda tile: (tile > 0).astype(np.uint32)

    class ProbePlugin:
        @hookimpl
        def register_segmenters(self, register):
            register("probe", factory)

    isolated = blockbuster.registry.Registry(autoload=False, plugins=[ProbePlugin()])
    monkeypatch.setattr(blockbuster.registry, "Registry", lambda **kwargs: isolated)
    import zarr

    zarr.save_array(str(tmp_path / "image.zarr"), np.ones((8, 8), dtype=np.uint8))
    config = '[input]\npath = "image.zarr"\n[segmenter]\nname = "probe"\n'
    (tmp_path / "on.toml").write_text(config)
    (tmp_path / "off.toml").write_text(config + "[run]\noffline = true\n")
    assert load_config(tmp_path / "off.toml").get("run", "offline") is True
    run_config(tmp_path / "on.toml")
    run_config(tmp_path / "off.toml")
    assert seen == [False, True] and not offline()
