"""Bad input gets a typed error naming the problem and the fix, and loses nothing written."""

import numpy as np
import pytest
import zarr

from blockbuster import tile_process
from blockbuster.errors import (
    BlockbusterError,
    ImageReadError,
    InvalidParameterError,
    NotPicklableError,
    OutputExistsError,
    TileFunctionError,
)

IMAGE = np.arange(64 * 64, dtype=np.float32).reshape(64, 64) % 7


def label_gt3(tile):
    return (tile > 3).astype(np.int32)


@pytest.mark.parametrize(
    "output, message",
    [
        (lambda t: None, "returned None"),
        (lambda t: np.zeros((3, 3), np.int32), "returned shape (3, 3)"),
        (lambda t: t.astype(np.float32), "returned dtype float32"),
        (lambda t: -np.ones(t.shape, np.int32), "negative labels"),
        (lambda t: (np.zeros(t.shape, np.int32), {}), "returned a tuple"),
    ],
)
def test_bad_function_output_names_the_tile(output, message):
    with pytest.raises(TileFunctionError) as error:
        tile_process(IMAGE, output, tile_shape=(32, 32), executor="serial")
    assert message in str(error.value)
    assert "tile 0 at [0:32, 0:32]" in str(error.value)


def test_function_raising_is_chained_with_the_tile():
    def broken(tile):
        raise KeyError("model missing")

    with pytest.raises(TileFunctionError) as error:
        tile_process(IMAGE, broken, tile_shape=(32, 32), executor="serial")
    assert "KeyError" in str(error.value) and "tile 0" in str(error.value)
    assert isinstance(error.value.__cause__, KeyError)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"tile_shape": (32,)}, "has 1 axes but the image has 2"),
        ({"tile_shape": (0, 32)}, "positive integer"),
        ({"tile_shape": (-4, 32)}, "positive integer"),
        ({"tile_shape": "big"}, "use a tuple"),
        ({"tile_shape": (32, 32), "overlap": -1}, "negative"),
        ({"tile_shape": (32, 32), "overlap": 32}, "not smaller than the tile size"),
        ({"tile_shape": (32, 32), "overlap": (1, 2, 3)}, "one per spatial axis"),
        ({"tile_shape": (32, 32), "merge": "glue"}, "use one of"),
        ({"tile_shape": (32, 32), "overlap": 0, "merge": "overlap"}, "overlap is 0"),
        ({"tile_shape": (32, 32), "channel_axis": 5}, "out of range"),
    ],
)
def test_bad_parameters(kwargs, message):
    with pytest.raises(InvalidParameterError, match=message):
        tile_process(IMAGE, label_gt3, executor="serial", **kwargs)


def test_path_that_is_not_an_array(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ImageReadError, match="no reader accepts"):
        tile_process(str(tmp_path / "notes.txt"), label_gt3)
    empty = tmp_path / "empty.zarr"
    zarr.open_group(str(empty), mode="w")
    with pytest.raises(ImageReadError, match="holds no array"):
        tile_process(str(empty), label_gt3)


def test_existing_output_is_refused_and_kept(tmp_path):
    out = tmp_path / "labels.zarr"
    zarr.create_array(store=str(out), data=np.full((8, 8), 42, np.uint8))
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        tile_process(IMAGE, label_gt3, tile_shape=(32, 32), write_to=out)
    assert (zarr.open_array(str(out))[:] == 42).all()  # nothing lost
    labels = tile_process(IMAGE, label_gt3, tile_shape=(32, 32), write_to=out, overwrite=True,
                          compute=True)
    assert labels.shape == IMAGE.shape


def test_rerunning_the_same_job_into_its_output_is_allowed(tmp_path):
    out = tmp_path / "labels.zarr"
    first = tile_process(IMAGE, label_gt3, tile_shape=(32, 32), write_to=out, compute=True)
    second = tile_process(IMAGE, label_gt3, tile_shape=(32, 32), write_to=out, compute=True)
    assert np.array_equal(first, second)


def test_output_over_the_input_is_refused(tmp_path):
    path = tmp_path / "image.zarr"
    zarr.create_array(store=str(path), data=IMAGE, chunks=(32, 32))
    with pytest.raises(OutputExistsError, match="never overwrites image data"):
        tile_process(str(path), label_gt3, write_to=path, overwrite=True)
    assert np.array_equal(zarr.open_array(str(path))[:], IMAGE)


def test_unpicklable_function_for_processes():
    import threading

    lock = threading.Lock()

    def holds_a_lock(tile):
        with lock:
            return label_gt3(tile)

    with pytest.raises(NotPicklableError, match="executor='threads'"):
        tile_process(IMAGE, holds_a_lock, tile_shape=(32, 32), executor="processes")
    labels = tile_process(IMAGE, holds_a_lock, tile_shape=(32, 32), executor="threads",
                          compute=True)
    assert labels.max() >= 1


def test_errors_share_one_base_and_builtin_categories():
    assert issubclass(TileFunctionError, BlockbusterError)
    assert issubclass(InvalidParameterError, ValueError)
    assert issubclass(OutputExistsError, FileExistsError)


def test_boolean_mask_means_foreground_components():
    image = np.zeros((20, 20), np.float32)
    image[2:5, 2:5] = 1
    image[10:15, 10:18] = 1
    labels = tile_process(image, lambda t: t > 0.5, tile_shape=(8, 8), compute=True)
    assert labels.max() == 2
    assert len(np.unique(labels[10:15, 10:18])) == 1
