"""Running a model package on one window, in any process, through bioimageio.core.

The description and the model adapter (the loaded weights) are kept once per process and
device (:func:`loaded_model`); a window goes through bioimageio.core's own
``PredictionPipeline``: padding by the model's halo, preprocessing with the image-wide
statistics fixed in the parent (:func:`image_measures`), the forward pass, postprocessing and
cropping the halo again.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any

import numpy as np

from blockbuster.backend import image_sample
from blockbuster.errors import InvalidParameterError, UnsupportedModelError

from ._layout import Layout

_MODELS: dict[tuple, Any] = {}
_LOCK = threading.RLock()  # loading an adapter loads the description first
SUPPORTED_WEIGHTS = ("torchscript", "pytorch_state_dict", "onnx")


def load_description(package: str) -> Any:
    """The model description of a local package, validated by bioimageio.spec (cached)."""
    return _cached(("description", package), lambda: _load_description(package))


def _load_description(package: str) -> Any:
    from bioimageio.spec import load_model_description

    return load_model_description(package, perform_io_checks=False)


def loaded_model(package: str, weight_format: str | None, device: str) -> Any:
    """The model adapter of ``package`` on ``device`` (weights loaded once per process)."""
    key = ("adapter", package, weight_format, device)
    return _cached(key, lambda: _adapter(load_description(package), weight_format, device))


def _adapter(description: Any, weight_format: str | None, device: str) -> Any:
    from bioimageio.core import create_model_adapter

    order = (weight_format,) if weight_format else SUPPORTED_WEIGHTS
    try:
        with warnings.catch_warnings():  # torch >= 2.10 flags TorchScript, which zoo models ship
            warnings.simplefilter("ignore", DeprecationWarning)
            return create_model_adapter(description, devices=[device],
                                        weight_format_priority_order=order)
    except Exception as error:  # bioimageio.core collects each format's failure in one error
        present = [f for f in type(description.weights).model_fields
                   if getattr(description.weights, f, None) is not None]
        raise UnsupportedModelError(
            f"model {description.name!r}: no weights this backend can run on {device} (weights "
            f"in the package: {', '.join(present)}; tried {', '.join(order)}): {error}. Install "
            "the framework the weights need (torch, onnxruntime) or pick weight_format=."
        ) from error


def _cached(key: tuple, load) -> Any:
    with _LOCK:
        if key not in _MODELS:
            _MODELS[key] = load()
        return _MODELS[key]


def pipeline(package: str, layout: Layout, stats: dict | None, weight_format: str | None,
             device: str) -> Any:
    """A ``PredictionPipeline`` with the fixed ``stats`` (``None``: each window's own)."""
    from bioimageio.core import PredictionPipeline
    from bioimageio.core.proc_setup import setup_pre_and_postprocessing

    description = load_description(package)
    pre, post = setup_pre_and_postprocessing(description, [], fixed_dataset_stats=stats or None)
    return PredictionPipeline(name=layout.name, model_description=description,
                              preprocessing=pre, postprocessing=post,
                              model_adapter=loaded_model(package, weight_format, device))


def predict_window(pipe: Any, layout: Layout, window: np.ndarray,
                   stats: dict | None) -> np.ndarray:
    """The model's output for one window ``(channels, *spatial)``, as ``(channels, *spatial)``
    of the same spatial shape. ``stats`` are the fixed statistics the pipeline was built with
    (bioimageio.core reads sample statistics from the sample itself).

    The window is padded at its end (``symmetric``, as bioimageio.core pads) up to the
    smallest valid model input that also holds the halo, and the output is cropped back.
    """
    from bioimageio.core import Sample, Tensor

    spatial = window.shape[1:]
    needed = tuple(s + 2 * h for s, h in zip(spatial, layout.halo, strict=True))
    extra = [v - n for v, n in zip(layout.valid_size(needed), needed, strict=True)]
    padded = np.pad(window, [(0, 0)] + [(0, e) for e in extra], mode="symmetric")
    data = _in_model_order(padded, layout)
    sample = Sample(members={layout.input_id: Tensor(data, dims=layout.input_dims)},
                    stat=dict(stats or {}), id=None)
    output = pipe.predict_sample_without_blocking(sample).members[layout.output_id]
    result = _from_model_order(output.to_numpy(), [str(d) for d in output.dims], layout)
    return result[(slice(None),) + tuple(slice(0, s) for s in spatial)]


def _in_model_order(window: np.ndarray, layout: Layout) -> np.ndarray:
    """``(channels, *spatial)`` -> the model's axis order (batch and channel of size 1 added
    or dropped as the model declares them)."""
    have = ["channel", *layout.spatial]
    data = window
    if "channel" not in layout.input_axes:
        data, have = data[0], have[1:]
    if "batch" in layout.input_axes:
        data, have = data[None], ["batch", *have]
    return np.transpose(data, [have.index(a) for a in layout.input_axes])


def _from_model_order(data: np.ndarray, dims: list[str], layout: Layout) -> np.ndarray:
    """The output's axes ``dims`` -> ``(channels, *spatial)``."""
    roles = dict(layout.output_roles)
    axes = [roles.get(d, d) for d in dims]
    if "batch" in axes:
        data = np.take(data, 0, axis=axes.index("batch"))
        axes.remove("batch")
    if "channel" not in axes:
        data, axes = data[None], ["channel", *axes]
    return np.transpose(data, [axes.index(a) for a in ["channel", *layout.spatial]])


def image_measures(package: str, layout: Layout, image: Any,
                   channel_axis: int | None) -> dict:
    """Every statistic the model's processing asks for, over the whole image, computed once.

    bioimageio.core's own calculators run on a stand-in sample holding the image's voxels
    (all of them for a small image, else :func:`blockbuster.backend.image_sample`'s evenly
    spread blocks): every spatial axis but the last has size 1, the last holds the voxels, so
    reducing over the spatial axes reduces over the image.
    """
    from bioimageio.core.proc_setup import get_requried_measures
    from bioimageio.core.stat_calculators import compute_measures

    required = get_requried_measures(load_description(package))
    measures = set(required.pre) | set(required.post)
    if not measures:
        return {}
    foreign = sorted({str(m.member_id) for m in measures if str(m.member_id) != layout.input_id})
    if foreign:
        raise UnsupportedModelError(
            f"model {layout.name!r}: its processing needs statistics of {foreign}, which exist "
            "only after the model ran on the whole image; this backend fixes statistics of the "
            "input only."
        )
    return compute_measures(measures, [_stand_in_sample(layout, image, channel_axis)])


def _stand_in_sample(layout: Layout, image: Any, channel_axis: int | None) -> Any:
    from bioimageio.core import Sample, Tensor

    values = image_sample(image, channel_axis=channel_axis)  # (channels, n)
    if values.shape[0] != layout.channels:
        raise InvalidParameterError(
            f"model {layout.name!r} takes {layout.channels} channel(s) but the image has "
            f"{values.shape[0]} (channel_axis={channel_axis}); pass the image's channel_axis to "
            "tile_process."
        )
    window = values.reshape(values.shape[0], *([1] * (len(layout.spatial) - 1)), -1)
    data = _in_model_order(window, layout)
    return Sample(members={layout.input_id: Tensor(data, dims=layout.input_dims)}, stat={},
                  id=None)
