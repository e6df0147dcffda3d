"""The ``bioimageio`` segmenter: any bioimage.io model zoo model, tiled."""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from blockbuster import Needs, current_worker
from blockbuster.backend import declared_options, gpu_of_worker, threads_per_worker
from blockbuster.errors import InvalidParameterError

from ._layout import Layout, read_layout
from ._packages import resolve_package
from ._runtime import image_measures, load_description, pipeline, predict_window

PLACEMENT = {"changes_labels": False}  # field metadata: left out of the job fingerprint
BYTES_PER_VOXEL = 256  # float32 x ~64 feature maps at full resolution, like the torch backend


@dataclass(frozen=True)
class BioimageioOptions:
    """Every option of :func:`bioimageio_fn`, declared once (see there for their meaning)."""

    output: str | None = None
    probability_threshold: float | None = None
    output_id: str | None = None
    weight_format: str | None = None
    halo: int | Sequence[int] | None = field(default=None, metadata=PLACEMENT)
    device: str = field(default="auto", metadata=PLACEMENT)
    num_threads: int | None = field(default=None, metadata=PLACEMENT)


@declared_options(BioimageioOptions)
def bioimageio_fn(source: str | os.PathLike, *, options: BioimageioOptions) -> BioimageioSegmenter:
    """A picklable segmenter running a bioimage.io model on every tile.

    Parameters
    ----------
    source
        A model zoo id (``"affable-shark"``), a DOI or URL of a model, or a local package: a
        ``.zip``, a folder holding ``rdf.yaml`` / ``bioimageio.yaml``, or that file. A remote
        model is downloaded once, here in the parent process, through bioimageio.spec's cache
        into ``<bioimageio cache>/blockbuster-packages/`` (``blockbuster models`` lists them);
        offline (``BLOCKBUSTER_OFFLINE=1``) a missing one raises
        :class:`~blockbuster.errors.ModelNotFoundError`.
    output
        What the model outputs: ``"instances"`` (labels, used as they are), or a pixel map
        from which blockbuster forms the objects itself, exactly as connected components of
        the whole-image map (:mod:`blockbuster.pixelmaps`): ``"mask"``, ``"probability"`` or
        ``"semantic"``. Read from the description when left out: integer data in one channel
        are instances; a last ``binarize`` step a mask; float data in one channel a
        probability; several channels per-class scores (``"semantic"``: each pixel's class is
        its highest channel, channel 0 the background).
    probability_threshold
        Foreground cut of a probability output (default 0.5).
    output_id
        Which output tensor to use (default: the first).
    weight_format
        ``"torchscript"``, ``"pytorch_state_dict"`` or ``"onnx"`` (with onnxruntime); default:
        the first of these the package has that loads.
    halo
        Context per side in pixels (int or one per model space axis); default: the input halo
        the model's output halo implies, rounded up to the model's size step.
    device
        ``"auto"`` (a GPU when torch sees one, worker ``i`` on GPU ``i % n``), ``"cpu"``,
        ``"cuda"`` or ``"cuda:N"``.
    num_threads
        CPU threads per worker; default cores // workers.

    Raises
    ------
    blockbuster.errors.ModelNotFoundError
        No package at that path, or a remote one is missing offline or failed to download.
    blockbuster.errors.UnsupportedModelError
        The description asks for something this backend cannot tile exactly (several inputs,
        time axes, output at another scale, statistics of outputs).
    """
    package = str(resolve_package(source))
    description = load_description(package)
    layout = read_layout(description, output_id=options.output_id, output=options.output)
    if options.probability_threshold is not None and layout.kind != "probability":
        raise InvalidParameterError(
            f"probability_threshold={options.probability_threshold!r} applies to a probability "
            f"output; model {layout.name!r} outputs {layout.kind!r}."
        )
    return BioimageioSegmenter(package, layout, options)


class BioimageioSegmenter:
    """``fn(tile) -> labels`` running one bioimage.io model package (see
    :func:`bioimageio_fn`).

    Picklable: it carries the local package's path, the model's :class:`Layout`, the options
    and the image-wide statistics fixed by :meth:`prepare`; each process loads the weights
    once (per device) on its first tile.
    """

    def __init__(self, package: str, layout: Layout, options: BioimageioOptions,
                 stats: dict | None = None, channel_axis: int | None = None) -> None:
        self.package = package
        self.layout = layout
        self.options = options
        self.stats = stats
        self.channel_axis = channel_axis
        self.halo = _check_halo(options.halo, layout)
        self._pipeline: Any = None

    def __repr__(self) -> str:
        return (f"BioimageioSegmenter({self.layout.name!r}, package={self.package!r}, "
                f"output={self.layout.kind!r})")

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pipeline": None}

    # -- blockbuster protocol -----------------------------------------------------------
    def prepare(self, image: Any, *, channel_axis: int | None = None) -> BioimageioSegmenter:
        """Fix every statistic the model's preprocessing needs (percentiles, mean, standard
        deviation) over the whole image, once, so all tiles are normalised alike."""
        prepared = copy.copy(self)
        prepared.channel_axis = channel_axis
        prepared.stats = image_measures(self.package, self.layout, image, channel_axis)
        prepared._pipeline = None
        return prepared

    def blockbuster_needs(self) -> Needs:
        """The halo and size step from the model's description, and one worker per GPU."""
        return Needs(halo=_one_or_each(self.halo), align=_one_or_each(self.layout.align),
                     bytes_per_voxel=float(BYTES_PER_VOXEL), workers=_gpu_workers(self.options),
                     output=self.layout.kind,
                     probability_threshold=self.options.probability_threshold)

    def blockbuster_fingerprint(self) -> str:
        """The package's file identity plus every option that changes labels."""
        options = {f.name: getattr(self.options, f.name) for f in fields(self.options)
                   if f.metadata.get("changes_labels", True)}
        return json.dumps({"package": _file_identity(self.package), **options}, sort_keys=True)

    def __call__(self, tile: np.ndarray) -> np.ndarray:
        """Labels (or the pixel map ``blockbuster_needs().output`` names) of one tile, of its
        spatial shape; axes before the model's space axes (a 2D model on a z stack) are run
        one plane at a time, labels kept distinct between planes."""
        window = _channels_first(np.asarray(tile), self.channel_axis)
        self._check_window(window, tile.shape)
        planes = window.shape[1:-len(self.layout.spatial)]
        flat = window.reshape(window.shape[0], -1, *window.shape[1 + len(planes):])
        results = [self._result(flat[:, i]) for i in range(flat.shape[1])]
        stacked = _distinct_stack(results) if self.layout.kind == "instances" else np.stack(results)
        return stacked.reshape(tuple(planes) + results[0].shape)

    # -- steps ----------------------------------------------------------------------------
    def _check_window(self, window: np.ndarray, shape: tuple[int, ...]) -> None:
        """Enough spatial axes for the model, and its number of channels."""
        if window.ndim - 1 < len(self.layout.spatial):
            raise InvalidParameterError(
                f"model {self.layout.name!r} has space axes {self.layout.spatial} but the tile "
                f"has shape {shape}; give an image with at least that many spatial axes."
            )
        if window.shape[0] != self.layout.channels:
            raise InvalidParameterError(
                f"model {self.layout.name!r} takes {self.layout.channels} channel(s) but the "
                f"tile of shape {shape} has {window.shape[0]} (channel_axis="
                f"{self.channel_axis}); pass the image's channel_axis to tile_process."
            )

    def _result(self, window: np.ndarray) -> np.ndarray:
        """The model's output for one window as labels, a mask, class ids or a probability."""
        output = predict_window(self._pipe(), self.layout, window, self.stats)
        if self.layout.kind == "semantic" and output.shape[0] > 1:
            return np.argmax(output, axis=0).astype(np.int32)
        values = output[0]
        if self.layout.kind in ("instances", "semantic") and not np.issubdtype(values.dtype,
                                                                              np.integer):
            values = np.rint(values).astype(np.int64)
        return values

    def _pipe(self) -> Any:
        if self._pipeline is None:
            device = _device(self.options.device)
            _set_threads(self.options.num_threads, device)
            self._pipeline = pipeline(self.package, self.layout, self.stats,
                                      self.options.weight_format, device)
        return self._pipeline


def _channels_first(tile: np.ndarray, channel_axis: int | None) -> np.ndarray:
    return tile[None] if channel_axis is None else np.moveaxis(tile, channel_axis, 0)


def _distinct_stack(planes: list[np.ndarray]) -> np.ndarray:
    """Stack label planes, offsetting each so no label repeats across planes."""
    if len(planes) == 1:
        return planes[0][None]
    out, offset = [], 0
    for plane in planes:
        plane = plane.astype(np.int64)
        out.append(np.where(plane > 0, plane + offset, 0))
        offset += int(plane.max(initial=0))
    return np.stack(out)


def _check_halo(halo: Any, layout: Layout) -> tuple[int, ...]:
    """The halo per model space axis: given, or the model's rounded up to its size step."""
    if halo is None:
        return tuple(int(math.ceil(h / a) * a) for h, a in zip(layout.halo, layout.align))
    values = (halo,) * len(layout.spatial) if isinstance(halo, int) else tuple(halo)
    if len(values) != len(layout.spatial) or any(
            isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in values):
        raise InvalidParameterError(
            f"halo={halo!r}; give one int >= 0 or one per model space axis {layout.spatial}."
        )
    return values


def _one_or_each(values: tuple[int, ...]) -> int | tuple[int, ...]:
    """One int when every axis agrees, so a 2D model's needs fit images with more axes."""
    return values[0] if len(set(values)) == 1 else values


def _device(requested: str) -> str:
    import torch

    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        return f"cuda:{gpu_of_worker(torch.cuda.device_count())}"
    return requested


def _gpu_workers(options: BioimageioOptions) -> int | None:
    if options.device == "cpu":
        return None
    import torch

    return torch.cuda.device_count() or None if torch.cuda.is_available() else None


def _set_threads(num_threads: int | None, device: str) -> None:
    import torch

    if device == "cpu":
        torch.set_num_threads(num_threads or threads_per_worker(current_worker()))


def _file_identity(path: str) -> str:
    stat = os.stat(path)
    return f"{path}:{stat.st_size}:{stat.st_mtime_ns}"
