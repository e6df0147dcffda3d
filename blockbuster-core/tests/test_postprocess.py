"""``[postprocess]`` in a run config: expand, relate and polygons on the labels the run wrote,
equal to the Python calls on them; a bad key fails before the run, naming the fix."""

import json

import numpy as np
import pytest
import zarr
from scipy import ndimage
from skimage.segmentation import expand_labels as expand_whole

from blockbuster.cli import main
from blockbuster.config import load_config, postprocessing
from blockbuster.errors import ConfigError
from blockbuster.relations import relate
from blockbuster.table import read_table

JOB = ('[input]\npath = "img.zarr"\n[segmenter]\nname = "threshold"\nthreshold = 520.0\n'
       '[output]\npath = "nuclei.zarr"\ntable = true\n')


@pytest.fixture
def image(tmp_path):
    rng = np.random.default_rng(1)
    data = (ndimage.gaussian_filter(rng.random((90, 70)), 3) * 1000).astype(np.uint16)
    zarr.create_array(tmp_path / "img.zarr", data=data, chunks=(32, 32))
    return tmp_path


def test_expand_relate_and_polygons_after_the_run(image, capsys):
    gpd = pytest.importorskip("geopandas")
    (image / "job.toml").write_text(
        JOB + '[postprocess]\nexpand = 3\nexpand_spacing = [1.0, 0.5]\n'
        'relate = "nuclei.expanded.zarr"\npolygons = ["n.geojson", "n.parquet"]\n')
    assert main(["run", str(image / "job.toml")]) == 0
    err = capsys.readouterr().err
    for written in ("nuclei.expanded.zarr", "nuclei.relations.csv", "n.geojson", "n.parquet"):
        assert f"{image / written}" in err
    nuclei = zarr.open_array(image / "nuclei.zarr", mode="r")[:]
    cells = zarr.open_array(image / "nuclei.expanded.zarr", mode="r")[:]
    np.testing.assert_array_equal(cells, expand_whole(nuclei, 3, spacing=(1.0, 0.5)))
    relations = read_table(image / "nuclei.relations.csv")
    expected = relate(nuclei, cells)
    np.testing.assert_array_equal(relations["parent"], expected["parent"])
    assert (relations["parent"] == relations["child"]).all()  # a nucleus is in its own cell
    shapes = gpd.read_parquet(image / "n.parquet")
    assert shapes["label"].tolist() == list(range(1, nuclei.max() + 1))
    assert (shapes.geometry.area == shapes["voxels"]).all()  # the table's columns, joined
    features = json.loads((image / "n.geojson").read_text())["features"]
    assert len(features) == nuclei.max()
    assert features[0]["properties"]["measurements"]["voxels"] == shapes["voxels"][0]


@pytest.mark.parametrize("postprocess, message", [
    ('expand_to = "c.zarr"', r"expand_to is set but expand is not; set expand"),
    ('relate_to = "r.csv"', r"relate_to is set but relate is not"),
    ('expand = 2\nexpand_spacing = [1, 0]', r"expand_spacing = \[1, 0\]: give the voxel size"),
    ('expand = 2\nexpand_spacing = "microns"', "or \"physical\""),
    ('relate = "cells.zarr"\nrelate_to = "r.txt"', r"relate_to = .*r.txt': use a .csv or"),
    ('polygons = "n.svg"', r"polygons = .*n.svg': use a .geojson \(QuPath\) or .parquet"),
    ('polygons = []', r"polygons = \[\]: give a path or a list of paths"),
    ('polygons = 3', "polygons = 3 must be of type str or list"),
])
def test_bad_postprocess_values_fail_before_the_run_naming_the_fix(image, postprocess, message):
    (image / "job.toml").write_text(JOB + "[postprocess]\n" + postprocess + "\n")
    with pytest.raises(ConfigError, match=message):
        postprocessing(load_config(image / "job.toml"))
    assert main(["run", str(image / "job.toml")]) == 1
    assert not (image / "nuclei.zarr").exists()  # nothing ran


def test_relate_and_polygons_need_the_output_path(image, capsys):
    (image / "job.toml").write_text(JOB.replace('path = "nuclei.zarr"\ntable = true\n', "")
                                    + '[postprocess]\npolygons = "n.geojson"\n')
    assert main(["run", str(image / "job.toml")]) == 1
    assert "[postprocess] polygons works on the labels written to [output] path" in \
        capsys.readouterr().err


def test_paths_are_relative_to_the_config_and_urls_stay(image):
    (image / "job.toml").write_text(JOB + '[postprocess]\nrelate = "cells.zarr"\n'
                                    'relate_to = "s3://bucket/r.parquet"\n')
    plan = postprocessing(load_config(image / "job.toml"))
    assert plan.relations == "s3://bucket/r.parquet"
    assert load_config(image / "job.toml").get("postprocess", "relate") == \
        str(image / "cells.zarr")


def test_postprocess_names_beside_an_ome_zarr_output_keep_ome_zarr_last(image):
    """Derived names drop ``.ome.zarr`` whole (not ``tissue.ome.relations.csv``); polygon
    files are never derived: they are the paths given, relative to the config."""
    pytest.importorskip("shapely")
    (image / "job.toml").write_text(
        JOB.replace("nuclei.zarr", "tissue.ome.zarr") + '[postprocess]\nexpand = 2\n'
        'relate = "cells.zarr"\npolygons = ["tissue.geojson", "s3://b/tissue.parquet"]\n')
    plan = postprocessing(load_config(image / "job.toml"))
    assert plan.expanded == str(image / "tissue.expanded.ome.zarr")
    assert plan.relations == str(image / "tissue.relations.csv")
    assert plan.polygons == (str(image / "tissue.geojson"), "s3://b/tissue.parquet")
    (image / "job.toml").write_text(JOB + "[postprocess]\npolygons = true\n")
    with pytest.raises(ConfigError, match="polygons = True must be of type str or list"):
        load_config(image / "job.toml")


def test_postprocess_reads_the_labels_the_ome_zarr_writer_put_inside_the_image(tmp_path):
    """Not the image at [output] path: its labels/<name>; physical spacing from its scale,
    which the expanded plain zarr records, so its polygons have micrometres too."""
    from blockbuster.synthetic import nuclei, write_image

    write_image(tmp_path / "tissue.ome.zarr", nuclei((160, 140), density=0.002, seed=3),
                axes="yx", scale=(0.5, 0.25), units={"y": "micrometer", "x": "micrometer"},
                chunks=(64, 64))
    (tmp_path / "job.toml").write_text(
        '[input]\npath = "tissue.ome.zarr"\n[segmenter]\nname = "threshold"\n'
        'threshold = 20000\n[output]\npath = "tissue.ome.zarr"\nwriter = "ome-zarr"\n'
        'name = "nuclei"\n[postprocess]\nexpand = 1.5\nexpand_spacing = "physical"\n'
        'relate = "tissue.expanded.ome.zarr"\n')
    assert main(["run", str(tmp_path / "job.toml")]) == 0
    nuclei_labels = zarr.open_array(tmp_path / "tissue.ome.zarr/labels/nuclei/0", mode="r")[:]
    assert nuclei_labels.max() > 3
    cells = zarr.open_array(tmp_path / "tissue.expanded.ome.zarr", mode="r")[:]
    np.testing.assert_array_equal(cells, expand_whole(nuclei_labels, 1.5, spacing=(0.5, 0.25)))
    relations = read_table(tmp_path / "tissue.relations.csv")
    assert relations["child"].tolist() == list(range(1, nuclei_labels.max() + 1))
    assert (relations["parent"] == relations["child"]).all()
    pytest.importorskip("geopandas")
    from blockbuster.polygons import polygons

    shapes = polygons(tmp_path / "tissue.expanded.ome.zarr")  # a plain zarr: scale recorded
    assert shapes.attrs["scale"] == [0.5, 0.25] and "geometry_um" in shapes


def test_polygons_of_a_3d_run_trace_the_plane_named_by_polygons_plane(tmp_path, capsys):
    """3D labels: ``polygons_plane`` picks the plane, as ``polygons(plane=)`` does; without it
    the step fails after the run naming the key, and the written labels stay."""
    gpd = pytest.importorskip("geopandas")
    from blockbuster.polygons import polygons

    rng = np.random.default_rng(2)
    data = (ndimage.gaussian_filter(rng.random((3, 60, 50)), 3) * 1000).astype(np.uint16)
    zarr.create_array(tmp_path / "img.zarr", data=data, chunks=(1, 32, 32))
    job = JOB.replace('table = true\n', '') + '[postprocess]\npolygons = "n.parquet"\n'
    (tmp_path / "job.toml").write_text(job)
    assert main(["run", str(tmp_path / "job.toml")]) == 1
    assert "[postprocess] polygons_plane = k" in capsys.readouterr().err
    written = zarr.open_array(tmp_path / "nuclei.zarr", mode="r")[:]
    assert written[1].max() > 0  # the labels are kept
    (tmp_path / "job.toml").write_text(job + "polygons_plane = 1\n")
    assert main(["run", str(tmp_path / "job.toml")]) == 0
    shapes = gpd.read_parquet(tmp_path / "n.parquet")
    expected = polygons(tmp_path / "nuclei.zarr", plane=1)
    assert shapes["label"].tolist() == expected["label"].tolist()
    assert shapes["label"].tolist() == sorted(set(np.unique(written[1])) - {0})
    assert np.allclose(shapes.geometry.area, expected.geometry.area)


def test_polygons_plane_without_polygons_fails_before_the_run(image):
    (image / "job.toml").write_text(JOB + "[postprocess]\npolygons_plane = 0\n")
    with pytest.raises(ConfigError, match="polygons_plane is set but polygons is not"):
        postprocessing(load_config(image / "job.toml"))


@pytest.mark.parametrize("missing, postprocess", [
    ("pandas", ""),  # [output] table = true
    ("pyarrow", '[postprocess]\nrelate = "cells.zarr"\nrelate_to = "r.parquet"\n'),
])
def test_a_missing_table_package_fails_the_config_run_before_it_starts(image, capsys,
                                                                       monkeypatch, missing,
                                                                       postprocess):
    import sys

    (image / "job.toml").write_text(JOB + postprocess)
    monkeypatch.setitem(sys.modules, missing, None)  # `import <missing>` now fails
    assert main(["run", str(image / "job.toml")]) == 1
    err = capsys.readouterr().err
    assert f"needs {missing}, which is not installed" in err
    assert f"pip install {missing}" in err
    assert not (image / "nuclei.zarr").exists()  # nothing ran
