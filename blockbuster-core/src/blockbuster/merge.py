"""Merging: which provisional labels on either side of a tile face are one object.

Labels are compared as provisional IDs (:mod:`blockbuster.ids`): unique without coordination.
For every pair of pixels ``p`` (in tile A's core) and ``q`` (in a later tile C's core) that are
neighbours across a face — face, edge and corner neighbours all count — with labels ``a`` and
``b``:

- ``merge="touch"``: ``a`` and ``b`` are one object. ``connectivity`` limits the neighbours
  that count: 1 = face neighbours only, up to ``ndim`` (the default) = edge and corner too.
- ``merge="overlap"``: ``a`` and ``b`` are one object when *both* tiles, each looking through
  its own halo, gave ``p`` and ``q`` the same label: A's prediction at ``q`` is ``a`` and C's
  prediction at ``p`` is ``b``. Two cells that merely touch at the face are kept apart because
  each tile, seeing both with context, labelled them differently. For connected components the
  rule is exact: every truly connected neighbour pair is labelled alike by both tiles. A pair
  that one tile never saw (beyond its window along an axis without a halo, e.g. between the
  planes of per-slice tiles) has no prediction to ask, and the touch rule applies to it.

  Where neighbouring tiles draw a boundary between two touching objects a pixel apart, a
  sliver of pixels satisfies that test for the wrong pair. Such a pair is **contested** and
  dropped: each of its labels has another partner backed by at least ``CONTEST_RATIO`` times
  as many agreeing pixel pairs. Connected components never produce such weak, doubly
  outvoted pairs in practice; the property tests check it.

``merge="iou"`` (per-slice tiles, :mod:`blockbuster.stitching`) merges tiles within a plane by
the overlap rule (by touch without a halo) and joins planes by IoU instead.

Semantic maps (:mod:`blockbuster.pixelmaps`) are merged by touch with one more condition:
``p`` and ``q`` have the same class, read from the class layers staged beside the labels.

The pairs found are joined into objects by connected components on the pairs only
(:func:`scipy.sparse.csgraph.connected_components`), never on a table sized by the IDs.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np

from blockbuster.faces import face_key
from blockbuster.ids import encode
from blockbuster.staging import TileRecord
from blockbuster.tiling import Tile, TileGrid

MERGE_MODES = ("touch", "overlap", "iou")
CONTEST_RATIO = 4


def tile_edges(
    tile: Tile, grid: TileGrid, mode: str, record_of: Callable[[int], TileRecord],
    connectivity: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All provisional-ID pairs that ``mode`` merges across the faces after ``tile``.

    Each neighbour pair of pixels is examined from the tile holding its earlier pixel, so every
    face is handled once. Returns ``(pairs, support, clean)``: an ``(n, 2)`` uint64 array of
    distinct label pairs, how many pixel pairs back each, and how many of those are clean
    (not next to a pixel pair the two tiles disagree on).
    """
    own = record_of(tile.index)
    if own.count == 0:
        return no_edges()
    found = []
    for axis, other in _neighbours_after(tile, grid, mode):
        theirs = record_of(other.index)
        if theirs.count:
            found.extend(
                _face_pairs(tile, own, other, theirs, axis, grid, mode, connectivity or grid.ndim)
            )
    return _tally(tile, found)


def no_edges() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.empty((0, 2), np.uint64), np.empty(0, np.int64), np.empty(0, np.int64)


def resolve_pairs(pairs: np.ndarray, support: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """Keep pairs with clean support, and unclean pairs unless they are contested.

    A pair is contested when each of its labels has another partner backed by at least
    ``CONTEST_RATIO`` times as many pixel pairs.
    """
    return pairs[kept_pairs(pairs, support, clean)]


def kept_pairs(pairs: np.ndarray, support: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """Which of ``pairs`` :func:`resolve_pairs` keeps (a boolean mask)."""
    if len(pairs) == 0:
        return np.zeros(0, bool)
    nodes, index = np.unique(pairs, return_inverse=True)
    index = index.reshape(pairs.shape)
    best = np.zeros(len(nodes), np.int64)
    np.maximum.at(best, index[:, 0], support)
    np.maximum.at(best, index[:, 1], support)
    contested = (best[index[:, 0]] >= CONTEST_RATIO * support) & (
        best[index[:, 1]] >= CONTEST_RATIO * support
    )
    return (clean > 0) | ~contested


def _neighbours_after(tile: Tile, grid: TileGrid, mode: str):
    """``(axis, other)`` for each tile :meth:`TileGrid.neighbours_after` finds one step after
    ``tile`` along ``axis`` whose face with ``tile`` this merge examines.

    Each pair of tiles is examined once (a diagonal neighbour is found along the first axis it
    differs on), so the pixel pairs at a corner count once.
    """
    across_planes = _stack_axis(grid) if mode == "iou" else None
    for axis in range(grid.ndim):
        if tile.position[axis] + 1 >= grid.grid_shape[axis] or axis == across_planes:
            continue
        for other in grid.neighbours_after(tile, axis):
            if across_planes is None or (
                    other.position[across_planes] == tile.position[across_planes]):
                yield axis, other  # planes are joined by IoU (blockbuster.stitching), not here


def _face_pairs(
    tile: Tile, own: TileRecord, other: Tile, theirs: TileRecord, axis: int, grid: TileGrid,
    mode: str, connectivity: int,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The pixel pairs ``mode`` merges between ``tile``'s last layer on ``axis`` (pixels ``p``)
    and ``other``'s first (pixels ``q``), as ``(a, b, clean)``: the local label of ``p``, the
    provisional ID of ``q`` and whether the pair is clean, one array per neighbour offset.

    Only the layers' contact (the pixels within one step of the other layer) is read, and laid
    into a *slab*: both layers, widened by one pixel on the other axes, 0 beyond the contact.
    The neighbours of the p pixels at each offset are then a view of the slab.
    """
    offsets = _offsets(tile, other, axis, connectivity)
    if not offsets:
        return []
    p_box, q_box = _contact(tile, other, axis)
    a = own.faces[face_key("inner", axis, "hi")].take(p_box)
    q_labels = theirs.faces[face_key("inner", axis, "lo")].take(q_box)
    if not (a.any() and q_labels.any()):
        return []
    slab = _slab(p_box, axis)
    mine, yours = _placed(slab, p_box, a), _placed(slab, q_box, q_labels)
    classes = _class_slabs(own, theirs, axis, slab, p_box, q_box)
    overlap = mode in ("overlap", "iou") and _seen_by_both(tile, other, grid)
    if overlap:  # each tile's prediction at the other's pixels
        mine[_placement(q_box, slab)] = own.faces[face_key("outer", axis, "hi")].take(q_box)
        yours[_placement(p_box, slab)] = theirs.faces[face_key("outer", axis, "lo")].take(p_box)
        dirty = _dirty_pixels(mine, yours)
    here = _view((0,) * grid.ndim, axis)
    labelled = a != 0
    found = []
    for offset in offsets:
        there = _view(offset, axis)
        b = yours[there]
        keep = labelled & (b != 0)
        if classes is not None:
            keep &= classes[0][here] == classes[1][there]
        if overlap:  # A labels q as p, and C labels p as q
            keep &= (mine[there] == a) & (yours[here] == b)
        if keep.any():
            clean = ~(dirty[here] | dirty[there]) if overlap else np.ones(a.shape, bool)
            found.append((a[keep], encode(other.index, b[keep]), clean[keep]))
    return found


def _contact(tile: Tile, other: Tile, axis: int) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """The pixels of ``tile``'s last layer on ``axis`` within one step of ``other``'s first
    layer on the other axes, and those of ``other``'s first layer near ``tile``'s last: the
    tiles' last and first pixels along each axis they step along, whole where they do not."""
    p_box, q_box = [], []
    for a, (p, q, i, j) in enumerate(zip(tile.core, other.core, tile.position, other.position)):
        if a == axis or j > i:
            p_box.append(slice(p.stop - 1, p.stop))
            q_box.append(slice(q.start, q.start + 1))
        elif j < i:
            p_box.append(slice(p.start, p.start + 1))
            q_box.append(slice(q.stop - 1, q.stop))
        else:
            p_box.append(p)
            q_box.append(q)
    return tuple(p_box), tuple(q_box)


def _slab(p_box: tuple[slice, ...], axis: int) -> tuple[slice, ...]:
    """The contact's layer and the next one on ``axis``, widened by one pixel on the others,
    so that every neighbour of a contact pixel across the face lies in it."""
    return tuple(slice(s.start, s.start + 2) if a == axis else slice(s.start - 1, s.stop + 1)
                 for a, s in enumerate(p_box))


def _placement(box: tuple[slice, ...], frame: tuple[slice, ...]) -> tuple[slice, ...]:
    """Where ``box`` lies in an array over ``frame`` (which contains it)."""
    return tuple(slice(b.start - f.start, b.stop - f.start) for b, f in zip(box, frame))


def _placed(frame: tuple[slice, ...], box: tuple[slice, ...], values: np.ndarray) -> np.ndarray:
    """An array over ``frame``: ``values`` in ``box``, 0 elsewhere."""
    placed = np.zeros(tuple(f.stop - f.start for f in frame), values.dtype)
    placed[_placement(box, frame)] = values
    return placed


def _view(offset: tuple[int, ...], axis: int) -> tuple[slice, ...]:
    """The part of a slab holding, for each pixel ``p`` of the contact, ``p + offset``."""
    return tuple(slice(o, o + 1) if a == axis else slice(1 + o, o - 1 or None)
                 for a, o in enumerate(offset))


def _class_slabs(own: TileRecord, theirs: TileRecord, axis: int, slab, p_box, q_box
                 ) -> tuple[np.ndarray, np.ndarray] | None:
    """Each tile's pixel classes over the slab (0 beyond its layer's contact), when the tiles
    are semantic maps."""
    mine = own.faces.get(face_key("class", axis, "hi"))
    if mine is None:
        return None
    yours = theirs.faces[face_key("class", axis, "lo")]
    return _placed(slab, p_box, mine.take(p_box)), _placed(slab, q_box, yours.take(q_box))


def _seen_by_both(tile: Tile, other: Tile, grid: TileGrid) -> bool:
    """Whether each tile predicted the other's pixels next to its own, so the overlap rule can
    ask both: the tiles lie one after the other only along axes with a halo.

    Along an axis without a halo (e.g. between the planes of per-slice tiles) a tile's window
    ends at its core, so every pixel pair between the two tiles steps out of both windows and
    falls back to touch.
    """
    return all(o > 0 for o, i, j in zip(grid.overlap, tile.position, other.position) if i != j)


def _stack_axis(grid: TileGrid) -> int:
    from blockbuster.stitching import stack_axis

    return stack_axis(grid)


def _dirty_pixels(mine: np.ndarray, yours: np.ndarray) -> np.ndarray:
    """Pixels of a slab in a face-neighbour pair that one tile labels alike and the other not.

    Connected components never disagree so; a boundary drawn a pixel apart by two tiles does.
    ``mine`` and ``yours`` are the two tiles' labels over the slab, 0 where unknown: the pairs
    within each layer and those straight across the face are compared at once.
    """
    dirty = np.zeros(mine.shape, bool)
    for j in range(mine.ndim):
        lo = tuple(slice(None, -1) if d == j else slice(None) for d in range(mine.ndim))
        hi = tuple(slice(1, None) if d == j else slice(None) for d in range(mine.ndim))
        d = _disagree(mine[lo], mine[hi], yours[lo], yours[hi])
        dirty[lo] |= d
        dirty[hi] |= d
    return dirty


def _disagree(a0, a1, c0, c1) -> np.ndarray:
    known = (a0 != 0) & (a1 != 0) & (c0 != 0) & (c1 != 0)
    return known & ((a0 == a1) != (c0 == c1))


def _offsets(tile: Tile, other: Tile, axis: int, connectivity: int) -> list[tuple[int, ...]]:
    """Offsets from a pixel of ``tile`` to its neighbours in ``other`` across the face on
    ``axis``: +1 on it, the tiles' own step where they differ on another axis, -1/0/+1 where
    they do not, with at most ``connectivity`` non-zero entries."""
    ranges = [(j - i,) if a == axis or i != j else (-1, 0, 1)
              for a, (i, j) in enumerate(zip(tile.position, other.position))]
    return [o for o in itertools.product(*ranges) if sum(map(bool, o)) <= connectivity]


def _tally(tile: Tile, found) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(pairs, support, clean)`` of the pixel pairs ``found`` (``(a, b, clean)`` arrays):
    the distinct label pairs in order, and how many pixel pairs (clean ones) back each."""
    if not found:
        return no_edges()
    a, b, clean = (np.concatenate(column) for column in zip(*found))
    order = np.lexsort((b, a))
    a, b, clean = a[order], b[order], clean[order]
    first = np.flatnonzero(np.concatenate([[True], (a[1:] != a[:-1]) | (b[1:] != b[:-1])]))
    pairs = np.stack([encode(tile.index, a[first]), b[first]], axis=1)
    support = np.diff(np.append(first, len(a)))
    return pairs, support.astype(np.int64), np.add.reduceat(clean.astype(np.int64), first)


def connected_groups(edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Join merge pairs into objects.

    Returns ``(nodes, representative)``: the sorted provisional IDs that appear in any pair,
    and for each the smallest ID of its object.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if len(edges) == 0:
        empty = np.empty(0, np.uint64)
        return empty, empty
    nodes, index = np.unique(edges, return_inverse=True)
    index = index.reshape(edges.shape)
    n = len(nodes)
    graph = coo_matrix((np.ones(len(index), np.int8), (index[:, 0], index[:, 1])), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    _, first = np.unique(component, return_index=True)  # nodes are sorted: first = smallest
    return nodes, nodes[first][component]
