"""Intensity normalization that does not make tiles disagree.

StarDist models expect their input normalized to roughly [0, 1], usually by mapping the 1st and
99.8th intensity percentiles to 0 and 1. Computed *per tile*, those percentiles differ from
tile to tile (a tile of empty background gets its noise stretched to full contrast), so the
same nucleus looks different to neighbouring tiles and to a whole-image run. Computed *once*
for the whole image (``scope="global"``, the default) every tile sees identical intensities.

Three kinds of ``normalize`` setting exist:

- :class:`Percentiles` (or a plain ``(low, high)`` pair such as ``(1, 99.8)``): percentiles,
  ``scope="global"`` (estimated once from a sample of the image) or ``scope="tile"``;
- :class:`Intensities` (or a mapping ``{"low": 100, "high": 4000}``): fixed absolute values;
- ``None`` / ``False``: the image is already normalized, pass it through as ``float32``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from blockbuster.backend import DEFAULT_SAMPLE_VOXELS, image_percentiles as whole_image_percentiles
from blockbuster.errors import InvalidParameterError

Scope = Literal["global", "tile"]
_EPS = 1e-20  # csbdeep's normalize_mi_ma uses the same guard against hi == lo

DEFAULT_MAX_SAMPLE_VOXELS = DEFAULT_SAMPLE_VOXELS  # 4 Mi voxels per channel at most


@dataclass(frozen=True)
class Percentiles:
    """Map the ``low`` and ``high`` intensity percentiles (0-100) to 0 and 1.

    ``scope="global"`` fixes the percentiles once for the whole image (see
    :meth:`StarDistSegmenter.prepare`); ``scope="tile"`` recomputes them on every tile, which
    is what StarDist does on a single image but makes neighbouring tiles disagree.
    """

    low: float = 1.0
    high: float = 99.8
    scope: Scope = "global"

    def __post_init__(self):
        if not 0 <= self.low < self.high <= 100:
            raise InvalidParameterError(
                f"normalize percentiles must satisfy 0 <= low < high <= 100, got "
                f"({self.low}, {self.high}); StarDist's usual choice is (1, 99.8)."
            )
        if self.scope not in ("global", "tile"):
            raise InvalidParameterError(
                f"normalize_scope must be 'global' or 'tile', got {self.scope!r}."
            )


@dataclass(frozen=True)
class Intensities:
    """Map fixed absolute intensities ``low`` and ``high`` to 0 and 1.

    Scalars apply to every channel; sequences give one value per channel (in channel order).
    """

    low: float | tuple[float, ...]
    high: float | tuple[float, ...]

    def __post_init__(self):
        low, high = np.asarray(self.low, float), np.asarray(self.high, float)
        if low.shape != high.shape or low.ndim > 1:
            raise InvalidParameterError(
                f"normalize intensities need matching scalars or per-channel lists, got "
                f"low={self.low!r}, high={self.high!r}."
            )
        if not np.all(high > low):
            raise InvalidParameterError(
                f"normalize intensities need high > low (per channel), got "
                f"low={self.low!r}, high={self.high!r}."
            )


Normalization = Percentiles | Intensities | None


def parse_normalize(normalize: Any, scope: Scope = "global") -> Normalization:
    """Turn the user's ``normalize`` argument into a :data:`Normalization`.

    Accepted: a :class:`Percentiles` or :class:`Intensities` object; a ``(low, high)`` pair of
    percentiles; a mapping with keys ``low``/``high`` (or ``lo``/``hi``) of absolute
    intensities (this form also works in a TOML config); ``None`` or ``False``.
    """
    if normalize is None or normalize is False:
        return None
    if isinstance(normalize, (Percentiles, Intensities)):
        return normalize
    if isinstance(normalize, Mapping):
        return _intensities_from_mapping(normalize)
    if isinstance(normalize, Sequence) and not isinstance(normalize, str) and len(normalize) == 2:
        low, high = (float(v) for v in normalize)
        return Percentiles(low, high, scope)
    raise InvalidParameterError(
        f"normalize={normalize!r} is not understood; use percentiles like (1, 99.8), fixed "
        "intensities like {'low': 100, 'high': 4000} (or Intensities(100, 4000)), or None for "
        "an image that is already normalized."
    )


def _intensities_from_mapping(mapping: Mapping) -> Intensities:
    keys = {str(k).lower(): v for k, v in mapping.items()}
    low = keys.get("low", keys.get("lo"))
    high = keys.get("high", keys.get("hi"))
    if low is None or high is None or len(keys) != 2:
        raise InvalidParameterError(
            f"normalize={dict(mapping)!r}: a mapping gives fixed intensities and needs exactly "
            "the keys 'low' and 'high', e.g. {'low': 100, 'high': 4000}."
        )
    return Intensities(_float_or_floats(low), _float_or_floats(high))


def _float_or_floats(value: Any) -> float | tuple[float, ...]:
    return tuple(float(v) for v in value) if isinstance(value, Sequence) else float(value)


def apply_intensities(
    tile: np.ndarray, rng: Intensities, channel_axis: int | None
) -> np.ndarray:
    """``(tile - low) / (high - low)`` as float32, per channel when values are per channel."""
    low = _broadcastable(rng.low, tile, channel_axis)
    high = _broadcastable(rng.high, tile, channel_axis)
    out = np.asarray(tile, dtype=np.float32) - low
    out /= high - low + _EPS
    return out


def _broadcastable(value, tile: np.ndarray, channel_axis: int | None) -> np.ndarray:
    value = np.asarray(value, dtype=np.float32)
    if value.ndim == 0 or value.size == 1:
        return value.reshape(())
    if channel_axis is None or tile.shape[channel_axis] != value.size:
        raise InvalidParameterError(
            f"{value.size} per-channel normalization values do not fit a tile of shape "
            f"{tile.shape} (channel axis {channel_axis}); give one value per channel."
        )
    shape = [1] * tile.ndim
    shape[channel_axis] = value.size
    return value.reshape(shape)


def tile_percentiles(tile: np.ndarray, pct: Percentiles, channel_axis: int | None) -> Intensities:
    """Percentiles of one tile (per channel if it has a channel axis): the ``tile`` scope."""
    if channel_axis is None:
        return _range_of(np.asarray(tile).ravel(), pct)
    channels = np.moveaxis(np.asarray(tile), channel_axis, 0).reshape(tile.shape[channel_axis], -1)
    return _per_channel([_range_of(c, pct) for c in channels])


def image_percentiles(
    image: Any,
    pct: Percentiles,
    channel_axis: int | None,
    max_voxels: int = DEFAULT_MAX_SAMPLE_VOXELS,
) -> Intensities:
    """Percentiles of a whole image (per channel with ``channel_axis``), from
    :func:`blockbuster.backend.image_percentiles`: read whole when small, else sampled."""
    low, high = whole_image_percentiles(image, (pct.low, pct.high), channel_axis=channel_axis,
                                        max_voxels=max_voxels)
    if channel_axis is None:
        return _finite(low, high)
    return _per_channel([_finite(lo, hi) for lo, hi in zip(low, high)])


def _range_of(values: np.ndarray, pct: Percentiles) -> Intensities:
    low, high = np.percentile(values, [pct.low, pct.high])
    return _finite(low, high)


def _finite(low: float, high: float) -> Intensities:
    if not high > low:  # flat sample (e.g. an empty border): keep the division finite
        high = low + 1.0
    return Intensities(float(low), float(high))


def _per_channel(ranges: list[Intensities]) -> Intensities:
    return Intensities(tuple(r.low for r in ranges), tuple(r.high for r in ranges))
