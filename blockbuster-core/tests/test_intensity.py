"""Intensity columns of the object table: merged tile by tile == regionprops on the whole image."""

import itertools
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from scipy import ndimage
from skimage.measure import regionprops_table

from blockbuster import tile_process
from blockbuster.builtin.arrays import ArrayReader
from blockbuster.errors import IntensityImageError, InvalidParameterError, TileFunctionError
from blockbuster.intensity import IntensityRequest, percentile_name
from blockbuster.table import combine, read_table, tile_statistics

pd = pytest.importorskip("pandas")
QS = (0, 12.5, 50, 90, 100)


def tiles_of(shape, tile_shape):
    for start in itertools.product(*(range(0, s, t) for s, t in zip(shape, tile_shape))):
        yield tuple(slice(a, min(a + t, s)) for a, t, s in zip(start, tile_shape, shape))


def as_local(core, rng):
    """A tile's labels as the relabel pass holds them: local labels and their lookup table,
    each object split over two local labels in a random order (as when two of a tile's labels
    join through another tile)."""
    ids = np.unique(core[core > 0])
    if len(ids) == 0:
        return np.zeros(core.shape, np.uint16), np.zeros(1, np.int64)
    halves = rng.integers(0, 2, core.shape)
    local_order = rng.permutation(2 * len(ids)) + 1
    rank = np.searchsorted(ids, core)
    local = np.where(core > 0, local_order[np.minimum(2 * rank + halves, 2 * len(ids) - 1)], 0)
    lut = np.zeros(2 * len(ids) + 1, np.int64)
    lut[local_order] = np.repeat(ids, 2)
    return local.astype(np.uint16), lut


def measured_by_tiles(labels, image, tile_shape, qs, spill, seed=None):
    """What the relabel pass does, one tile core at a time (image channels last), with the
    objects that span tiles told to each tile as the relabeling tells it. With a ``seed``, the
    tiles are given as local labels and lookup tables (:func:`as_local`)."""
    cores = list(tiles_of(labels.shape, tile_shape))
    seen = {}
    for index, core in enumerate(cores):
        for label in np.unique(labels[core]):
            seen.setdefault(int(label), set()).add(index)
    spanning = np.array(sorted(k for k, v in seen.items() if k and len(v) > 1), np.uint64)
    request = IntensityRequest(None, qs, Path(spill))
    rng = np.random.default_rng(seed)
    partials = []
    for index, core in reversed(list(enumerate(cores))):
        tile, lut = as_local(labels[core], rng) if seed is not None else (labels[core], None)
        channels_first = np.moveaxis(image[core], -1, 0)
        partials.append(tile_statistics(tile, [s.start for s in core], index, channels_first,
                                        request=request, spanning=spanning, lut=lut))
    return combine(partials, percentiles=qs, channels=image.shape[-1]), spanning


def reference(labels, image):
    """regionprops on the whole image, and numpy's percentiles of each object's values."""
    ref = pd.DataFrame(regionprops_table(
        labels, intensity_image=image[..., 0] if image.shape[-1] == 1 else image,
        properties=("label", "area", "intensity_mean", "intensity_min", "intensity_max",
                    "intensity_std")))
    return ref


def assert_matches(table, labels, image, qs):
    ref = reference(labels, image)
    channels = image.shape[-1]
    assert len(table) == len(ref)
    np.testing.assert_array_equal(table["label"], ref["label"])
    for c in range(channels):
        suffix, key = (f"_c{c}", f"-{c}") if channels > 1 else ("", "")
        for name in ("mean", "std"):
            np.testing.assert_allclose(table[f"intensity_{name}{suffix}"],
                                       ref[f"intensity_{name}{key}"], rtol=1e-9, atol=1e-9)
        for name in ("min", "max"):
            np.testing.assert_array_equal(table[f"intensity_{name}{suffix}"],
                                          ref[f"intensity_{name}{key}"])
        sums = ndimage.sum_labels(image[..., c].astype(np.float64), labels, table["label"])
        np.testing.assert_allclose(table[f"intensity_sum{suffix}"], sums, rtol=1e-12)
        for q in qs:
            # float64: numpy's percentile of small integers overflows ([-97, 43] int8 -> 101)
            values = image[..., c].astype(np.float64)
            expected = [np.percentile(values[labels == lab], q) for lab in table["label"]]
            np.testing.assert_allclose(table[f"intensity_p{percentile_name(q)}{suffix}"],
                                       expected, rtol=1e-12, atol=1e-12)


@st.composite
def labelled_images(draw):
    ndim = draw(st.sampled_from([2, 3]))
    shape = tuple(draw(st.lists(st.integers(3, 24 if ndim == 2 else 9), min_size=ndim,
                                max_size=ndim)))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    kind = draw(st.sampled_from(["dense", "blobs", "one"]))
    if kind == "dense":  # many tiny objects, ids in any order
        labels = rng.integers(0, 9, shape)
    elif kind == "blobs":
        labels = ndimage.label(ndimage.uniform_filter(rng.random(shape), 3) > 0.5)[0]
    else:  # one object over most of the image: it spans every tile
        labels = (rng.random(shape) < 0.9).astype(int) * 7
    channels = draw(st.integers(1, 3))
    if draw(st.booleans()):
        image = rng.integers(0, draw(st.sampled_from([3, 4096])), shape + (channels,))
        image = image.astype(np.uint16)
    else:  # floats far from 0: a naive sum of squares would lose the std
        image = 1e6 + rng.normal(size=shape + (channels,))
    tile_shape = tuple(draw(st.integers(1, s)) for s in shape)
    local_seed = draw(st.none() | st.integers(0, 2**31))
    return labels.astype(np.uint32), image, tile_shape, local_seed


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(labelled_images())
def test_tiled_intensities_equal_regionprops_on_the_whole_image(case):
    labels, image, tile_shape, local_seed = case
    with tempfile.TemporaryDirectory() as spill:
        table, spanning = measured_by_tiles(labels, image, tile_shape, QS, spill, local_seed)
        assert_matches(table, labels, image, QS)


@pytest.mark.parametrize("batch_bytes", [64 * 2**20, 1])
def test_objects_spanning_many_tiles_are_merged_from_the_spill(tmp_path, monkeypatch,
                                                                batch_bytes):
    """One batch of spilled runs, or (``batch_bytes=1``) one batch per object."""
    monkeypatch.setattr("blockbuster.intensity.SPILL_BATCH_BYTES", batch_bytes)
    rng = np.random.default_rng(3)
    labels = np.zeros((40, 50), np.uint32)
    labels[2:38, 3:40] = 1  # spans most tiles
    labels[8:12, 7:11] = 2  # inside one tile
    labels[20:30, 44:48] = 3  # spans two tiles
    labels[33:40, 41:50] = 5  # spans four
    image = rng.integers(0, 60000, (40, 50, 2)).astype(np.uint16)
    table, spanning = measured_by_tiles(labels, image, (7, 6), QS, tmp_path)
    assert list(spanning) == [1, 3, 5] and table.set_index("label").loc[1, "n_tiles"] > 30
    assert_matches(table, labels, image, QS)


def test_std_of_large_values_is_stable(tmp_path):
    """Chan's update: values 1e9 apart from their spread of 1 keep their std across tiles."""
    rng = np.random.default_rng(0)
    labels = np.ones((64, 64), np.uint32)
    image = (1e9 + rng.normal(size=(64, 64, 1)))
    table, _ = measured_by_tiles(labels, image, (5, 7), (), tmp_path)
    assert table["intensity_std"][0] == pytest.approx(np.std(image), rel=1e-6)


def blobs(shape, seed=0):
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.random(shape), 2)
    return (smooth * 1000).astype(np.uint16)


def test_run_measures_its_own_channels_in_3d(tmp_path):
    image = np.stack([blobs((10, 40, 36), 0), blobs((10, 40, 36), 1)], axis=-1)  # z, y, x, c
    labels = tile_process(image, lambda t: ndimage.label(t[..., 0] > 500)[0],
                          channel_axis=-1, tile_shape=(4, 16, 12), overlap=2,
                          write_to=tmp_path / "l.zarr", table=tmp_path / "t.parquet",
                          intensity_image=True, percentiles=[50, 95], compute=True)
    table = read_table(tmp_path / "t.parquet")
    assert table["n_tiles"].max() > 4
    assert_matches(table, labels, image, (50, 95))


def test_run_measures_another_image_channels_first(tmp_path):
    image = blobs((64, 48), 2)
    other = np.stack([blobs((64, 48), 3), blobs((64, 48), 4).astype(np.float32)])
    labels = tile_process(image, "threshold", segmenter_options={"threshold": 500.0},
                          tile_shape=(16, 16), write_to=tmp_path / "l.zarr", table=True,
                          intensity_image=other, percentiles=[25], compute=True)
    table = read_table(tmp_path / "l.zarr.objects.csv")
    assert_matches(table, labels, np.moveaxis(other, 0, -1).astype(np.float64), (25,))


def test_without_intensity_image_the_table_has_no_intensity_columns(tmp_path):
    tile_process(blobs((32, 32)), "threshold", segmenter_options={"threshold": 500.0},
                 tile_shape=(16, 16), write_to=tmp_path / "l.zarr", table=True)
    table = read_table(tmp_path / "l.zarr.objects.csv")
    assert not [c for c in table.columns if c.startswith("intensity")]


def test_a_table_without_objects_still_has_the_intensity_columns(tmp_path):
    tile_process(np.zeros((2, 32, 32), np.uint8), lambda t: ndimage.label(t[0] > 5)[0],
                 channel_axis=0, tile_shape=(16, 16),
                 write_to=tmp_path / "l.zarr", table=True, intensity_image=True,
                 percentiles=[50])
    table = read_table(tmp_path / "l.zarr.objects.csv")
    assert len(table) == 0
    assert [c for c in table.columns if c.startswith("intensity")] == [
        f"intensity_{name}_c{c}" for c in (0, 1) for name in ("mean", "min", "max", "sum", "std")
    ] + ["intensity_p50_c0", "intensity_p50_c1"]


def test_intensity_image_of_another_shape_says_what_to_do(tmp_path):
    with pytest.raises(IntensityImageError, match=r"shape \(30, 32\).*spatial shape \(32, 32\)"
                                                  r".*same spatial shape"):
        tile_process(blobs((32, 32)), "threshold", tile_shape=(16, 16),
                     write_to=tmp_path / "l.zarr", table=True,
                     intensity_image=np.zeros((30, 32)))


@pytest.mark.parametrize("options, message", [
    ({"intensity_image": True}, "also pass table=True"),
    ({"percentiles": [50], "table": True}, "percentiles= needs intensity_image="),
    ({"intensity_image": True, "table": True, "percentiles": [101]}, r"in \[0, 100\]"),
])
def test_intensity_options_are_checked(tmp_path, options, message):
    with pytest.raises(InvalidParameterError, match=message):
        tile_process(blobs((32, 32)), "threshold", tile_shape=(16, 16),
                     write_to=tmp_path / "l.zarr", **options)


def test_processes_workers_spill_and_measure_the_same(tmp_path):
    image = blobs((48, 64), 5)
    options = dict(segmenter_options={"threshold": 480.0}, tile_shape=(12, 16),
                   table=tmp_path / "t.csv", intensity_image=True, percentiles=[50],
                   overwrite=True)
    labels = tile_process(image, "threshold", executor="processes", workers=2,
                          write_to=tmp_path / "p.zarr", compute=True, **options)
    by_processes = read_table(tmp_path / "t.csv")
    assert by_processes["n_tiles"].max() > 2
    assert_matches(by_processes, labels, image[..., None].astype(np.float64), (50,))


def test_ome_zarr_run_has_physical_and_intensity_columns(tmp_path):
    """A 3D two-channel OME-Zarr: the channels come from its "c" axis, the physical columns
    from its scale, next to the intensity columns of both channels."""
    pytest.importorskip("ome_zarr")
    from blockbuster.synthetic import write_image

    rng = np.random.default_rng(7)
    data = np.stack([ndimage.gaussian_filter(rng.random((8, 40, 48)), 2) for _ in range(2)])
    data = ((data - data.mean()) / data.std()).astype(np.float32)
    path = write_image(tmp_path / "cells.ome.zarr", data, axes="czyx",
                       scale=(1.0, 2.0, 0.5, 0.5), units={a: "micrometer" for a in "zyx"},
                       channel_labels=["membrane", "nuclei"], chunks=(1, 4, 16, 16))
    labels = tile_process(str(path), lambda t: ndimage.label(t[1] > 1.0)[0],
                          tile_shape=(4, 16, 16), overlap=2, write_to=tmp_path / "l.zarr",
                          table=tmp_path / "t.parquet", intensity_image=True, compute=True)
    table = read_table(tmp_path / "t.parquet")
    assert {"centroid_x_um", "volume_um3", "intensity_mean_c0", "intensity_std_c1"} <= set(table)
    assert table["n_tiles"].max() > 2
    assert_matches(table, labels, np.moveaxis(data, 0, -1).astype(np.float64), ())


@pytest.mark.parametrize("dtype", ["bool", "int8", "uint8", "int16", ">u2", "uint32", "int64",
                                   "float16", "float32"])
def test_every_dtype_is_measured_exactly(tmp_path, dtype):
    """Up to 16 bits the sums are exact integers, beyond (and for floats) the deviations take
    a second pass: both equal regionprops, negative values, booleans, half floats and values
    stored big-endian included."""
    rng = np.random.default_rng(11)
    labels = ndimage.label(ndimage.uniform_filter(rng.random((30, 41)), 3) > 0.5)[0]
    kind = np.dtype(dtype).kind
    info = np.iinfo(dtype) if kind in "iu" else None
    low, high = (info.min, info.max) if info is not None else (-1e3, 1e3)
    image = rng.uniform(max(low, -2**40), min(high, 2**40), (30, 41, 2))
    image = (image > 0) if dtype == "bool" else image.astype(dtype)
    qs = () if dtype == "bool" else (50,)  # np.percentile refuses booleans
    table, _ = measured_by_tiles(labels.astype(np.uint32), image, (7, 9), qs, tmp_path, 5)
    # regionprops averages float32 in float32; the table in float64, as float64 does
    assert_matches(table, labels, image.astype(np.float64) if kind == "f" else image, qs)


def test_an_image_of_complex_numbers_is_refused_before_the_run(tmp_path):
    with pytest.raises(IntensityImageError, match=r"dtype complex64.*convert it first"):
        tile_process(blobs((32, 32)), "threshold", tile_shape=(16, 16),
                     write_to=tmp_path / "l.zarr", table=True,
                     intensity_image=np.zeros((32, 32), np.complex64))
    assert not (tmp_path / "l.zarr").exists()


def test_m2_of_a_large_bright_object_is_exact(tmp_path):
    """An object whose ``n * sum(v**2)`` overflows int64 takes Python integers."""
    labels = np.ones((400, 400), np.uint32)
    image = np.full((400, 400, 1), 60000, np.uint16)
    image[::7, ::3] = 59999
    table, _ = measured_by_tiles(labels, image, (400, 400), (), tmp_path)
    assert table["intensity_std"][0] == pytest.approx(np.std(image.astype(np.float64)),
                                                      rel=1e-12)


class CountingReader(ArrayReader):
    """An in-memory input that counts its reads."""

    def __init__(self, array):
        super().__init__(array)
        self.reads = 0

    def read(self, region):
        self.reads += 1
        return super().read(region)


def channel_zero_components(tile):
    return ndimage.label(tile[0] > 500)[0]


def test_the_table_measures_the_input_as_it_segments_it(tmp_path):
    """Intensities of the input come from the read that fed ``fn`` (each tile read once), even
    when ``fn`` changes its input in place; percentiles read the tiles again."""
    image = np.stack([blobs((48, 64), 8), blobs((48, 64), 9)])

    def scribbling(tile):
        labels = channel_zero_components(tile)
        tile[...] = 0  # fn may do anything with its input
        return labels

    tiles = 12
    for fn, percentiles, reads in ((scribbling, None, tiles),
                                   (channel_zero_components, [50], 2 * tiles)):
        reader = CountingReader(image.copy())  # an in-memory input hands fn a view of itself
        labels = tile_process(reader, fn, channel_axis=0, tile_shape=(16, 16), overlap=0,
                              executor="threads", workers=2, table=tmp_path / "t.csv",
                              write_to=tmp_path / "l.zarr", intensity_image=True,
                              percentiles=percentiles, overwrite=True, compute=True)
        assert reader.reads == reads
        qs = tuple(percentiles or ())
        assert_matches(read_table(tmp_path / "t.csv"), labels, np.moveaxis(image, 0, -1), qs)


class BreaksOnce:
    """``channel_zero_components``, but raises on the tile whose first value is ``corner``
    while ``broken`` exists: a run that stops there leaves its stage to resume."""

    def __init__(self, broken, corner):
        self.broken, self.corner = str(broken), corner

    def __call__(self, tile):
        if os.path.exists(self.broken) and tile[0, 0, 0] == self.corner:
            raise RuntimeError("crashed")
        return channel_zero_components(tile)


OTHER = blobs((48, 48), 12)


@pytest.mark.parametrize("first, then", [
    ({}, {"table": True, "intensity_image": True, "percentiles": [50]}),  # no rows staged
    ({"table": True}, {"table": True, "intensity_image": True}),  # rows without intensities
    ({"table": True, "intensity_image": True}, {"table": True}),  # more than asked for now
    ({"table": True, "intensity_image": True}, {"table": True, "intensity_image": OTHER}),
])
def test_a_resumed_run_measures_what_its_stage_lacks(tmp_path, first, then):
    image = np.stack([blobs((48, 48), 10), blobs((48, 48), 11)])
    fn = BreaksOnce(tmp_path / "broken", image[0, 16, 16])
    (tmp_path / "broken").write_text("")
    options = dict(channel_axis=0, tile_shape=(16, 16), overlap=0, executor="serial",
                   write_to=tmp_path / "l.zarr", retries=0)
    with pytest.raises(TileFunctionError):
        tile_process(image, fn, **options, **first)
    (tmp_path / "broken").unlink()
    labels, stats = tile_process(image, fn, **options, **then, compute=True, return_stats=True)
    assert stats.tiles_resumed > 0
    table = read_table(tmp_path / "l.zarr.objects.csv")
    measured = then.get("intensity_image")
    if measured is None:
        assert not [c for c in table.columns if c.startswith("intensity")]
        assert_matches_geometry(table, labels)
        return
    measured = image if measured is True else measured[None]
    assert_matches(table, labels, np.moveaxis(measured, 0, -1), tuple(then.get("percentiles",
                                                                                   ())))


def assert_matches_geometry(table, labels):
    ref = pd.DataFrame(regionprops_table(labels, properties=("label", "area", "centroid")))
    np.testing.assert_array_equal(table["label"], ref["label"])
    np.testing.assert_array_equal(table["voxels"], ref["area"])
    np.testing.assert_allclose(table["centroid_x"], ref["centroid-1"])
