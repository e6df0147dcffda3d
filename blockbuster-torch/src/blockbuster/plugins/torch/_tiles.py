"""Tile preparation: channel layout, intensity normalization, padding and grouping.

Everything here is plain NumPy; nothing imports torch.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from blockbuster.errors import BackendOptionError, InvalidParameterError

NORMALIZE_MODES = ("dtype", "percentile")
DEFAULT_PERCENTILES = (1.0, 99.8)
PAD_MODES = ("reflect", "symmetric", "edge", "constant")


@dataclass(frozen=True)
class PreparedTile:
    """A tile as the network sees it: ``data`` is ``(C, *padded_spatial)`` float32."""

    data: np.ndarray
    spatial_shape: tuple[int, ...]


def check_normalize(normalize: Any) -> Any:
    """Validate the ``normalize`` option (None, "dtype", (low, high) or a callable)."""
    if normalize is None or callable(normalize) or normalize in NORMALIZE_MODES:
        return normalize
    if isinstance(normalize, (tuple, list)) and len(normalize) == 2:
        low, high = (float(v) for v in normalize)
        if not high > low:
            raise InvalidParameterError(f"normalize=({low}, {high}) needs high > low.")
        return (low, high)
    raise InvalidParameterError(
        f"normalize={normalize!r} is not supported; use None (cast only), 'dtype' (integers scaled "
        "by their dtype's maximum to [0, 1]), 'percentile' (image-wide percentiles mapped to [0, "
        "1]), a (low, high) pair mapped to [0, 1], or a callable."
    )


def percentile_range(values: np.ndarray, percentiles: tuple[float, float]) -> tuple[float, float]:
    """(low, high) intensities at ``percentiles`` of ``values``; high > low always."""
    low, high = (float(v) for v in np.percentile(np.asarray(values, dtype=np.float64), percentiles))
    return (low, high if high > low else low + 1.0)


def normalize_tile(tile: np.ndarray, normalize: Any) -> np.ndarray:
    """Apply ``normalize`` to one tile and return float32.

    Only image-independent normalizations are built in, so every tile of an image
    is scaled the same way (per-tile statistics would make tiles disagree).
    """
    if callable(normalize):
        return np.asarray(normalize(tile), dtype=np.float32)
    if normalize == "dtype":
        return _scale_by_dtype(tile)
    if normalize == "percentile":  # not prepared with the whole image: this tile's own range
        normalize = percentile_range(tile, DEFAULT_PERCENTILES)
    data = np.asarray(tile, dtype=np.float32)
    if isinstance(normalize, tuple):
        low, high = normalize
        data = (data - np.float32(low)) / np.float32(high - low)
    return data


def _scale_by_dtype(tile: np.ndarray) -> np.ndarray:
    if tile.dtype == np.bool_:
        return tile.astype(np.float32)
    if np.issubdtype(tile.dtype, np.integer):
        return tile.astype(np.float32) / np.float32(np.iinfo(tile.dtype).max)
    return np.asarray(tile, dtype=np.float32)


def to_channels_first(tile: np.ndarray, channels: int | None) -> np.ndarray:
    """Return ``tile`` as ``(C, *spatial)``: move the channel axis first, or add one."""
    if channels is None:
        return tile[np.newaxis]
    try:
        return np.moveaxis(tile, channels, 0)
    except (ValueError, IndexError) as exc:  # numpy AxisError subclasses both
        raise InvalidParameterError(
            f"channels={channels} is not an axis of a tile of shape {tile.shape}; pass the tile's "
            "channel axis (the same as tile_process(channel_axis=...)) or None for single-channel "
            "images."
        ) from exc


def check_pad_multiple(pad_multiple: int | Sequence[int]) -> int | tuple[int, ...]:
    """Validate ``pad_multiple`` (a positive int, or one per spatial axis)."""
    values = (pad_multiple,) if isinstance(pad_multiple, (int, np.integer)) else tuple(pad_multiple)
    if not values or any(int(v) < 1 for v in values):
        raise InvalidParameterError(
            f"pad_multiple={pad_multiple!r} must be a positive int or one positive int per spatial "
            "axis (e.g. 16 for a U-Net with 4 poolings)."
        )
    return (
        int(values[0])
        if isinstance(pad_multiple, (int, np.integer))
        else tuple(int(v) for v in values)
    )


def check_pad_mode(pad_mode: str) -> str:
    """Validate ``pad_mode`` (a numpy.pad mode that needs no extra arguments)."""
    if pad_mode not in PAD_MODES:
        raise InvalidParameterError(f"pad_mode={pad_mode!r} must be one of {PAD_MODES}.")
    return pad_mode


def padded_shape(shape: tuple[int, ...], pad_multiple: int | tuple[int, ...]) -> tuple[int, ...]:
    """Smallest shape >= ``shape`` whose sides are multiples of ``pad_multiple``."""
    multiples = (pad_multiple,) * len(shape) if isinstance(pad_multiple, int) else pad_multiple
    if len(multiples) != len(shape):
        raise InvalidParameterError(
            f"pad_multiple={pad_multiple!r} has {len(multiples)} values but tiles have "
            f"{len(shape)} spatial axes."
        )
    return tuple(-(-size // m) * m for size, m in zip(shape, multiples, strict=True))


def pad_to(data: np.ndarray, target: tuple[int, ...], mode: str) -> np.ndarray:
    """Pad the spatial axes of ``(C, *spatial)`` data at their end up to ``target``."""
    widths = [(0, 0)] + [(0, t - s) for s, t in zip(data.shape[1:], target, strict=True)]
    if all(after == 0 for _, after in widths):
        return data
    return np.pad(data, widths, mode=mode)


def prepare_tile(
    tile: np.ndarray,
    *,
    channels: int | None,
    normalize: Any,
    pad_multiple: int | tuple[int, ...],
    pad_mode: str,
) -> PreparedTile:
    """Layout, normalize and pad one tile for the network."""
    data = normalize_tile(to_channels_first(np.asarray(tile), channels), normalize)
    spatial = tuple(data.shape[1:])
    data = pad_to(data, padded_shape(spatial, pad_multiple), pad_mode)
    return PreparedTile(np.ascontiguousarray(data, dtype=np.float32), spatial)


def crop_to(output: np.ndarray, spatial_shape: tuple[int, ...]) -> np.ndarray:
    """Undo :func:`pad_to` on a ``(C, *spatial)`` network output."""
    return output[(slice(None),) + tuple(slice(0, s) for s in spatial_shape)]


def batches(tiles: Sequence[PreparedTile], batch_size: int) -> Iterator[list[int]]:
    """Yield lists of tile indices to run together: same padded shape, at most ``batch_size``.

    Tiles of one shape are stacked unchanged, so each tile sees exactly the input it
    would see alone: results equal those of batch size 1.
    """
    return group_indices([tile.data.shape for tile in tiles], batch_size)


def group_indices(shapes: Sequence[tuple[int, ...]], batch_size: int) -> Iterator[list[int]]:
    """Indices of ``shapes`` grouped by equal shape, at most ``batch_size`` per group."""
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for index, shape in enumerate(shapes):
        groups[tuple(shape)].append(index)
    for indices in groups.values():
        for start in range(0, len(indices), batch_size):
            yield indices[start : start + batch_size]


def network_shape(tile: np.ndarray, channels: int | None,
                  pad_multiple: int | tuple[int, ...]) -> tuple[int, ...]:
    """The ``(C, *padded_spatial)`` shape :func:`prepare_tile` gives ``tile``, computed cheaply."""
    layout = to_channels_first(np.asarray(tile), channels)
    return (layout.shape[0], *padded_shape(tuple(layout.shape[1:]), pad_multiple))


def check_channels(channels: Any) -> int | None:
    """Validate ``channels`` (None or the tile's channel axis as an int)."""
    if (
        channels is None
        or isinstance(channels, (int, np.integer))
        and not isinstance(channels, bool)
    ):
        return None if channels is None else int(channels)
    raise BackendOptionError(
        f"channels={channels!r} must be None (single-channel images) or the int position of the "
        "channel axis in each tile (the same as tile_process(channel_axis=...))."
    )


NormalizeFn = Callable[[np.ndarray], np.ndarray]
