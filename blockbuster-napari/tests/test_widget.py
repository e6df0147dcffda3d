"""The Run widget in a real (headless) napari viewer: the labels it shows are tile_process's,
at the input's scale with the table as features; Cancel leaves a stage the next Run resumes;
a bad option is a notification and writes nothing."""

from __future__ import annotations

import numpy as np
import pytest

from blockbuster import tile_process
from blockbuster.table import read_table
from blockbuster_napari import RunWidget


@pytest.fixture
def notifications():
    from napari.utils.notifications import notification_manager

    seen = []
    notification_manager.notification_ready.connect(seen.append)
    yield seen
    notification_manager.notification_ready.disconnect(seen.append)


def test_run_on_a_file_shows_tile_process_labels_at_the_physical_scale(
        run_and_wait, viewer, ome_image, scale, tmp_path):
    widget = RunWidget(viewer)
    viewer.window.add_dock_widget(widget, name="blockbuster")
    widget.path.value = str(ome_image)
    assert widget.segmenter.value == "watershed"
    # pre-filled with what tile_process picks: the input's chunks, the watershed's Needs halo
    # (2 x its diameter, 2 x min_distance by default), following the options
    assert (widget.tile_shape.value, widget.overlap.value) == ("32, 32", "20, 20")
    widget.segmenter_options["min_distance"].value = 4
    assert widget.overlap.value == "16, 16"
    assert "level" in [p.name for p in widget.reader_options.parameters]  # the reader's own
    widget.output.value = tmp_path / "labels.zarr"
    run_and_wait(widget)

    expected = tile_process(str(ome_image), "watershed", segmenter_options={"min_distance": 4},
                            tile_shape=(32, 32), overlap=16, compute=True)
    layer = viewer.layers["labels"]
    assert np.array_equal(np.asarray(layer.data), expected)
    assert tuple(layer.scale) == scale
    assert widget.stats.n_objects == expected.max() > 10
    assert widget.progress.value == widget.progress.max == 12 * 3  # 4 x 3 tiles, 3 stages
    table = read_table(tmp_path / "labels.zarr.objects.csv")
    assert list(layer.features["index"]) == list(table["label"])
    assert list(layer.features["voxels"]) == list(table["voxels"])


def test_run_on_an_image_layer_keeps_its_scale(run_and_wait, viewer, image, tmp_path):
    viewer.add_image(image, name="nuclei", scale=(2.0, 3.0))
    widget = RunWidget(viewer)
    assert widget.layer.value is viewer.layers["nuclei"]
    widget.tile_shape.value, widget.overlap.value = "48, 40", "6"
    widget.output.value = tmp_path / "nuclei-labels.zarr"
    run_and_wait(widget)

    expected = tile_process(image, "watershed", tile_shape=(48, 40), overlap=6, compute=True)
    layer = viewer.layers["nuclei-labels"]
    assert np.array_equal(np.asarray(layer.data), expected)
    assert tuple(layer.scale) == (2.0, 3.0)


def test_an_ome_zarr_output_is_a_lazy_multiscale_layer(run_and_wait, viewer, ome_image,
                                                        scale, tmp_path):
    import dask.array as da

    widget = RunWidget(viewer)
    widget.path.value = str(ome_image)
    widget.writer.value = "ome-zarr"
    widget.table.value = False
    widget.output.value = tmp_path / "out.ome.zarr"
    run_and_wait(widget)

    layer = viewer.layers["segmentation"]
    assert layer.multiscale and len(layer.data) > 1
    assert all(isinstance(level, da.Array) for level in layer.data)  # never loaded whole
    expected = tile_process(str(ome_image), "watershed", tile_shape=(32, 32), overlap=20,
                            compute=True)
    assert np.array_equal(np.asarray(layer.data[0]), expected)
    assert np.array_equal(np.asarray(layer.data[1]), expected[::2, ::2])
    assert tuple(layer.scale) == scale


def test_cancel_stops_the_run_and_run_again_resumes_from_the_stage(
        run_and_wait, viewer, ome_image, tmp_path, registry, notifications):
    widget = RunWidget(viewer, registry=registry)
    widget.path.value = str(ome_image)
    widget.segmenter.value = "slow-watershed"
    widget.tile_shape.value, widget.overlap.value = "16, 16", "8"  # 8 x 6 = 48 tiles, 50 ms each
    widget.executor.value = "serial"
    out = tmp_path / "labels.zarr"
    widget.output.value = out

    def cancel_at_first_progress(stage, done, total):
        if done > 0:
            widget.cancel_button.clicked.emit()

    widget._relay.event.connect(cancel_at_first_progress)
    run_and_wait(widget)
    widget._relay.event.disconnect(cancel_at_first_progress)

    assert widget.status.value == "cancelled: Run again resumes"
    assert "labels" not in viewer.layers
    staged = len(list((tmp_path / "labels.zarr.stage" / "tiles").glob("*.pickle")))
    assert 0 < staged < 48
    assert any("run cancelled" in n.message and f"{staged} of 48 tiles are staged" in n.message
               for n in notifications)

    run_and_wait(widget)
    assert widget.stats.tiles_resumed == staged
    expected = tile_process(str(ome_image), "watershed", tile_shape=(16, 16), overlap=8,
                            compute=True)
    assert np.array_equal(np.asarray(viewer.layers["labels"].data), expected)
    assert not (tmp_path / "labels.zarr.stage").exists()


def test_a_bad_option_is_a_notification_and_writes_nothing(run_and_wait, viewer, ome_image,
                                                           tmp_path, notifications):
    from napari.utils.notifications import NotificationSeverity

    widget = RunWidget(viewer)
    widget.path.value = str(ome_image)
    widget.segmenter_options["sigma"].value = -1.0
    widget.output.value = tmp_path / "labels.zarr"
    run_and_wait(widget)

    errors = [n for n in notifications if n.severity == NotificationSeverity.ERROR]
    assert len(errors) == 1
    message = errors[0].message
    assert "rejected option sigma=-1.0" in message and "\n" not in message
    assert "Traceback" not in message
    assert widget.status.value == message
    assert list(tmp_path.iterdir()) == [ome_image]  # no output, no stage, no lock
    assert [layer.name for layer in viewer.layers] == []


def test_missing_input_or_output_is_said_before_any_thread_starts(viewer, tmp_path,
                                                                  notifications):
    widget = RunWidget(viewer)
    widget.run_button.clicked.emit()
    assert widget.worker is None
    assert notifications[-1].message == ("choose an image layer or give a file / URL to "
                                         "segment.")
    widget.path.value = str(tmp_path / "x.zarr")
    widget.tile_shape.value = "32 x 32"
    widget.output.value = tmp_path / "out.zarr"
    widget.run_button.clicked.emit()
    assert widget.worker is None
    assert "tile shape '32 x 32': give whole numbers" in notifications[-1].message


def test_segmenter_options_are_the_factory_signature(viewer, registry):
    widget = RunWidget(viewer, registry=registry)
    names = [p.name for p in widget.segmenter_options.parameters]
    assert names == ["threshold", "sigma", "min_size", "connectivity", "min_distance",
                     "diameter"]
    widget.segmenter.value = "threshold"
    assert [p.name for p in widget.segmenter_options.parameters] == [
        "threshold", "sigma", "min_size", "connectivity"]
    widget.segmenter_options["threshold"].value = "0.5"
    widget.segmenter_options["connectivity"].value = 2
    assert widget.segmenter_options.options() == {"threshold": 0.5, "connectivity": 2}
    widget.segmenter.value = "slow-watershed"
    assert widget.segmenter_options.parameters[0].name == "delay"
    widget.segmenter.value = "cellpose"  # a backend package's segmenter, by name
    fields = {p.name: widget.segmenter_options[p.name] for p in
              widget.segmenter_options.parameters}
    assert {"model", "diameter", "gpu", "flow_threshold"} <= set(fields)
    assert "eval_kwargs" not in fields  # **kwargs has no field
    assert type(fields["gpu"]).__name__ == "CheckBox"
    fields["model"].value, fields["diameter"].value = "cyto3", "30"
    assert widget.segmenter_options.options() == {"model": "cyto3", "diameter": 30}
