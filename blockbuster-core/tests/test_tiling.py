import numpy as np
from hypothesis import given, strategies as st

from blockbuster.tiling import TileGrid, auto_tile_shape


@st.composite
def grids(draw, min_tile=1):
    ndim = draw(st.integers(1, 3))
    shape = draw(st.lists(st.integers(1, 12), min_size=ndim, max_size=ndim))
    tiles = draw(st.lists(st.integers(min_tile, 14), min_size=ndim, max_size=ndim))
    overlap = [draw(st.integers(0, t - 1)) for t in tiles]
    return TileGrid(shape, tiles, overlap)


@given(grids())
def test_cores_partition_the_image_and_halos_are_clipped(grid):
    cover = np.zeros(grid.shape, int)
    for tile in grid:
        cover[tile.core] += 1
        for c, p, o, s in zip(tile.core, tile.padded, grid.overlap, grid.shape):
            assert p.start == max(c.start - o, 0) and p.stop == min(c.stop + o, s)
        assert grid.tile(grid.index(tile.position)) == tile
    assert (cover == 1).all()


@given(grids(min_tile=3))  # at most 4 tiles per axis: the brute force below stays quick
def test_neighbours_after_are_exactly_the_tiles_one_step_on(grid):
    """Every tile one step after along ``axis``, level on the axes before it and within one step
    on those after, no other; over all axes, each later tile within one step exactly once."""
    for tile in grid:
        found_on_any_axis = []
        for axis in range(grid.ndim):
            expected = [
                other.index for other in grid
                if other.position[axis] == tile.position[axis] + 1
                and other.position[:axis] == tile.position[:axis]
                and all(abs(a - b) <= 1 for a, b in zip(other.position, tile.position))
            ]
            found = [other.index for other in grid.neighbours_after(tile, axis)]
            assert sorted(found) == expected and len(set(found)) == len(found)
            found_on_any_axis += found
        later_neighbours = [
            other.index for other in grid
            if other.position > tile.position
            and all(abs(a - b) <= 1 for a, b in zip(other.position, tile.position))
        ]
        assert sorted(found_on_any_axis) == later_neighbours


def test_neighbours_after_the_centre_of_a_3x3_grid():
    grid = TileGrid((30, 30), (10, 10), (2, 2))
    centre = grid.tile(grid.index((1, 1)))
    assert sorted(t.position for t in grid.neighbours_after(centre, 0)) == [(2, 0), (2, 1), (2, 2)]
    assert sorted(t.position for t in grid.neighbours_after(centre, 1)) == [(1, 2)]
    assert grid.neighbours_after(grid.tile(grid.index((2, 2))), 0) == []


def test_auto_tile_shape_fits_budget_and_aligns_to_chunks():
    tile = auto_tile_shape((20000, 20000), bytes_per_voxel=32, overlap=(20, 20), workers=2,
                           budget_bytes=2**30, chunks=(512, 512))
    padded = np.prod([t + 40 for t in tile])
    assert padded * 32 * 2 <= 2**30
    assert all(t % 512 == 0 for t in tile)
    assert tile[0] >= 2048  # uses the budget, not a tiny default


def test_auto_tile_shape_of_small_image_is_the_image():
    assert auto_tile_shape((50, 60), bytes_per_voxel=32, overlap=(0, 0), workers=2,
                           budget_bytes=2**30) == (50, 60)
