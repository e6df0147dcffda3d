"""End to end: a multi-channel 3D OME-Zarr with physical scale, run from a TOML config through
the CLI, labels written into the image and opened with ome-zarr-py at the right scale."""

import warnings

import numpy as np
import pytest
import zarr
from scipy import ndimage

from blockbuster import tile_process
from blockbuster.builtin.ome_zarr import OmeZarrReader
from blockbuster.cli import main
from blockbuster.synthetic import write_image
from blockbuster.testing import assert_same_labels

pytest.importorskip("ome_zarr")

SCALE = (1.0, 2.0, 0.5, 0.5)  # c, z, y, x
UM = "micrometer"


def make_image(tmp_path, version="0.5"):
    rng = np.random.default_rng(7)
    data = np.stack([
        ndimage.gaussian_filter(rng.random((8, 64, 72)), 2),
        ndimage.gaussian_filter(rng.random((8, 64, 72)), 2),
    ]).astype(np.float32)
    data = (data - data.mean()) / data.std()
    path = write_image(tmp_path / "cells.ome.zarr", data, axes="czyx", scale=SCALE,
                       units={"z": UM, "y": UM, "x": UM}, channel_labels=["membrane", "nuclei"],
                       version=version, levels=2, chunks=(1, 8, 32, 32))
    return path, data


def open_labels_with_ome_zarr_py(path, name):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nodes = list(Reader(parse_url(str(path)))())
    found = [n for n in nodes if any(isinstance(s, Label) for s in n.specs)]
    assert [str(n.zarr.path).rstrip("/").split("/")[-1] for n in found] == [name]
    return found[0]


CONFIG = """
[input]
path = "cells.ome.zarr"
reader = "ome-zarr"
channel = "nuclei"
level = 0

[segmenter]
name = "threshold"
threshold = 1.0

[tiling]
tile_shape = [8, 32, 32]
overlap = 4

[executor]
name = "threads"
workers = 2

[output]
path = "cells.ome.zarr"
writer = "ome-zarr"
name = "nuclei"
"""


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_config_to_ome_zarr_labels(tmp_path, version, capsys):
    path, data = make_image(tmp_path, version)
    config = tmp_path / "run.toml"
    config.write_text(CONFIG)
    assert main(["run", str(config)]) == 0, capsys.readouterr().err
    node = open_labels_with_ome_zarr_py(path, "nuclei")
    labels = np.asarray(node.data[0])
    assert labels.shape == (8, 64, 72)
    assert_same_labels(ndimage.label(data[1] > 1.0)[0], labels)
    scales = [t[0]["scale"] for t in node.metadata["coordinateTransformations"]]
    assert scales[0] == [2.0, 0.5, 0.5]  # the image's z, y, x scale at level 0
    assert scales[1] == [2.0, 1.0, 1.0]
    assert [np.asarray(d).shape for d in node.data] == [(8, 64, 72), (8, 32, 36), (8, 16, 18)]
    assert [a.get("unit") for a in node.metadata["axes"]] == [UM] * 3
    # running it again is the same job (no overwrite needed); the image is unchanged
    assert main(["run", str(config)]) == 0
    np.testing.assert_array_equal(zarr.open_array(str(path / "0"))[:], data)


# -- core wiring: axes from the reader (done), table and writer metadata (wired) --
def test_channel_axis_from_reader_axes(tmp_path):
    """(a) A reader with a ``c`` axis sets ``channel_axis`` automatically."""
    path, data = make_image(tmp_path)
    seen = []

    def fn(tile):
        seen.append(tile.shape)
        return ndimage.label(tile[1] > 1.0)[0]

    labels = tile_process(str(path), fn, tile_shape=(8, 32, 32), overlap=4, compute=True,
                          executor="serial")
    assert labels.shape == (8, 64, 72)
    assert all(shape[0] == 2 for shape in seen)


def test_tile_shape_and_overlap_by_axis_name(tmp_path):
    """(b) ``tile_shape``/``overlap`` as dicts keyed by axis name."""
    path, data = make_image(tmp_path)
    labels = tile_process(str(path), lambda t: ndimage.label(t > 1.0)[0],
                          reader_options={"channel": "nuclei"},
                          tile_shape={"z": 8, "y": 32, "x": 32}, overlap={"z": 0, "y": 4, "x": 4},
                          compute=True)
    assert_same_labels(ndimage.label(data[1] > 1.0)[0], labels)


def test_table_from_the_run(tmp_path):
    """``table=``: the relabel pass collects per-tile statistics, the parent writes the table."""
    from blockbuster.table import read_table

    path, data = make_image(tmp_path)
    out = tmp_path / "objects.csv"
    labels = tile_process(str(path), lambda t: ndimage.label(t > 1.0)[0],
                          reader_options={"channel": "nuclei"}, tile_shape=(8, 32, 32),
                          overlap=4, table=str(out), compute=True)
    table = read_table(out)
    assert len(table) == labels.max()
    assert table["voxels"].sum() == (labels > 0).sum()
    assert "centroid_x_um" in table


def test_writer_gets_the_reader_metadata(tmp_path):
    """The core hands the reader to the writer (``set_source``): a new OME-Zarr written from
    level 1 of an image takes level 1's scale without ``image=``."""
    path, _ = make_image(tmp_path)
    out = tmp_path / "labels.ome.zarr"
    tile_process(str(path), lambda t: ndimage.label(t > 1.0)[0],
                 reader_options={"channel": "nuclei", "level": 1}, tile_shape=(8, 16, 16),
                 overlap=2, writer="ome-zarr", write_to=str(out),
                 writer_options={"name": "nuclei"})
    attrs = zarr.open_group(str(out / "labels" / "nuclei")).attrs["ome"]
    scale = attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert scale == list(OmeZarrReader(path, channel=1, level=1).scale) == [2.0, 1.0, 1.0]


def test_config_table_and_relative_image(tmp_path, capsys):
    """``[output] table`` and ``image`` are paths relative to the config file, like ``path``."""
    pytest.importorskip("pyarrow")
    from blockbuster.table import read_table

    path, data = make_image(tmp_path)
    config = tmp_path / "run.toml"
    config.write_text(CONFIG.replace('path = "cells.ome.zarr"\nwriter', 'path = "new.ome.zarr"\n'
                                     'image = "cells.ome.zarr"\ntable = "objects.parquet"\nwriter'))
    assert main(["run", str(config)]) == 0, capsys.readouterr().err
    table = read_table(tmp_path / "objects.parquet")
    labels = np.asarray(open_labels_with_ome_zarr_py(tmp_path / "new.ome.zarr/labels/nuclei",
                                                     "nuclei").data[0])
    assert len(table) == labels.max()
    assert table["centroid_z_um"].max() <= 2.0 * 7
    assert (table["voxels"].to_numpy() == np.bincount(labels.ravel())[1:]).all()
