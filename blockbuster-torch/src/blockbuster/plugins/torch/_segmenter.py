"""The ``torch`` segmenter: a picklable, batch-aware callable around a PyTorch model."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import numpy as np

from blockbuster import Needs, current_worker
from blockbuster.backend import declared_options, image_percentiles
from blockbuster.errors import InvalidParameterError, TileFunctionError
from blockbuster.plugins.torch._device import configure_threads, resolve_device
from blockbuster.plugins.torch._gpu import (
    AUTO_TILES_PER_CALL,
    batch_from_free_memory,
    download,
    gpu_count,
    upload,
    uses_cuda,
)
from blockbuster.plugins.torch._loading import ModelSource, load_model, make_source
from blockbuster.plugins.torch._postprocess import check_output, reduce_on_device, to_labels
from blockbuster.plugins.torch._tiles import (
    DEFAULT_PERCENTILES,
    PreparedTile,
    check_channels,
    check_normalize,
    check_pad_mode,
    check_pad_multiple,
    crop_to,
    group_indices,
    network_shape,
    prepare_tile,
)

DEFAULT_HALO = 32
"""Default halo (pixels per side): enough context for a small/medium U-Net.

A halo should cover the part of the receptive field that influences a pixel's
prediction noticeably; pass ``halo=`` for your network (e.g. 48-64 for deep 2D
U-Nets with 5x5 kernels, 8-16 for shallow filter banks)."""

FEATURE_BYTES_PER_VOXEL = 256
"""Working-memory estimate per voxel for one tile: float32 x ~64 feature maps at full
resolution (inputs, activations and outputs together).  Multiplied by ``batch_size``."""

DTYPES = ("float32", "float16", "bfloat16", "float64")


PLACEMENT = {"changes_labels": False}  # field metadata: left out of the job fingerprint


@dataclass(frozen=True)
class TorchOptions:
    """Every option of :func:`torch_fn`, declared once (see :func:`torch_fn` for their meaning).

    Options marked ``PLACEMENT`` change where and how fast the model runs, never the labels.
    """

    device: str = field(default="auto", metadata=PLACEMENT)
    batch_size: int | Literal["auto"] | None = field(default=None, metadata=PLACEMENT)
    dtype: str = "float32"
    amp: bool = False
    normalize: Any = "dtype"
    output: str = "instance"
    instance: str | Callable[[np.ndarray], np.ndarray] = "connected-components"
    channels: int | None = None
    pad_multiple: int | Sequence[int] = 16
    pad_mode: str = "reflect"
    threshold: float = 0.5
    activation: str | None = None
    min_distance: int = 5
    halo: int | Sequence[int] = field(default=DEFAULT_HALO, metadata=PLACEMENT)
    bytes_per_voxel: float | None = field(default=None, metadata=PLACEMENT)
    num_threads: int | str | None = field(default="auto", metadata=PLACEMENT)


class TorchSegmenter:
    """Segment tiles with a PyTorch model (see :func:`torch_fn` for the options).

    Picklable: only the model *source* is pickled (an in-memory module travels with
    it, a file travels as its path); the loaded model lives in a per-process cache,
    one copy per device, loaded on first use.
    """

    def __init__(self, source: ModelSource, options: TorchOptions | None = None) -> None:
        o = options or TorchOptions()
        output = "instance" if o.output == "instances" else o.output  # the core's spelling
        check_output(output, o.instance, o.activation)
        self.source = source
        self.device = str(o.device)
        self.given_batch_size = _check_batch_size(o.batch_size)
        self.dtype = _check_dtype(o.dtype)
        self.amp = bool(o.amp)
        self.normalize = check_normalize(o.normalize)
        self.output = output
        self.instance = o.instance
        self.channels = check_channels(o.channels)
        self.pad_multiple = check_pad_multiple(o.pad_multiple)
        self.pad_mode = check_pad_mode(o.pad_mode)
        self.threshold = float(o.threshold)
        self.activation = o.activation
        self.min_distance = int(o.min_distance)
        self.halo = _check_halo(o.halo)
        self.bytes_per_voxel = o.bytes_per_voxel
        self.num_threads = o.num_threads
        self._batch_caps: dict[str, int] = {}  # device -> forward batch that fitted after OOM

    def __repr__(self) -> str:
        return (
            f"TorchSegmenter({self.source.describe()}, device={self.device!r}, "
            f"batch_size={self.batch_size}, output={self.output!r})"
        )

    @property
    def batch_size(self) -> int:
        """Tiles the core hands to :meth:`segment_batch` at once.

        The given ``batch_size``; without one, 1 on the CPU and ``AUTO_TILES_PER_CALL`` on a
        GPU, where each forward pass then takes as many of them as fit in free memory.
        """
        if self.given_batch_size is not None:
            return self.given_batch_size
        return AUTO_TILES_PER_CALL if uses_cuda(self.device) else 1

    # -- blockbuster protocol ------------------------------------------------------------
    def prepare(self, image: Any) -> TorchSegmenter:
        """Fix image-wide settings before tiling (called by ``tile_process`` in the parent).

        With ``normalize="percentile"`` the 1st/99.8th percentiles of a sample of the
        whole image (all channels together) become a fixed ``(low, high)``, so all
        tiles are scaled alike.
        """
        if self.normalize != "percentile":
            return self
        low, high = image_percentiles(image, DEFAULT_PERCENTILES)
        prepared = copy.copy(self)
        prepared.normalize = (low, high if high > low else low + 1.0)
        return prepared

    def blockbuster_fingerprint(self) -> str:
        """Stable identity of this job's segmentation for the core's resume checks.

        The model's content plus every option that changes labels; batch size, device
        and threads are left out (they do not change results).
        """
        options = {name: _describe(getattr(self, name)) for name in _RESULT_OPTIONS}
        return json.dumps({"model": self.source.fingerprint(), **options}, sort_keys=True)

    @property
    def pixel_map(self) -> str | None:
        """``"semantic"`` or ``"probability"`` when tiles return that map for blockbuster to
        label (exactly, across tiles) or, for a probability map with
        ``instance="watershed"``, to split on the stitched map; ``None`` when they return
        instance labels."""
        if self.output == "probability" and self.instance == "watershed":
            return self.output
        if self.output == "instance" or self.instance != "connected-components":
            return None
        return self.output

    def blockbuster_needs(self) -> Needs:
        """Halo the model wants, its working memory per voxel of a padded tile, one worker per
        GPU when it runs on CUDA (the worker overlaps its own CPU work), and what a tile
        returns: the class or probability map when its objects are connected components
        (blockbuster labels the stitched map exactly), else instance labels."""
        per_voxel = self.bytes_per_voxel
        if per_voxel is None:
            per_voxel = float(FEATURE_BYTES_PER_VOXEL * (self.given_batch_size or 1))
        kind = self.pixel_map
        splits = kind is not None and self.instance == "watershed"
        return Needs(halo=self.halo, bytes_per_voxel=per_voxel, workers=gpu_count(self.device),
                     output=kind or "instances",
                     probability_threshold=self.threshold if kind == "probability" else None,
                     instances="watershed" if splits else None,
                     min_distance=self.min_distance if splits else None)

    def __call__(self, tile: np.ndarray) -> np.ndarray:
        """Segment one tile: int32 labels of the tile's spatial shape, or, for a
        :attr:`pixel_map`, the int32 class map or float32 probability map (label it with
        :func:`blockbuster.pixelmaps.label_map` for the objects of this one tile)."""
        return self.segment_batch([tile])[0]

    def segment_batch(self, tiles: list[np.ndarray]) -> list[np.ndarray]:
        """Segment several tiles, grouped into forward passes of one padded shape.

        Border tiles of other shapes never get extra padding: each result equals what the
        tile gives alone. On a GPU the passes overlap: pass ``k + 1`` is prepared and
        copied while pass ``k`` runs, and pass ``k`` is labelled while ``k + 1`` runs.
        """
        if not tiles:
            return []
        model, device = self._model()
        while True:
            try:
                return self._segment_passes(model, device, tiles)
            except _PassTooLarge as too_large:
                self._halve_forward_batch(device, too_large)

    def _segment_passes(self, model: Any, device: str, tiles: list[np.ndarray]) -> list:
        shapes = [network_shape(tile, self.channels, self.pad_multiple) for tile in tiles]
        results: list[np.ndarray | None] = [None] * len(tiles)
        pending = None
        for indices in group_indices(shapes, self._forward_batch(device, shapes[0])):
            prepared = [self._prepare(tiles[i]) for i in indices]
            launched = self._launch(model, device, prepared)
            if pending is not None:
                self._finish(*pending, results)
            pending = (indices, prepared, launched)
        self._finish(*pending, results)
        return results  # type: ignore[return-value]

    # -- steps ---------------------------------------------------------------------------
    def _model(self) -> tuple[Any, str]:
        """The model for the calling worker (loaded once per process and device)."""
        import torch

        worker = current_worker()
        configure_threads(self.num_threads, worker)
        device = resolve_device(self.device, worker)
        return load_model(self.source, device, getattr(torch, self.dtype)), device

    def _prepare(self, tile: np.ndarray) -> PreparedTile:
        return prepare_tile(
            tile,
            channels=self.channels,
            normalize=self.normalize,
            pad_multiple=self.pad_multiple,
            pad_mode=self.pad_mode,
        )

    def _forward_batch(self, device: str, shape: tuple[int, ...]) -> int:
        """Tiles per forward pass: the given ``batch_size``, else as many as fit in the
        GPU's free memory (shared with the other workers on it), else 1; never more than a
        pass that ran out of memory on this device left (:meth:`_halve_forward_batch`)."""
        cap = self._batch_caps.get(device, np.inf)
        if self.given_batch_size is not None:
            return int(min(self.given_batch_size, cap))
        if not device.startswith("cuda"):
            return 1
        import torch

        per_voxel = self.bytes_per_voxel or FEATURE_BYTES_PER_VOXEL
        sharing = -(-current_worker().count // max(1, torch.cuda.device_count()))
        return int(min(batch_from_free_memory(device, int(np.prod(shape)), per_voxel, sharing),
                       cap))

    def _halve_forward_batch(self, device: str, too_large: _PassTooLarge) -> None:
        """After a pass of ``n`` tiles ran out of device memory, passes on ``device`` take at
        most ``n // 2`` (results do not depend on the batch); one tile that does not fit
        raises :class:`TileFunctionError`. The estimate from free memory is a guess (networks
        differ in their activations per voxel, and other processes on the GPU grow), so the
        backend learns what fits instead of failing the run."""
        if too_large.batch <= 1:
            raise TileFunctionError(
                f"one tile of shape {too_large.shape} (N, C, *spatial) does not fit in the memory "
                f"of {device}: {too_large.error}. Use smaller tiles (tile_shape=), or fewer "
                "workers on this GPU."
            ) from too_large.error
        self._batch_caps[device] = too_large.batch // 2
        import torch

        if device.startswith("cuda"):
            torch.cuda.empty_cache()

    def _launch(self, model: Any, device: str, prepared: list[PreparedTile]) -> Any:
        """Queue one forward pass and the copy of its reduced output to the host."""
        import torch

        arrays = [tile.data for tile in prepared]
        shape = (len(arrays), *arrays[0].shape)
        inputs = upload(arrays, device, getattr(torch, self.dtype))
        try:
            with torch.inference_mode(), self._autocast(device):
                result = model(inputs)
        except torch.OutOfMemoryError as exc:
            raise _PassTooLarge(len(arrays), shape, exc) from exc
        except (RuntimeError, AssertionError, ValueError) as exc:
            raise TileFunctionError(
                f"the model failed on a batch of shape {shape} (N, C, *spatial) on "
                f"{device}: {type(exc).__name__}: {exc}. If the network needs sides divisible by "
                "some number, pass pad_multiple=<that number>; if it expects another channel "
                "count, set channels= to the tile's channel axis; a torch.export program must be "
                "exported with dynamic_shapes for batch and spatial axes."
            ) from exc
        prediction = _check_output_shape(_main_tensor(result), shape)
        with torch.inference_mode():
            reduced = reduce_on_device(prediction, output=self.output, activation=self.activation)
            return download(reduced)

    def _finish(self, indices: list[int], prepared: list[PreparedTile], launched: Any,
                results: list) -> None:
        """Wait for a pass's output (``(N, 1, *spatial)``: class map, probability or labels)
        and label each of its tiles."""
        raw = launched.result()
        for row, (index, tile) in enumerate(zip(indices, prepared, strict=True)):
            results[index] = self._labels(crop_to(raw[row], tile.spatial_shape))

    def _autocast(self, device: str):
        import torch

        if not self.amp:
            return nullcontext()
        device_type = torch.device(device).type
        half = torch.float16 if device_type in ("cuda", "mps") else torch.bfloat16
        return torch.autocast(device_type=device_type, dtype=half)

    def _labels(self, raw: np.ndarray) -> np.ndarray:
        if self.pixel_map is not None:
            return raw[0]  # blockbuster labels the map (Needs.output)
        return to_labels(
            raw,
            output=self.output,
            instance=self.instance,
            threshold=self.threshold,
            min_distance=self.min_distance,
        )


class _PassTooLarge(Exception):
    """A forward pass of ``batch`` tiles ran out of device memory (caught by
    :meth:`TorchSegmenter.segment_batch`, which retries with smaller passes)."""

    def __init__(self, batch: int, shape: tuple[int, ...], error: BaseException) -> None:
        super().__init__(f"a pass of {batch} tiles ran out of memory")
        self.batch, self.shape, self.error = batch, shape, error


_RESULT_OPTIONS = tuple(
    f.name for f in fields(TorchOptions) if f.metadata.get("changes_labels", True)
)


def _describe(value: Any) -> str:
    """repr of an option; a callable by its qualified name."""
    if callable(value):
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', '?')}"
    return repr(value)


def _main_tensor(result: Any) -> Any:
    """The prediction tensor of a model result (tensor, first of a tuple, or dict['out'])."""
    import torch

    if isinstance(result, torch.Tensor):
        return result
    if isinstance(result, (tuple, list)) and result and isinstance(result[0], torch.Tensor):
        return result[0]
    if isinstance(result, dict) and isinstance(result.get("out"), torch.Tensor):
        return result["out"]
    raise TileFunctionError(
        f"the model returned {type(result).__name__}; expected a tensor (N, C, *spatial), a tuple "
        "whose first item is one, or a dict with key 'out'. Wrap the model to return the "
        "prediction tensor."
    )


def _check_output_shape(output: Any, input_shape: tuple[int, ...]) -> Any:
    """Accept ``(N, C, *spatial)`` or ``(N, *spatial)``; spatial must match the input."""
    if output.ndim == len(input_shape) - 1:
        output = output.unsqueeze(1)
    if (
        output.ndim != len(input_shape)
        or output.shape[0] != input_shape[0]
        or tuple(output.shape[2:]) != tuple(input_shape[2:])
    ):
        raise TileFunctionError(
            f"the model mapped input {tuple(input_shape)} to output {tuple(output.shape)}; it must "
            "return (N, C, *spatial) with the input's spatial size. If it down-samples "
            "internally, pad inputs to the size it needs with pad_multiple= and make it up-sample "
            "back to full resolution."
        )
    return output


def _check_batch_size(batch_size: Any) -> int | None:
    if batch_size is None or batch_size == "auto":
        return None
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, (int, np.integer))
        or batch_size < 1
    ):
        raise InvalidParameterError(
            f"batch_size={batch_size!r} must be a positive int, or None/'auto' (sized from "
            "the GPU's free memory)."
        )
    return int(batch_size)


def _check_dtype(dtype: Any) -> str:
    name = str(dtype).replace("torch.", "")
    if name not in DTYPES:
        raise InvalidParameterError(
            f"dtype={dtype!r} must be one of {DTYPES} (or the torch dtype)."
        )
    return name


def _check_halo(halo: Any) -> int | tuple[int, ...]:
    values = (halo,) if isinstance(halo, (int, np.integer)) else tuple(halo)
    if any(int(v) < 0 for v in values):
        raise InvalidParameterError(f"halo={halo!r} must be >= 0 (pixels of context per side).")
    return int(halo) if isinstance(halo, (int, np.integer)) else tuple(int(v) for v in values)


@declared_options(TorchOptions)
def torch_fn(
    model: Any,
    *,
    weights: str | os.PathLike | None = None,
    model_kwargs: dict | None = None,
    options: TorchOptions,
) -> TorchSegmenter:
    """Make a blockbuster segmenter from a PyTorch model.

    Args:
        model: an ``nn.Module``; a TorchScript file (``torch.jit.save``); a
            ``torch.export`` program file (``.pt2``, exported with dynamic batch and
            spatial dims); or a factory (class, function or ``"pkg.mod:attr"``) used
            with ``weights=`` (a state-dict file) and ``model_kwargs=``.  Loaded lazily
            once per worker process and device, in ``eval()`` mode.
        device: ``"auto"`` (CUDA GPU ``worker index % GPU count``, else MPS, else CPU),
            ``"cpu"``, ``"cuda"`` (spread over GPUs), ``"cuda:N"`` or ``"mps"``.
        batch_size: tiles per forward pass; results equal ``batch_size=1``. ``None``
            (default): 1 on the CPU; on a GPU as many as fit in its free memory (at most 8,
            16 tiles per call, so copies and labelling overlap the GPU's work).
        dtype: model/input precision (``"float32"``, ``"float16"``, ``"bfloat16"``).
        amp: run under ``torch.autocast`` (float16 on GPUs, bfloat16 on CPU).
        normalize: ``"dtype"`` (integers scaled to [0, 1]; floats unchanged), ``None``,
            ``"percentile"`` (1st..99.8th percentile of the whole image -> [0, 1], fixed
            once by ``prepare``), ``(low, high)`` mapped to [0, 1], or a callable on the
            tile (it must not depend on tile statistics, or tiles will disagree).
        output: what the model returns: ``"instance"`` (labels), ``"semantic"``
            (class logits ``(N, C, ...)`` -> argmax, class 0 = background) or
            ``"probability"`` (one foreground channel -> ``> threshold``).
        instance: semantic/probability -> instances: ``"connected-components"`` (tiles
            return the class or probability map and blockbuster labels the stitched map,
            exactly as on the whole image; see ``Needs.output``), ``"watershed"``
            (distance-transform watershed, seeds ``min_distance`` apart: a probability map
            is returned for blockbuster to split on the stitched map, ``Needs(instances=
            "watershed")``; a class map is split per class inside each tile) or a callable
            taking the class map (semantic) or probability map.
        channels: the tile's channel axis (as ``tile_process(channel_axis=...)``), or
            None for single-channel images (a channel axis of 1 is added).
        pad_multiple: pad every spatial side (at its end, ``pad_mode``) up to a
            multiple of this (int or one per axis), then crop the output back.
        threshold / activation: for ``output="probability"``; ``activation="sigmoid"``
            when the model returns logits.
        halo: context in pixels per side the model needs (advertised through
            ``blockbuster_needs()``); default 32.
        bytes_per_voxel: working memory estimate override (default 256 x batch_size).
        num_threads: CPU threads per worker: ``"auto"`` = cores // workers, an int,
            or None to leave torch's setting alone.
        weights / model_kwargs: a state-dict file and keyword arguments for a model factory.

    The options are declared once, in :class:`TorchOptions`; an unknown name or a value of
    the wrong type raises :class:`~blockbuster.errors.BackendOptionError`.
    """
    source = make_source(model, weights=weights, model_kwargs=model_kwargs)
    return TorchSegmenter(source, options)
