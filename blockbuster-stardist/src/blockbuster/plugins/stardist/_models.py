"""Finding and loading StarDist models, once per worker process.

A model is given as one of:

- a registered pretrained name (``"2D_versatile_fluo"``, ``"2D_versatile_he"``,
  ``"2D_paper_dsb2018"``, ``"2D_demo"``, ``"3D_demo"``, an alias, or a name registered with
  csbdeep's ``register_model``): looked up in the local Keras cache, where
  ``StarDist2D.from_pretrained`` keeps it (``$KERAS_HOME`` or ``~/.keras``, then
  ``models/<StarDist2D|StarDist3D>/<name>/``), and downloaded there on first use, in the
  parent process (:mod:`._pretrained`);
- a path to a model folder (``config.json``, ``weights_best.h5``, ``thresholds.json``);
- a ``StarDist2D`` / ``StarDist3D`` instance.

Nothing in this module imports TensorFlow or stardist until a model is actually loaded (or a
pretrained model must be downloaded).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from blockbuster.errors import InvalidParameterError, ModelNotFoundError

from . import _pretrained
from ._pretrained import stardist_class

WEIGHT_FILES = ("weights_best.h5", "weights_last.h5", "weights_now.h5")

Kind = Literal["pretrained", "path", "instance"]


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from. Picklable and hashable: it is the per-process cache key.

    ``kind`` is ``"pretrained"`` (``name`` = registered key, ``folder`` = its cache folder),
    ``"path"`` (``folder`` = the model folder) or ``"instance"`` (``name`` = a token naming
    an in-memory model; workers rebuild it from the weights shipped with the segmenter).
    """

    kind: Kind
    name: str
    model_class: str
    folder: str | None = None


# ---------------------------------------------------------------------------------------------
# resolution (no TensorFlow)


def resolve_model(model: Any) -> tuple[ModelSpec, Any]:
    """Return the :class:`ModelSpec` of ``model`` and the instance if one was given."""
    if _looks_like_stardist_model(model):
        spec = ModelSpec("instance", uuid.uuid4().hex, _stardist_class_name(model))
        return spec, model
    if isinstance(model, os.PathLike) or (isinstance(model, str) and _is_path_like(model)):
        return _spec_from_folder(Path(model).expanduser()), None
    if isinstance(model, str):
        return _spec_from_pretrained(model), None
    raise InvalidParameterError(
        f"model must be a pretrained name (e.g. '2D_versatile_fluo'), a path to a model folder "
        f"or a StarDist2D/StarDist3D instance, got {type(model).__name__}."
    )


def _is_path_like(text: str) -> bool:
    return os.sep in text or text.startswith((".", "~")) or Path(text).expanduser().is_dir()


def _looks_like_stardist_model(obj: Any) -> bool:
    return _stardist_class_name(obj) is not None and hasattr(obj, "keras_model")


def _stardist_class_name(obj: Any) -> str | None:
    names = [c.__name__ for c in type(obj).__mro__]
    return next((n for n in ("StarDist2D", "StarDist3D") if n in names), None)


def _spec_from_folder(folder: Path) -> ModelSpec:
    """A model folder given by path: check the files and read its dimensionality."""
    config = folder / "config.json"
    if not config.is_file():
        raise ModelNotFoundError(
            f"No StarDist model folder at {folder}: {config.name} is missing. A model folder "
            f"holds config.json, weights_best.h5 and thresholds.json (as written by "
            f"StarDist2D/3D training or unzipped from a pretrained model)."
        )
    if not any((folder / w).is_file() for w in WEIGHT_FILES):
        raise ModelNotFoundError(
            f"StarDist model folder {folder} has no weights ({' or '.join(WEIGHT_FILES)}); "
            "copy the weights file next to config.json."
        )
    n_dim = int(json.loads(config.read_text()).get("n_dim", 2))
    return ModelSpec("path", str(folder.resolve()), f"StarDist{n_dim}D", str(folder.resolve()))


def _spec_from_pretrained(name: str) -> ModelSpec:
    """A pretrained name: its folder in the Keras cache, downloaded there if missing."""
    key, model_class, folder = _pretrained.pretrained_folder(name)
    return ModelSpec("pretrained", key, model_class, str(folder))


# ---------------------------------------------------------------------------------------------
# loading (imports TensorFlow), cached per process

_MODELS: dict[ModelSpec, Any] = {}
_LOCK = threading.Lock()


def remember_instance(spec: ModelSpec, model: Any) -> None:
    """Cache a user-given instance in this process so it is used as is, never rebuilt."""
    _MODELS[spec] = model


def cached_model(spec: ModelSpec) -> Any | None:
    """The model already loaded in this process for ``spec``, if any."""
    return _MODELS.get(spec)


def load_model(spec: ModelSpec, payload: dict | None = None, configure=None) -> Any:
    """Load (once per process, thread-safe) and return the model for ``spec``.

    ``payload`` (config, thresholds and weights of an instance) rebuilds an ``instance`` model
    in a worker process. ``configure`` is called once before TensorFlow is first used, to size
    its thread pools and pick a GPU.
    """
    model = _MODELS.get(spec)
    if model is not None:
        return model
    with _LOCK:
        if spec not in _MODELS:
            if configure is not None:
                configure()
            _MODELS[spec] = _load_uncached(spec, payload)
        return _MODELS[spec]


def _load_uncached(spec: ModelSpec, payload: dict | None) -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if spec.kind == "instance":
        if payload is None:
            raise ModelNotFoundError(
                "This StarDist segmenter was built from an in-memory model that is not "
                "available in this process; pickle the segmenter itself (not a copy without "
                "its weights), or build it from a model folder path."
            )
        return rebuild_instance(payload)
    cls = stardist_class(spec.model_class)
    folder = Path(spec.folder)
    return _quietly(cls, None, name=folder.name, basedir=str(folder.parent))


def instance_payload(model: Any) -> dict:
    """Everything needed to rebuild an in-memory model in another process."""
    return {
        "class": _stardist_class_name(model),
        "config": dict(vars(model.config)),
        "thresholds": dict(model.thresholds._asdict()),
        "weights": model.keras_model.get_weights(),
    }


def rebuild_instance(payload: dict) -> Any:
    """Inverse of :func:`instance_payload`: a read-only model with the same weights."""
    cls = stardist_class(payload["class"])
    config = _config_of(payload)
    model = _quietly(cls, config, name=None, basedir=None)
    model.keras_model.set_weights(payload["weights"])
    model.thresholds = payload["thresholds"]
    return model


def _config_of(payload: dict):
    from stardist.models import Config2D, Config3D

    config_class = Config3D if payload["class"] == "StarDist3D" else Config2D
    return config_class(**payload["config"])


def _quietly(cls, config, **kwargs):
    """Construct a model without csbdeep's 'Loading network weights' chatter on stdout."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return cls(config, **kwargs)


def read_config(spec: ModelSpec) -> dict:
    """The model's ``config.json`` as a dict, without importing TensorFlow when possible."""
    model = _MODELS.get(spec)
    if model is not None:
        return dict(vars(model.config))
    if spec.folder is None:
        raise ModelNotFoundError(
            "The in-memory StarDist model of this segmenter is not loaded in this process."
        )
    return json.loads((Path(spec.folder) / "config.json").read_text())


def model_digest(spec: ModelSpec) -> str:
    """A content hash of the model (config, thresholds, weights) for job fingerprints.

    A folder model hashes its files; an in-memory model hashes its config and weights, so a
    retrained model never resumes a run made with the old one.
    """
    digest = hashlib.sha1(spec.model_class.encode())
    if spec.kind == "instance":
        payload = instance_payload(_MODELS[spec]) if spec in _MODELS else None
        if payload is None:
            raise ModelNotFoundError("The in-memory StarDist model is not loaded in this process.")
        digest.update(json.dumps(payload["config"], sort_keys=True, default=str).encode())
        digest.update(json.dumps(payload["thresholds"], sort_keys=True).encode())
        for weights in payload["weights"]:
            digest.update(weights.tobytes())
        return digest.hexdigest()
    folder = Path(spec.folder)
    for name in ("config.json", "thresholds.json", *WEIGHT_FILES):
        if (folder / name).is_file():
            digest.update(name.encode() + (folder / name).read_bytes())
    return digest.hexdigest()
