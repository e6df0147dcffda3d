"""The staging area stores each tile's labels compactly and refuses damaged files."""

import numpy as np
import pytest

from blockbuster.errors import StageMismatchError
from blockbuster.ids import local_dtype
from blockbuster.staging import Stage, TileRecord
from blockbuster.tiling import TileGrid


@pytest.mark.parametrize("count, dtype", [(1, np.uint8), (255, np.uint8), (256, np.uint16),
                                          (70_000, np.uint32), (2**32, np.uint64)])
def test_staged_labels_use_the_smallest_dtype(count, dtype):
    assert local_dtype(count) == dtype


def test_staged_labels_round_trip_and_a_damaged_file_is_refused(tmp_path):
    grid = TileGrid((40, 30), (20, 30), (0, 0))
    stage = Stage(tmp_path / "stage", grid)
    stage.create("job")
    tile = grid.tile(1)
    local = np.arange(20 * 30, dtype=np.int32).reshape(20, 30) % 300
    stage.write_tile(tile, local, TileRecord(299, {}))
    assert stage.done_tiles() == [1]
    back = stage.read_local(tile, 299)
    assert back.dtype == np.uint16 and np.array_equal(back, local)
    (tmp_path / "stage" / "tiles" / "1.labels").write_bytes(b"not labels")
    with pytest.raises(StageMismatchError, match="tile 1 .* damaged .* resume=False"):
        stage.read_local(tile, 299)
