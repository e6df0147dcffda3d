"""What a halo costs, kept to what it must (issue 20, item 1): shortcuts that must not change a
result. Each is checked against the general path it skips."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

import blockbuster.merge as merge
from blockbuster.builtin.segmenters import Watershed
from blockbuster.faces import inner_faces, local_labels, outer_faces
from blockbuster.staging import TileRecord
from blockbuster.synthetic import touching_disks
from blockbuster.tiling import TileGrid


def contiguous_local_labels(core_raw, tile):
    return local_labels(np.ascontiguousarray(core_raw), tile)


@pytest.mark.parametrize("layout", ["C", "F"])
@pytest.mark.parametrize("dtype", [np.int32, np.uint16, np.uint64])
def test_a_core_cut_from_a_padded_tile_is_numbered_as_its_contiguous_copy(layout, dtype):
    """The core is handed to fastremap as the view it is; the numbering (order of first
    appearance, row-major) and the dtype must be those of a row-major copy, for a
    Fortran-ordered tile from fn too."""
    grid = TileGrid((40, 30), (20, 15), (4, 3))
    raw = np.random.default_rng(3).integers(0, 60, (28, 21)).astype(dtype)
    raw = np.asfortranarray(raw) if layout == "F" else raw
    tile = grid.tile(3)
    for core in (raw[4:-4, 3:-3], raw, raw.T[2:, 1:]):
        local, present = local_labels(core, tile)
        expected, expected_present = contiguous_local_labels(core, tile)
        assert local.dtype == expected.dtype and np.array_equal(local, expected)
        assert np.array_equal(present, expected_present)


def staged_records(image, fn, grid):
    """Each tile's record as the segment stage stages it (labels of fn on the padded tile)."""
    records = {}
    for index in range(len(grid)):
        tile = grid.tile(index)
        raw = fn(image[tile.padded])
        local, present = local_labels(raw[tile.core_in_padded], tile)
        faces = inner_faces(local, tile, grid)
        faces.update(outer_faces(raw, present, tile, grid))
        records[index] = TileRecord(len(present), faces)
    return records


def all_edges(grid, records):
    return [merge.tile_edges(grid.tile(i), grid, "overlap", records.__getitem__)
            for i in range(len(grid))]


def components(tile):
    return ndimage.label(tile > 0.5)[0]


@pytest.mark.parametrize("fn, overlap", [(components, (6, 6)), (Watershed(threshold=0.5,
                                         min_distance=5, diameter=20), (10, 10))])
def test_pairs_with_a_halo_on_every_axis_equal_those_of_the_general_rule(monkeypatch, fn,
                                                                         overlap):
    """With a halo on every axis each tile saw each neighbour pair, so the merge skips asking
    which pairs both tiles saw: the pairs, their support and their clean support are those the
    general rule finds (a watershed draws disagreeing boundaries, so pairs are dirty too)."""
    image = touching_disks((96, 96), seed=5)
    grid = TileGrid(image.shape, (32, 32), overlap)
    records = staged_records(image, fn, grid)
    assert merge._halo_on_every_axis(grid)
    fast = all_edges(grid, records)
    monkeypatch.setattr(merge, "_halo_on_every_axis", lambda grid: False)
    general = all_edges(grid, records)
    assert sum(len(pairs) for pairs, _, _ in general) > 0
    for found, expected in zip(fast, general):
        for a, b in zip(found, expected):
            assert np.array_equal(a, b)


def test_the_shortcut_is_taken_only_where_every_axis_with_tiles_has_a_halo():
    assert merge._halo_on_every_axis(TileGrid((64, 64), (32, 32), (1, 1)))
    assert merge._halo_on_every_axis(TileGrid((1, 64), (1, 32), (0, 4)))  # one plane
    assert not merge._halo_on_every_axis(TileGrid((4, 64), (1, 32), (0, 4)))  # planes
    assert not merge._halo_on_every_axis(TileGrid((64, 64), (32, 32), (4, 0)))
