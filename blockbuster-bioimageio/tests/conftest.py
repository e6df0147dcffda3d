"""Shared fixtures: the tiny model packages (built once per session) and an isolated
bioimageio.spec cache."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# Make the helper module importable under any --import-mode (the monorepo root uses
# importlib mode) and in worker processes, which inherit sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import zoo_models  # noqa: E402


@pytest.fixture(scope="session")
def packages(tmp_path_factory) -> dict[str, Path]:
    """``{"instances": zip, "unet": zip, "semantic": zip}``: the test packages, built with
    bioimageio.spec."""
    folder = tmp_path_factory.mktemp("zoo")
    return {"instances": zoo_models.build_instance_package(folder),
            "unet": zoo_models.build_unet_package(folder),
            "semantic": zoo_models.build_semantic_package(folder)}


@pytest.fixture
def bioimageio_cache(tmp_path, monkeypatch) -> Path:
    """An empty bioimageio.spec cache folder for this test, downloads switched on."""
    from bioimageio.spec._internal._settings import settings

    monkeypatch.delenv("BLOCKBUSTER_OFFLINE", raising=False)
    previous = settings.cache_path
    settings.cache_path = tmp_path / "bioimageio-cache"
    yield settings.cache_path
    settings.cache_path = previous
