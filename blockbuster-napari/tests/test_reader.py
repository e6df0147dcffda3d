"""The reader contribution: a blockbuster output folder opened in napari gives the layers the Run
widget added (labels at the input's scale, table as features, merge-log seams)."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from blockbuster import tile_process
from blockbuster_napari import RunWidget
from blockbuster_napari._reader import get_reader

PLUGIN = "blockbuster-napari"


def layer_summary(layer) -> dict:
    data = layer.data if getattr(layer, "multiscale", False) else [layer.data]
    summary = {"name": layer.name, "kind": type(layer).__name__, "scale": tuple(layer.scale),
               "translate": tuple(layer.translate), "features": layer.features.to_dict("list")}
    if type(layer).__name__ == "Shapes":
        summary["data"] = [np.asarray(s).tolist() for s in layer.data]
    else:
        summary["data"] = [np.asarray(level) for level in data]
    return summary


def same_layers(first, second) -> None:
    a, b = [layer_summary(x) for x in first], [layer_summary(x) for x in second]
    assert [x["name"] for x in a] == [x["name"] for x in b]
    for x, y in zip(a, b):
        for key in ("kind", "scale", "translate", "features"):
            assert x[key] == y[key], key
        if x["kind"] == "Shapes":
            assert x["data"] == y["data"]
        else:
            assert all(np.array_equal(p, q) for p, q in zip(x["data"], y["data"]))


@pytest.fixture
def widget_run(run_and_wait, viewer, ome_image, tmp_path):
    """The Run widget's run of the OME-Zarr image, with the merge log, into ``labels.zarr``
    (its layers are in ``viewer``); returns that output folder."""
    widget = RunWidget(viewer)
    widget.path.value = str(ome_image)
    widget.merge_log.value = True
    widget.output.value = tmp_path / "labels.zarr"
    run_and_wait(widget)
    return tmp_path / "labels.zarr"


def test_opening_the_output_folder_gives_the_widgets_layers(widget_run, viewer,
                                                             make_napari_viewer, scale):
    shown = list(viewer.layers)
    assert [type(layer).__name__ for layer in shown] == ["Labels", "Shapes"]

    other = make_napari_viewer()
    opened = other.open(str(widget_run), plugin=PLUGIN)
    same_layers(shown, opened)
    assert tuple(opened[0].scale) == scale and len(opened[0].features) == opened[0].data.max()


def test_seams_are_the_tile_faces_with_the_joins_across_them(widget_run, viewer, scale):
    import pandas as pd

    seams = viewer.layers["labels seams"]
    log = pd.read_parquet(f"{widget_run}.merges.parquet")
    # 4 x 3 tiles of 32 x 32: 4 x 2 faces across x and 3 x 3 across y
    assert len(seams.data) == 17
    assert seams.features["joined"].sum() == log["joined"].sum() - edge_joins(log)
    vertical = [s for s in seams.data if s[0][1] == s[1][1]]
    assert sorted({float(s[0][1]) for s in vertical}) == [32.0, 64.0]
    assert tuple(seams.scale) == scale


def edge_joins(log) -> int:
    """Joins across a tile edge or corner (no face line shows them)."""
    return int(log.loc[log["axis"] < 0, "joined"].sum())


def test_a_plain_zarr_written_by_tile_process_opens_at_the_inputs_scale(viewer, ome_image,
                                                                        scale, tmp_path):
    out = tmp_path / "nuclei.zarr"
    tile_process(str(ome_image), "threshold", segmenter_options={"threshold": 0.5},
                 tile_shape=(32, 32), write_to=out, table=True)
    (layer,) = viewer.open(str(out), plugin=PLUGIN)
    assert type(layer).__name__ == "Labels" and layer.name == "nuclei"
    assert tuple(layer.scale) == scale
    assert np.array_equal(np.asarray(layer.data), zarr.open_array(str(out), mode="r")[:])
    assert set(layer.features.columns) >= {"index", "voxels", "centroid_y_um"}


def test_folders_blockbuster_did_not_write_are_left_to_other_readers(tmp_path, ome_image):
    zarr.create_array(store=str(tmp_path / "plain.zarr"), shape=(4, 4), dtype="u4")
    assert get_reader(str(tmp_path / "plain.zarr")) is None
    assert get_reader(str(ome_image)) is None  # an image without labels
    assert get_reader(str(tmp_path / "missing.zarr")) is None
