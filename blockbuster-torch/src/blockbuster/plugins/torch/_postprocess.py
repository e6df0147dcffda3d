"""Turning network outputs into integer instance labels (0 = background)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from blockbuster.errors import InvalidParameterError, TileFunctionError
from blockbuster.splitting import watershed_split

OUTPUTS = ("instance", "semantic", "probability")
INSTANCE_METHODS = ("connected-components", "watershed")
ACTIVATIONS = (None, "sigmoid")
LABEL_DTYPE = np.int32


def check_output(output: str, instance: Any, activation: Any) -> None:
    """Validate the ``output`` / ``instance`` / ``activation`` options."""
    if output not in OUTPUTS:
        raise InvalidParameterError(f"output={output!r} is not one of {OUTPUTS}.")
    if not (callable(instance) or instance in INSTANCE_METHODS):
        raise InvalidParameterError(
            f"instance={instance!r} must be one of {INSTANCE_METHODS} or a callable (class map or "
            "probability map) -> integer labels."
        )
    if activation not in ACTIVATIONS:
        raise InvalidParameterError(f"activation={activation!r} is not one of {ACTIVATIONS}.")


def reduce_on_device(prediction: Any, *, output: str, activation: str | None) -> Any:
    """Shrink a ``(N, C, *spatial)`` prediction tensor to ``(N, 1, *spatial)`` on its device.

    ``"semantic"``: argmax over classes (an int32 class map); ``"probability"``: the
    foreground channel, through ``activation``; ``"instance"``: the label channel.
    Done before the copy to the host, so a GPU ships one channel, not all logits.
    """
    import torch

    channels = prediction.shape[1]
    if output == "semantic":
        if channels < 2:
            raise TileFunctionError(
                "output='semantic' expects >= 2 class channels (0 = background), the model gave "
                f"{channels}; use output='probability' for a single foreground channel."
            )
        return prediction.argmax(dim=1, keepdim=True).to(torch.int32)
    if channels != 1:
        raise TileFunctionError(
            f"output={output!r} expects one output channel, the model gave {channels}; use "
            "output='semantic' for class logits (argmax over channels)."
        )
    prediction = prediction.float()
    return torch.sigmoid(prediction) if activation == "sigmoid" else prediction


def to_labels(
    values: np.ndarray, *, output: str, instance: Any, threshold: float, min_distance: int
) -> np.ndarray:
    """Turn one sample's reduced output ``(1, *spatial)`` into instance labels.

    ``values`` is what :func:`reduce_on_device` made: labels (``"instance"``), a class
    map (``"semantic"``, 0 = background) or a probability map (``"probability"``).
    """
    values = values[0]
    if output == "instance":
        return np.clip(np.rint(values), 0, None).astype(LABEL_DTYPE)
    if callable(instance):
        return _user_labels(instance, values)
    if output == "semantic":
        return _label_per_class(values, instance, min_distance)
    return label_mask(values > threshold, instance, min_distance)


def _user_labels(instance: Callable[[np.ndarray], np.ndarray], values: np.ndarray) -> np.ndarray:
    labels = np.asarray(instance(values))
    if labels.shape != values.shape or not np.issubdtype(labels.dtype, np.integer):
        raise TileFunctionError(
            f"the instance= callable returned {labels.dtype} {labels.shape}, expected integer "
            f"labels of shape {values.shape}."
        )
    return labels.astype(LABEL_DTYPE, copy=False)


def _label_per_class(classes: np.ndarray, method: str, min_distance: int) -> np.ndarray:
    """Instances of every foreground class, numbered consecutively across classes."""
    labels = np.zeros(classes.shape, dtype=LABEL_DTYPE)
    offset = 0
    for value in np.unique(classes):
        if value == 0:
            continue
        mask = classes == value
        class_labels = label_mask(mask, method, min_distance)
        labels[mask] = class_labels[mask] + np.where(class_labels[mask] > 0, offset, 0)
        offset += int(class_labels.max())
    return labels


def label_mask(mask: np.ndarray, method: str, min_distance: int) -> np.ndarray:
    """Split a foreground mask into instances by connected components or watershed."""
    from scipy import ndimage

    components, count = ndimage.label(mask)
    if method == "connected-components" or count == 0:
        return components.astype(LABEL_DTYPE)
    return watershed_split(mask, max(1, int(min_distance))).astype(LABEL_DTYPE)
