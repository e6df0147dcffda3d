"""Remote models (zoo id, DOI, URL) are fetched once, in the parent, through bioimageio.spec's
download cache, from a local server here (no internet needed)."""

from __future__ import annotations

import numpy as np
import pytest
import zoo_models

from blockbuster.downloads import offline_mode
from blockbuster.errors import ModelNotFoundError
from blockbuster.plugins.bioimageio import _packages, bioimageio_fn
from blockbuster.testing import assert_same_labels, serve_files


@pytest.fixture
def zoo_server(packages, bioimageio_cache):
    """The instance package served at ``<url>/instances.zip``, an empty cache."""
    with serve_files({"instances.zip": packages["instances"].read_bytes()}) as server:
        yield server


def test_url_downloads_once_then_runs_from_the_stored_package(zoo_server, packages,
                                                              bioimageio_cache):
    url = f"{zoo_server.url}/instances.zip"
    fn = bioimageio_fn(url)
    assert zoo_server.requests == ["instances.zip"]
    assert fn.package == str(_packages.stored_package(url))
    assert fn.package.startswith(str(bioimageio_cache))
    again = bioimageio_fn(url)
    assert zoo_server.requests == ["instances.zip"]  # second use: the stored package
    image = zoo_models.test_image((96, 96), seed=2)
    local = bioimageio_fn(packages["instances"]).prepare(image)
    assert_same_labels(local(image), again.prepare(image)(image))
    [info] = _packages.models()
    assert (info.name, info.cached, info.path) == (url, True, _packages.stored_package(url))
    with offline_mode():  # stored: offline is fine
        assert bioimageio_fn(url).package == fn.package


def test_offline_refuses_and_never_requests(zoo_server):
    url = f"{zoo_server.url}/instances.zip"
    with offline_mode(), pytest.raises(ModelNotFoundError, match="not available offline"):
        bioimageio_fn(url)
    assert zoo_server.requests == []
    assert not _packages.stored_package(url).exists()


def test_failed_download_names_the_cause_and_stores_nothing(zoo_server):
    url = f"{zoo_server.url}/missing.zip"
    cause = "Could not load bioimage.io model '.*/missing.zip'"
    with pytest.raises(ModelNotFoundError, match=cause):
        bioimageio_fn(url)
    assert zoo_server.requests == ["missing.zip"]
    assert not _packages.store_folder().exists() or not any(_packages.store_folder().iterdir())


def test_models_pull_through_the_cli(zoo_server, capsys):
    from blockbuster.cli import main

    url = f"{zoo_server.url}/instances.zip"
    assert main(["models", "pull", url, "--backend", "bioimageio"]) == 0
    assert str(_packages.stored_package(url)) in capsys.readouterr().out
    assert main(["models", "--json"]) == 0
    import json

    listed = json.loads(capsys.readouterr().out)["bioimageio"]
    assert [(m["name"], m["cached"]) for m in listed] == [(url, True)]
    assert zoo_server.requests == ["instances.zip"]
    assert np.isfinite(listed[0]["size"])


def test_zoo_id_resolves_through_bioimageio_spec(packages, bioimageio_cache, monkeypatch):
    """A zoo id goes through bioimageio.spec's own id resolution (its collection URL pattern,
    pointed at the local server) and file cache; the second use makes no request."""
    import zipfile

    from bioimageio.spec._internal._settings import settings

    with zipfile.ZipFile(packages["instances"]) as archive:
        files = {f"tiny-zoo-model/{name}": archive.read(name) for name in archive.namelist()}
    with serve_files(files) as server:
        monkeypatch.setattr(settings, "collection_http_pattern",
                            f"{server.url}/{{bioimageio_id}}/rdf.yaml")
        fn = bioimageio_fn("tiny-zoo-model")
        fetched = list(server.requests)
        assert "tiny-zoo-model/rdf.yaml" in fetched and any(r.endswith(".pt") for r in fetched)
        assert bioimageio_fn("tiny-zoo-model").package == fn.package
        assert server.requests == fetched
    assert [m.name for m in _packages.models()] == ["tiny-zoo-model"]
