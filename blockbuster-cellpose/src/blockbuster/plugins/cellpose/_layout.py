"""Map a blockbuster tile to the array layout Cellpose wants, and labels back.

Tiles arrive in the image's axis order; the channel axis, if any, is whole and at its
original position. Cellpose gets ``(Y, X)`` / ``(Y, X, C)`` planes, or ``(Z, Y, X[, C])``
volumes for ``do_3D`` / ``stitch_threshold``; labels go back in the tile's spatial shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from blockbuster.errors import InvalidParameterError


@dataclass(frozen=True)
class Layout:
    """How one tile is handed to Cellpose.

    ``data`` is the array for ``CellposeModel.eval`` (channels last, if any);
    ``spatial_shape`` is the shape the labels must be returned in.
    """

    data: np.ndarray
    spatial_shape: tuple[int, ...]
    has_channels: bool
    volumetric: bool


def to_cellpose(tile: np.ndarray, *, channel_axis: int | None, volumetric: bool) -> Layout:
    """Reshape ``tile`` for Cellpose.

    ``volumetric`` (``do_3D`` or ``stitch_threshold > 0``) keeps the last three spatial axes
    as ``Z, Y, X``; otherwise the last two are the plane and all other spatial axes must have
    length 1 (per-slice tiles such as ``(1, Y, X)``).
    """
    tile = np.asarray(tile)
    if channel_axis is not None:
        axis = _normalize_axis(channel_axis, tile.ndim)
        tile = np.moveaxis(tile, axis, -1)
        spatial_shape = tile.shape[:-1]
    else:
        spatial_shape = tile.shape
    wanted = 3 if volumetric else 2
    leading = spatial_shape[: len(spatial_shape) - wanted]
    if len(spatial_shape) < wanted or any(size != 1 for size in leading):
        raise InvalidParameterError(_shape_message(spatial_shape, channel_axis, volumetric))
    core = tile.reshape(spatial_shape[len(leading):] + tile.shape[len(spatial_shape):])
    return Layout(core, tuple(spatial_shape), channel_axis is not None, volumetric)


def from_cellpose(masks: np.ndarray, layout: Layout) -> np.ndarray:
    """Cellpose ``masks`` as integer labels of the tile's spatial shape."""
    masks = np.asarray(masks)
    labels = masks.astype(np.uint32, copy=False) if masks.dtype != np.uint32 else masks
    return labels.reshape(layout.spatial_shape)


def _normalize_axis(axis: int, ndim: int) -> int:
    if not -ndim <= axis < ndim:
        raise InvalidParameterError(
            f"channel_axis={axis} is out of range for a tile with {ndim} axes; give the axis "
            "of the image that holds channels (the same value as tile_process's channel_axis)."
        )
    return axis % ndim


def _shape_message(spatial_shape: tuple[int, ...], channel_axis, volumetric: bool) -> str:
    if volumetric:
        return (
            f"cellpose do_3D/stitch_threshold needs tiles with 3 spatial axes (Z, Y, X), got "
            f"spatial shape {spatial_shape}; tile a 3D image, or set do_3D=False and "
            "stitch_threshold=0 for 2D planes."
        )
    if len(spatial_shape) < 2:
        return (
            f"cellpose segments 2D planes but the tile's spatial shape is {spatial_shape}; "
            "give an image with at least Y and X axes"
            + (" (is channel_axis right?)." if channel_axis is not None else ".")
        )
    return (
        f"cellpose got a tile of spatial shape {spatial_shape} with do_3D=False: 2D mode "
        "segments single planes. Use tile_shape=(1, Y, X) to segment slice by slice (labels "
        "are then joined across slices by blockbuster), set do_3D=True (or stitch_threshold>0) "
        "for 3D segmentation, or pass channel_axis= if one axis holds channels."
    )
