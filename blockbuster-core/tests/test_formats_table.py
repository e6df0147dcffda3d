"""Per-object table: tile by tile statistics merged across tiles == regionprops on the whole."""

import numpy as np
import pytest
from scipy import ndimage
from skimage.measure import regionprops_table

from blockbuster import tile_process
from blockbuster.errors import InvalidParameterError, OptionalDependencyError
from blockbuster.image import ImageView
from blockbuster.readers import BaseReader
from blockbuster.table import combine, read_table, tile_statistics, write_table
from blockbuster.tiling import TileGrid

pd = pytest.importorskip("pandas")


def labelled(shape, seed=0):
    rng = np.random.default_rng(seed)
    labels = ndimage.label(ndimage.gaussian_filter(rng.random(shape), 2) > 0.52)[0]
    return labels.astype(np.uint32)


def by_tiles(labels, tile_shape):
    """What the relabel pass does: statistics of each tile core, in any order."""
    grid = TileGrid(labels.shape, tile_shape, (0,) * labels.ndim)
    partials = []
    for index in reversed(range(len(grid))):
        core = grid.tile(index).core
        partials.append(tile_statistics(labels[core], tuple(s.start for s in core), index))
    return partials, grid


def expected_tiles(labels, grid):
    spans = {}
    for index in range(len(grid)):
        for label in np.unique(labels[grid.tile(index).core]):
            if label:
                spans.setdefault(int(label), []).append(index)
    return spans


@pytest.mark.parametrize("shape,tile_shape", [((50, 61), (16, 20)), ((9, 30, 34), (4, 16, 16))])
def test_matches_regionprops(shape, tile_shape):
    labels = labelled(shape)
    partials, grid = by_tiles(labels, tile_shape)
    assert all(len(p) <= len(np.unique(labels)) for p in partials)
    table = combine(partials)
    reference = pd.DataFrame(regionprops_table(labels, properties=("label", "area", "bbox",
                                                                   "centroid")))
    assert len(table) == len(reference) == labels.max()
    np.testing.assert_array_equal(table["label"], reference["label"])
    np.testing.assert_array_equal(table["voxels"], reference["area"])
    axes = ("z", "y", "x")[-labels.ndim:]
    for i, axis in enumerate(axes):
        np.testing.assert_array_equal(table[f"bbox_min_{axis}"], reference[f"bbox-{i}"])
        np.testing.assert_array_equal(table[f"bbox_max_{axis}"],
                                      reference[f"bbox-{i + labels.ndim}"])
        np.testing.assert_allclose(table[f"centroid_{axis}"], reference[f"centroid-{i}"])
    spans = expected_tiles(labels, grid)
    assert [list(t) for t in table["tiles"]] == [spans[int(lab)] for lab in table["label"]]
    assert (table["n_tiles"] == [len(spans[int(lab)]) for lab in table["label"]]).all()
    assert table["n_tiles"].max() > 1  # some objects do cross tiles


def test_physical_columns_and_empty_tiles():
    labels = np.zeros((4, 20, 20), np.uint32)
    labels[1:3, 2:6, 3:9] = 7
    labels[0, 15:20, 15:20] = 9
    partials, _ = by_tiles(labels, (2, 10, 10))
    assert sum(len(p) == 0 for p in partials) > 0
    table = combine(partials, scale=(2.0, 0.5, 0.25), units=("micrometer",) * 3,
                    translation=(10.0, 0.0, 0.0), axes=("z", "y", "x"))
    row = table.set_index("label").loc[7]
    assert row["voxels"] == 48
    assert row["centroid_z"] == pytest.approx(1.5)
    assert row["centroid_z_um"] == pytest.approx(10 + 1.5 * 2.0)
    assert row["centroid_y_um"] == pytest.approx(3.5 * 0.5)
    assert row["centroid_x_um"] == pytest.approx(5.5 * 0.25)
    assert row["volume_um3"] == pytest.approx(48 * 2.0 * 0.5 * 0.25)
    no_units = combine(partials, scale=(1.0, 1.0, 1.0))
    assert "centroid_x_physical" in no_units and "volume_physical" in no_units
    empty = combine([tile_statistics(np.zeros((5, 5), np.uint8), (0, 0), 0)])
    assert len(empty) == 0 and "centroid_x" in empty
    with pytest.raises(InvalidParameterError):
        combine(partials, scale=(1.0, 1.0))


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_write_and_read(tmp_path, suffix):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    labels = labelled((40, 40), seed=3)
    table = combine(by_tiles(labels, (16, 16))[0], scale=(0.5, 0.5), units=("micrometer",) * 2)
    path = write_table(table, tmp_path / f"objects{suffix}")
    again = read_table(path)
    assert list(again.columns) == list(table.columns)
    np.testing.assert_array_equal(again["label"], table["label"])
    np.testing.assert_allclose(again["centroid_y_um"], table["centroid_y_um"])
    assert [list(t) for t in again["tiles"]] == [list(t) for t in table["tiles"]]
    with pytest.raises(InvalidParameterError, match=".csv or .parquet"):
        write_table(table, tmp_path / "objects.xlsx")


def test_image_view_gives_the_table_the_spatial_axes_of_the_reader_metadata():
    class Reader(BaseReader):
        shape = (2, 5, 6, 7)
        dtype = np.dtype(np.uint8)
        axes = ("c", "z", "y", "x")

        def metadata(self):
            return {"scale": (1.0, 2.0, 0.5, 0.5),
                    "units": (None, "micrometer", "micrometer", "micrometer")}

    meta = ImageView.open(Reader()).table_metadata()  # the "c" axis is the channel axis
    assert meta["axes"] == ("z", "y", "x") and meta["scale"] == (2.0, 0.5, 0.5)
    assert meta["units"] == ("micrometer",) * 3
    assert meta["translation"] is None and meta["ndim"] == 3

    class Plain(BaseReader):
        shape = (3, 4)
        dtype = np.dtype(np.uint8)

    plain = ImageView.open(Plain()).table_metadata()
    assert plain["scale"] is None and plain["axes"] is None and plain["ndim"] == 2


def objects_across_tiles(shape, seed):
    """Blobs larger than a tile, so most objects span several tiles and merge across faces."""
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.random(shape), 3)
    return ((smooth - smooth.mean()) / smooth.std()).astype(np.float32)


class Components:
    def __call__(self, tile):
        return ndimage.label(tile > 1.0)[0]


@pytest.mark.parametrize("shape,tile_shape,table", [
    ((90, 110), (24, 32), True),                    # beside the labels: <write_to>.objects.csv
    ((14, 60, 52), (5, 20, 16), "objects.parquet"),
])
def test_the_run_table_equals_regionprops_of_the_run_labels(tmp_path, shape, tile_shape, table):
    """Every column of a real run's table against skimage on the labels it wrote."""
    if str(table).endswith(".parquet"):
        pytest.importorskip("pyarrow")
        table = tmp_path / table
        write_to = None
    else:
        write_to = tmp_path / "labels.zarr"
    labels = tile_process(objects_across_tiles(shape, seed=len(shape)), Components(),
                          tile_shape=tile_shape, overlap=2, write_to=write_to, table=table,
                          executor="threads", workers=2, compute=True)
    path = table if table is not True else tmp_path / "labels.zarr.objects.csv"
    result = read_table(path)
    axes = ("z", "y", "x")[-len(shape):]
    reference = pd.DataFrame(regionprops_table(labels, properties=("label", "area", "bbox",
                                                                   "centroid")))
    assert set(result.columns) == {"label", "voxels", "n_tiles", "tiles"} | {
        f"{column}_{axis}" for column in ("bbox_min", "bbox_max", "centroid") for axis in axes}
    assert len(result) == len(reference) == labels.max() > 5
    np.testing.assert_array_equal(result["label"], reference["label"])
    np.testing.assert_array_equal(result["voxels"], reference["area"])
    for i, axis in enumerate(axes):
        np.testing.assert_array_equal(result[f"bbox_min_{axis}"], reference[f"bbox-{i}"])
        np.testing.assert_array_equal(result[f"bbox_max_{axis}"],
                                      reference[f"bbox-{i + len(shape)}"])
        np.testing.assert_allclose(result[f"centroid_{axis}"], reference[f"centroid-{i}"])
    grid = TileGrid(shape, tile_shape, (0,) * len(shape))
    spans = expected_tiles(labels, grid)
    assert [list(t) for t in result["tiles"]] == [spans[int(lab)] for lab in result["label"]]
    assert (result["n_tiles"] == result["tiles"].map(len)).all()
    assert result["n_tiles"].max() >= 4  # objects merged across several tiles
    assert (result[[f"bbox_min_{axis}" for axis in axes]] > 0).all(axis=1).any()


def test_combine_of_partials_handed_over_frees_them_and_equals_the_list():
    """The pipeline hands the partials over one by one (the list ends empty, so combine can
    free each once stacked): the table is the one combine makes of the list itself."""
    from blockbuster.pipeline import _handed_over

    partials, _ = by_tiles(labelled((50, 61)), (16, 20))
    expected = combine(list(partials), scale=(0.5, 0.5))
    table = combine(_handed_over(partials), scale=(0.5, 0.5))
    assert partials == []
    pd.testing.assert_frame_equal(table, expected)


def test_csv_written_in_batches_is_the_whole_table(tmp_path, monkeypatch):
    """Rows formatted a few at a time: one header, every row once, in order."""
    import blockbuster.table as table_module

    pytest.importorskip("pyarrow")
    labels = labelled((50, 61))
    table = combine(by_tiles(labels, (16, 20))[0])
    monkeypatch.setattr(table_module, "CSV_BATCH_ROWS", 5)
    back = read_table(write_table(table, tmp_path / "t.csv"))
    assert len(table) > 3 * 5
    pd.testing.assert_frame_equal(back, table.reset_index(drop=True), check_dtype=False)


@pytest.mark.parametrize("missing,table,merge_log", [
    ("pandas", True, None),                       # the object table needs pandas
    ("pyarrow", "objects.parquet", None),         # a Parquet table also pyarrow
    ("pyarrow", None, True),                      # the merge log is Parquet
])
def test_a_missing_table_package_is_named_before_the_run_writes_anything(
        tmp_path, monkeypatch, missing, table, merge_log):
    import sys

    monkeypatch.setitem(sys.modules, missing, None)  # `import <missing>` now fails
    if isinstance(table, str):
        table = tmp_path / table
    with pytest.raises(OptionalDependencyError, match=rf"needs {missing}, which is not "
                       rf"installed.*pip install {missing} \(or pip install "
                       r'"blockbuster-core\[formats\]"\)'):
        tile_process(objects_across_tiles((40, 40), seed=1), Components(), tile_shape=(20, 20),
                     overlap=2, write_to=tmp_path / "labels.zarr", table=table,
                     merge_log=merge_log, executor="serial")
    assert list(tmp_path.iterdir()) == []  # no labels, no stage: nothing was lost


def test_relate_names_a_missing_pandas_before_reading_a_tile(tmp_path, monkeypatch):
    import sys

    from blockbuster.relations import relate

    def unread(*args, **kwargs):
        raise AssertionError("relate read its labels before checking for pandas")

    monkeypatch.setitem(sys.modules, "pandas", None)
    monkeypatch.setattr("blockbuster.relations.open_labels", unread)
    with pytest.raises(OptionalDependencyError, match="relate's table needs pandas"):
        relate(np.ones((4, 4), np.uint8), np.ones((4, 4), np.uint8),
               table=tmp_path / "relations.csv")
    assert not (tmp_path / "relations.csv").exists()


@pytest.mark.parametrize("writer", ["arrow", "pandas"])
def test_a_float_column_of_whole_values_reads_back_from_csv_as_floats(tmp_path, monkeypatch,
                                                                       writer):
    """Objects of one pixel have whole centroids (as a uint image has whole means): the CSV
    keeps them floats for pandas.read_csv, through Arrow's writer (in batches) and pandas'."""
    import sys

    import blockbuster.table as table_module

    if writer == "pandas":
        monkeypatch.setitem(sys.modules, "pyarrow", None)
    else:
        pytest.importorskip("pyarrow")
        monkeypatch.setattr(table_module, "CSV_BATCH_ROWS", 4)
    labels = np.zeros((20, 30), np.uint32)
    labels[::3, ::4] = np.arange(1, 7 * 8 + 1).reshape(7, 8)  # single pixels
    table = combine(by_tiles(labels, (8, 8))[0], scale=(2.0, 2.0))
    table["score"] = [np.nan, np.inf, -0.0, 1e20] + [float(i) for i in range(len(table) - 4)]
    floats = [name for name in table.columns if table[name].dtype.kind == "f"]
    assert len(floats) == 6 and (table["centroid_x"] % 1 == 0).all()
    back = pd.read_csv(write_table(table, tmp_path / "objects.csv"))
    for name in floats:
        assert back[name].dtype == np.float64, name
        np.testing.assert_array_equal(back[name], table[name])
    assert back["voxels"].dtype == np.int64  # ints stay ints
    assert back["label"].tolist() == table["label"].tolist()
