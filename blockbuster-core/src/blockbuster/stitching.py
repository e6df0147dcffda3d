"""``merge="iou"``: joining per-slice 2D labels across planes by intersection over union.

Tiles one plane thick along one axis (the *stack* axis, e.g. ``tile_shape=(1, 1024, 1024)``)
hold 2D labels. Within a plane, tiles are merged by the overlap rule (or by touch without a
halo) like any other tiles, so a 2D object may span several tiles. Across planes, a 2D object
``b`` in plane ``z + 1`` joins the object ``a`` in plane ``z`` when

- ``IoU(a, b) >= iou_threshold``,
- ``b`` has the highest IoU of all objects of plane ``z + 1`` with ``a``, and
- ``a`` has the highest IoU with ``b`` of the objects of plane ``z`` that chose ``b``,

which is Cellpose's ``stitch3D`` rule. IoUs are of whole 2D objects, however many tiles they
span: each worker reports, for a tile and the tile after it on the stack axis, the pixel count
of every overlapping pair of labels and the areas of the labels that matter (those in a pair
or on an in-plane tile face); the parent sums them per 2D object and decides. It holds
O(labels overlapping the next plane), never a pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from blockbuster.errors import InvalidParameterError
from blockbuster.faces import face_key
from blockbuster.ids import encode
from blockbuster.merge import connected_groups
from blockbuster.staging import Stage
from blockbuster.tiling import TileGrid

DEFAULT_IOU_THRESHOLD = 0.25


@dataclass
class PlaneOverlaps:
    """What one tile reports: overlapping label pairs with the next plane, and label areas."""

    pairs: np.ndarray  # (n, 2) uint64 provisional IDs: (label in plane z, label in plane z + 1)
    intersections: np.ndarray  # (n,) pixels each pair shares
    labels: np.ndarray  # provisional IDs whose area is known here
    areas: np.ndarray

    @classmethod
    def none(cls) -> PlaneOverlaps:
        ids = np.empty(0, np.uint64)
        return cls(np.empty((0, 2), np.uint64), np.empty(0, np.int64), ids, np.empty(0, np.int64))


def stack_axis(grid: TileGrid) -> int:
    """The one axis along which tiles are one plane thick (and there are several planes)."""
    axes = [a for a, (t, g) in enumerate(zip(grid.tile_shape, grid.grid_shape)) if t == 1 and g > 1]
    if len(axes) != 1:
        raise InvalidParameterError(
            f"merge='iou' joins per-slice 2D labels across planes, so tiles must be one plane "
            f"thick along exactly one axis of several planes; tile_shape {grid.tile_shape} on an "
            f"image of shape {grid.shape} has {len(axes)} such axes. Use e.g. "
            "tile_shape=(1, 1024, 1024)."
        )
    return axes[0]


def check_iou_threshold(threshold, merge: str) -> float | None:
    """``iou_threshold`` for ``merge="iou"`` (default 0.25); refused with another merge."""
    if merge != "iou":
        if threshold is not None:
            raise InvalidParameterError(
                f"iou_threshold={threshold} applies only to merge='iou' (per-slice tiles joined "
                f"across planes), not merge={merge!r}; drop it or pass merge='iou'."
            )
        return None
    if threshold is None:
        return DEFAULT_IOU_THRESHOLD
    if isinstance(threshold, bool) or not 0 < threshold <= 1:
        raise InvalidParameterError(
            f"iou_threshold={threshold!r}; use a number in (0, 1], e.g. 0.25 as Cellpose's "
            "stitch_threshold."
        )
    return float(threshold)


def plane_overlaps(index: int, grid: TileGrid, stage: Stage) -> PlaneOverlaps:
    """Overlaps of tile ``index``'s labels with those of the tile after it on the stack axis,
    and the areas of the labels in those pairs or on the tile's in-plane faces."""
    axis = stack_axis(grid)
    tile = grid.tile(index)
    own = stage.read_record(index)
    if own.count == 0:
        return PlaneOverlaps.none()
    mine = stage.read_local(tile, own.count).ravel()
    found = [_face_areas(index, mine, own, axis)]
    if tile.position[axis] + 1 < grid.grid_shape[axis]:
        after = _straight_after(grid, tile, axis)
        theirs = stage.read_record(after.index)
        if theirs.count:
            next_plane = stage.read_local(after, theirs.count).ravel()
            return _with_pairs(index, mine, after.index, next_plane, found)
    return _combined(PlaneOverlaps.none(), found)


def _straight_after(grid: TileGrid, tile, axis: int):
    position = tuple(p + 1 if a == axis else p for a, p in enumerate(tile.position))
    return grid.tile(grid.index(position))


def _with_pairs(index, mine, other, theirs, found) -> PlaneOverlaps:
    both = (mine != 0) & (theirs != 0)
    keys = (mine[both].astype(np.uint64) << np.uint64(32)) | theirs[both].astype(np.uint64)
    keys, intersections = np.unique(keys, return_counts=True)
    a = (keys >> np.uint64(32)).astype(np.int64)
    b = (keys & np.uint64(0xFFFFFFFF)).astype(np.int64)
    for tile, labels, local in ((index, mine, np.unique(a)), (other, theirs, np.unique(b))):
        found.append((encode(tile, local), np.bincount(labels)[local]))
    pairs = np.stack([encode(index, a), encode(other, b)], axis=1)
    return _combined(PlaneOverlaps(pairs, intersections.astype(np.int64), *_no_areas()), found)


def _no_areas():
    return np.empty(0, np.uint64), np.empty(0, np.int64)


def _face_areas(index, mine, record, axis) -> tuple[np.ndarray, np.ndarray]:
    """Areas of the labels on the tile's in-plane faces (pieces of 2D objects spanning tiles)."""
    layers = [face.labels.ravel() for key, face in record.faces.items()
              if key.startswith("inner") and not key.startswith(face_key("inner", axis, ""))]
    if not layers:
        return _no_areas()
    local = np.unique(np.concatenate(layers))
    local = local[local != 0].astype(np.int64)
    return encode(index, local), np.bincount(mine, minlength=int(local.max(initial=0)) + 1)[local]


def _combined(overlaps: PlaneOverlaps, found) -> PlaneOverlaps:
    labels, areas = zip(*found) if found else ((), ())
    overlaps.labels = np.concatenate([overlaps.labels, *labels]).astype(np.uint64)
    overlaps.areas = np.concatenate([overlaps.areas, *areas]).astype(np.int64)
    return overlaps


@dataclass
class PlaneJoins:
    """Every overlapping pair of 2D objects of neighbouring planes, and which of them join.

    ``pairs`` are ``(object in plane z, object in plane z + 1)``, each object named by the
    smallest provisional ID of its pieces; ``intersections`` the pixels they share, ``areas``
    ``(n, 2)`` their areas, ``iou`` their IoU and ``joined`` whether the rule joins them.
    """

    pairs: np.ndarray
    intersections: np.ndarray
    areas: np.ndarray
    iou: np.ndarray
    joined: np.ndarray

    @classmethod
    def none(cls) -> PlaneJoins:
        return cls(np.empty((0, 2), np.uint64), np.empty(0, np.int64),
                   np.empty((0, 2), np.int64), np.empty(0), np.empty(0, bool))

    @property
    def edges(self) -> np.ndarray:
        return self.pairs[self.joined]


def iou_edges(in_plane: np.ndarray, reports: list[PlaneOverlaps], threshold: float) -> np.ndarray:
    """The cross-plane pairs Cellpose's ``stitch3D`` rule joins, between whole 2D objects
    (``in_plane``: the merge pairs that join tiles within a plane)."""
    return plane_joins(in_plane, reports, threshold).edges


def plane_joins(in_plane: np.ndarray, reports: list[PlaneOverlaps],
                threshold: float) -> PlaneJoins:
    """Every cross-plane candidate pair of whole 2D objects with its IoU and areas, and which
    pairs Cellpose's ``stitch3D`` rule joins (``in_plane``: the merge pairs that join tiles
    within a plane)."""
    if not reports:
        return PlaneJoins.none()
    pairs = np.concatenate([r.pairs for r in reports])
    if len(pairs) == 0:
        return PlaneJoins.none()
    object_of = _objects(in_plane)
    labels, first = np.unique(np.concatenate([r.labels for r in reports]), return_index=True)
    areas = np.concatenate([r.areas for r in reports])[first]
    objects, where = np.unique(object_of(labels), return_inverse=True)
    object_area = np.bincount(where, weights=areas)
    joined, where = np.unique(np.stack([object_of(pairs[:, 0]), object_of(pairs[:, 1])], 1),
                              axis=0, return_inverse=True)
    shared = np.bincount(where.ravel(),
                         weights=np.concatenate([r.intersections for r in reports]))
    area_a = object_area[np.searchsorted(objects, joined[:, 0])]
    area_b = object_area[np.searchsorted(objects, joined[:, 1])]
    iou = shared / (area_a + area_b - shared)
    return PlaneJoins(joined, shared.astype(np.int64),
                      np.stack([area_a, area_b], axis=1).astype(np.int64), iou,
                      _stitched(joined, iou, threshold))


def _objects(in_plane: np.ndarray):
    """``ids -> 2D object``: the smallest provisional ID of the in-plane group of each ID."""
    nodes, representative = connected_groups(in_plane)

    def object_of(ids: np.ndarray) -> np.ndarray:
        if len(nodes) == 0:
            return ids
        position = np.minimum(np.searchsorted(nodes, ids), len(nodes) - 1)
        return np.where(nodes[position] == ids, representative[position], ids)

    return object_of


def _stitched(joined: np.ndarray, iou: np.ndarray, threshold: float) -> np.ndarray:
    """Which pairs ``(a, b)`` Cellpose's rule keeps: ``iou >= threshold``, ``b`` is among
    ``a``'s best, and of the ``a`` that keep ``b``, the best (the first on a tie)."""
    _, a = np.unique(joined[:, 0], return_inverse=True)
    _, b = np.unique(joined[:, 1], return_inverse=True)
    best_of_a = np.zeros(a.max() + 1)
    np.maximum.at(best_of_a, a, iou)
    candidate = np.flatnonzero((iou >= threshold) & (iou == best_of_a[a]))
    order = candidate[np.lexsort((joined[candidate, 0], -iou[candidate], b[candidate]))]
    _, first = np.unique(b[order], return_index=True)
    keep = np.zeros(len(joined), bool)
    keep[order[first]] = True
    return keep
