"""Whole chunks written straight to their files are the bytes zarr itself would write."""

import numpy as np
import pytest
import zarr
from zarr.codecs import (
    BloscCodec,
    BytesCodec,
    Crc32cCodec,
    GzipCodec,
    TransposeCodec,
    ZstdCodec,
)

from blockbuster.builtin.zarr_chunks import ChunkFiles
from blockbuster.testing import store_digest

SHAPE, CHUNKS = (100, 90), (32, 40)  # edge chunks on both axes
# regions of whole chunks: one chunk, a row of three (the last at the edge), 2 x 2 at the corner
REGIONS = [(slice(0, 32), slice(0, 40)), (slice(32, 64), slice(0, 90)),
           (slice(64, 100), slice(40, 90))]


def labels_for(region, dtype):
    rng = np.random.default_rng(region[0].start * 7 + region[1].start)
    shape = tuple(s.stop - s.start for s in region)
    blobs = np.repeat(np.repeat(rng.integers(0, 50, (shape[0], -(-shape[1] // 5))), 1, 0), 5, 1)
    return blobs[:, : shape[1]].astype(dtype)


@pytest.mark.parametrize("zarr_format, compressors, dtype", [
    (3, (BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle"),), np.uint32),  # the default
    (3, (BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"),), np.uint64),
    (3, (BloscCodec(cname="lz4", clevel=1, shuffle="shuffle"),), np.uint16),
    (3, None, np.uint32),  # no compressor
    (3, (ZstdCodec(level=0),), np.uint16),  # zarr's default for v3 images
    (3, (ZstdCodec(level=3, checksum=True),), np.uint32),
    (3, (GzipCodec(level=5),), np.uint8),
    (2, "auto", np.uint32),  # what the v2 writer asks for
    (2, None, np.uint64),
])
def test_chunk_files_are_the_bytes_zarr_writes(tmp_path, zarr_format, compressors, dtype):
    made = {}
    for how in ("zarr", "files"):
        array = zarr.create_array(str(tmp_path / f"{how}.zarr"), shape=SHAPE, chunks=CHUNKS,
                                  dtype=dtype, fill_value=0, zarr_format=zarr_format,
                                  compressors=compressors)
        files = ChunkFiles.of(array)
        assert files is not None
        for region in REGIONS:
            labels = labels_for(region, dtype)
            if how == "zarr":
                array[region] = labels
            else:
                assert files.write(region, labels)
        made[how] = array
    assert store_digest(tmp_path / "files.zarr") == store_digest(tmp_path / "zarr.zarr")
    back = zarr.open_array(str(tmp_path / "files.zarr"), mode="r")[...]
    np.testing.assert_array_equal(back, made["zarr"][...])
    for region in REGIONS:
        np.testing.assert_array_equal(back[region], labels_for(region, dtype))


@pytest.mark.parametrize("region", [
    (slice(16, 48), slice(0, 40)),   # starts inside a chunk
    (slice(0, 20), slice(0, 40)),    # ends inside a chunk that is not the last
    (slice(64, 99), slice(0, 40)),   # ends inside the last chunk, short of the array's edge
])
def test_a_region_not_made_of_whole_chunks_is_left_to_zarr(tmp_path, region):
    array = zarr.create_array(str(tmp_path / "a.zarr"), shape=SHAPE, chunks=CHUNKS,
                              dtype=np.uint32, fill_value=0, compressors=None)
    files = ChunkFiles.of(array)
    assert not files.write(region, labels_for(region, np.uint32))
    assert not any((tmp_path / "a.zarr" / "c").rglob("*"))  # nothing written


def test_arrays_zarr_must_read_and_write_are_refused(tmp_path):
    def made(name, **options):
        return zarr.create_array(str(tmp_path / name), shape=SHAPE, dtype=np.uint32,
                                 **{"chunks": CHUNKS, **options})

    refused = [
        made("sharded.zarr", chunks=(16, 20), shards=CHUNKS),
        made("transposed.zarr", filters=[TransposeCodec(order=(1, 0))]),
        made("checksummed.zarr", compressors=[ZstdCodec(), Crc32cCodec()]),
        made("big-endian.zarr", serializer=BytesCodec(endian="big")),
        made("filtered-v2.zarr", zarr_format=2, filters=[_delta()]),
        made("fortran-v2.zarr", zarr_format=2, order="F"),
        zarr.create_array(zarr.storage.MemoryStore(), shape=SHAPE, chunks=CHUNKS,
                          dtype=np.uint32),
    ]
    assert [ChunkFiles.of(array) for array in refused] == [None] * len(refused)


def _delta():
    from numcodecs import Delta

    return Delta(dtype="<u4")


@pytest.mark.parametrize("zarr_format, compressors", [
    (3, "auto"), (3, (BloscCodec(cname="lz4", shuffle="bitshuffle"),)), (3, None),
    (2, "auto")])
def test_chunk_files_read_what_zarr_reads(tmp_path, zarr_format, compressors):
    """Regions across chunk borders, at the edges, over chunks never written (the fill value),
    into a view of a larger buffer (not contiguous) and into a contiguous one."""
    array = zarr.create_array(str(tmp_path / "image.zarr"), shape=SHAPE, chunks=CHUNKS,
                              dtype=np.uint16, fill_value=7, zarr_format=zarr_format,
                              compressors=compressors)
    values = np.random.default_rng(1).integers(0, 60000, SHAPE).astype(np.uint16)
    array[:64, :] = values[:64]  # rows 64-99 stay unwritten: no chunk files there
    expected = array[...]
    assert (expected[64:] == 7).all()
    files = ChunkFiles.of(array)
    for region in [(slice(0, 100), slice(0, 90)), (slice(10, 70), slice(35, 85)),
                   (slice(32, 64), slice(40, 80)), (slice(96, 100), slice(80, 90)),
                   (slice(5, 6), slice(0, 90))]:
        shape = tuple(r.stop - r.start for r in region)
        contiguous = np.zeros(shape, np.uint16)
        larger = np.zeros((shape[0] + 3, shape[1] + 5), np.uint16)
        for out in (contiguous, larger[1:-2, 2:-3]):
            assert files.read_into(region, out)
            np.testing.assert_array_equal(out, expected[region])
        np.testing.assert_array_equal(files.read(region), expected[region])
    stepped = (slice(0, 10, 2), slice(0, 90))  # zarr's to read
    assert not files.read_into(stepped, contiguous) and files.read(stepped) is None


def test_a_run_writes_the_same_output_as_zarr_would(tmp_path, monkeypatch):
    """End to end: the labels of a run whose output chunks go straight to their files are the
    same bytes as those of a run where zarr writes every chunk."""
    from scipy import ndimage

    from blockbuster import tile_process
    from blockbuster.builtin import zarr_writer

    image = ndimage.gaussian_filter(np.random.default_rng(5).random((150, 130)), 2)
    fn = lambda tile: ndimage.label(tile > 0.5)[0]  # noqa: E731
    tile_process(image, fn, tile_shape=(32, 32), overlap=4, write_to=tmp_path / "files.zarr")
    monkeypatch.setattr(zarr_writer.ChunkFiles, "of", classmethod(lambda cls, array: None))
    tile_process(image, fn, tile_shape=(32, 32), overlap=4, write_to=tmp_path / "zarr.zarr")
    assert store_digest(tmp_path / "files.zarr") == store_digest(tmp_path / "zarr.zarr")
    assert zarr.open_array(str(tmp_path / "files.zarr"), mode="r")[...].max() > 10


def test_selections_with_indices_and_open_slices_read_as_numpy_indexes(tmp_path):
    """What the format readers ask for: a channel picked by index, open slices, negative
    indices; anything else (steps, lists, booleans) is zarr's to read."""
    shape = (3, 50, 45)
    array = zarr.create_array(str(tmp_path / "cyx.zarr"), shape=shape, chunks=(1, 16, 20),
                              dtype=np.float32)
    values = np.random.default_rng(2).random(shape, dtype=np.float32)
    array[...] = values
    files = ChunkFiles.of(array)
    for selection in [(1, slice(None), slice(None)), (-1, slice(5, 40), slice(None, 30)),
                      (slice(None), slice(10, 11), slice(40, 99)), (0, 49, slice(None)),
                      (slice(1, 3), slice(30, 20), slice(None))]:
        got = files.read(selection)
        assert got.shape == values[selection].shape
        np.testing.assert_array_equal(got, values[selection])
    for selection in [(True, slice(None), slice(None)), ([0, 2], slice(None), slice(None)),
                      (0, slice(None, None, 2), slice(None)), (3, slice(None), slice(None)),
                      (slice(None), slice(None))]:
        assert files.read(selection) is None


def test_an_ome_zarr_channel_is_read_from_its_chunk_files(tmp_path, monkeypatch):
    """The OME-Zarr reader's tiles come from the chunk files, equal to zarr's own reads."""
    from blockbuster.builtin import zarr_chunks
    from blockbuster.builtin.ome_zarr import OmeZarrReader

    ome_zarr = pytest.importorskip("ome_zarr.writer")
    image = np.random.default_rng(4).integers(0, 999, (2, 64, 80)).astype(np.uint16)
    root = zarr.open_group(str(tmp_path / "image.ome.zarr"), mode="w")
    ome_zarr.write_image(image, root, axes="cyx", scaler=None,
                         storage_options={"chunks": (1, 32, 32)})
    reads = []
    real = zarr_chunks.ChunkFiles.read_into
    monkeypatch.setattr(zarr_chunks.ChunkFiles, "read_into",
                        lambda self, region, out: reads.append(region) or real(self, region, out))
    reader = OmeZarrReader(tmp_path / "image.ome.zarr", channel=1)
    tile = reader.read((slice(10, 50), slice(20, 80)))
    np.testing.assert_array_equal(tile, image[1, 10:50, 20:80])
    assert reads  # not zarr's indexing
