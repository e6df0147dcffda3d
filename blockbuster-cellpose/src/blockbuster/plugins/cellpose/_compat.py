"""What differs between Cellpose 3.x and 4.x, in one place.

Nothing here imports cellpose or torch: the installed version is read from the package
metadata, and the model names, default model and ``eval`` keywords of the installed release
are read from its ``cellpose/models.py`` source with :mod:`ast` (with the tables below as
fallback), so options are checked in the parent process before any worker starts.

=============================  ===========================  ================================
                               Cellpose 3.1                 Cellpose 4.x
=============================  ===========================  ================================
built-in models                ``cyto3``, ``nuclei``, ...   ``cpsam`` (4.0/4.1); also
                                                            ``cpsam_v2``, ``cpdino`` (4.2)
weights file of a name         ``cyto2torch_0`` for         the name itself
                               cyto/cyto2/nuclei, else
                               the name itself
``channels=[cyto, nucleus]``   selects/reorders channels    removed: all channels (up to 3)
                                                            are used as given
``diameter=None``              model's training diameter    no rescaling (``30 / diameter``
                                                            otherwise)
=============================  ===========================  ================================
"""

from __future__ import annotations

import ast
import importlib.util
import os
from functools import lru_cache
from pathlib import Path

from blockbuster.errors import BackendOptionError

MODELS_ENV = "CELLPOSE_LOCAL_MODELS_PATH"
DEFAULT_MODELS_DIR = Path("~/.cellpose/models")

#: Fallback built-in model names per major version (``cellpose.models.MODEL_NAMES``).
BUILTIN_MODELS: dict[int, tuple[str, ...]] = {
    3: (
        "cyto3", "nuclei", "cyto2_cp3", "tissuenet_cp3", "livecell_cp3", "yeast_PhC_cp3",
        "yeast_BF_cp3", "bact_phase_cp3", "bact_fluor_cp3", "deepbacs_cp3", "cyto2", "cyto",
        "CPx", "transformer_cp3", "neurips_cellpose_default", "neurips_cellpose_transformer",
        "neurips_grayscale_cyto2", "CP", "TN1", "TN2", "TN3", "LC1", "LC2", "LC3", "LC4",
    ),
    4: ("cpsam",),
}
#: Fallback default model per major version (Cellpose 3's ``CellposeModel`` has none).
DEFAULT_MODEL = {3: "cyto3", 4: "cpsam"}

#: ``CellposeModel.eval`` keywords that blockbuster sets itself from the tile layout.
MANAGED_EVAL_KEYWORDS = frozenset({"x", "channel_axis", "z_axis", "compute_masks", "progress"})

#: ``CellposeModel.eval`` keywords that are ``cellpose_fn`` parameters of their own.
OWN_EVAL_KEYWORDS = frozenset({
    "batch_size", "channels", "normalize", "diameter", "flow_threshold", "cellprob_threshold",
    "do_3D", "anisotropy", "stitch_threshold", "min_size",
})

#: Fallback extra ``CellposeModel.eval`` keywords accepted through ``**eval_kwargs``.
EXTRA_EVAL_KEYWORDS: dict[int, frozenset[str]] = {
    3: frozenset({
        "resample", "invert", "rescale", "flow3D_smooth", "max_size_fraction", "niter",
        "augment", "tile_overlap", "bsize", "interp",
    }),
    4: frozenset({
        "resample", "invert", "rescale", "flow3D_smooth", "max_size_fraction", "niter",
        "augment", "tile_overlap", "bsize",
    }),
}


@lru_cache(maxsize=1)
def installed_version() -> str:
    """Version string of the installed ``cellpose`` distribution."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cellpose")
    except PackageNotFoundError as error:
        raise ImportError(
            "the cellpose backend needs the `cellpose` package: pip install 'cellpose>=3.1' "
            "(or reinstall blockbuster-cellpose, which depends on it)."
        ) from error


def major_version(version: str | None = None) -> int:
    """Major version of Cellpose (3 or 4); ``version`` defaults to the installed one."""
    text = version if version is not None else installed_version()
    major = int(text.split(".")[0])
    if major < 3:
        raise ImportError(
            f"cellpose {text} is too old for blockbuster-cellpose; pip install 'cellpose>=3.1'."
        )
    return min(major, 4)


@lru_cache(maxsize=1)
def _models_source() -> ast.Module | None:
    """Parsed source of the installed ``cellpose/models.py`` (not imported), or None."""
    try:
        spec = importlib.util.find_spec("cellpose")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "models.py"
    try:
        return ast.parse(path.read_text())
    except (OSError, SyntaxError):
        return None


def _cellpose_model_method(name: str) -> ast.FunctionDef | None:
    """``CellposeModel.<name>`` in the installed source."""
    tree = _models_source()
    for node in tree.body if tree is not None else ():
        if isinstance(node, ast.ClassDef) and node.name == "CellposeModel":
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == name:
                    return item
    return None


def builtin_models(major: int) -> tuple[str, ...]:
    """Built-in model names of the installed Cellpose (``cellpose.models.MODEL_NAMES``)."""
    tree = _models_source()
    for node in tree.body if tree is not None else ():
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "MODEL_NAMES" for t in node.targets
        ):
            try:
                return tuple(dict.fromkeys(ast.literal_eval(node.value)))
            except ValueError:
                break
    return BUILTIN_MODELS[major]


def default_model(major: int) -> str:
    """The model ``CellposeModel`` loads by default (``cyto3`` for Cellpose 3)."""
    init = _cellpose_model_method("__init__")
    if init is not None:
        names = [a.arg for a in init.args.args]
        with_defaults = names[len(names) - len(init.args.defaults):]
        defaults = dict(zip(with_defaults, init.args.defaults, strict=True))
        value = defaults.get("pretrained_model")
        if isinstance(value, ast.Constant) and isinstance(value.value, str) and value.value:
            return value.value
    return DEFAULT_MODEL[major]


def extra_eval_keywords(major: int) -> frozenset[str]:
    """``CellposeModel.eval`` keywords of the installed Cellpose usable as ``eval_kwargs``."""
    method = _cellpose_model_method("eval")
    if method is None:
        return EXTRA_EVAL_KEYWORDS[major]
    names = {a.arg for a in method.args.args + method.args.kwonlyargs} - {"self"}
    return frozenset(names - MANAGED_EVAL_KEYWORDS - OWN_EVAL_KEYWORDS)


def models_dir() -> Path:
    """Folder where Cellpose keeps built-in weights: ``$CELLPOSE_LOCAL_MODELS_PATH`` or
    ``~/.cellpose/models`` (read now, so a change made after import is honoured)."""
    configured = os.environ.get(MODELS_ENV)
    return Path(configured).expanduser() if configured else DEFAULT_MODELS_DIR.expanduser()


def weights_filename(name: str, major: int) -> str:
    """File name under :func:`models_dir` that holds the weights of the model ``name``."""
    if major == 3 and name in ("cyto", "cyto2", "nuclei"):
        return f"{name}torch_0"
    return name


def user_models(directory: Path) -> tuple[str, ...]:
    """Custom model names registered in Cellpose's GUI list (``gui_models.txt``)."""
    listing = directory / "gui_models.txt"
    if not listing.is_file():
        return ()
    return tuple(line.strip() for line in listing.read_text().splitlines() if line.strip())


def check_eval_options(major: int, options: dict) -> None:
    """Raise :class:`BackendOptionError` for ``**eval_kwargs`` this Cellpose cannot take."""
    managed = sorted(set(options) & MANAGED_EVAL_KEYWORDS)
    if managed:
        raise BackendOptionError(
            f"cellpose option(s) {', '.join(map(repr, managed))} are set by blockbuster from "
            "the tile layout; pass channel_axis= to cellpose_fn (the axis of the tile holding "
            "channels, as given to tile_process) and drop the others."
        )
    allowed = extra_eval_keywords(major)
    unknown = sorted(set(options) - allowed)
    if unknown:
        removed = sorted(set(unknown) & (EXTRA_EVAL_KEYWORDS[3] - allowed))
        hint = (f" ({', '.join(removed)} exists only in cellpose 3)" if removed and major == 4
                else "")
        raise BackendOptionError(
            f"cellpose {installed_version()} has no option {', '.join(map(repr, unknown))}"
            f"{hint}; valid extra options: {', '.join(sorted(allowed))}."
        )


def check_channels(major: int, channels) -> list[int] | None:
    """Validate ``channels`` (Cellpose 3's ``[cytoplasm, nucleus]``, 0 = grayscale).

    Cellpose 4 removed ``channels``: it uses the image's channels (up to 3) in the order
    given. ``None`` and ``[0, 0]`` (grayscale) mean the same on both and are accepted.
    """
    if channels is None:
        return None
    try:
        values = [int(c) for c in channels]
    except (TypeError, ValueError):
        values = []
    if len(values) != 2 or min(values) < 0:
        raise BackendOptionError(
            f"channels must be [cytoplasm, nucleus] with 0 = grayscale, 1.. = channel number "
            f"(e.g. [0, 0] or [2, 3]), got {channels!r}."
        )
    if major >= 4:
        if values == [0, 0]:
            return None
        raise BackendOptionError(
            f"cellpose {installed_version()} (Cellpose-SAM) has no `channels` option: it uses "
            f"the tile's channels as given (up to 3). Drop channels={values} and instead put "
            "the channels you want first along the channel axis of the image (e.g. "
            "image[..., [1, 2]]), or install cellpose<4 to keep channels."
        )
    return values
