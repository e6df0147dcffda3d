"""The merge log holds exactly the cross-tile joins of a run, with their tiles, faces, support
and final IDs; a run without it writes no log."""

import numpy as np
import pandas as pd
import pytest
import scipy.ndimage as ndi

from blockbuster import tile_process
from blockbuster.errors import InvalidParameterError


def components(mask: np.ndarray) -> np.ndarray:
    return ndi.label(mask, structure=np.ones((3, 3)))[0]


def seams_image() -> np.ndarray:
    """40 x 40, 20 x 20 tiles: a bar across the x seam of the top row (2 tiles), a square on the
    centre corner (4 tiles), a bar across the y seam on the right (2 tiles), a dot (1 tile)."""
    mask = np.zeros((40, 40), bool)
    mask[3:7, 15:26] = True   # rows 3..6: 4 rows across x = 20, tiles 0 and 1
    mask[17:23, 16:23] = True  # rows 17..22, cols 16..22: the four tiles
    mask[14:27, 33:35] = True  # cols 33, 34 across y = 20, tiles 1 and 3
    mask[30:33, 5:8] = True   # inside tile 2
    return mask


def run(tmp_path, **options):
    return tile_process(seams_image(), components, tile_shape=(20, 20), overlap=2,
                        write_to=tmp_path / "labels.zarr", compute=True, **options)


def test_the_log_holds_each_join_with_its_tiles_face_support_and_final_id(tmp_path):
    labels = run(tmp_path, merge_log=True)
    log = pd.read_parquet(tmp_path / "labels.zarr.merges.parquet")
    assert log["joined"].all() and not log["contested"].any()
    assert (log["final_a"] == log["final_b"]).all()
    bar, square, upright = labels[4, 20], labels[20, 20], labels[20, 33]
    # a face join is backed by the neighbour pixel pairs across the face, straight and
    # diagonal: 3 * width - 2 for a piece `width` pixels wide on both sides
    bar_row = [r for r in log.itertuples() if (r.tile_a, r.tile_b) == (0, 1) and r.final_a == bar]
    assert [(r.face, r.axis, r.side, r.pixel_pairs) for r in bar_row] == [("axis1+", 1, "hi", 10)]
    square_rows = log[log["final_a"] == square]
    assert sorted(zip(square_rows["tile_a"], square_rows["tile_b"], square_rows["face"])) == [
        (0, 1, "axis1+"), (0, 2, "axis0+"), (0, 3, "axis0+axis1+"),
        (1, 2, "axis0+axis1-"), (1, 3, "axis0+"), (2, 3, "axis1+")]
    support = {(r.tile_a, r.tile_b): r.pixel_pairs for r in square_rows.itertuples()}
    # square rows 17..22, cols 16..22: 3 rows above y = 20, 3 below; 4 cols left of x = 20, 3 right
    assert (support[(0, 1)], support[(2, 3)]) == (3 * 3 - 2, 3 * 3 - 2)
    assert (support[(0, 2)], support[(1, 3)]) == (3 * 4 - 2, 3 * 3 - 2)
    # the corner's diagonal pixel pairs, (19, 19)-(20, 20) and (19, 20)-(20, 19), each once
    assert (support[(0, 3)], support[(1, 2)]) == (1, 1)
    upright_rows = log[log["final_a"] == upright]
    assert list(zip(upright_rows["tile_a"], upright_rows["tile_b"], upright_rows["axis"],
                    upright_rows["pixel_pairs"])) == [(1, 3, 0, 3 * 2 - 2)]
    assert len(log) == len(bar_row) + len(square_rows) + len(upright_rows)
    # the local labels are the labels of the pieces in their tiles
    for r in log.itertuples():
        assert r.id_a == (r.tile_a << 32) | r.local_a and r.id_b == (r.tile_b << 32) | r.local_b


def test_each_object_spanning_k_tiles_is_joined_from_its_k_pieces(tmp_path):
    labels = run(tmp_path, merge_log=tmp_path / "log.parquet")
    log = pd.read_parquet(tmp_path / "log.parquet")
    for final in np.unique(labels[labels > 0]):
        tiles = {(y // 20) * 2 + x // 20 for y, x in zip(*np.nonzero(labels == final))}
        rows = log[log["final_a"] == final]
        pieces = set(zip(rows["tile_a"], rows["local_a"])) | set(zip(rows["tile_b"],
                                                                     rows["local_b"]))
        assert {t for t, _ in pieces} == (tiles if len(tiles) > 1 else set())
        assert _connected(pieces, zip(zip(rows["tile_a"], rows["local_a"]),
                                      zip(rows["tile_b"], rows["local_b"])))


def _connected(nodes, edges) -> bool:
    nodes = set(nodes)
    if not nodes:
        return True
    neighbours = {n: set() for n in nodes}
    for a, b in edges:
        neighbours[a].add(b)
        neighbours[b].add(a)
    seen, todo = set(), [next(iter(nodes))]
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(neighbours[n] - seen)
    return seen == nodes


def test_a_run_without_merge_log_writes_none(tmp_path):
    run(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.zarr"]


def test_merge_log_needs_a_place_and_a_parquet_suffix(tmp_path):
    with pytest.raises(InvalidParameterError, match="merge_log=True names the log"):
        tile_process(seams_image(), components, tile_shape=(20, 20), merge_log=True)
    with pytest.raises(InvalidParameterError, match="use a .parquet path"):
        run(tmp_path, merge_log=tmp_path / "log.csv")


def per_plane(tile: np.ndarray) -> np.ndarray:
    return ndi.label(tile[0])[0][None]


def test_the_log_holds_each_iou_join_across_planes_with_its_iou_and_areas(tmp_path):
    """merge="iou": one row per pair of whole 2D objects overlapping across planes."""
    stack = np.zeros((3, 40, 40), bool)
    stack[0, 5:15, 12:30] = True     # 10 x 18 = 180 pixels, across the x seam (2 tiles)
    stack[1, 5:15, 14:30] = True     # 160 inside it: IoU 160 / 180
    stack[1, 25:35, 2:12] = True     # 100 pixels ...
    stack[2, 25:35, 10:20] = True    # ... overlapping this one by 20: IoU 20 / 180 < 0.25
    labels = tile_process(stack, per_plane, tile_shape=(1, 20, 20), merge="iou",
                          write_to=tmp_path / "labels.zarr", merge_log=True, compute=True)
    log = pd.read_parquet(tmp_path / "labels.zarr.merges.parquet")
    across = log[log.rule == "iou"].reset_index(drop=True)
    assert len(across) == 2 and set(across.face) == {"axis0+"}
    big, small = across.sort_values("iou", ascending=False).itertuples()
    assert (big.area_a, big.area_b, big.pixel_pairs) == (180, 160, 160)  # whole 2D objects
    assert big.iou == pytest.approx(160 / 180) and big.joined
    assert big.final_a == big.final_b == labels[0, 10, 20] == labels[1, 10, 20]
    assert (small.area_a, small.area_b, small.pixel_pairs) == (100, 100, 20)
    assert small.iou == pytest.approx(20 / 180) and not small.joined
    assert small.final_a == labels[1, 30, 5] != small.final_b == labels[2, 30, 15]
    assert (small.tile_a, small.tile_b) == (6, 10)  # planes 1 and 2, lower-left tile
    faces = log[log.rule == "face"]  # the plane-0 object across the x seam, joined in plane
    assert len(faces) == 2 and faces.joined.all() and faces.iou.isna().all()
