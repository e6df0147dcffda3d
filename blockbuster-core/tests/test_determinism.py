"""Same input, fn and tiling: byte-identical output whatever the executor or worker count."""

import numpy as np
import pytest
import zarr

from blockbuster import tile_process
from blockbuster.builtin.segmenters import Watershed
from blockbuster.synthetic import touching_disks
from blockbuster.testing import store_digest


@pytest.mark.slow
def test_executors_write_byte_identical_zarr(tmp_path):
    image = touching_disks((300, 260), seed=1)
    fn = Watershed(threshold=0.5, min_distance=5, diameter=20)
    digests, arrays = {}, {}
    for executor, workers in [("serial", 1), ("threads", 1), ("threads", 2), ("processes", 2)]:
        out = tmp_path / f"{executor}-{workers}.zarr"
        tile_process(image, fn, tile_shape=(64, 48), overlap=40, executor=executor,
                     workers=workers, write_to=out)
        digests[(executor, workers)] = store_digest(out)
        arrays[(executor, workers)] = zarr.open_array(str(out))[:]
    assert len(set(digests.values())) == 1, digests
    first = next(iter(arrays.values()))
    assert first.max() > 100 and set(np.unique(first)) == set(range(first.max() + 1))
