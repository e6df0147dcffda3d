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

from blockbuster.faces import Face, face_key, inner_box
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
    across_planes = _stack_axis(grid) if mode == "iou" else None
    for axis in range(grid.ndim):
        if tile.position[axis] + 1 >= grid.grid_shape[axis] or axis == across_planes:
            continue
        for other in grid.neighbours_after(tile, axis):
            if across_planes is not None and (
                    other.position[across_planes] != tile.position[across_planes]):
                continue  # planes are joined by IoU (blockbuster.stitching), not here
            theirs = record_of(other.index)
            if theirs.count:
                found.extend(
                    _face_pairs(tile, own, other, theirs, axis, grid, mode, connectivity)
                )
    if not found:
        return no_edges()
    evidence = np.concatenate(found)
    pairs, index, support = np.unique(
        evidence[:, :2], axis=0, return_inverse=True, return_counts=True
    )
    clean = np.bincount(index.ravel(), weights=evidence[:, 2], minlength=len(pairs))
    return pairs, support.astype(np.int64), clean.astype(np.int64)


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


def _face_pairs(
    tile: Tile, own: TileRecord, other: Tile, theirs: TileRecord, axis: int, grid: TileGrid,
    mode: str, connectivity: int | None,
) -> list[np.ndarray]:
    mine_inner = own.faces[face_key("inner", axis, "hi")]
    their_inner = theirs.faces[face_key("inner", axis, "lo")]
    p_layer = inner_box(tile, axis, "hi")
    q_layer = inner_box(other, axis, "lo")
    asks_halo = mode in ("overlap", "iou") and grid.overlap[axis] > 0
    classes = _class_layers(own, theirs, axis)
    if asks_halo:
        mine_outer = own.faces[face_key("outer", axis, "hi")]
        their_outer = theirs.faces[face_key("outer", axis, "lo")]
        dirty_p, dirty_q = _dirty_pixels(
            p_layer, q_layer, axis, mine_inner, mine_outer, their_inner, their_outer
        )
    everywhere_seen = asks_halo and _halo_on_every_axis(grid)
    pairs = []
    for offset in _offsets(grid.ndim, axis, connectivity or grid.ndim):
        q_box = _intersect(q_layer, _shift(p_layer, offset))
        if q_box is None:
            continue
        p_box = _shift(q_box, tuple(-o for o in offset))
        a = mine_inner.take(p_box)
        b = their_inner.take(q_box)
        keep = (a != 0) & (b != 0)
        if classes is not None:
            keep &= classes[0].take(p_box) == classes[1].take(q_box)
        clean = np.ones(a.shape, bool)
        if asks_halo:
            agreed = (mine_outer.take(q_box) == a) & (their_outer.take(p_box) == b)
            clean = ~(dirty_p.take(p_box) | dirty_q.take(q_box))
            if not everywhere_seen:
                both = _seen_by_both(tile, other, p_box, q_box)
                agreed |= ~both
                clean |= ~both
            keep &= agreed
        if keep.any():
            pairs.append(np.stack([
                encode(tile.index, a[keep]),
                encode(other.index, b[keep]),
                clean[keep].astype(np.uint64),
            ], axis=1))
    return pairs


def _stack_axis(grid: TileGrid) -> int:
    from blockbuster.stitching import stack_axis

    return stack_axis(grid)


def _class_layers(own: TileRecord, theirs: TileRecord, axis: int) -> tuple[Face, Face] | None:
    """The pixel classes on both sides of the face, when the tiles are semantic maps."""
    mine = own.faces.get(face_key("class", axis, "hi"))
    return None if mine is None else (mine, theirs.faces[face_key("class", axis, "lo")])


def _dirty_pixels(p_layer, q_layer, axis, mine_inner, mine_outer, their_inner, their_outer):
    """Pixels next to a neighbour pair that one tile labels alike and the other does not.

    Connected components never disagree so; a boundary drawn a pixel apart by two tiles does.
    Returns two :class:`Face` masks over the p layer (tile A's) and the q layer (tile C's).
    """
    p_box = _intersect(p_layer, _widen(q_layer, axis, p_layer))
    q_box = _intersect(q_layer, _widen(p_layer, axis, q_layer))
    p_mask = Face(_origin(p_layer), np.zeros(mine_inner.labels.shape, bool))
    q_mask = Face(_origin(q_layer), np.zeros(their_inner.labels.shape, bool))
    views = {}
    for name, box, mask, mine, theirs in (
        ("p", p_box, p_mask, mine_inner, their_outer),
        ("q", q_box, q_mask, mine_outer, their_inner),
    ):
        if box is None:
            continue
        a, c = mine.take(box), theirs.take(box)
        views[name] = (box, a, c)
        _mark(mask, box, _layer_disagreements(a, c, axis))
    if "p" in views and "q" in views:
        _mark_across(views["p"], views["q"], axis, p_mask, q_mask)
    return p_mask, q_mask


def _widen(layer, axis, at):
    """``layer`` widened by one pixel on the other axes, moved onto ``at`` along ``axis``."""
    return tuple(
        at[a] if a == axis else slice(s.start - 1, s.stop + 1) for a, s in enumerate(layer)
    )


def _origin(box):
    return tuple(s.start for s in box)


def _mark(mask: Face, box, dirty: np.ndarray) -> None:
    region = tuple(slice(b.start - o, b.stop - o) for b, o in zip(box, mask.origin))
    mask.labels[region] |= dirty


def _disagree(a0, a1, c0, c1) -> np.ndarray:
    known = (a0 != 0) & (a1 != 0) & (c0 != 0) & (c1 != 0)
    return known & ((a0 == a1) != (c0 == c1))


def _layer_disagreements(a: np.ndarray, c: np.ndarray, axis: int) -> np.ndarray:
    """Pixels of a layer with a face neighbour (along the layer) the two tiles disagree on."""
    dirty = np.zeros(a.shape, bool)
    for j in range(a.ndim):
        if j == axis or a.shape[j] < 2:
            continue
        lo = tuple(slice(None, -1) if d == j else slice(None) for d in range(a.ndim))
        hi = tuple(slice(1, None) if d == j else slice(None) for d in range(a.ndim))
        d = _disagree(a[lo], a[hi], c[lo], c[hi])
        dirty[lo] |= d
        dirty[hi] |= d
    return dirty


def _mark_across(p_view, q_view, axis, p_mask: Face, q_mask: Face) -> None:
    """Disagreements between a pixel and its face neighbour straight across the face."""
    (p_box, pa, pc), (q_box, qa, qc) = p_view, q_view
    step = tuple(1 if d == axis else 0 for d in range(len(p_box)))
    across = _intersect(_shift(p_box, step), q_box)
    if across is None:
        return
    back = _shift(across, tuple(-s for s in step))
    p_sel = tuple(slice(b.start - o.start, b.stop - o.start) for b, o in zip(back, p_box))
    q_sel = tuple(slice(b.start - o.start, b.stop - o.start) for b, o in zip(across, q_box))
    d = _disagree(pa[p_sel], qa[q_sel], pc[p_sel], qc[q_sel])
    _mark(p_mask, back, d)
    _mark(q_mask, across, d)


def _offsets(ndim: int, axis: int, connectivity: int):
    """Neighbour offsets across a face on ``axis``: +1 on it, -1/0/+1 on the others, with at
    most ``connectivity`` non-zero entries."""
    ranges = [(1,) if a == axis else (-1, 0, 1) for a in range(ndim)]
    return [o for o in itertools.product(*ranges) if sum(map(bool, o)) <= connectivity]


def _halo_on_every_axis(grid: TileGrid) -> bool:
    """Whether each tile's window reaches one pixel past its core wherever another tile
    lies: then every neighbour pair across a face is seen by both tiles, and
    :func:`_seen_by_both` need not be asked."""
    return all(o > 0 or g == 1 for o, g in zip(grid.overlap, grid.grid_shape))


def _seen_by_both(tile: Tile, other: Tile, p_box: tuple[slice, ...],
                  q_box: tuple[slice, ...]) -> np.ndarray:
    """Which pixel pairs (``p`` in ``tile``, ``q`` in ``other``) both tiles predicted.

    The overlap rule needs each tile's prediction at the other's pixel: ``q`` inside ``tile``'s
    padded window and ``p`` inside ``other``'s. A pair that steps out of a window (along an
    axis without a halo, e.g. between the planes of per-slice tiles) falls back to touch.
    """
    mask = np.ones(tuple(q.stop - q.start for q in q_box), bool)
    for axis, (p, q, mine, theirs) in enumerate(zip(p_box, q_box, tile.padded, other.padded)):
        step = np.arange(q.stop - q.start)
        inside = ((mine.start <= q.start + step) & (q.start + step < mine.stop)
                  & (theirs.start <= p.start + step) & (p.start + step < theirs.stop))
        mask &= inside.reshape([-1 if a == axis else 1 for a in range(mask.ndim)])
    return mask


def _shift(box: tuple[slice, ...], offset: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(s.start + o, s.stop + o) for s, o in zip(box, offset))


def _intersect(a: tuple[slice, ...], b: tuple[slice, ...]) -> tuple[slice, ...] | None:
    box = tuple(slice(max(x.start, y.start), min(x.stop, y.stop)) for x, y in zip(a, b))
    return None if any(s.stop <= s.start for s in box) else box


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
