"""StarDist's registered pretrained models: found in the Keras cache, downloaded on first use.

StarDist registers its pretrained models with csbdeep (``register_model(StarDist2D,
"2D_versatile_fluo", url, hash)`` in ``stardist/models/__init__.py``), and
``StarDist2D.from_pretrained`` fetches them with Keras' ``get_file`` into the Keras cache:
``<root>/models/<StarDist2D|StarDist3D>/<key>/<key>.zip``, unzipped next to it into
``<key>_extracted`` and linked as ``<key>``, with ``<root>`` = ``$KERAS_HOME`` or
``~/.keras`` (``/tmp/.keras`` when that is not writable).

blockbuster resolves a name in :func:`stardist_fn` (the parent process, before any worker
starts). A cached model is used without importing TensorFlow. A missing one is downloaded
once, from the URL and with the hash csbdeep has registered for it (so a model the user
registered with csbdeep works too), by :func:`blockbuster.downloads.download_weights`
(progress bar, checked, moved into place only when complete), into exactly that zip path,
then unzipped into a temporary folder moved into place as ``<key>_extracted``. Workers only
ever load the folder. ``BLOCKBUSTER_OFFLINE=1`` turns downloads off.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from blockbuster.downloads import ModelInfo, download_weights, refuse_offline
from blockbuster.errors import ModelNotFoundError

# Registered in stardist/models/__init__.py (stardist 0.9.x); kept here so that resolving a
# cached name needs no TensorFlow import. Keys are the cache folder names. Other names are
# looked up in csbdeep's registry (which imports TensorFlow).
PRETRAINED = {
    "2D_versatile_fluo": "StarDist2D",
    "2D_versatile_he": "StarDist2D",
    "2D_paper_dsb2018": "StarDist2D",
    "2D_demo": "StarDist2D",
    "3D_demo": "StarDist3D",
}
ALIASES = {
    "Versatile (fluorescent nuclei)": "2D_versatile_fluo",
    "Versatile (H&E nuclei)": "2D_versatile_he",
    "DSB 2018 (from StarDist 2D paper)": "2D_paper_dsb2018",
}
MODEL_CLASSES = ("StarDist2D", "StarDist3D")


def pretrained_folder(name: str) -> tuple[str, str, Path]:
    """``(key, model class, model folder)`` of a pretrained name, downloading it if missing.

    Raises :class:`ModelNotFoundError` for an unknown name, offline, or when the download
    fails (with the network cause).
    """
    key, model_class = registered_key(name)
    folder = cached_folder(model_class, key)
    if folder is None:
        folder = download_pretrained(model_class, key)
    return key, model_class, folder


def registered_key(name: str) -> tuple[str, str]:
    """The registered key and model class of a name or alias."""
    key = ALIASES.get(name, name)
    if key in PRETRAINED:
        return key, PRETRAINED[key]
    for model_class in MODEL_CLASSES:
        details = csbdeep_details(model_class, name)
        if details is not None:
            return details[0], model_class
    raise ModelNotFoundError(
        f"Unknown StarDist model {name!r}: it is neither a registered pretrained name "
        f"({', '.join(registered_names())}) nor an existing model folder. Pass the path of a "
        "folder holding config.json and weights_best.h5."
    )


def csbdeep_details(model_class: str, name: str) -> tuple[str, str, str | None] | None:
    """``(key, url, hash)`` csbdeep has registered for ``name`` (key or alias), or None.

    Imports stardist (and TensorFlow), whose import registers StarDist's own models.
    """
    from csbdeep.models.pretrained import get_model_details

    try:
        key, _, details = get_model_details(stardist_class(model_class), name)
    except ValueError:
        return None
    return key, details["url"], details.get("hash")


def registered_names() -> list[str]:
    """Every pretrained key of StarDist2D and StarDist3D in csbdeep's registry."""
    from csbdeep.models.pretrained import get_registered_models

    return [key for model_class in MODEL_CLASSES
            for key in get_registered_models(stardist_class(model_class), return_aliases=False)]


def stardist_class(name: str):
    """``stardist.models.StarDist2D`` or ``StarDist3D`` (imports TensorFlow)."""
    import stardist.models

    return getattr(stardist.models, name)


# ---------------------------------------------------------------------------------------------
# the Keras cache


def keras_cache_roots() -> list[Path]:
    """Keras cache roots in Keras' order: ``$KERAS_HOME`` or ``~/.keras``, then ``/tmp/.keras``."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return [Path(home), Path("/tmp/.keras")]


def download_root() -> Path:
    """The cache root Keras' ``get_file`` writes to: the first root, unless not writable."""
    first, fallback = keras_cache_roots()
    with contextlib.suppress(OSError):
        first.mkdir(parents=True, exist_ok=True)
    return first if os.access(first, os.W_OK) else fallback


def pretrained_candidates(model_class: str, key: str) -> list[Path]:
    """Folders where csbdeep's ``get_model_folder`` leaves an unzipped pretrained model.

    Keras >= 3.6 extracts ``<key>.zip`` into ``<key>_extracted`` and csbdeep links
    ``<key>`` to it; older Keras extracted straight into ``models/<class>/<key>``.
    """
    folders = []
    for root in keras_cache_roots():
        base = root / "models" / model_class / key
        folders += [base / key, base / f"{key}_extracted", base]
    return folders


def cached_folder(model_class: str, key: str) -> Path | None:
    """The unzipped model folder in the Keras cache, or None."""
    return next((folder for folder in pretrained_candidates(model_class, key)
                 if (folder / "config.json").is_file()), None)


def model_info(key: str, model_class: str) -> ModelInfo:
    """``blockbuster models`` entry: the model folder (or where it will be) and its size."""
    folder = cached_folder(model_class, key)
    if folder is None:
        return ModelInfo(key, pretrained_candidates(model_class, key)[0], False)
    size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    return ModelInfo(key, folder, True, size)


# ---------------------------------------------------------------------------------------------
# first-use download


def download_pretrained(model_class: str, key: str) -> Path:
    """Fetch ``<key>.zip`` into the Keras cache (unless a valid one is there) and unzip it."""
    base = download_root() / "models" / model_class / key
    archive = base / f"{key}.zip"
    missing = missing_message(model_class, key)
    if not archive.is_file():
        refuse_offline(missing)  # before csbdeep's registry imports TensorFlow
    details = csbdeep_details(model_class, key)
    if details is None:
        raise ModelNotFoundError(f"{missing} The installed stardist registers no download "
                                 f"for {key!r} with csbdeep.")
    _, url, file_hash = details
    if not (archive.is_file() and hash_matches(archive, file_hash)):
        fetch_archive(url, archive, file_hash, missing)
    return unzip_model(archive, base, key, missing)


def fetch_archive(url: str, archive: Path, file_hash: str | None, missing: str) -> None:
    """Download ``archive`` atomically, checked against csbdeep's hash (SHA-256 or MD5, as
    Keras' ``get_file`` reads it: 64 hex digits are SHA-256)."""
    sha256 = file_hash if file_hash is not None and len(file_hash) == 64 else None
    download_weights(url, archive, missing=missing, sha256=sha256)
    if sha256 is None and not hash_matches(archive, file_hash):
        archive.unlink()
        raise ModelNotFoundError(f"{missing} Downloading {url} failed: its MD5 differs from "
                                 f"the registered {file_hash}.")


def hash_matches(path: Path, file_hash: str | None) -> bool:
    """Whether ``path`` has the registered hash (always, when none is registered)."""
    if file_hash is None:
        return True
    digest = hashlib.sha256() if len(file_hash) == 64 else hashlib.md5()  # noqa: S324
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest() == file_hash.lower()


def unzip_model(archive: Path, base: Path, key: str, missing: str) -> Path:
    """Unzip into a temporary folder, move it to ``<key>_extracted`` and link ``<key>`` to it
    (the layout csbdeep's ``get_model_folder`` leaves); returns the model folder."""
    target = base / f"{key}_extracted"
    partial = Path(tempfile.mkdtemp(dir=base, prefix=f".{target.name}.", suffix=".part"))
    try:
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(partial)
        if not (partial / "config.json").is_file():
            raise ModelNotFoundError(f"{missing} The archive {archive} has no config.json.")
        if target.exists():
            shutil.rmtree(target)
        os.replace(partial, target)
    except zipfile.BadZipFile as error:
        raise ModelNotFoundError(f"{missing} The archive {archive} is broken: {error}") from error
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    link = base / key
    if not link.exists():
        with contextlib.suppress(OSError):  # no symlinks here: <key>_extracted is found too
            link.unlink(missing_ok=True)
            link.symlink_to(target.name)
    return link if (link / "config.json").is_file() else target


def missing_message(model_class: str, key: str) -> str:
    """Where the model is looked for and how to provide it by hand (offline runs)."""
    expected = pretrained_candidates(model_class, key)[0]
    looked = " and ".join(str(root / "models" / model_class / key) for root in keras_cache_roots())
    return (
        f"Pretrained StarDist model {key!r} is not in the local Keras cache (looked under "
        f"{looked}). Fix: on a machine with internet run `blockbuster models pull {key}` "
        f"(or {model_class}.from_pretrained({key!r})) and copy its cache folder "
        f"models/{model_class}/{key} here, or put the unzipped model folder at {expected}/ "
        "(config.json, weights_best.h5, thresholds.json; set KERAS_HOME for another cache "
        "root), or pass the model folder's path as `model`."
    )
