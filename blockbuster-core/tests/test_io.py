"""Inputs (zarr v2/v3 paths and groups, zarr, dask, numpy), outputs and axes."""

import dask.array as da
import numpy as np
import pytest
import zarr
from scipy import ndimage

from blockbuster import merge_tile_labels, tile_process
from blockbuster.synthetic import nuclei
from blockbuster.testing import assert_same_labels


def components(tile):
    return ndimage.label(tile > 0.5)[0]


@pytest.fixture
def image():
    return ndimage.gaussian_filter(np.random.default_rng(4).random((60, 70)), 2).astype(
        np.float32) * 2 - 0.5


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_paths_and_groups(tmp_path, image, zarr_format):
    array_path = tmp_path / "image.zarr"
    zarr.create_array(store=str(array_path), data=image, chunks=(16, 16), zarr_format=zarr_format)
    group = zarr.open_group(str(tmp_path / "group.zarr"), mode="w", zarr_format=zarr_format)
    group.create_array("raw", data=image, chunks=(20, 20))
    whole = components(image)
    for source in (str(array_path), array_path, str(tmp_path / "group.zarr"),
                   zarr.open_array(str(array_path))):
        assert_same_labels(whole, tile_process(source, components, overlap=2, compute=True))


def test_tile_shape_none_uses_the_input_chunks(tmp_path, image):
    path = tmp_path / "image.zarr"
    zarr.create_array(store=str(path), data=image, chunks=(16, 32))
    out = tmp_path / "labels.zarr"
    tile_process(str(path), components, write_to=out)
    assert zarr.open_array(str(out)).chunks == (16, 32)


def test_dask_input_and_lazy_output(tmp_path, image):
    out = tmp_path / "labels.zarr"
    result = tile_process(da.from_array(image, chunks=(25, 25)), components, write_to=out,
                          overlap=1)
    assert isinstance(result, da.Array)
    assert_same_labels(components(image), result.compute())
    assert_same_labels(components(image), zarr.open_array(str(out))[:])
    assert not (tmp_path / "labels.zarr.stage").exists()  # staging removed after success


def test_temporary_store_is_removed(image, tmp_path, monkeypatch):
    import gc
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    tile_process(image, components, tile_shape=(20, 20), compute=True)
    assert list(tmp_path.iterdir()) == []  # compute=True: gone at once
    lazy = tile_process(image, components, tile_shape=(20, 20))
    assert len(list(tmp_path.iterdir())) == 1
    assert lazy.compute().max() > 0
    del lazy
    gc.collect()
    assert list(tmp_path.iterdir()) == []  # compute=False: gone with the array


def test_channel_axis_is_handed_over_whole():
    rng = np.random.default_rng(0)
    image = ndimage.gaussian_filter(rng.random((3, 20, 40, 40)), (0, 1, 2, 2)).astype(np.float32)
    seen = []

    def fn(tile):
        seen.append(tile.shape[0])
        return ndimage.label(tile.mean(axis=0) > 0.5)[0]

    labels = tile_process(image, fn, channel_axis=0, tile_shape=(10, 16, 16), overlap=2,
                          executor="serial", compute=True)
    assert set(seen) == {3} and labels.shape == (20, 40, 40)
    assert_same_labels(fn(image), labels)


def test_per_slice_processing_of_a_stack():
    image = np.stack([nuclei((64, 64), seed=s, dtype=np.float32) for s in range(4)])
    slices = []

    def fn(tile):
        slices.append(tile.shape[0])
        return ndimage.label(tile > 0.3)[0]

    labels = tile_process(image, fn, tile_shape=(1, 64, 64), overlap=20, executor="serial",
                          compute=True)
    assert set(slices) == {1}  # int overlap gives the size-1 axis no halo
    assert_same_labels(ndimage.label(image > 0.3)[0], labels)  # slices join where they touch


def test_uint64_labels_exactly_when_the_objects_outnumber_uint32():
    """The rule itself, at its boundary (tile counts only: no 2**32-object image is made)."""
    from blockbuster.ids import encode as provisional
    from blockbuster.relabel import Relabeling

    no_edges = np.empty((0, 2), np.uint64)
    assert Relabeling(np.array([2**32 - 2, 1]), no_edges).dtype == np.uint32  # ID 2**32 - 1
    big = Relabeling(np.array([2**32 - 2, 2]), no_edges)
    assert big.n_objects == 2**32 and big.dtype == np.uint64
    assert big.table(1).lookup()[2] == 2**32  # the last ID does not fit uint32
    one_merge = np.array([[provisional(0, np.array(1))[()], provisional(1, np.array(1))[()]]])
    merged = Relabeling(np.array([2**32 - 2, 2]), one_merge)
    assert merged.n_objects == 2**32 - 1 and merged.dtype == np.uint32


def test_output_takes_the_relabeling_dtype(monkeypatch):
    """The pipeline writes the dtype the rule picks (the rule is forced here)."""
    import blockbuster.relabel as relabel

    monkeypatch.setattr(relabel.Relabeling, "dtype", property(lambda self: np.dtype(np.uint64)))
    labels = tile_process(np.eye(8, dtype=np.float32), components, tile_shape=(4, 4),
                          compute=True)
    assert labels.dtype == np.uint64


def test_merge_tile_labels(tmp_path):
    per_tile = np.zeros((6, 12), np.int32)
    per_tile[2, 1:4] = 5         # tile 0
    per_tile[2, 4:8] = 5         # tile 1, touching tile 0's object
    per_tile[2, 9:11] = 5        # tile 2, separate
    per_tile[4, 6:8] = 9         # tile 1, touching tile 2's diagonal neighbour
    per_tile[5, 8] = 1           # tile 2
    path = tmp_path / "tiles.zarr"
    zarr.create_array(store=str(path), data=per_tile, chunks=(6, 4))
    merged = merge_tile_labels(str(path), compute=True)
    expected = ndimage.label(per_tile > 0, structure=np.ones((3, 3)))[0]
    assert_same_labels(expected, merged)


def test_progress_bar_names_the_stages(capsys, image):
    tile_process(image, components, tile_shape=(20, 20), progress=True, compute=True)
    err = capsys.readouterr().err
    assert "segment" in err and "merge" in err and "relabel" in err


def test_a_zero_d_input_is_a_typed_error():
    from blockbuster.errors import InvalidParameterError

    with pytest.raises(InvalidParameterError, match="0-D"):
        tile_process(np.float32(3.0), components, compute=True)
    with pytest.raises(InvalidParameterError, match="leaves no spatial axis"):
        tile_process(np.zeros(5, np.float32), components, channel_axis=0, compute=True)


def test_the_image_view_is_the_spatial_side_of_the_reader():
    from blockbuster.builtin.arrays import ArrayReader
    from blockbuster.image import ImageView

    reader = ArrayReader(zarr.create_array(store={}, shape=(3, 40, 50), chunks=(3, 16, 16),
                                           dtype="u2"), axes=("c", "y", "x"))
    view = ImageView.open(reader)  # the "c" axis is the channel axis
    assert (view.channel_axis, view.shape, view.chunks, view.axes) == (0, (40, 50), (16, 16),
                                                                        ("y", "x"))
    assert view.read((slice(0, 4), slice(0, 5))).shape == (3, 4, 5) and view.channels == 3
    last = ImageView.open(ArrayReader(np.zeros((40, 50, 2))), channel_axis=-1)
    assert (last.channel_axis, last.shape, last.axes) == (2, (40, 50), None)
    assert ImageView.open(ArrayReader(np.zeros((4, 5)))).metadata["scale"] is None


def test_provisional_ids_round_trip():
    from blockbuster.ids import MAX_LOCAL_LABELS, encode, first_of_tiles, local_of, tile_of

    tiles = np.array([0, 1, 7, 2**20])
    local = np.array([1, MAX_LOCAL_LABELS, 5, 3])
    ids = encode(tiles, local)
    assert ids.dtype == np.uint64
    assert np.array_equal(tile_of(ids), tiles) and np.array_equal(local_of(ids), local)
    assert np.all(first_of_tiles(tiles) < ids) and np.all(ids < first_of_tiles(tiles + 1))


def test_a_zarr_output_records_the_inputs_axes_and_physical_scale(tmp_path, image):
    """So a viewer opening the labels alone places them on the image (napari's reader does)."""
    from blockbuster.synthetic import write_image

    source = write_image(tmp_path / "in.ome.zarr", image, axes="yx", scale=(0.5, 0.25),
                         units={"y": "micrometer", "x": "micrometer"})
    tile_process(str(source), components, tile_shape=(20, 20), write_to=tmp_path / "out.zarr")
    recorded = zarr.open_array(str(tmp_path / "out.zarr"), mode="r").attrs["blockbuster"]
    assert recorded["complete"] is True
    assert recorded["source"]["axes"] == ["y", "x"]
    assert recorded["source"]["scale"] == [0.5, 0.25]
    assert recorded["source"]["units"] == ["micrometer", "micrometer"]
    tile_process(image, components, tile_shape=(20, 20), write_to=tmp_path / "plain.zarr")
    assert "scale" not in zarr.open_array(str(tmp_path / "plain.zarr")).attrs["blockbuster"].get(
        "source", {})  # an array knows no scale: none is made up


def test_a_function_writing_into_its_tile_leaves_the_numpy_input_unchanged(image):
    def shifted_components(tile):
        tile -= 0.5  # in place, as normalisation code often does
        return ndimage.label(tile > 0)[0]

    before = image.copy()
    labels = tile_process(image, shifted_components, tile_shape=(32, 32), overlap=8,
                          compute=True)
    np.testing.assert_array_equal(image, before)
    assert_same_labels(labels, components(before))
