"""The segmenter contract: what the core asks of ``fn`` and how it checks the answer.

A segmenter is any callable ``fn(tile) -> labels``. Optional extras, all duck-typed:

- ``blockbuster_needs() -> Needs``: the halo and working memory it wants, so ``overlap`` and
  ``tile_shape="auto"`` default sensibly.
- ``prepare(image, *, channel_axis=None) -> segmenter``: called once in the parent before
  tiling with the whole (lazy) image (and its channel axis, if the method accepts it); returns a
  segmenter with image-wide settings fixed (e.g. a global threshold or global normalization
  percentiles) so neighbouring tiles agree.
- ``batch_size`` and ``segment_batch(tiles) -> list[labels]``: tiles are handed over in batches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from blockbuster.errors import ContractViolationError, TileFunctionError
from blockbuster.tiling import Tile


@dataclass(frozen=True)
class Needs:
    """What a segmenter needs from the tiling.

    Parameters
    ----------
    halo
        Pixels of context wanted on every side of a tile (int or one per spatial axis).
    bytes_per_voxel
        Working memory per voxel of the padded tile, excluding the input tile itself.
    align
        Tile sizes and halos should be multiples of this (int or one per spatial axis), e.g.
        a network's downsampling factor: a window that starts off that lattice sees shifted
        pooling phases and predicts slightly differently at the seams. Chosen tile shapes
        (``None``/``"auto"``) are rounded to it; given ones that miss it get a warning.
    workers
        Workers to run when the user names none, e.g. one per GPU for a GPU model (its
        CPU-side work is overlapped inside the worker); ``None``: one per core.
    """

    halo: int | tuple[int, ...] | None = None
    bytes_per_voxel: float | None = None
    align: int | tuple[int, ...] | None = None
    workers: int | None = None


def needs_of(fn: Callable) -> Needs:
    """The :class:`Needs` a segmenter advertises, or an empty one."""
    method = getattr(fn, "blockbuster_needs", None)
    needs = method() if callable(method) else None
    return needs if isinstance(needs, Needs) else Needs()


def prepare(fn: Callable, image: Any, channel_axis: int | None = None) -> Callable:
    """Let a segmenter fix image-wide settings once, before tiling."""
    import inspect

    method = getattr(fn, "prepare", None)
    if not callable(method):
        return fn
    try:
        accepts_axis = "channel_axis" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        accepts_axis = False
    return method(image, channel_axis=channel_axis) if accepts_axis else method(image)


def batch_size_of(fn: Callable) -> int:
    """How many tiles to hand ``fn`` at once (1 unless it implements ``segment_batch``)."""
    if callable(getattr(fn, "segment_batch", None)):
        return max(1, int(getattr(fn, "batch_size", 1) or 1))
    return 1


def run_on_tiles(fn: Callable, images: list[np.ndarray], tiles: Sequence[Tile]) -> list[Any]:
    """Call ``fn`` on each tile (or once on the batch), naming the tile if it raises."""
    if len(images) > 1 or batch_size_of(fn) > 1:
        try:
            outputs = list(fn.segment_batch(images))
        except Exception as error:
            raise _tile_failure(tiles[0], error, batch=len(tiles)) from error
        if len(outputs) != len(images):
            raise ContractViolationError(
                f"segment_batch returned {len(outputs)} results for {len(images)} tiles "
                f"(first tile {tiles[0].index} at {tiles[0].bounds()}); return one per tile."
            )
        return outputs
    try:
        return [fn(images[0])]
    except Exception as error:
        raise _tile_failure(tiles[0], error) from error


def _tile_failure(tile: Tile, error: Exception, batch: int = 1) -> TileFunctionError:
    import traceback

    where = f"tile {tile.index} at {tile.bounds()}" + (f" (batch of {batch})" if batch > 1 else "")
    trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return TileFunctionError(
        f"fn raised {type(error).__name__}: {error} on {where}; fix the function or the input "
        f"there. Original traceback:\n{trace}"
    )


def as_labels(output: Any, spatial_shape: tuple[int, ...], tile: Tile) -> np.ndarray:
    """Validate what ``fn`` returned for ``tile`` and return it as non-negative integer labels.

    A boolean array is a foreground mask: its face-connected components become the labels.
    """
    where = f"tile {tile.index} at {tile.bounds()} (padded window shape {spatial_shape})"
    if output is None:
        raise ContractViolationError(
            f"fn returned None for {where}; it must return an integer label array "
            "(did the function forget a `return`?)."
        )
    if isinstance(output, tuple) and output and hasattr(output[0], "shape"):
        raise ContractViolationError(
            f"fn returned a tuple for {where}; return only the label array "
            "(e.g. `lambda t: model.eval(t)[0]`)."
        )
    labels = np.asarray(output)
    if labels.shape != spatial_shape:
        squeezed = labels.reshape(spatial_shape) if labels.size == np.prod(spatial_shape) else None
        if squeezed is None or _differs_beyond_unit_axes(labels.shape, spatial_shape):
            raise ContractViolationError(
                f"fn returned shape {labels.shape} for {where}; labels must have the tile's "
                f"spatial shape {spatial_shape} (drop the channel axis, keep size-1 axes)."
            )
        labels = squeezed
    if labels.dtype == bool:
        from scipy import ndimage

        labels, _ = ndimage.label(labels)
        return labels
    if not np.issubdtype(labels.dtype, np.integer):
        raise ContractViolationError(
            f"fn returned dtype {labels.dtype} for {where}; labels must be integers "
            "(0 = background). Threshold probabilities and label them, or cast with "
            ".astype(np.int32) if the values are whole numbers."
        )
    if np.issubdtype(labels.dtype, np.signedinteger) and labels.size and labels.min() < 0:
        raise ContractViolationError(
            f"fn returned negative labels (min {labels.min()}) for {where}; labels must be "
            ">= 0 with 0 as background."
        )
    return labels


def _differs_beyond_unit_axes(got: tuple[int, ...], want: tuple[int, ...]) -> bool:
    return tuple(s for s in got if s != 1) != tuple(s for s in want if s != 1)
