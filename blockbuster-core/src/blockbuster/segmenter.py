"""The segmenter contract: what the core asks of ``fn`` and how it checks the answer.

A segmenter is any callable ``fn(tile) -> labels``. Optional extras, all duck-typed and read
only by :class:`Segmenter`, the adapter the pipeline builds once per run:

- ``blockbuster_needs() -> Needs``: the halo and working memory it wants (read through the
  ``segmenter_needs`` hook, whose built-in implementation asks this method), so ``overlap`` and
  ``tile_shape="auto"`` default sensibly.
- ``prepare(image, *, channel_axis=None) -> segmenter``: called once in the parent before
  tiling with the whole (lazy) image (and its channel axis, if the method accepts it); returns a
  segmenter with image-wide settings fixed (e.g. a global threshold or global normalization
  percentiles) so neighbouring tiles agree.
- ``batch_size`` and ``segment_batch(tiles) -> list[labels]``: tiles are handed over in batches.
- ``blockbuster_fingerprint() -> str``: what identifies it in the job fingerprint (resume).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from blockbuster.errors import ContractViolationError, TileFunctionError
from blockbuster.pixelmaps import PixelMap, in_spatial_shape
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
    output
        What the segmenter returns: ``"instances"`` (labels, the default), or a pixel map
        from which blockbuster forms the instances itself, exactly as connected components of
        the whole-image map: ``"mask"`` (non-zero = foreground), ``"semantic"`` (class ids,
        0 = background, objects per class) or ``"probability"`` (foreground above
        ``probability_threshold``). See :mod:`blockbuster.pixelmaps`.
    probability_threshold
        The foreground cut of an ``output="probability"`` map; ``None``: 0.5.
    instances
        How blockbuster forms objects from a mask or probability map: ``"components"``
        (connected components, the default) or ``"watershed"`` (touching objects split by a
        seeded watershed on the distance transform, :mod:`blockbuster.splitting`).
    min_distance, split_halo
        For ``instances="watershed"``: the least distance between two seeds (default 5), and
        the pixels of stitched map around a tile's core its watershed sees (default
        ``4 * min_distance``), read on top of ``halo``.
    """

    halo: int | tuple[int, ...] | None = None
    bytes_per_voxel: float | None = None
    align: int | tuple[int, ...] | None = None
    workers: int | None = None
    output: str = "instances"
    probability_threshold: float | None = None
    instances: str | None = None
    min_distance: int | None = None
    split_halo: int | None = None


@dataclass(frozen=True)
class Segmenter:
    """``fn`` as the pipeline uses it: its extras read once, in this one place.

    Built once per run in the parent (:meth:`of`), prepared for the image once, then sent to
    the workers inside the job.

    Attributes
    ----------
    fn
        The user's callable.
    needs
        What it asked of the tiling, through the ``segmenter_needs`` hook.
    batch_size
        Tiles per call: ``fn.batch_size`` when ``fn`` has ``segment_batch``, else 1.
    retries
        Further tries of a tile whose call raises.
    pixel_map
        How to form instances when ``fn`` returns a pixel map (:mod:`blockbuster.pixelmaps`);
        ``None`` when it returns instances.
    """

    fn: Callable
    needs: Needs = field(default_factory=Needs)
    batch_size: int = 1
    retries: int = 2
    pixel_map: PixelMap | None = None

    @classmethod
    def of(cls, fn: Callable, needs: Needs | None = None, retries: int = 2,
           pixel_map: PixelMap | None = None) -> Segmenter:
        batch = 1
        if callable(getattr(fn, "segment_batch", None)):
            batch = max(1, int(getattr(fn, "batch_size", 1) or 1))
        return cls(fn, needs or Needs(), batch, retries, pixel_map)

    def describe(self) -> str:
        """A stable description of ``fn`` for the job fingerprint."""
        return describe_function(self.fn)

    def prepared(self, image: Any) -> Segmenter:
        """Let ``fn`` fix image-wide settings once, before tiling: ``fn.prepare(reader)`` (with
        ``channel_axis=`` when it accepts it) on the whole lazy image of the
        :class:`~blockbuster.image.ImageView` ``image``."""
        import inspect

        method = getattr(self.fn, "prepare", None)
        if not callable(method):
            return self
        try:
            accepts_axis = "channel_axis" in inspect.signature(method).parameters
        except (TypeError, ValueError):
            accepts_axis = False
        fn = (method(image.reader, channel_axis=image.channel_axis) if accepts_axis
              else method(image.reader))
        return Segmenter.of(fn, self.needs, self.retries, self.pixel_map)

    def segment(self, images: list[np.ndarray], tiles: Sequence[Tile]) -> tuple[list, float]:
        """Labels for each tile (checked by :func:`as_labels`), or its pixel map (checked by
        :meth:`PixelMap.checked`), and the seconds spent in ``fn``.

        A call that raises is tried ``retries`` more times, then raises
        :class:`~blockbuster.errors.TileFunctionError` naming the tile; a broken contract
        (:class:`~blockbuster.errors.ContractViolationError`: wrong shape, dtype or count) is
        deterministic and raised at once.
        """
        for attempt in range(self.retries + 1):
            started = time.perf_counter()
            try:
                outputs = self._call(images, tiles)
                break
            except ContractViolationError:
                raise  # deterministic: the same tiles would break the contract again
            except TileFunctionError:
                if attempt == self.retries:
                    raise
        seconds = time.perf_counter() - started
        if self.pixel_map is not None:
            return [self.pixel_map.checked(o, t.padded_shape, _where(t))
                    for o, t in zip(outputs, tiles)], seconds
        return [as_labels(o, t.padded_shape, t) for o, t in zip(outputs, tiles)], seconds

    def _call(self, images: list[np.ndarray], tiles: Sequence[Tile]) -> list[Any]:
        """Call ``fn`` on the tile (or ``segment_batch`` on the batch), naming the tile if it
        raises."""
        if len(images) > 1 or self.batch_size > 1:
            try:
                outputs = list(self.fn.segment_batch(images))
            except Exception as error:
                raise _tile_failure(tiles[0], error, batch=len(tiles)) from error
            if len(outputs) != len(images):
                raise ContractViolationError(
                    f"segment_batch returned {len(outputs)} results for {len(images)} tiles "
                    f"(first tile {tiles[0].index} at {tiles[0].bounds()}); return one per tile."
                )
            return outputs
        try:
            return [self.fn(images[0])]
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
    where = _where(tile)
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
    labels = in_spatial_shape(np.asarray(output), spatial_shape)
    if labels is None:
        raise ContractViolationError(
            f"fn returned shape {np.shape(output)} for {where}; labels must have the tile's "
            f"spatial shape {spatial_shape} (drop the channel axis, keep size-1 axes)."
        )
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


def _where(tile: Tile) -> str:
    return f"tile {tile.index} at {tile.bounds()} (padded window shape {tile.padded_shape})"


def describe_function(fn: Callable) -> str:
    """A stable description of ``fn`` for job fingerprints.

    A segmenter may define ``blockbuster_fingerprint()``; otherwise functions are described by
    their code and simple closure values, objects by their ``repr`` (when the class defines one)
    or their attributes.
    """
    custom = getattr(fn, "blockbuster_fingerprint", None)
    if callable(custom):
        return str(custom())
    target = getattr(fn, "__func__", fn)
    code = getattr(target, "__code__", None)
    if code is not None:
        name = f"{target.__module__}.{target.__qualname__}"
        cells = [_simple(c.cell_contents) for c in (target.__closure__ or ())]
        body = code.co_code + repr(code.co_consts).encode() + repr(cells).encode()
        return name + ":" + hashlib.sha1(body).hexdigest()
    kind = f"{type(fn).__module__}.{type(fn).__qualname__}"
    if type(fn).__repr__ is not object.__repr__:
        return f"{kind}:{fn!r}"
    return f"{kind}:{sorted((k, _simple(v)) for k, v in vars(fn).items())!r}"


def _simple(value: Any) -> Any:
    if isinstance(value, int | float | str | bool | tuple | type(None)):
        return value
    return type(value).__qualname__
