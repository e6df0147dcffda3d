"""``blockbuster models`` and ``models pull`` through the register_model_stores hook."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import blockbuster.registry
from blockbuster import hookimpl
from blockbuster.cli import main
from blockbuster.downloads import ModelInfo, download_weights
from blockbuster.testing import serve_files


class FolderStore:
    """A store whose models are files in ``folder``, fetched from ``url``."""

    def __init__(self, folder: Path, url: str, names: tuple[str, ...]):
        self.folder, self.url, self.names = folder, url, names

    def models(self):
        return [ModelInfo.at(name, self.folder / name) for name in self.names]

    def pull(self, name):
        path = self.folder / name
        if not path.is_file():
            download_weights(f"{self.url}/{name}", path, missing=f"put {name} in {path}.",
                             progress=False)
        return path


@pytest.fixture
def stores(tmp_path, monkeypatch):
    """Two backends' stores ("alpha": a, shared; "beta": shared) on a local server."""
    monkeypatch.delenv("BLOCKBUSTER_OFFLINE", raising=False)
    with serve_files({"a": b"A" * 2048, "shared": b"S"}) as server:
        alpha = FolderStore(tmp_path / "alpha", server.url, ("a", "shared"))
        beta = FolderStore(tmp_path / "beta", server.url, ("shared",))

        class StoresPlugin:
            @hookimpl
            def register_model_stores(self, register):
                register("alpha", alpha, description="test store")
                register("beta", beta)

        registry = blockbuster.registry.Registry(autoload=False, plugins=[StoresPlugin()])
        monkeypatch.setattr(blockbuster.registry, "Registry", lambda **kwargs: registry)
        yield server


def listing(capsys) -> dict:
    assert main(["models", "--json"]) == 0
    return {backend: {m["name"]: (m["cached"], m["size"]) for m in models}
            for backend, models in json.loads(capsys.readouterr().out).items()}


def test_models_lists_names_cached_and_sizes(stores, capsys, tmp_path):
    assert listing(capsys) == {"alpha": {"a": (False, None), "shared": (False, None)},
                               "beta": {"shared": (False, None)}}
    assert main(["models", "pull", "a"]) == 0
    assert str(tmp_path / "alpha" / "a") in capsys.readouterr().out
    assert listing(capsys)["alpha"]["a"] == (True, 2048)
    assert main(["models"]) == 0
    text = capsys.readouterr().out
    assert "alpha  (1 of 2 cached)" in text and "beta  (0 of 1 cached)" in text
    assert main(["models", "pull", "a"]) == 0  # cached: no second request
    assert stores.requests == ["a"]


def test_pull_needs_backend_when_ambiguous(stores, capsys, tmp_path):
    assert main(["models", "pull", "shared"]) == 1
    assert "several backends know 'shared' (alpha, beta); choose one with --backend" in \
        capsys.readouterr().err
    assert main(["models", "pull", "shared", "--backend", "beta"]) == 0
    assert (tmp_path / "beta" / "shared").read_bytes() == b"S"
    assert not (tmp_path / "alpha" / "shared").exists()


def test_pull_unknown_name_or_backend_and_offline(stores, capsys, monkeypatch):
    assert main(["models", "pull", "nope"]) == 1
    assert "no installed backend knows a model 'nope'" in capsys.readouterr().err
    assert main(["models", "pull", "a", "--backend", "gamma"]) == 1
    assert "no installed backend 'gamma' provides models" in capsys.readouterr().err
    monkeypatch.setenv("BLOCKBUSTER_OFFLINE", "1")
    assert main(["models", "pull", "a"]) == 1
    assert "BLOCKBUSTER_OFFLINE=1" in capsys.readouterr().err and stores.requests == []
