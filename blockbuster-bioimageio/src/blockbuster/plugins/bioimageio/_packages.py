"""Where a bioimage.io model package comes from, and the local copy of a remote one.

A source is a local package (a ``.zip``, a folder holding ``rdf.yaml``/``bioimageio.yaml``,
or that yaml file), used where it is; or a model zoo id (``"affable-shark"``), a DOI or a
URL, which :func:`resolve_package` turns into a local package **once, in the parent
process**: bioimageio.spec loads the description and fetches its files through its own
download cache (``$BIOIMAGEIO_CACHE_PATH``), then packs them into one ``.zip`` in
``<cache>/blockbuster-packages/``, moved into place only when complete. Workers and later
runs load that file and never touch the network. Offline (``BLOCKBUSTER_OFFLINE=1`` or
``offline = true``) a missing package raises :class:`~blockbuster.errors.ModelNotFoundError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

from blockbuster.downloads import OFFLINE_ENV, ModelInfo, offline
from blockbuster.errors import ModelNotFoundError

STORE_FOLDER = "blockbuster-packages"
YAML_NAMES = ("bioimageio.yaml", "rdf.yaml")
PATH_SUFFIXES = (".zip", ".yaml", ".yml")


def resolve_package(source: str | os.PathLike) -> Path:
    """The local package of ``source`` (downloaded and stored first if it is remote)."""
    text = os.fspath(source)
    local = Path(text).expanduser()
    if local.exists():
        return _checked_local(local)
    if isinstance(source, os.PathLike) or _looks_like_path(text):
        raise ModelNotFoundError(
            f"No bioimage.io model package at {text!r} (looked at {local.resolve()}). Pass a "
            "package .zip, a folder holding rdf.yaml (or bioimageio.yaml), a model zoo id such "
            "as 'affable-shark', a DOI or a URL."
        )
    stored = stored_package(text)
    if stored.is_file():
        return stored
    return _download(text, stored)


def stored_package(source: str) -> Path:
    """Where the local copy of the remote ``source`` lives (whether or not it is there)."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:12]
    tail = re.sub(r"[^A-Za-z0-9._-]+", "_", source.rstrip("/").rsplit("/", 1)[-1])[:60]
    return store_folder() / f"{Path(tail).stem or 'model'}-{digest}.zip"


def store_folder() -> Path:
    """``<bioimageio.spec cache>/blockbuster-packages`` (the cache honours
    ``$BIOIMAGEIO_CACHE_PATH``)."""
    from bioimageio.spec._internal._settings import settings

    return Path(settings.cache_path) / STORE_FOLDER


def models() -> list[ModelInfo]:
    """The remote packages stored so far, by the source they were fetched from."""
    folder = store_folder()
    if not folder.is_dir():
        return []
    entries = []
    for sidecar in sorted(folder.glob("*.json")):
        source = json.loads(sidecar.read_text()).get("source")
        if source:
            entries.append(ModelInfo.at(source, sidecar.with_suffix(".zip")))
    return entries


def pull(name: str) -> Path:
    """Fetch ``name`` (zoo id, DOI or URL) now, as first use would; its local package."""
    return resolve_package(name)


def _checked_local(path: Path) -> Path:
    if path.is_dir() and not any((path / name).is_file() for name in YAML_NAMES):
        raise ModelNotFoundError(
            f"{path} is a folder without {' or '.join(YAML_NAMES)}; pass the folder of an "
            "unpacked bioimage.io model package, its yaml file or the package .zip."
        )
    return path.resolve()


def _looks_like_path(text: str) -> bool:
    if text.startswith(("http://", "https://")):
        return False
    return text.startswith((".", "/", "~", os.sep)) or text.lower().endswith(PATH_SUFFIXES)


def _download(source: str, destination: Path) -> Path:
    """Load ``source`` with bioimageio.spec (its download cache), pack it to ``destination``."""
    if offline():
        raise ModelNotFoundError(
            f"bioimage.io model {source!r} is not available offline: no package {destination}. "
            f"Downloads are off ({OFFLINE_ENV}=1 or offline = true in the config). Fix: on a "
            f"machine with internet run `blockbuster models pull {source}` (with the same "
            "$BIOIMAGEIO_CACHE_PATH), or download the package .zip and pass its path."
        )
    from bioimageio.spec import load_model_description, save_bioimageio_package

    try:
        description = load_model_description(source)
    except Exception as error:  # bioimageio.spec raises network, validation and value errors
        raise ModelNotFoundError(
            f"Could not load bioimage.io model {source!r}: {type(error).__name__}: {error}. "
            "Check the zoo id, DOI or URL and the network, or pass a local package .zip."
        ) from error
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=destination.parent, prefix=".", suffix=".zip")
    os.close(handle)
    try:
        save_bioimageio_package(description, output_path=Path(partial))
        destination.with_suffix(".json").write_text(json.dumps({"source": source}))
        os.replace(partial, destination)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(partial)
    return destination
