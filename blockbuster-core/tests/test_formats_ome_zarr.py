"""OME-Zarr: the reader (NGFF 0.4/0.5, zarr v2/v3, levels, channels) and the labels writer."""

import json
import pickle
import warnings

import numpy as np
import pytest
import zarr
from scipy import ndimage

from blockbuster import tile_process
from blockbuster.builtin.ome_zarr import OmeZarrLabelsWriter, OmeZarrReader, downsample_block
from blockbuster.errors import ImageReadError, InvalidParameterError, OutputExistsError
from blockbuster.image import ImageView
from blockbuster.registry import Registry
from blockbuster.synthetic import write_image
from blockbuster.testing import assert_same_labels

VERSIONS = ["0.4", "0.5"]
UM = "micrometer"


def components(tile):
    return ndimage.label(tile > 0.6)[0]


def blobs(shape, seed=0):
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.random(shape), 2).astype(np.float32) * 4 - 1.5


CASES = {
    "2d": ("yx", (60, 70), (0.5, 0.5)),
    "3d": ("zyx", (6, 40, 50), (2.0, 0.5, 0.5)),
    "3d+c": ("czyx", (2, 6, 40, 50), (1.0, 2.0, 0.5, 0.5)),
}


def make(tmp_path, case, version, levels=2, name="image.ome.zarr"):
    axes, shape, scale = CASES[case]
    data = blobs(shape)
    path = write_image(tmp_path / name, data, axes=axes, scale=scale,
                       units={a: UM for a in axes if a != "c"},
                       channel_labels=["membrane", "nuclei"] if "c" in axes else None,
                       version=version, levels=levels, chunks=[1 if a == "c" else 16 for a in axes])
    return path, data


def label_node(path, name, *, direct=False):
    """The label node ome-zarr-py finds under ``path`` (or at ``path/labels/name``: direct)."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    start = path / "labels" / name if direct else path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for node in Reader(parse_url(str(start)))():
            if any(isinstance(s, Label) for s in node.specs) and str(node.zarr.path).rstrip(
                    "/").endswith(f"labels/{name}"):
                return node
    raise AssertionError(f"ome-zarr-py found no label node {name!r} in {path}")


# -- reader ---------------------------------------------------------------------------------
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("case", list(CASES))
def test_reader_round_trip(tmp_path, case, version):
    path, data = make(tmp_path, case, version)
    reader = Registry(autoload=False).open_image(str(path))  # picked from the path
    assert isinstance(reader, OmeZarrReader)
    axes, shape, scale = CASES[case]
    assert reader.axes == tuple(axes)
    assert reader.shape == shape and reader.dtype == data.dtype
    assert reader.scale == scale
    assert reader.units == tuple(None if a == "c" else UM for a in axes)
    assert reader.zarr_format == (3 if version == "0.5" else 2)
    region = tuple(slice(1, s - 2) for s in shape)
    np.testing.assert_array_equal(reader.read(region), data[region])
    again = pickle.loads(pickle.dumps(reader))
    np.testing.assert_array_equal(again.read(region), data[region])
    assert again.identity() == reader.identity()


@pytest.mark.parametrize("version", VERSIONS)
def test_levels_and_channels(tmp_path, version):
    path, data = make(tmp_path, "3d+c", version)
    by_label = OmeZarrReader(path, channel="nuclei", level=1)
    assert by_label.axes == ("z", "y", "x")
    assert by_label.shape == (6, 20, 25)
    assert by_label.scale == (2.0, 1.0, 1.0)
    assert by_label.chunks == (6, 16, 16)
    np.testing.assert_array_equal(by_label.read((slice(None),) * 3), data[1, :, ::2, ::2])
    by_index = OmeZarrReader(path, channel=0)
    np.testing.assert_array_equal(by_index.read((slice(0, 2), slice(0, 5), slice(0, 5))),
                                  data[0, :2, :5, :5])
    assert OmeZarrReader(path, channel="1").channel_index == 1
    assert by_index.identity() != OmeZarrReader(path, channel=1).identity()
    with pytest.raises(InvalidParameterError, match="'membrane', 'nuclei'"):
        OmeZarrReader(path, channel="dapi")
    with pytest.raises(InvalidParameterError, match="2 channels"):
        OmeZarrReader(path, channel=2)
    with pytest.raises(InvalidParameterError, match="2 resolution levels"):
        OmeZarrReader(path, level=5)


def test_channel_without_c_axis_and_not_ome(tmp_path):
    path, _ = make(tmp_path, "2d", "0.5")
    with pytest.raises(InvalidParameterError, match="no 'c' axis"):
        OmeZarrReader(path, channel=0)
    plain = tmp_path / "plain.zarr"
    zarr.create_array(store=str(plain), data=np.zeros((4, 4)))
    with pytest.raises(ImageReadError, match="not an OME-Zarr"):
        OmeZarrReader(plain)
    assert Registry(autoload=False).open_image(str(plain)).__class__.__name__ == "ArrayReader"


def test_global_transform_old_axes_and_bioformats2raw(tmp_path):
    """bioformats2raw layout (series 0), NGFF 0.3 string axes, multiscale-level transforms."""
    root = zarr.open_group(str(tmp_path / "b2r.zarr"), mode="w", zarr_format=2)
    root.attrs["bioformats2raw.layout"] = 3
    series = root.create_group("0")
    data = blobs((3, 30, 40))
    series.create_array("0", data=data, chunks=(1, 16, 16))
    series.attrs["multiscales"] = [{
        "version": "0.4", "axes": ["z", "y", "x"],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, 2.0, 2.0]},
            {"type": "translation", "translation": [0.0, 1.0, 1.0]}]}],
        "coordinateTransformations": [{"type": "scale", "scale": [3.0, 0.5, 0.5]}],
    }]
    reader = Registry(autoload=False).open_image(str(tmp_path / "b2r.zarr"))
    assert isinstance(reader, OmeZarrReader)
    assert reader.axes == ("z", "y", "x")
    assert reader.scale == (3.0, 1.0, 1.0)
    assert reader.translation == (0.0, 0.5, 0.5)
    assert reader.units == (None, None, None)
    np.testing.assert_array_equal(reader.read((slice(0, 1),) * 3), data[:1, :1, :1])


def test_reader_reads_only_the_chunks_of_a_region(tmp_path, monkeypatch):
    import itertools

    from blockbuster.builtin.zarr_chunks import ChunkFiles

    path, _ = make(tmp_path, "3d", "0.5", levels=1)
    reader = OmeZarrReader(path)
    chunks = reader._source().chunks
    seen = []
    original = ChunkFiles._read_chunk

    def spy(self, position, region, out):
        seen.append(position)
        return original(self, position, region, out)

    monkeypatch.setattr(ChunkFiles, "_read_chunk", spy)
    region = (slice(0, 2), slice(0, 8), slice(0, 8))
    reader.read(region)
    under = itertools.product(*(range(r.start // c, -(-r.stop // c))
                                for r, c in zip(region, chunks)))
    assert sorted(seen) == sorted(under) and seen


# -- writer ---------------------------------------------------------------------------------
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("case", list(CASES))
def test_labels_written_into_the_image(tmp_path, case, version):
    path, data = make(tmp_path, case, version)
    axes, shape, scale = CASES[case]
    before = {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}
    options = {"channel": "nuclei"} if "c" in axes else {}
    tile = tuple(s if a == "z" else 16 for a, s in zip(axes, shape) if a != "c")
    labels = tile_process(str(path), components, reader_options=options, tile_shape=tile,
                          overlap=2, writer="ome-zarr", write_to=str(path),
                          writer_options={"name": "cells"}, compute=True)
    plane = data[1] if "c" in axes else data
    assert_same_labels(components(plane), labels)
    # the image data and metadata are untouched, bar the new labels group listing
    for file, content in before.items():
        if file.name not in ("zarr.json", ".zattrs") or file.parent != path:
            assert file.read_bytes() == content, file
    node = label_node(path, "cells")
    spatial = tuple(s for s, a in zip(shape, axes) if a != "c")
    kept = tuple(sc for sc, a in zip(scale, axes) if a != "c")
    assert node.data[0].shape == spatial
    assert len(node.data) >= 2
    for level, array in enumerate(node.data):
        factors = [2 if a in "yx" else 1 for a in axes if a != "c"]
        assert array.shape == tuple(-(-s // f ** level) for s, f in zip(spatial, factors))
        transform = node.metadata["coordinateTransformations"][level][0]
        assert transform["scale"] == pytest.approx([s * f ** level for s, f in zip(kept, factors)])
        np.testing.assert_array_equal(
            np.asarray(array), labels[tuple(slice(None, None, f ** level) for f in factors)])
    assert [a["name"] for a in node.metadata["axes"]] == [a for a in axes if a != "c"]
    assert all(a.get("unit") == UM for a in node.metadata["axes"])
    group = zarr.open_group(str(path / "labels"), mode="r")
    ome = group.attrs.get("ome", group.attrs.asdict())
    assert ome["labels"] == ["cells"]
    assert zarr.open_group(str(path / "labels" / "cells")).metadata.zarr_format == (
        3 if version == "0.5" else 2)


def test_existing_labels_need_overwrite(tmp_path):
    path, _ = make(tmp_path, "2d", "0.5")
    kwargs = dict(tile_shape=(32, 32), overlap=2, writer="ome-zarr", write_to=str(path))
    tile_process(str(path), components, writer_options={"name": "cells"}, **kwargs)
    tile_process(str(path), components, writer_options={"name": "cells"}, **kwargs)  # same job
    other = lambda tile: ndimage.label(tile > 0.3)[0]  # noqa: E731
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        tile_process(str(path), other, writer_options={"name": "cells"}, **kwargs)
    tile_process(str(path), other, writer_options={"name": "nuclei"}, **kwargs)
    result = tile_process(str(path), other, writer_options={"name": "cells"}, overwrite=True,
                          **kwargs)
    group = zarr.open_group(str(path / "labels"), mode="r")
    assert group.attrs["ome"]["labels"] == ["cells", "nuclei"]
    assert result.max().compute() > 0
    np.testing.assert_array_equal(OmeZarrReader(path).read((slice(None),) * 2),
                                  zarr.open_array(str(path / "0"))[:])


def test_never_writes_over_image_or_plain_zarr(tmp_path):
    path, _ = make(tmp_path, "2d", "0.5")
    with pytest.raises(OutputExistsError, match="replace the input"):
        OmeZarrLabelsWriter(path, name="cells").check("x", str(path / "labels" / "cells"))
    plain = tmp_path / "plain.zarr"
    zarr.create_array(store=str(plain), data=np.ones((4, 4)))
    with pytest.raises(OutputExistsError, match="not an OME-Zarr image"):
        OmeZarrLabelsWriter(plain).check("x", None)
    assert zarr.open_array(str(plain))[:].sum() == 16


@pytest.mark.parametrize("version", VERSIONS)
def test_new_ome_zarr_takes_the_image_metadata(tmp_path, version):
    path, data = make(tmp_path, "3d+c", version)
    out = tmp_path / "labels.ome.zarr"
    labels = tile_process(str(path), components, reader_options={"channel": 1, "level": 1},
                          tile_shape=(6, 16, 16), overlap=2, writer="ome-zarr", write_to=str(out),
                          writer_options={"name": "nuclei", "image": str(path)}, compute=True)
    assert labels.shape == (6, 20, 25)
    node = label_node(out, "nuclei", direct=True)
    assert node.metadata["coordinateTransformations"][0][0]["scale"] == [2.0, 1.0, 1.0]
    assert path.joinpath("labels").exists() is False  # the source is left alone
    attrs = zarr.open_group(str(out / "labels" / "nuclei")).attrs.asdict()
    label_meta = attrs["ome"]["image-label"] if version == "0.5" else attrs["image-label"]
    assert (out / "labels" / "nuclei" / label_meta["source"]["image"]).resolve() == path.resolve()


def test_new_ome_zarr_without_image_and_reader_metadata(tmp_path):
    image = blobs((40, 50))
    out = tmp_path / "new.ome.zarr"
    tile_process(image, components, tile_shape=(16, 16), overlap=2, writer="ome-zarr",
                 write_to=str(out), writer_options={"name": "cells", "levels": 3,
                                                    "downsample": "mode"})
    node = label_node(out, "cells", direct=True)
    assert [a.shape for a in node.data] == [(40, 50), (20, 25), (10, 13)]
    level0, level1 = (np.asarray(a) for a in node.data[:2])
    np.testing.assert_array_equal(level1, downsample_block(level0, (2, 2), "mode"))
    # set_source: the core hands the writer the run's image view
    path, _ = make(tmp_path, "3d+c", "0.4")
    writer = OmeZarrLabelsWriter(tmp_path / "other.ome.zarr", name="cells", zarr_format=2)
    writer.set_source(ImageView.open(OmeZarrReader(path), channel_axis=0))
    writer.create((6, 40, 50), (2, 16, 16), np.uint32, "fp")
    writer.write((slice(0, 2), slice(0, 16), slice(0, 16)), np.ones((2, 16, 16), np.uint32))
    writer.finish(n_objects=1)
    attrs = json.loads((tmp_path / "other.ome.zarr/labels/cells/.zattrs").read_text())
    scales = [d["coordinateTransformations"][0]["scale"] for d in
              attrs["multiscales"][0]["datasets"]]
    assert scales == [[2.0, 0.5, 0.5], [2.0, 1.0, 1.0], [2.0, 2.0, 2.0]]
    assert attrs["image-label"]["version"] == "0.4"
    assert attrs["blockbuster"]["complete"] is True
    assert pickle.loads(pickle.dumps(writer)).open().shape == (6, 40, 50)


def test_mode_downsampling():
    block = np.array([[1, 1, 2, 0], [1, 3, 0, 0], [0, 0, 5, 5], [0, 4, 5, 0]], np.uint32)
    np.testing.assert_array_equal(downsample_block(block, (2, 2), "mode"), [[1, 0], [0, 5]])
    np.testing.assert_array_equal(downsample_block(block, (2, 2), "nearest"), [[1, 2], [0, 5]])
    odd = np.arange(1, 16, dtype=np.uint32).reshape(3, 5)
    assert downsample_block(odd, (2, 2), "mode").shape == (2, 3)
    np.testing.assert_array_equal(downsample_block(odd, (1, 1), "mode"), odd)


@pytest.mark.slow
def test_worker_processes_read_and_write(tmp_path):
    """Reader and writer pickle to worker processes (labels written from the workers)."""
    path, data = make(tmp_path, "3d+c", "0.5")
    labels = tile_process(str(path), components, reader_options={"channel": "nuclei"},
                          tile_shape=(6, 20, 25), overlap=2, executor="processes", workers=2,
                          writer="ome-zarr", write_to=str(path),
                          writer_options={"name": "cells"}, compute=True)
    assert_same_labels(components(data[1]), labels)
    assert len(label_node(path, "cells").data) == 2
