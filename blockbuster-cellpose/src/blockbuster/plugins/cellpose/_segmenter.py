"""The Cellpose segmenter: a small picklable object; the model lives in a per-process cache."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from blockbuster import Needs
from blockbuster.backend import checked_options, image_percentiles
from blockbuster.errors import BackendOptionError, InvalidParameterError
from blockbuster.plugins.cellpose import _compat, _device, _layout, _loader, _weights

#: Cell diameter (pixels) assumed for the halo when ``diameter`` is None (Cellpose's default).
DEFAULT_DIAMETER = 30.0
#: Percentiles Cellpose normalizes to 0 and 1 (``cellpose.transforms.normalize99``).
NORMALIZE_PERCENTILES = (1.0, 99.0)
#: Measured working memory of ``CellposeModel.eval`` per pixel of a 2D tile, beyond a fixed
#: ~0.55 GB for the network's batch of 224 px patches (stock cellpose 3.1 network, CPU,
#: batch_size=8): peak RSS grew 585 MB for a 512 px tile and 713 MB for a 1024 px tile
#: (``scripts/measure_memory.py``), i.e. ~163 B per extra pixel.
BYTES_PER_VOXEL = 160.0


@dataclass(frozen=True)
class CellposeSettings:
    """Everything that defines a Cellpose segmentation, checked once at creation time."""

    model: str
    weights: str
    major: int
    gpu: bool = False
    diameter: float | None = None
    channels: tuple[int, int] | None = None
    channel_axis: int | None = None
    flow_threshold: float = 0.4
    cellprob_threshold: float = 0.0
    min_size: int = 15
    batch_size: int | None = None
    normalize: bool | dict = True
    do_3D: bool = False
    anisotropy: float | None = None
    stitch_threshold: float = 0.0
    global_normalization: bool = True
    lowhigh: tuple[float, float] | None = None
    eval_kwargs: dict = field(default_factory=dict)

    @property
    def volumetric(self) -> bool:
        """Whether tiles are Z, Y, X volumes (3D segmentation or 2D-then-stitch)."""
        return bool(self.do_3D or self.stitch_threshold > 0)


class CellposeSegmenter:
    """``tile -> labels`` with a Cellpose model; create it with :func:`cellpose_fn`.

    The object holds only its :class:`CellposeSettings`, so it pickles small. The Cellpose
    model is built on the first tile a worker process sees, on that worker's device, and
    reused for every later tile (see :func:`load_model`).
    """

    def __init__(self, settings: CellposeSettings):
        self.settings = settings

    def __repr__(self) -> str:
        s = self.settings
        return (f"CellposeSegmenter(model={s.model!r}, diameter={s.diameter}, gpu={s.gpu}, "
                f"do_3D={s.do_3D}, cellpose={s.major}.x)")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CellposeSegmenter) and other.settings == self.settings

    def __hash__(self) -> int:
        return hash(self.blockbuster_fingerprint())

    # -- blockbuster protocol -------------------------------------------------------------
    def __call__(self, tile: np.ndarray) -> np.ndarray:
        """Segment one tile; returns uint32 labels of the tile's spatial shape."""
        s = self.settings
        layout = _layout.to_cellpose(tile, channel_axis=s.channel_axis, volumetric=s.volumetric)
        if s.lowhigh is not None:
            layout = dataclasses.replace(layout, data=normalize_fixed(layout.data, s.lowhigh))
        model = self.load_model()
        arguments = self.eval_arguments(layout)
        arguments["batch_size"] = _device.patch_batch(getattr(model, "device", None), s.batch_size)
        masks = model.eval(layout.data, **arguments)[0]
        return _layout.from_cellpose(masks, layout)

    def blockbuster_needs(self) -> Needs:
        """Halo of two cell diameters (as Cellpose's own distributed mode), memory per voxel,
        and one worker per GPU with ``gpu=True``."""
        diameter = self.settings.diameter or DEFAULT_DIAMETER
        return Needs(halo=int(round(2 * diameter)), bytes_per_voxel=BYTES_PER_VOXEL,
                     workers=_device.gpu_workers(self.settings.gpu))

    def blockbuster_fingerprint(self) -> str:
        """Stable description for job fingerprints: weights file identity and all settings."""
        s = dataclasses.asdict(self.settings)
        weights = Path(self.settings.weights)
        s["weights_size"] = weights.stat().st_size if weights.exists() else None
        s["weights_mtime_ns"] = weights.stat().st_mtime_ns if weights.exists() else None
        s["cellpose"] = _compat.installed_version()
        return "blockbuster.plugins.cellpose:" + json.dumps(s, sort_keys=True, default=str)

    def prepare(self, image: Any) -> CellposeSegmenter:
        """Fix the intensity normalization image-wide so every tile sees the same scale.

        Cellpose maps each image's 1st/99th percentiles to 0/1. Per tile, a tile of mostly
        background would be stretched differently from its neighbours; instead the
        percentiles are estimated once from evenly spread blocks of the whole image, exactly
        what Cellpose does on the whole image. Only for single-channel images with the default
        ``normalize=True``; ``global_normalization=False`` keeps per-tile normalization.
        """
        s = self.settings
        if not s.global_normalization or s.normalize is not True or s.channel_axis is not None:
            return self
        low, high = image_percentiles(image, NORMALIZE_PERCENTILES)
        return CellposeSegmenter(dataclasses.replace(s, lowhigh=(float(low), float(high))))

    # -- model and arguments ---------------------------------------------------------------
    def load_model(self):
        """This process's Cellpose model for these settings (built on first use, then cached)."""
        s = self.settings
        return _loader.get_model(Path(s.weights), s.major, s.gpu)

    def eval_arguments(self, layout: _layout.Layout) -> dict:
        """Keyword arguments for ``CellposeModel.eval`` on a tile of ``layout``."""
        s = self.settings
        data = layout.data
        args: dict[str, Any] = {
            "diameter": s.diameter,
            "flow_threshold": s.flow_threshold,
            "cellprob_threshold": s.cellprob_threshold,
            "min_size": s.min_size,
            "batch_size": s.batch_size,
            # after prepare() the tile is already normalized with image-wide bounds
            "normalize": s.normalize if s.lowhigh is None else False,
            "do_3D": s.do_3D,
            "anisotropy": s.anisotropy,
            "stitch_threshold": s.stitch_threshold,
            "channel_axis": data.ndim - 1 if layout.has_channels else None,
            "z_axis": 0 if layout.volumetric else None,
            "progress": None,
        }
        if s.major == 3:
            # Cellpose 3 wants [cytoplasm, nucleus]; grayscale planes are [0, 0].
            grayscale = [0, 0] if not layout.has_channels else None
            args["channels"] = list(s.channels) if s.channels is not None else grayscale
        args.update(s.eval_kwargs)
        return args


@checked_options
def cellpose_fn(
    model: str | os.PathLike | None = None,
    *,
    gpu: bool = False,
    diameter: float | None = None,
    channels: list[int] | tuple[int, int] | None = None,
    channel_axis: int | None = None,
    flow_threshold: float = 0.4,
    cellprob_threshold: float = 0.0,
    min_size: int = 15,
    batch_size: int | None = None,
    normalize: bool | dict = True,
    do_3D: bool = False,
    anisotropy: float | None = None,
    stitch_threshold: float = 0.0,
    global_normalization: bool = True,
    **eval_kwargs: Any,
) -> CellposeSegmenter:
    """A picklable ``tile -> labels`` segmenter running Cellpose (3.1 or 4.x).

    Parameters
    ----------
    model
        A built-in model name (``"cyto3"``, ``"nuclei"``, ... with cellpose 3.1; ``"cpsam"``
        with cellpose 4), a custom model name registered in Cellpose's model folder, or the
        path of a weights file. Default: the installed version's generalist model. Names are
        looked up in ``$CELLPOSE_LOCAL_MODELS_PATH`` (default ``~/.cellpose/models``); a
        missing file is downloaded there right here, once, before any worker starts. With
        ``BLOCKBUSTER_OFFLINE=1`` (or when the download fails) it raises
        :class:`~blockbuster.errors.ModelNotFoundError` saying where to put the file.
    gpu
        Run on a GPU: worker ``i`` uses ``cuda:{i % n_gpus}``. Without a usable GPU, warns once
        per process and runs on the CPU.
    diameter
        Typical cell diameter in pixels (``None``: the model's own). Also sets the halo
        blockbuster adds around tiles: ``2 * diameter`` (60 px when ``None``).
    channels
        Cellpose 3 only: ``[cytoplasm, nucleus]`` channel numbers (0 = grayscale). Cellpose 4
        has no ``channels`` and raises :class:`~blockbuster.errors.BackendOptionError` unless
        it is ``None`` or ``[0, 0]``.
    channel_axis
        Axis of the tile holding channels (the same value as ``tile_process(channel_axis=)``);
        ``None`` for grayscale images.
    flow_threshold, cellprob_threshold, min_size, batch_size, normalize
        As in ``CellposeModel.eval`` (``batch_size``: 224 px patches per network call;
        ``None``: 8 on the CPU, on a GPU as many as fit in its free memory, at most 64).
    do_3D, anisotropy, stitch_threshold
        As in ``CellposeModel.eval``. With ``do_3D`` or ``stitch_threshold > 0`` tiles are
        ``Z, Y, X`` volumes; otherwise tiles must be planes, ``(Y, X)`` or ``(1, Y, X)``.
    global_normalization
        Before tiling, estimate the intensity percentiles Cellpose normalizes with from the
        whole image (sampled), so all tiles share one scale (single-channel images with
        ``normalize=True``). ``False``: every tile is normalized on its own.
    eval_kwargs
        Further ``CellposeModel.eval`` options (``niter``, ``augment``, ``tile_overlap``,
        ``bsize``, ``invert``, ``max_size_fraction``, ``flow3D_smooth``, ``resample``, and
        ``interp`` on cellpose 3).
    """
    major = _compat.major_version()
    reference = _compat.default_model(major) if model is None else model
    _check_numbers(diameter=diameter, min_size=min_size, batch_size=batch_size,
                   anisotropy=anisotropy, stitch_threshold=stitch_threshold)
    if not isinstance(normalize, (bool, dict)):
        raise BackendOptionError(
            f"normalize must be True, False or a dict of Cellpose normalization options, got "
            f"{normalize!r}."
        )
    checked_channels = _compat.check_channels(major, channels)
    _compat.check_eval_options(major, eval_kwargs)
    weights = _weights.resolve_weights(reference, major)
    settings = CellposeSettings(
        model=os.fspath(reference),
        weights=str(weights),
        major=major,
        gpu=bool(gpu),
        diameter=float(diameter) if diameter else None,
        channels=tuple(checked_channels) if checked_channels else None,
        channel_axis=channel_axis,
        flow_threshold=float(flow_threshold),
        cellprob_threshold=float(cellprob_threshold),
        min_size=int(min_size),
        batch_size=None if batch_size is None else int(batch_size),
        normalize=normalize,
        do_3D=bool(do_3D),
        anisotropy=float(anisotropy) if anisotropy else None,
        stitch_threshold=float(stitch_threshold),
        global_normalization=bool(global_normalization),
        eval_kwargs=dict(eval_kwargs),
    )
    return CellposeSegmenter(settings)


def normalize_fixed(data: np.ndarray, lowhigh: tuple[float, float]) -> np.ndarray:
    """Map ``lowhigh`` to 0 and 1 like ``cellpose.transforms.normalize99`` (flat -> zeros)."""
    low, high = lowhigh
    data = np.asarray(data, dtype=np.float32)
    if high - low <= 1e-3:
        return np.zeros_like(data)
    return (data - np.float32(low)) / np.float32(high - low)


def _check_numbers(*, diameter, min_size, batch_size, anisotropy, stitch_threshold) -> None:
    """Reject impossible numeric options early, naming the option and the valid range."""
    if diameter is not None and not (isinstance(diameter, (int, float)) and diameter >= 0):
        raise InvalidParameterError(
            f"diameter must be a cell diameter in pixels (> 0) or None, got {diameter!r}."
        )
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise InvalidParameterError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
    if not isinstance(min_size, int):
        raise InvalidParameterError(f"min_size must be an integer (pixels), got {min_size!r}.")
    if anisotropy is not None and not anisotropy > 0:
        raise InvalidParameterError(
            f"anisotropy must be > 0 (Z spacing / XY spacing) or None, got {anisotropy!r}."
        )
    if not 0 <= stitch_threshold <= 1:
        raise InvalidParameterError(
            f"stitch_threshold must be an IoU in [0, 1], got {stitch_threshold!r}."
        )
