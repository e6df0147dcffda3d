"""Out-of-core expand_labels == skimage.segmentation.expand_labels on the whole image."""

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage
from skimage.segmentation import expand_labels as expand_whole

from blockbuster import expand_labels
from blockbuster.errors import InvalidParameterError, OutputExistsError


@st.composite
def labels_and_tiling(draw):
    ndim = draw(st.sampled_from([2, 2, 3]))
    shape = tuple(draw(st.lists(st.integers(4, 40 if ndim == 2 else 12), min_size=ndim,
                                max_size=ndim)))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    density = draw(st.sampled_from([0.005, 0.03, 0.2, 0.6]))
    # dense random seeds with few distinct ids: many pixels equidistant from two labels
    labels = (rng.random(shape) < density) * rng.integers(1, draw(st.integers(2, 9)), shape)
    tile_shape = tuple(draw(st.integers(1, s)) for s in shape)
    distance = draw(st.sampled_from([0, 1, 1.5, 2, 3, 4.7, 6]))
    return labels.astype(np.uint16), tile_shape, distance


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(labels_and_tiling())
def test_tiled_expansion_equals_skimage_on_the_whole_image(tmp_path, case):
    labels, tile_shape, distance = case
    grown = expand_labels(labels, distance, write_to=tmp_path / "cells.zarr", overwrite=True,
                          tile_shape=tile_shape, executor="serial", compute=True)
    expected = expand_whole(labels, distance)
    assert grown.dtype == labels.dtype
    np.testing.assert_array_equal(grown, expected)


def test_nuclei_grown_into_cells_from_a_zarr_with_threads(tmp_path):
    rng = np.random.default_rng(0)
    nuclei = ndimage.label(ndimage.gaussian_filter(rng.random((200, 180)), 3) > 0.56)[0]
    zarr.create_array(tmp_path / "nuclei.zarr", data=nuclei.astype(np.uint32), chunks=(64, 64))
    cells = expand_labels(tmp_path / "nuclei.zarr", 5, write_to=tmp_path / "cells.zarr",
                          workers=2)
    assert cells.chunks[0][0] == 64  # the labels' chunks are the tiles
    np.testing.assert_array_equal(cells.compute(), expand_whole(nuclei, 5))
    assert (cells.compute() > 0).sum() > (nuclei > 0).sum()
    stored = zarr.open_array(tmp_path / "cells.zarr", mode="r")
    assert stored.attrs["blockbuster"]["expanded_by"] == 5


@pytest.mark.parametrize("distance", [-1, float("nan"), "5", True])
def test_bad_distance_says_what_to_give(tmp_path, distance):
    with pytest.raises(InvalidParameterError, match="a number >= 0"):
        expand_labels(np.zeros((8, 8), np.uint8), distance, write_to=tmp_path / "c.zarr")


def test_refuses_to_overwrite_other_data(tmp_path):
    zarr.create_array(tmp_path / "c.zarr", data=np.ones((8, 8), np.uint8))
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        expand_labels(np.zeros((8, 8), np.uint8), 2, write_to=tmp_path / "c.zarr")


def test_cli_expand_and_config_postprocess(tmp_path, capsys):
    from blockbuster.cli import main

    rng = np.random.default_rng(1)
    image = (ndimage.gaussian_filter(rng.random((90, 70)), 3) * 1000).astype(np.uint16)
    zarr.create_array(tmp_path / "img.zarr", data=image, chunks=(32, 32))
    (tmp_path / "job.toml").write_text(
        '[input]\npath = "img.zarr"\n[segmenter]\nname = "threshold"\nthreshold = 520.0\n'
        '[output]\npath = "nuclei.zarr"\n[postprocess]\nexpand = 3\n')
    assert main(["run", str(tmp_path / "job.toml")]) == 0
    assert "nuclei.expanded.zarr" in capsys.readouterr().err
    nuclei = zarr.open_array(tmp_path / "nuclei.zarr", mode="r")[:]
    assert nuclei.max() > 3
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "nuclei.expanded.zarr")[:],
                                  expand_whole(nuclei, 3))
    assert main(["expand", str(tmp_path / "nuclei.zarr"), str(tmp_path / "cells.zarr"),
                 "--distance", "6", "--tile-shape", "20,25", "--workers", "2"]) == 0
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "cells.zarr")[:],
                                  expand_whole(nuclei, 6))


def test_config_expand_without_an_output_path_fails_before_the_run(tmp_path, capsys):
    from blockbuster.cli import main

    (tmp_path / "job.toml").write_text(
        '[input]\npath = "missing.zarr"\n[segmenter]\nname = "threshold"\n'
        '[postprocess]\nexpand = 3\n')
    assert main(["run", str(tmp_path / "job.toml")]) == 1
    assert "[postprocess] expand grows the labels written to [output] path" in \
        capsys.readouterr().err
