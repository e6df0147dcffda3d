"""First-use download of StarDist pretrained models from a local server (no internet needed).

The tiny committed model, zipped as StarDist's release zips are (config.json, weights and
thresholds at the top level), is registered with csbdeep's own ``register_model`` under a
127.0.0.1 URL and its SHA-256, and lands in the Keras cache (``$KERAS_HOME``) where
``StarDist2D.from_pretrained`` reads it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
import zipfile

import numpy as np
import pytest

from blockbuster import tile_process
from blockbuster.errors import ModelNotFoundError
from blockbuster.plugins.stardist import stardist_fn
from blockbuster.testing import serve_files

pytestmark = pytest.mark.slow  # imports TensorFlow (csbdeep's registry); one test runs workers

NAME = "tiny_test"


@pytest.fixture(scope="module")
def tiny_zip(tiny_2d) -> bytes:
    """The tiny 2D model as a release zip (files at the top level)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        for path in sorted(tiny_2d.iterdir()):
            zipped.write(path, path.name)
    return buffer.getvalue()


@pytest.fixture
def register(monkeypatch):
    """``register(name, url, hash)`` with csbdeep for StarDist2D, undone after the test."""
    from csbdeep.models import register_model
    from csbdeep.models.pretrained import _MODELS
    from stardist.models import StarDist2D

    monkeypatch.setitem(_MODELS, StarDist2D, dict(_MODELS[StarDist2D]))  # restored afterwards

    def register_one(name, url, file_hash):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "re-registering model" when replacing a name
            register_model(StarDist2D, name, url, file_hash)

    return register_one


@pytest.fixture
def server(tiny_zip, empty_keras_home, register, monkeypatch):
    """Downloads on, an empty Keras cache, and ``tiny_test`` registered on a local server."""
    monkeypatch.delenv("BLOCKBUSTER_OFFLINE", raising=False)
    with serve_files({"tiny.zip": tiny_zip}) as served:
        register(NAME, f"{served.url}/tiny.zip", hashlib.sha256(tiny_zip).hexdigest())
        yield served


def cache_folder(keras_home, name=NAME):
    return keras_home / "models" / "StarDist2D" / name


def test_first_use_downloads_once_then_runs_offline(server, empty_keras_home, tiny_2d,
                                                    monkeypatch):
    fn = stardist_fn(NAME, normalize_scope="tile")
    assert server.requests == ["tiny.zip"]
    base = cache_folder(empty_keras_home)
    assert fn.spec.kind == "pretrained" and fn.spec.folder == str(base / NAME)
    assert sorted(os.listdir(base)) == [NAME, f"{NAME}.zip", f"{NAME}_extracted"]
    for path in tiny_2d.iterdir():
        assert (base / NAME / path.name).read_bytes() == path.read_bytes()
    monkeypatch.setenv("BLOCKBUSTER_OFFLINE", "1")  # second use: from the cache, offline
    again = stardist_fn(NAME, normalize_scope="tile")
    assert again.spec == fn.spec and server.requests == ["tiny.zip"]
    from stardist.data import test_image_nuclei_2d

    image = test_image_nuclei_2d()[:192, :192]
    labels = again(image)
    assert labels.max() > 5
    np.testing.assert_array_equal(labels, stardist_fn(tiny_2d, normalize_scope="tile")(image))


def test_stardist_reads_the_download_without_fetching_again(server, empty_keras_home,
                                                             monkeypatch):
    """csbdeep's own from_pretrained finds the zip (its hash checks) and loads the model."""
    import keras.src.backend.config as keras_config
    from stardist.models import StarDist2D

    stardist_fn(NAME)
    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(empty_keras_home))  # read at import
    model = StarDist2D.from_pretrained(NAME)
    assert model.config.n_rays == json.loads(
        (cache_folder(empty_keras_home) / NAME / "config.json").read_text())["n_rays"]
    assert server.requests == ["tiny.zip"]


def test_workers_never_download(server, tiny_2d):
    """By name from tile_process with 2 worker processes: one request, from the parent (the
    workers, started by forkserver, do not even know the name registered here)."""
    from stardist.data import test_image_nuclei_2d

    image = test_image_nuclei_2d()[:256, :512]
    labels = tile_process(image, "stardist", segmenter_options={"model": NAME},
                          tile_shape=(256, 256), executor="processes", workers=2,
                          compute=True)
    assert np.asarray(labels).max() > 10
    assert server.requests == ["tiny.zip"]


def test_cut_download_never_lands_in_the_cache(server, empty_keras_home):
    server.truncate["tiny.zip"] = 1000
    with pytest.raises(ModelNotFoundError, match=r"not in the local Keras cache.*connection "
                                                 r"closed after 1000 of \d+ bytes") as info:
        stardist_fn(NAME)
    assert f"blockbuster models pull {NAME}" in str(info.value)
    assert os.listdir(cache_folder(empty_keras_home)) == []
    del server.truncate["tiny.zip"]
    stardist_fn(NAME)  # the next try downloads it whole
    assert server.requests == ["tiny.zip", "tiny.zip"]


@pytest.mark.parametrize("algorithm", ["sha256", "md5"])
def test_registered_hash_is_checked(server, empty_keras_home, register, tiny_zip, algorithm):
    """A body that differs from csbdeep's registered hash (SHA-256 or MD5) never lands."""
    wrong = getattr(hashlib, algorithm)(b"another model").hexdigest()
    register(NAME, f"{server.url}/tiny.zip", wrong)
    with pytest.raises(ModelNotFoundError, match=f"{algorithm.upper().replace('SHA', 'SHA-')}"
                                                 f".*{wrong}"):
        stardist_fn(NAME)
    assert os.listdir(cache_folder(empty_keras_home)) == []
    register(NAME, f"{server.url}/tiny.zip", getattr(hashlib, algorithm)(tiny_zip).hexdigest())
    assert stardist_fn(NAME).spec.folder == str(cache_folder(empty_keras_home) / NAME)


def test_offline_switch_refuses_with_where_to_put_the_file(server, empty_keras_home,
                                                           monkeypatch):
    monkeypatch.setenv("BLOCKBUSTER_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="BLOCKBUSTER_OFFLINE=1") as info:
        stardist_fn(NAME)
    assert str(cache_folder(empty_keras_home) / NAME) in str(info.value)
    assert server.requests == []


def test_models_cli_lists_and_pulls(server, empty_keras_home, register, tiny_zip, capsys):
    """`blockbuster models` lists StarDist's registered names; `models pull 2D_demo` fetches
    it from the URL csbdeep has for it (here the local server)."""
    from blockbuster.cli import main

    register("2D_demo", f"{server.url}/tiny.zip", hashlib.sha256(tiny_zip).hexdigest())
    assert main(["models", "--json"]) == 0
    listed = {m["name"]: m for m in json.loads(capsys.readouterr().out)["stardist"]}
    assert {"2D_versatile_fluo", "2D_versatile_he", "2D_demo", "3D_demo"} <= set(listed)
    assert not listed["2D_demo"]["cached"]
    demo = cache_folder(empty_keras_home, "2D_demo") / "2D_demo"
    assert listed["2D_demo"]["path"] == str(demo)
    assert listed["3D_demo"]["path"].startswith(str(empty_keras_home / "models" / "StarDist3D"))
    assert main(["models", "pull", "2D_demo"]) == 0
    assert server.requests == ["tiny.zip"] and str(demo) in capsys.readouterr().out
    assert main(["models", "--json"]) == 0
    entry = {m["name"]: m for m in json.loads(capsys.readouterr().out)["stardist"]}["2D_demo"]
    assert entry["cached"] and entry["size"] == sum(f.stat().st_size for f in demo.iterdir())
