"""What a halo costs, kept to what it must (issue 20, item 1): shortcuts that must not change a
result. Each is checked against the general path it skips."""

from __future__ import annotations

import numpy as np
import pytest

from blockbuster.faces import local_labels
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
