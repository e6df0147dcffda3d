"""Polygons of 2D label images: rasterised back they are the labels (every pixel, so IoU 1 per
object), one geometry per label, an object spanning many tiles is one Polygon, holes survive,
any tiling gives the whole image's polygons; GeoJSON for QuPath, GeoParquet, CLI, errors."""

import json
import sys

import numpy as np
import pytest
import zarr
from hypothesis import given, settings, strategies as st
from scipy import ndimage

from blockbuster import tile_process
from blockbuster.cli import main
from blockbuster.errors import (
    InvalidParameterError,
    NotTwoDimensionalError,
    OptionalDependencyError,
)

shapely = pytest.importorskip("shapely")
gpd = pytest.importorskip("geopandas")
from blockbuster.polygons import polygons, write_polygons  # noqa: E402


def rasterise(geometry, shape):
    """The pixels whose centres lie inside ``geometry``."""
    rows, cols = np.mgrid[:shape[0], :shape[1]]
    return shapely.contains_xy(geometry, cols + 0.5, rows + 0.5)


def iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def assert_traces(frame, labels):
    """Each polygon rasterises back to its object: IoU >= 0.99 (here exactly 1); one per label."""
    ids = np.unique(labels[labels > 0])
    assert frame["label"].tolist() == ids.tolist()
    assert shapely.is_valid(frame.geometry.values).all()
    for label, geometry in zip(frame["label"], frame.geometry):
        mask = labels == label
        assert iou(rasterise(geometry, labels.shape), mask) >= 0.99, label
        assert geometry.area == mask.sum(), label  # pixel-exact, not just close


def blobs(shape, seed=0, threshold=0.52, sigma=2):
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random(shape), sigma)
    return ndimage.label(field > threshold)[0].astype(np.uint32)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), height=st.integers(1, 24), width=st.integers(1, 24),
       values=st.integers(1, 5), tile=st.tuples(st.integers(1, 25), st.integers(1, 25)))
def test_random_labels_on_random_tilings_rasterise_back_exactly(seed, height, width, values, tile):
    """Random labels are the hard case: objects in pieces, touching only at corners, holes in
    holes, objects cut by every tile border. Tiled == whole image, and both == the labels."""
    labels = np.random.default_rng(seed).integers(0, values + 1, (height, width))
    frame = polygons(labels, tile_shape=tile, workers=1)
    assert_traces(frame, labels)
    whole = polygons(labels, tile_shape=labels.shape, workers=1)
    assert all(a.equals(b) for a, b in zip(frame.geometry, whole.geometry))
    assert shapely.get_num_coordinates(frame.geometry.values).sum() == (
        shapely.get_num_coordinates(whole.geometry.values).sum())  # no tile-border vertices


def test_objects_spanning_many_tiles_are_one_polygon_each():
    labels = blobs((150, 170), seed=4, threshold=0.5, sigma=4)
    frame = polygons(labels, tile_shape=(16, 16), workers=2)
    assert_traces(frame, labels)
    spans = [len({(r // 16, c // 16) for r, c in np.argwhere(labels == label)})
             for label in frame["label"]]
    assert max(spans) >= 9  # some object covers 9+ tiles
    connected = [ndimage.label(labels == label)[1] == 1 for label in frame["label"]]
    assert all(connected)
    assert (frame.geom_type == "Polygon").all()  # each connected object: ONE polygon


def test_holes_survive_tiling():
    """A ring around a background hole, and a ring around another object (a nucleus in a
    cell): both keep their hole when the tiles cut through them."""
    labels = np.zeros((40, 40), np.uint16)
    labels[5:35, 5:35] = 1
    labels[12:28, 12:28] = 0  # background hole in object 1
    labels[2:38, 2:4] = 2
    rows, cols = np.mgrid[:40, :40]
    cell = (rows - 20) ** 2 + (cols - 20) ** 2 < 6 ** 2
    labels[cell] = 3  # inside the hole: object 3
    labels[cell & ((rows - 20) ** 2 + (cols - 20) ** 2 < 2 ** 2)] = 0  # with its own hole
    frame = polygons(labels, tile_shape=(7, 9)).set_index("label")
    assert_traces(frame.reset_index(), labels)
    assert len(frame.loc[1, "geometry"].interiors) == 1
    assert frame.loc[1, "geometry"].interiors[0].convex_hull.area == 16 * 16
    assert len(frame.loc[3, "geometry"].interiors) == 1
    for polygon in frame.geometry:  # GeoJSON's right-hand rule: shells ccw, holes cw
        assert polygon.exterior.is_ccw and not any(ring.is_ccw for ring in polygon.interiors)


@pytest.mark.parametrize("tile", [(4, 3), (1, 1), (2, 2)])
def test_an_object_closed_around_a_hole_at_one_corner_is_valid(tile):
    """Pixels (0, 1) and (1, 0) meet at a corner only, and the object closes around the hole
    (1..2, 1) there: the traced ring passes that corner twice, which must become a shell with
    a hole touching it (valid), not a self-touching ring."""
    labels = np.array([[0, 1, 1], [1, 0, 1], [1, 0, 1], [1, 1, 1]])
    frame = polygons(labels, tile_shape=tile, workers=1)
    assert_traces(frame, labels)
    assert len(frame.geometry[0].interiors) == 1


def test_an_object_in_pieces_is_one_multipolygon():
    labels = np.zeros((10, 10), np.uint8)
    labels[1:3, 1:3] = 5
    labels[6:9, 6:9] = 5
    labels[3, 3] = 5  # touches the first square at a corner only
    frame = polygons(labels, tile_shape=(4, 4))
    assert_traces(frame, labels)
    assert len(frame) == 1 and frame.geom_type.tolist() == ["MultiPolygon"]
    assert len(frame.geometry[0].geoms) == 3


def test_empty_labels_give_no_polygons():
    frame = polygons(np.zeros((8, 8), np.uint8))
    assert len(frame) == 0 and "label" in frame


def run_with_table(tmp_path, table="n.csv"):
    """A 2D OME-Zarr nuclei image (0.5 um pixels) segmented tile by tile, with its table."""
    from blockbuster.synthetic import nuclei, write_image

    write_image(tmp_path / "image.ome.zarr", nuclei((192, 160), seed=2), axes=("y", "x"),
                scale=(0.5, 0.5), units={"y": "micrometer", "x": "micrometer"},
                chunks=(64, 64))
    tile_process(str(tmp_path / "image.ome.zarr"), "threshold",
                 segmenter_options={"threshold": 0.5}, tile_shape=(64, 64), writer="ome-zarr",
                 write_to=str(tmp_path / "image.ome.zarr"), writer_options={"name": "nuclei"},
                 table=str(tmp_path / table))
    return tmp_path / "image.ome.zarr" / "labels" / "nuclei", tmp_path / table


def test_table_columns_join_and_physical_units_come_from_the_labels(tmp_path):
    labels_path, table_path = run_with_table(tmp_path)
    frame = polygons(labels_path, table=table_path, tile_shape=(50, 70))
    labels = np.asarray(zarr.open_group(str(labels_path), mode="r")["0"])
    assert_traces(frame[["label", "geometry"]], labels)
    assert (frame.geometry.area == frame["voxels"]).all()  # the table's rows, joined by label
    assert frame.attrs["scale"] == [0.5, 0.5] and frame.attrs["units"][-1] == "micrometer"
    write_polygons(frame, tmp_path / "n.parquet")
    back = gpd.read_parquet(tmp_path / "n.parquet")
    assert back["label"].tolist() == frame["label"].tolist()
    assert all(a.equals(b) for a, b in zip(back.geometry, frame.geometry))
    physical = gpd.GeoSeries.from_wkb(
        __import__("pyarrow.parquet").parquet.read_table(tmp_path / "n.parquet")
        .column("geometry_um").to_pylist())
    np.testing.assert_allclose(physical.area, frame["volume_um2"])  # area in um^2
    # pixel centres land on the table's physical centroids: centre of mass in um agrees
    np.testing.assert_allclose(physical.centroid.y, frame["centroid_y_um"], atol=1e-9)
    np.testing.assert_allclose(physical.centroid.x, frame["centroid_x_um"], atol=1e-9)


def test_physical_scale_from_a_parquet_table_when_the_labels_have_none(tmp_path):
    labels_path, table_path = run_with_table(tmp_path, "n.parquet")
    plain = np.asarray(zarr.open_group(str(labels_path), mode="r")["0"])  # no metadata
    assert polygons(plain).attrs["scale"] is None
    frame = polygons(plain, table=table_path)
    assert frame.attrs["scale"] == [0.5, 0.5] and frame.attrs["units"][-1] == "micrometer"


@pytest.mark.parametrize("side", ["left", "right"])
def test_the_physical_units_survive_a_merge_with_another_table(tmp_path, side):
    """pandas drops ``attrs`` in a merge; the ``geometry_um`` column goes through it."""
    import pandas as pd

    labels_path, table_path = run_with_table(tmp_path)
    shapes = polygons(labels_path)
    expected = np.asarray(shapes["geometry_um"].array, dtype=object)
    np.testing.assert_allclose(shapes["geometry_um"].area, shapes.geometry.area * 0.25)
    cells = pd.DataFrame({"label": shapes["label"], "cell": shapes["label"] * 10})
    merged = shapes.merge(cells, on="label") if side == "left" else cells.merge(shapes,
                                                                                 on="label")
    assert merged.attrs == {}  # what pandas does
    write_polygons(merged, tmp_path / "m.parquet")
    write_polygons(merged, tmp_path / "m.geojson", physical=True)
    back = gpd.read_parquet(tmp_path / "m.parquet", columns=["label", "cell", "geometry_um"])
    assert all(a.equals(b) for a, b in zip(back["geometry_um"], expected))
    features = json.loads((tmp_path / "m.geojson").read_text())["features"]
    assert [f["properties"]["cell"] for f in features] == (shapes["label"] * 10).tolist()
    assert all(shapely.from_geojson(json.dumps(f["geometry"])).equals(e)
               for f, e in zip(features, expected))  # micrometres, not pixels


def test_geojson_is_a_qupath_feature_collection_of_detections(tmp_path):
    labels_path, table_path = run_with_table(tmp_path)
    frame = polygons(labels_path, table=table_path)
    write_polygons(frame, tmp_path / "n.geojson", classification="Nucleus")
    data = json.loads((tmp_path / "n.geojson").read_text())
    assert data["type"] == "FeatureCollection" and len(data["features"]) == len(frame)
    for feature, (_, row) in zip(data["features"], frame.iterrows()):
        assert feature["type"] == "Feature"
        assert feature["geometry"]["type"] in ("Polygon", "MultiPolygon")
        props = feature["properties"]
        assert props["objectType"] == "detection"
        assert props["classification"] == {"name": "Nucleus"}
        assert props["name"] == str(row["label"])
        measurements = props["measurements"]
        assert measurements["voxels"] == row["voxels"] and "centroid_x_um" in measurements
        assert all(isinstance(v, int | float) for v in measurements.values())
        assert props["tiles"] == list(row["tiles"])  # non-numbers stay plain properties
    read = gpd.read_file(tmp_path / "n.geojson")  # any GeoJSON reader opens it
    assert all(a.equals(b) for a, b in zip(read.geometry, frame.geometry))
    write_polygons(frame, tmp_path / "um.geojson", physical=True)
    um = gpd.read_file(tmp_path / "um.geojson")
    np.testing.assert_allclose(shapely.area(um.geometry.values), frame.geometry.area * 0.25)


def test_3d_labels_explain_how_to_pick_a_plane():
    labels = np.zeros((3, 20, 20), np.uint8)
    labels[1, 4:9, 4:9] = 7
    with pytest.raises(NotTwoDimensionalError, match=r"2D label images; this one is 3D.*plane="):
        polygons(labels)
    frame = polygons(labels, plane=1)
    assert_traces(frame, labels[1])
    assert len(polygons(labels, plane=0)) == 0
    with pytest.raises(InvalidParameterError, match=r"plane=3 is outside the 3 planes"):
        polygons(labels, plane=3)
    assert_traces(polygons(labels[1:2]), labels[1])  # a single plane needs no plane=


def test_unknown_suffix_and_physical_without_scale_are_refused(tmp_path):
    frame = polygons(np.eye(4, dtype=np.uint8))
    with pytest.raises(InvalidParameterError, match=r"use .geojson .* or .parquet"):
        write_polygons(frame, tmp_path / "x.shp")
    with pytest.raises(InvalidParameterError, match=r"no physical scale; pass scale="):
        write_polygons(frame, tmp_path / "x.geojson", physical=True)


def test_missing_shapely_says_which_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "shapely", None)
    with pytest.raises(OptionalDependencyError, match=r'pip install "blockbuster-core\[geo\]"'):
        polygons(np.ones((3, 3), np.uint8))


def test_cli_writes_geojson_and_geoparquet(tmp_path, capsys):
    labels = blobs((60, 80), seed=5)
    zarr.create_array(store=tmp_path / "l.zarr", data=labels, chunks=(20, 20))
    code = main(["polygons", str(tmp_path / "l.zarr"), "-o", str(tmp_path / "l.geojson"),
                 "-o", str(tmp_path / "l.parquet"), "--tile-shape", "20,30",
                 "--classification", "Nucleus"])
    assert code == 0
    assert f"wrote {labels.max()} polygons" in capsys.readouterr().err
    assert_traces(gpd.read_file(tmp_path / "l.geojson"), labels)
    assert_traces(gpd.read_parquet(tmp_path / "l.parquet"), labels)


def test_cli_explains_a_3d_image_in_one_line(tmp_path, capsys):
    zarr.create_array(store=tmp_path / "l.zarr", data=np.ones((2, 5, 5), np.uint8))
    assert main(["polygons", str(tmp_path / "l.zarr"), "-o", str(tmp_path / "l.geojson")]) == 1
    assert "--plane k" in capsys.readouterr().err
