"""The pairs :func:`blockbuster.merge.tile_edges` finds equal those of the rule in the module's
docstring, applied pixel pair by pixel pair to each tile's whole prediction (not to the face
layers the merge reads), on random tilings in 2D and 3D."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st
from scipy import ndimage

from blockbuster.builtin.segmenters import Watershed
from blockbuster.faces import class_faces, inner_faces, local_labels, outer_faces
from blockbuster.ids import encode
from blockbuster.merge import tile_edges
from blockbuster.staging import TileRecord
from blockbuster.synthetic import touching_disks
from blockbuster.tiling import TileGrid


@st.composite
def cases(draw):
    """A tiling (last tiles may be cut short), a merge mode, a connectivity, the tiles'
    predictions (consistent connected components, or noise that tiles disagree on) and
    whether the tiles carry semantic classes."""
    ndim = draw(st.sampled_from([2, 3]))
    mode = draw(st.sampled_from(["touch", "overlap", "iou"]))
    most_tiles, largest = (3, 5) if ndim == 2 else (2, 3)
    counts = [draw(st.integers(1, most_tiles)) for _ in range(ndim)]
    tiles = [draw(st.integers(1, largest)) for _ in range(ndim)]
    if mode == "iou":  # one plane per tile along axis 0, several planes, no other thin axis,
        counts[0], tiles[0] = draw(st.integers(2, 3)), 1  # and faces within the planes
        counts[1], tiles[1:] = max(counts[1], 2), [max(t, 2) for t in tiles[1:]]
    shape = [n * t - draw(st.integers(0, t - 1)) for n, t in zip(counts, tiles)]
    overlap = [draw(st.integers(0, 2)) for _ in range(ndim)]
    return dict(
        grid=TileGrid(shape, tiles, overlap), mode=mode,
        connectivity=draw(st.integers(1, ndim)),
        noise=draw(st.booleans()), semantic=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
    )


def predictions(grid, noise, seed):
    """Each tile's labels over its padded window: connected components of one image, or one
    image of few labels in blocks of 2 pixels that each tile copies with 15% of its pixels
    redrawn (so tiles agree and disagree on many neighbour pairs)."""
    rng = np.random.default_rng(seed)
    if noise:
        truth = rng.integers(0, 5, [(s + 1) // 2 for s in grid.shape])
        for axis in range(grid.ndim):
            truth = truth.repeat(2, axis)
        truth = truth[tuple(slice(s) for s in grid.shape)]
        found = {}
        for tile in grid:
            window = truth[tile.padded].copy()
            redrawn = rng.random(window.shape) < 0.15
            window[redrawn] = rng.integers(0, 5, np.count_nonzero(redrawn))
            found[tile.index] = window
        return found
    image = ndimage.gaussian_filter(rng.random(grid.shape), 1.0)
    return {tile.index: ndimage.label(image[tile.padded] > np.median(image))[0] for tile in grid}


def staged(grid, raw, classes, mode):
    """Each tile's record as the segment stage stages it."""
    records = {}
    for tile in grid:
        local, present = local_labels(raw[tile.index][tile.core_in_padded], tile)
        faces = inner_faces(local, tile, grid)
        if mode != "touch":
            faces.update(outer_faces(raw[tile.index], present, tile, grid))
        if classes is not None:
            faces.update(class_faces(classes[tile.core], tile, grid))
        records[tile.index] = TileRecord(len(present), faces)
    return records


class Prediction:
    """A tile's prediction at any pixel as a local label: 0 outside its window, and 0 for an
    object that does not reach into its core."""

    def __init__(self, tile, raw):
        self.tile, self.raw = tile, raw
        core = raw[tile.core_in_padded]
        _, first = np.unique(core.ravel(), return_index=True)
        order = core.ravel()[np.sort(first)]
        self.local = {int(r): i + 1 for i, r in enumerate(order[order != 0])}

    def __call__(self, pixel):
        if not all(s.start <= x < s.stop for x, s in zip(pixel, self.tile.padded)):
            return 0
        inside = tuple(x - s.start for x, s in zip(pixel, self.tile.padded))
        return self.local.get(int(self.raw[inside]), 0)

    def sees(self, pixel):
        return all(s.start <= x < s.stop for x, s in zip(pixel, self.tile.padded))


def layer(tile, axis, at):
    """The pixels of ``tile``'s core whose coordinate on ``axis`` is ``at``."""
    ranges = [[at] if a == axis else range(s.start, s.stop) for a, s in enumerate(tile.core)]
    return set(itertools.product(*ranges))


def step(pixel, axis, by=1):
    return tuple(x + by if a == axis else x for a, x in enumerate(pixel))


def dirty_pixels(p_layer, q_layer, axis, a_of, c_of):
    """Pixels (of either layer) in a face-neighbour pair that one tile labels alike and the
    other does not; only pixels with a neighbour across the face take part."""
    def across(x, layer_there, sign):
        return any(step(tuple(v + o for v, o in zip(x, offset)), axis, sign) in layer_there
                   for offset in itertools.product((-1, 0, 1), repeat=len(x))
                   if offset[axis] == 0)

    near_p = {p for p in p_layer if across(p, q_layer, 1)}
    near_q = {q for q in q_layer if across(q, p_layer, -1)}
    neighbour_pairs = [(x, step(x, axis)) for x in near_p if step(x, axis) in near_q]
    for near in (near_p, near_q):
        neighbour_pairs += [(x, step(x, j)) for x in near for j in range(len(x))
                            if j != axis and step(x, j) in near]
    dirty = set()
    for x, y in neighbour_pairs:
        a, c = (a_of(x), a_of(y)), (c_of(x), c_of(y))
        if 0 not in a + c and (a[0] == a[1]) != (c[0] == c[1]):
            dirty |= {x, y}
    return dirty


def reference_edges(tile, grid, raw, classes, mode, connectivity):
    """{(a, b): (support, clean)} across the faces after ``tile``, pixel pair by pixel pair."""
    support, clean_support = Counter(), Counter()
    stack = 0 if mode == "iou" else None
    mine = Prediction(tile, raw[tile.index])
    for axis in range(grid.ndim):
        if axis == stack or tile.position[axis] + 1 >= grid.grid_shape[axis]:
            continue
        halo = mode != "touch" and grid.overlap[axis] > 0
        p_layer = layer(tile, axis, tile.core[axis].stop - 1)
        for other in grid.neighbours_after(tile, axis):
            if stack is not None and other.position[stack] != tile.position[stack]:
                continue
            theirs = Prediction(other, raw[other.index])
            q_layer = layer(other, axis, other.core[axis].start)
            if halo:
                dirty = dirty_pixels(p_layer, q_layer, axis, mine, theirs)
            for p in p_layer:
                for offset in itertools.product((-1, 0, 1), repeat=grid.ndim):
                    q = tuple(x + o for x, o in zip(p, offset))
                    if (offset[axis] != 1 or q not in q_layer
                            or np.count_nonzero(offset) > connectivity):
                        continue
                    a, b = mine(p), theirs(q)
                    if not (a and b) or (classes is not None and classes[p] != classes[q]):
                        continue
                    seen = mine.sees(q) and theirs.sees(p)
                    if halo and seen and (mine(q), theirs(p)) != (a, b):
                        continue
                    clean = not (halo and seen and (p in dirty or q in dirty))
                    pair = int(encode(tile.index, a)), int(encode(other.index, b))
                    support[pair] += 1
                    clean_support[pair] += clean
    return {pair: (n, clean_support[pair]) for pair, n in support.items()}


def found_edges(pairs, support, clean):
    assert pairs.dtype == np.uint64 and support.dtype == clean.dtype == np.int64
    rows = [tuple(map(int, row)) for row in pairs]
    assert rows == sorted(set(rows))  # distinct, in order
    return {row: (int(s), int(c)) for row, s, c in zip(rows, support, clean)}


def case(shape, tiles, overlap, mode, connectivity, semantic=False):
    return dict(grid=TileGrid(shape, tiles, overlap), mode=mode, connectivity=connectivity,
                noise=True, semantic=semantic, seed=1)


@settings(max_examples=100, deadline=None)
@given(cases())
@example(case((15, 15), (5, 5), (2, 0), "overlap", 2))
@example(case((6, 6, 6), (3, 3, 3), (1, 0, 2), "overlap", 3, semantic=True))
@example(case((3, 6, 6), (1, 3, 3), (0, 1, 2), "iou", 2))
def test_tile_edges_finds_the_pairs_of_the_rule_pixel_by_pixel(case):
    grid, mode = case["grid"], case["mode"]
    raw = predictions(grid, case["noise"], case["seed"])
    classes = (np.random.default_rng(case["seed"]).integers(1, 3, grid.shape)
               if case["semantic"] else None)
    records = staged(grid, raw, classes, mode)
    for tile in grid:
        expected = reference_edges(tile, grid, raw, classes, mode, case["connectivity"])
        found = tile_edges(tile, grid, mode, records.__getitem__, case["connectivity"])
        assert found_edges(*found) == expected, f"tile {tile.index} of {grid}"


def components(tile):
    return ndimage.label(tile > 0.5)[0]


@pytest.mark.parametrize("fn, overlap", [
    (components, (6, 6)), (components, (6, 0)),
    (Watershed(threshold=0.5, min_distance=5, diameter=20), (10, 10)),
    (Watershed(threshold=0.5, min_distance=5, diameter=20), (0, 10)),
])
def test_tile_edges_of_segmenters_follow_the_rule(fn, overlap):
    """Touching disks cut by tiles, labelled by connected components and by a watershed (which
    draws boundaries the tiles disagree on, so some pairs are dirty), halos on all axes or one."""
    image = touching_disks((96, 96), seed=5)
    grid = TileGrid(image.shape, (32, 32), overlap)
    raw = {tile.index: fn(image[tile.padded]) for tile in grid}
    records = staged(grid, raw, None, "overlap")
    expected = {tile.index: reference_edges(tile, grid, raw, None, "overlap", 2) for tile in grid}
    dirty = any(s > c for edges in expected.values() for s, c in edges.values())
    assert dirty == isinstance(fn, Watershed)
    for tile in grid:
        found = tile_edges(tile, grid, "overlap", records.__getitem__)
        assert found_edges(*found) == expected[tile.index]


@pytest.mark.parametrize("shape, tiles", [((9, 10), (3, 4)), ((5, 6, 7), (2, 3, 3))])
def test_each_pixel_pair_across_tiles_is_counted_once(shape, tiles):
    """One object filling the image: the support of all pairs together is the number of
    neighbour pixel pairs (full connectivity) whose pixels lie in different tiles, diagonal
    pairs at the corners where several tiles meet included, each once."""
    grid = TileGrid(shape, tiles, (0,) * len(shape))
    raw = {tile.index: np.ones(tile.padded_shape, np.int32) for tile in grid}
    records = staged(grid, raw, None, "touch")
    total = sum(int(tile_edges(tile, grid, "touch", records.__getitem__, len(shape))[1].sum())
                for tile in grid)
    owner = np.zeros(shape, np.int64)
    for tile in grid:
        owner[tile.core] = tile.index
    across = 0
    for offset in itertools.product((-1, 0, 1), repeat=len(shape)):
        if offset <= (0,) * len(shape):
            continue  # each unordered neighbour pair once
        here = tuple(slice(max(0, -o), s - max(0, o)) for o, s in zip(offset, shape))
        there = tuple(slice(max(0, o), s - max(0, -o)) for o, s in zip(offset, shape))
        across += np.count_nonzero(owner[here] != owner[there])
    assert total == across
