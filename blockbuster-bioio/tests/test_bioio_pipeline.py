"""The ``bioio`` reader end to end: labels from a real multi-scene OME-TIFF and a zipped
OME-Zarr equal the same pipeline on the equivalent numpy array, whichever way the reader is
chosen (config by name, ``reader="bioio"``, automatic pick); physical sizes reach the OME-Zarr
labels and the object table."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from blockbuster import tile_process
from blockbuster.cli import main
from blockbuster.registry import Registry
from blockbuster.table import read_table
from blockbuster.testing import assert_same_labels

pytest.importorskip("bioio_ome_tiff")

THRESHOLD = {"threshold": 1.0}
CONFIG = """
[input]
path = "{path}"
reader = "bioio"
scene = "Image:0"
channel = "nuclei"
t = 1

[segmenter]
name = "threshold"
threshold = 1.0

[tiling]
tile_shape = [3, 32, 32]
overlap = [0, 4, 4]

[executor]
name = "threads"
workers = 2

[output]
path = "{out}"
writer = "ome-zarr"
name = "nuclei"
table = "{table}"
"""


def numpy_run(array, tile_shape, overlap):
    """The same pipeline on the equivalent in-memory array."""
    return tile_process(array, "threshold", segmenter_options=THRESHOLD, tile_shape=tile_shape,
                        overlap=overlap, executor="threads", workers=2, compute=True)


def test_config_by_name_equals_numpy_and_carries_the_physical_scale(ome_tiff, tmp_path, capsys):
    out, table = tmp_path / "labels.ome.zarr", tmp_path / "objects.csv"
    config = tmp_path / "run.toml"
    config.write_text(CONFIG.format(path=ome_tiff.path, out=out, table=table))
    assert main(["run", str(config)]) == 0, capsys.readouterr().err

    labels = np.asarray(zarr.open_array(str(out / "labels" / "nuclei" / "0"), mode="r"))
    expected = numpy_run(ome_tiff.scenes[0][1, 1], (3, 32, 32), (0, 4, 4))  # t=1, channel "nuclei"
    assert labels.shape == (3, 64, 72) and expected.max() > 5
    assert_same_labels(expected, labels)

    attrs = json.loads((out / "labels" / "nuclei" / "zarr.json").read_text())["attributes"]
    multiscale = attrs["ome"]["multiscales"][0]
    assert [a["name"] for a in multiscale["axes"]] == ["z", "y", "x"]
    assert [a.get("unit") for a in multiscale["axes"]] == ["micrometer"] * 3
    level0 = multiscale["datasets"][0]["coordinateTransformations"][0]
    assert level0 == {"type": "scale", "scale": [2.0, 0.5, 0.5]}

    objects = read_table(table)
    assert len(objects) == expected.max()
    np.testing.assert_allclose(objects["centroid_z_um"], objects["centroid_z"] * 2.0)
    np.testing.assert_allclose(objects["centroid_x_um"], objects["centroid_x"] * 0.5)


@pytest.mark.parametrize("selection", [
    {"scene": 1, "channel": "gfp"},
    {"scene": "Image:1", "channel": 1},
])
def test_scene_and_channel_by_index_or_name(ome_tiff, selection):
    labels = tile_process(ome_tiff.path, "threshold", segmenter_options=THRESHOLD,
                          reader="bioio", reader_options=selection, tile_shape=(1, 1, 16, 16),
                          overlap=4, executor="threads", workers=2, compute=True)
    expected = numpy_run(ome_tiff.scenes[1][1][None, None], (1, 1, 16, 16), 4)  # t, z of size 1
    assert expected.max() > 3
    assert_same_labels(expected, labels)


def test_channel_axis_from_the_file_all_channels_to_fn(ome_tiff):
    """Without ``channel=``, the ``c`` axis is the channel axis, like OME-Zarr input: fn sees
    every channel of a tile; tile shapes by axis name."""
    def brightest_channel_mask(tile):
        assert tile.shape[1] == 2  # t, c, z, y, x: both channels of the tile
        return tile.max(axis=1) > 1.0

    labels = tile_process(ome_tiff.path, brightest_channel_mask, reader="bioio",
                          tile_shape={"t": 1, "z": 3, "y": 32, "x": 32}, overlap={"y": 4, "x": 4},
                          executor="threads", workers=2, compute=True)
    data = ome_tiff.scenes[0]
    expected = tile_process(data, brightest_channel_mask, channel_axis=1,
                            tile_shape=(1, 3, 32, 32), overlap=(0, 0, 4, 4), executor="threads",
                            workers=2, compute=True)
    assert labels.shape == (2, 3, 64, 72) and expected.max() > 5
    assert_same_labels(expected, labels)


def test_zipped_ome_zarr_is_picked_automatically_and_equals_numpy(zipped_ome_zarr):
    path, _, data = zipped_ome_zarr
    assert Registry().pm.hook.pick_reader(source=path) == "bioio"
    labels = tile_process(path, "threshold", segmenter_options=THRESHOLD,
                          reader_options={"channel": "actin"}, tile_shape=(1, 2, 16, 16),
                          overlap=(0, 0, 4, 4), executor="threads", workers=2, compute=True)
    expected = numpy_run(data[1][None], (1, 2, 16, 16), (0, 0, 4, 4))  # bioio adds a t axis
    assert expected.max() > 3
    assert_same_labels(expected, labels)


def test_level_through_bioio_equals_the_core_ome_zarr_reader(zipped_ome_zarr):
    _, folder, _ = zipped_ome_zarr
    options = {"level": 1, "channel": "dna"}
    through_bioio = tile_process(folder, "threshold", segmenter_options=THRESHOLD,
                                 reader="bioio", reader_options=options, tile_shape=(1, 2, 8, 8),
                                 overlap=(0, 0, 2, 2), executor="serial", compute=True)
    core = tile_process(folder, "threshold", segmenter_options=THRESHOLD, reader="ome-zarr",
                        reader_options=options, tile_shape=(2, 8, 8), overlap=(0, 2, 2),
                        executor="serial", compute=True)
    assert through_bioio.shape == (1, 2, 24, 28) and core.max() > 0
    assert_same_labels(core, through_bioio[0])
