"""Relations between two label images: tile by tile == the whole-image computation, the parent
rule (most overlap, ties to the smallest id, 0 without a parent), the table and the CLI."""

import numpy as np
import pytest
import zarr
from hypothesis import given, settings, strategies as st
from scipy import ndimage

from blockbuster.cli import main
from blockbuster.errors import InvalidParameterError
from blockbuster.relations import COLUMNS, PAIR_COLUMNS, relate
from blockbuster.table import read_table

pd = pytest.importorskip("pandas")


def whole_image_relations(children, parents):
    """The reference: each child's parents counted on the whole image, one child at a time."""
    rows = []
    for child in np.unique(children[children > 0]):
        under = parents[children == child]
        ids, counts = np.unique(under, return_counts=True)
        nonzero = ids != 0
        if nonzero.any():
            best = max(zip(counts[nonzero], -ids[nonzero].astype(np.int64)))
            parent, overlap = -best[1], best[0]
        else:
            parent, overlap = 0, 0
        rows.append((child, parent, under.size, overlap, overlap / under.size,
                     int(nonzero.sum())))
    return pd.DataFrame(rows, columns=COLUMNS)


def blobs(shape, seed, threshold):
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.random(shape), 2)
    return ndimage.label(smooth > threshold)[0].astype(np.uint32)


def assert_same(table, reference):
    assert list(table.columns) == list(COLUMNS)
    for column in COLUMNS:
        np.testing.assert_allclose(table[column].to_numpy(np.float64),
                                   reference[column].to_numpy(np.float64), err_msg=column)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), height=st.integers(1, 40), width=st.integers(1, 40),
       tile=st.tuples(st.integers(1, 41), st.integers(1, 41)),
       chunks=st.tuples(st.integers(1, 17), st.integers(1, 17)),
       workers=st.integers(1, 3))
def test_tiled_equals_whole_image_on_random_tilings(seed, height, width, tile, chunks, workers):
    """Random labels (many ties, many children cut by parents), random tiles, the parents
    chunked differently from the tiles: the table is the whole image's, exactly."""
    rng = np.random.default_rng(seed)
    children = rng.integers(0, 6, (height, width)).astype(np.uint16)
    parents = rng.integers(0, 4, (height, width)).astype(np.uint32)
    stored = zarr.create_array(store=zarr.storage.MemoryStore(), shape=parents.shape,
                               chunks=chunks, dtype=parents.dtype)
    stored[...] = parents
    table = relate(children, stored, tile_shape=tile, workers=workers)
    assert_same(table, whole_image_relations(children, parents))


def test_nuclei_in_cells_3d_with_objects_spanning_many_tiles(tmp_path):
    """Cells grown from nuclei (a lower threshold of the same smooth field) in 3D: every nucleus
    lies inside one cell, and zarr inputs of different chunks give the whole image's table."""
    rng = np.random.default_rng(3)
    field = ndimage.gaussian_filter(rng.random((12, 60, 70)), 3)
    nuclei = ndimage.label(field > np.percentile(field, 92))[0].astype(np.uint32)
    cells = ndimage.label(field > np.percentile(field, 70))[0].astype(np.uint32)
    zarr.create_array(store=tmp_path / "nuclei.zarr", data=nuclei, chunks=(4, 16, 16))
    zarr.create_array(store=tmp_path / "cells.zarr", data=cells, chunks=(5, 25, 9))
    table = relate(tmp_path / "nuclei.zarr", str(tmp_path / "cells.zarr"), tile_shape=(5, 13, 17))
    assert_same(table, whole_image_relations(nuclei, cells))
    assert (table["parent"] > 0).all() and (table["overlap_fraction"] == 1).all()
    assert len(table) == nuclei.max() and table["child_voxels"].sum() == (nuclei > 0).sum()


def test_parent_rule_most_overlap_then_smallest_id_then_zero():
    children = np.array([[1, 1, 1, 2, 2, 3, 3, 4, 0]])
    parents = np.array([[5, 7, 7, 9, 4, 0, 0, 6, 8]])
    table = relate(children, parents, tile_shape=(1, 2)).set_index("child")
    assert table.loc[1, "parent"] == 7 and table.loc[1, "overlap_voxels"] == 2  # most overlap
    assert table.loc[1, "n_parents"] == 2
    assert table.loc[2, "parent"] == 4  # a tie 9 / 4: the smallest id
    assert table.loc[3, "parent"] == 0 and table.loc[3, "overlap_fraction"] == 0  # no parent
    assert table.loc[3, "n_parents"] == 0 and table.loc[3, "child_voxels"] == 2
    assert table.loc[4, "parent"] == 6 and table.loc[4, "overlap_fraction"] == 1
    assert 8 not in table["parent"].to_numpy()  # a parent with no child is no one's parent
    assert set(table.index) == {1, 2, 3, 4}


def test_a_child_mostly_in_background_still_gets_the_parent_it_touches():
    """Background never wins: 1 voxel in cell 3 and 3 in background make cell 3 the parent."""
    table = relate(np.array([[1, 1, 1, 1]]), np.array([[0, 0, 0, 3]]))
    assert table["parent"].tolist() == [3] and table["overlap_fraction"].tolist() == [0.25]


def test_pairs_lists_every_overlap():
    children = np.array([[1, 1, 1, 2], [1, 0, 2, 2]])
    parents = np.array([[5, 5, 6, 0], [0, 6, 6, 6]])
    pairs = relate(children, parents, pairs=True, tile_shape=(1, 1))
    assert list(pairs.columns) == list(PAIR_COLUMNS)
    assert [tuple(r) for r in pairs[["child", "parent", "overlap_voxels", "child_voxels"]]
            .itertuples(index=False)] == [(1, 5, 2, 4), (1, 6, 1, 4), (2, 6, 2, 3)]


def test_empty_children_give_an_empty_table():
    table = relate(np.zeros((5, 5), np.uint8), np.ones((5, 5), np.uint8))
    assert list(table.columns) == list(COLUMNS) and len(table) == 0


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_table_is_written_and_read_back(tmp_path, suffix):
    children, parents = blobs((40, 40), 1, 0.55), blobs((40, 40), 1, 0.5)
    path = tmp_path / f"relations{suffix}"
    table = relate(children, parents, table=path)
    back = read_table(path)
    assert_same(back, table)


def test_shapes_must_match():
    with pytest.raises(InvalidParameterError, match=r"differ in shape.*same grid"):
        relate(np.zeros((4, 5), np.uint8), np.zeros((4, 6), np.uint8))


def test_float_images_are_refused_with_what_to_give():
    with pytest.raises(InvalidParameterError,
                       match=r"parents .*float64 values, not integer labels"):
        relate(np.zeros((4, 5), np.uint8), np.zeros((4, 5)))


def test_cli_writes_the_table(tmp_path, capsys):
    nuclei, cells = blobs((48, 64), 2, 0.55), blobs((48, 64), 2, 0.5)
    zarr.create_array(store=tmp_path / "nuclei.zarr", data=nuclei, chunks=(16, 16))
    zarr.create_array(store=tmp_path / "cells.zarr", data=cells, chunks=(20, 20))
    out = tmp_path / "relations.csv"
    code = main(["relate", str(tmp_path / "nuclei.zarr"), str(tmp_path / "cells.zarr"),
                 "--output", str(out), "--tile-shape", "10,30", "--workers", "2"])
    assert code == 0
    assert_same(read_table(out), whole_image_relations(nuclei, cells))
    assert f"{nuclei.max()} children" in capsys.readouterr().err


def test_cli_reports_a_shape_mismatch_in_one_line(tmp_path, capsys):
    zarr.create_array(store=tmp_path / "a.zarr", data=np.ones((4, 4), np.uint8))
    zarr.create_array(store=tmp_path / "b.zarr", data=np.ones((4, 5), np.uint8))
    code = main(["relate", str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr"),
                 "-o", str(tmp_path / "r.csv")])
    assert code == 1
    assert "differ in shape" in capsys.readouterr().err
