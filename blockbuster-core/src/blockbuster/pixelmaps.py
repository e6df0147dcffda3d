"""Pixel-map outputs: ``fn`` returns a per-pixel map and blockbuster forms the instances.

A segmenter says what it returns with ``output`` (``tile_process(output=...)``, or
``Needs(output=...)`` from the segmenter itself):

- ``"instances"`` (default): integer labels, one value per object; merged across tiles by
  :mod:`blockbuster.merge`.
- ``"mask"``: foreground where the value is non-zero (bool or numbers).
- ``"semantic"``: integer class ids, 0 = background; objects are the connected regions of one
  class, so touching objects of two classes stay two.
- ``"probability"``: a foreground probability; foreground where it is above
  ``probability_threshold`` (default 0.5).

For a map, only the tile's **core** is kept: its values are exact when the halo covers what
``fn`` needs (a blur's radius, a network's receptive field), while the halo's values are not.
Each core is labelled alone (connected components per class at ``connectivity``, default 1 =
face neighbours) and cores are joined across faces wherever two neighbouring pixels at that
connectivity have the same class. The result equals connected components of the whole-image
map computed at once: every path between two pixels is a chain of steps inside a core and
steps across a face, and both kinds of step are taken.

With ``instances="watershed"`` a mask or probability map's foreground is split into touching
objects by a seeded watershed instead (:mod:`blockbuster.splitting`): each tile runs it on its
core plus ``split_halo`` pixels of exact map values, keeps the core, and tiles are joined by
the overlap rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from blockbuster.errors import ContractViolationError, InvalidParameterError
from blockbuster.splitting import (
    DEFAULT_MIN_DISTANCE,
    check_instances,
    default_split_halo,
    watershed_split,
)

OUTPUTS = ("instances", "mask", "semantic", "probability")
DEFAULT_PROBABILITY_THRESHOLD = 0.5
HANDFUL = 4  # at most this many labels in a tile, and ...
MIN_PIECES = 3  # ... one of them in this many pieces: fn probably returned a mask or classes


@dataclass(frozen=True)
class PixelMap:
    """How to turn a tile's pixel map into labelled objects.

    Parameters
    ----------
    kind
        ``"mask"``, ``"semantic"`` or ``"probability"``.
    threshold
        Foreground cut of a probability map (``value > threshold``).
    connectivity
        Neighbours that join pixels into one object: 1 = face neighbours only, up to the
        number of axes = edge and corner neighbours too.
    instances
        ``"components"`` (connected components, exact) or ``"watershed"`` (touching objects
        split by a seeded watershed, :mod:`blockbuster.splitting`).
    min_distance, split_halo
        For ``"watershed"``: the least distance between two seeds, and the pixels of exact
        map around a tile's core that its watershed sees.
    """

    kind: str
    threshold: float = DEFAULT_PROBABILITY_THRESHOLD
    connectivity: int = 1
    instances: str = "components"
    min_distance: int = DEFAULT_MIN_DISTANCE
    split_halo: int = 0

    @property
    def splits(self) -> bool:
        """Whether objects are split by a watershed (tiles then join by the overlap rule)."""
        return self.instances == "watershed"

    def checked(self, values, spatial_shape: tuple[int, ...], where: str) -> np.ndarray:
        """``fn``'s answer for one tile as an array of the tile's shape, or a clear error."""
        array = in_spatial_shape(np.asarray(values), spatial_shape)
        if array is None:
            raise ContractViolationError(
                f"fn returned shape {np.shape(values)} for {where}; an output={self.kind!r} map "
                f"must have the tile's spatial shape {spatial_shape} (reduce the channel axis, "
                "e.g. argmax for classes or the foreground channel for probabilities)."
            )
        if self.kind == "semantic" and not (
                array.dtype == bool or np.issubdtype(array.dtype, np.integer)):
            raise ContractViolationError(
                f"fn returned dtype {array.dtype} for {where}; output='semantic' wants integer "
                "class ids (0 = background). Use output='probability' for a probability map."
            )
        if not (array.dtype == bool or np.issubdtype(array.dtype, np.number)):
            raise ContractViolationError(
                f"fn returned dtype {array.dtype} for {where}; an output={self.kind!r} map must "
                "be boolean or numeric."
            )
        return array

    def classes(self, values: np.ndarray) -> np.ndarray:
        """The class of every pixel, 0 = background: the map itself for ``semantic``, 1 where
        a mask is non-zero or a probability is above the threshold."""
        if self.kind == "semantic":
            return values
        if self.kind == "probability":
            return (values > self.threshold).view(np.uint8)
        return (values != 0).view(np.uint8)

    def objects(self, values) -> np.ndarray:
        """The objects of a whole map (at the image's origin): connected components of each
        class, or the foreground split by a watershed."""
        values = np.asarray(values)
        return self.label(self.classes(self.checked(values, values.shape, "the map")),
                          origin=(0,) * values.ndim)

    def label(self, classes: np.ndarray, origin: tuple[int, ...] | None = None) -> np.ndarray:
        """Connected components of each class of ``classes`` (0 stays background), or with
        ``instances="watershed"`` the foreground split by :func:`watershed_split` (``origin``:
        where ``classes`` starts in the image)."""
        if self.splits:
            if classes.size == 0:
                return np.zeros(classes.shape, np.int32)
            return watershed_split(classes != 0, self.min_distance, self.connectivity, origin)
        return self.components(classes)[0]

    def components(self, classes: np.ndarray) -> tuple[np.ndarray, int]:
        """Connected components of each class of ``classes`` numbered ``1..n`` (0 stays
        background), and ``n``: already the consecutive local labels a tile stages, so no
        renumbering pass is needed.

        A foreground map (mask or probability: one class) is labelled by
        ``scipy.ndimage.label``, about twice as fast as ``skimage.measure.label``, which
        labels the regions of each class of a semantic map.
        """
        if classes.size == 0:
            return np.zeros(classes.shape, np.int32), 0
        connectivity = min(self.connectivity, classes.ndim)
        if self.kind == "semantic":
            from skimage.measure import label

            return label(classes, background=0, connectivity=connectivity, return_num=True)
        from scipy import ndimage

        structure = ndimage.generate_binary_structure(classes.ndim, connectivity)
        labels = np.empty(classes.shape, np.int32)
        count = ndimage.label(classes, structure, output=labels)
        return labels, int(count)

    def describe(self) -> list:
        """What identifies these settings in a job fingerprint (the splitting only if used,
        so older stages still resume)."""
        described = [self.kind, self.threshold]
        if self.splits:
            described += [self.instances, self.min_distance, self.split_halo]
        return described


def label_map(values, output: str, *, probability_threshold: float | None = None,
              connectivity: int = 1, instances: str | None = None,
              min_distance: int | None = None) -> np.ndarray:
    """The objects of one whole map, as ``tile_process(..., output=output)`` forms them:
    connected components of the foreground (per class for ``"semantic"``), or with
    ``instances="watershed"`` the foreground split by a seeded watershed.

    What a tiled run with a pixel-map ``output`` equals (for ``"watershed"``: when its
    ``split_halo`` covers the objects, see :mod:`blockbuster.splitting`), e.g.
    ``label_map(fn(image), "mask")`` for the whole image at once.
    """
    pixel_map = resolve_output(output, probability_threshold, connectivity, None,
                               instances=instances, min_distance=min_distance)
    if pixel_map is None:
        raise InvalidParameterError("label_map labels a pixel map: output must be 'mask', "
                                    "'semantic' or 'probability'.")
    return pixel_map.objects(values)


def whole_image_objects(fn, image, output: str | None = None,
                        probability_threshold: float | None = None,
                        connectivity: int | None = None, **splitting) -> np.ndarray:
    """``fn`` on the whole ``image`` at once, its answer made objects as a tiled run makes
    them: its labels, or its pixel map (``output``, else its ``Needs.output``) labelled by
    :func:`label_map` (``instances``, ``min_distance``: as ``tile_process``'s). The reference a
    tiled run equals, for images that fit in memory."""
    needs = fn.blockbuster_needs() if callable(getattr(fn, "blockbuster_needs", None)) else None
    pixel_map = resolve_output(output, probability_threshold, connectivity, needs, **splitting)
    values = np.asarray(fn(image))
    return values if pixel_map is None else pixel_map.objects(values)


def resolve_output(output: str | None, threshold: float | None, connectivity: int | None,
                   needs, *, instances: str | None = None, min_distance: int | None = None,
                   split_halo: int | None = None) -> PixelMap | None:
    """The pixel map a run forms instances from, or ``None`` when ``fn`` returns instances.

    ``output``, ``threshold`` and the splitting options given to ``tile_process`` win over
    what the segmenter declares in its :class:`~blockbuster.segmenter.Needs`.
    """
    kind = output if output is not None else getattr(needs, "output", "instances")
    if kind not in OUTPUTS:
        raise InvalidParameterError(f"output={kind!r}; use one of {list(OUTPUTS)}.")
    if threshold is None:
        threshold = getattr(needs, "probability_threshold", None)
    if threshold is not None and kind != "probability":
        raise InvalidParameterError(
            f"probability_threshold={threshold!r} applies only to output='probability' "
            f"(this run's output is {kind!r})."
        )
    if connectivity is not None and (not isinstance(connectivity, int) or connectivity < 1):
        raise InvalidParameterError(f"connectivity={connectivity!r}; use 1 or more.")
    if kind == "instances":
        _refuse_splitting_of_instances(instances, min_distance, split_halo)
        return None
    return PixelMap(kind, DEFAULT_PROBABILITY_THRESHOLD if threshold is None else float(threshold),
                    connectivity or 1, *_splitting(kind, needs, instances, min_distance,
                                                   split_halo))


def _splitting(kind: str, needs, instances, min_distance, split_halo) -> tuple[str, int, int]:
    """``(instances, min_distance, split_halo)``: the caller's, else the segmenter's ``Needs``,
    else the defaults; checked."""
    instances = instances or getattr(needs, "instances", None) or "components"
    check_instances(instances, min_distance, split_halo, kind)  # the caller's own
    if instances == "components":
        return instances, DEFAULT_MIN_DISTANCE, 0
    if min_distance is None:
        min_distance = getattr(needs, "min_distance", None) or DEFAULT_MIN_DISTANCE
    if split_halo is None:
        split_halo = getattr(needs, "split_halo", None) or default_split_halo(min_distance)
    check_instances(instances, min_distance, split_halo, kind)  # a segmenter's own too
    return instances, int(min_distance), int(split_halo)


def _refuse_splitting_of_instances(instances, min_distance, split_halo) -> None:
    given = [f"{name}={value!r}" for name, value in (
        ("instances", instances), ("min_distance", min_distance), ("split_halo", split_halo))
        if value is not None]
    if given:
        raise InvalidParameterError(
            f"{', '.join(given)} says how to form objects from a pixel map, but this run's fn "
            "returns instances; pass output='mask' or 'probability' with it."
        )


def split_label(labels: np.ndarray) -> tuple[int, int] | None:
    """A label in ``MIN_PIECES`` or more separate pieces in a tile of at most ``HANDFUL``
    labels, as ``(label, pieces)``: the sign of a mask or class map returned as instances.

    Pieces are counted with edge and corner neighbours joined, so an object that a tile's
    crop or a thin line cuts in two is not mistaken for one. Cheap on real instance labels:
    a tile with more than ``HANDFUL`` labels is ruled out by its maximum.
    """
    from scipy import ndimage

    if labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        return None
    top = int(labels.max())
    if top < 1 or top > HANDFUL:
        return None
    structure = np.ones((3,) * labels.ndim, bool)
    for value in range(1, top + 1):
        pieces = ndimage.label(labels == value, structure)[1]
        if pieces >= MIN_PIECES:
            return value, pieces
    return None


def in_spatial_shape(array: np.ndarray, spatial_shape: tuple[int, ...]) -> np.ndarray | None:
    """``array`` with the tile's spatial shape (size-1 axes may differ), else ``None``."""
    if array.shape == spatial_shape:
        return array
    squeezed = tuple(s for s in array.shape if s != 1)
    if squeezed != tuple(s for s in spatial_shape if s != 1):
        return None
    return array.reshape(spatial_shape)
