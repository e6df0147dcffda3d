"""Out-of-core expand_labels == skimage.segmentation.expand_labels on the whole image."""

import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings, strategies as st
from scipy import ndimage
from skimage.segmentation import expand_labels as expand_whole

from blockbuster import expand_labels
from blockbuster.errors import InvalidParameterError, OutputExistsError, StageMismatchError
from blockbuster.testing import store_digest


@st.composite
def labels_and_tiling(draw):
    ndim = draw(st.sampled_from([2, 2, 3]))
    shape = tuple(draw(st.lists(st.integers(4, 40 if ndim == 2 else 12), min_size=ndim,
                                max_size=ndim)))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    density = draw(st.sampled_from([0.005, 0.03, 0.2, 0.6]))
    # dense random seeds with few distinct ids: many pixels equidistant from two labels
    labels = (rng.random(shape) < density) * rng.integers(1, draw(st.integers(2, 9)), shape)
    tile_shape = tuple(draw(st.integers(1, s)) for s in shape)
    distance = draw(st.sampled_from([0, 1, 1.5, 2, 3, 4.7, 6]))
    # isotropic pixels half the time; else voxels of different sizes per axis (z-stacks)
    spacing = draw(st.one_of(st.none(), st.tuples(*[st.sampled_from([0.3, 0.5, 1, 1.7, 2.5, 4])
                                                    for _ in shape])))
    return labels.astype(np.uint16), tile_shape, distance, spacing


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(labels_and_tiling())
def test_tiled_expansion_equals_skimage_on_the_whole_image(tmp_path, case):
    labels, tile_shape, distance, spacing = case
    grown = expand_labels(labels, distance, spacing=spacing, write_to=tmp_path / "cells.zarr",
                          overwrite=True, tile_shape=tile_shape, executor="serial", compute=True)
    expected = expand_whole(labels, distance, spacing=1 if spacing is None else spacing)
    assert grown.dtype == labels.dtype
    np.testing.assert_array_equal(grown, expected)


def test_nuclei_grown_into_cells_from_a_zarr_with_threads(tmp_path):
    rng = np.random.default_rng(0)
    nuclei = ndimage.label(ndimage.gaussian_filter(rng.random((200, 180)), 3) > 0.56)[0]
    zarr.create_array(tmp_path / "nuclei.zarr", data=nuclei.astype(np.uint32), chunks=(64, 64))
    cells = expand_labels(tmp_path / "nuclei.zarr", 5, write_to=tmp_path / "cells.zarr",
                          workers=2)
    assert cells.chunks[0][0] == 64  # the labels' chunks are the tiles
    np.testing.assert_array_equal(cells.compute(), expand_whole(nuclei, 5))
    assert (cells.compute() > 0).sum() > (nuclei > 0).sum()
    stored = zarr.open_array(tmp_path / "cells.zarr", mode="r")
    assert stored.attrs["blockbuster"]["expanded_by"] == 5


@pytest.mark.parametrize("distance", [-1, float("nan"), "5", True])
def test_bad_distance_says_what_to_give(tmp_path, distance):
    with pytest.raises(InvalidParameterError, match="a number >= 0"):
        expand_labels(np.zeros((8, 8), np.uint8), distance, write_to=tmp_path / "c.zarr")


def test_refuses_to_overwrite_other_data(tmp_path):
    zarr.create_array(tmp_path / "c.zarr", data=np.ones((8, 8), np.uint8))
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        expand_labels(np.zeros((8, 8), np.uint8), 2, write_to=tmp_path / "c.zarr")


def test_cli_expand_and_config_postprocess(tmp_path, capsys):
    from blockbuster.cli import main

    rng = np.random.default_rng(1)
    image = (ndimage.gaussian_filter(rng.random((90, 70)), 3) * 1000).astype(np.uint16)
    zarr.create_array(tmp_path / "img.zarr", data=image, chunks=(32, 32))
    (tmp_path / "job.toml").write_text(
        '[input]\npath = "img.zarr"\n[segmenter]\nname = "threshold"\nthreshold = 520.0\n'
        '[output]\npath = "nuclei.zarr"\n[postprocess]\nexpand = 3\n')
    assert main(["run", str(tmp_path / "job.toml")]) == 0
    assert "nuclei.expanded.zarr" in capsys.readouterr().err
    nuclei = zarr.open_array(tmp_path / "nuclei.zarr", mode="r")[:]
    assert nuclei.max() > 3
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "nuclei.expanded.zarr")[:],
                                  expand_whole(nuclei, 3))
    assert main(["expand", str(tmp_path / "nuclei.zarr"), str(tmp_path / "cells.zarr"),
                 "--distance", "6", "--tile-shape", "20,25", "--workers", "2"]) == 0
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "cells.zarr")[:],
                                  expand_whole(nuclei, 6))
    assert main(["expand", str(tmp_path / "nuclei.zarr"), str(tmp_path / "flat.zarr"),
                 "--distance", "4", "--spacing", "2,0.5"]) == 0
    assert "grown by 4 (in the units of --spacing)" in capsys.readouterr().err
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "flat.zarr")[:],
                                  expand_whole(nuclei, 4, spacing=(2, 0.5)))
    with pytest.raises(SystemExit):
        main(["expand", str(tmp_path / "nuclei.zarr"), str(tmp_path / "x.zarr"),
              "--distance", "4", "--spacing", "2;0.5"])
    assert "give the voxel size per axis separated by commas" in capsys.readouterr().err


def test_config_expand_without_an_output_path_fails_before_the_run(tmp_path, capsys):
    from blockbuster.cli import main

    (tmp_path / "job.toml").write_text(
        '[input]\npath = "missing.zarr"\n[segmenter]\nname = "threshold"\n'
        '[postprocess]\nexpand = 3\n')
    assert main(["run", str(tmp_path / "job.toml")]) == 1
    assert "[postprocess] expand works on the labels written to [output] path" in \
        capsys.readouterr().err


def test_physical_spacing_reads_the_scale_of_an_ome_zarr(tmp_path):
    from blockbuster.synthetic import write_image

    rng = np.random.default_rng(2)
    nuclei = ndimage.label(ndimage.gaussian_filter(rng.random((10, 60, 50)), 2) > 0.55)[0]
    path = write_image(tmp_path / "nuclei.zarr", nuclei.astype(np.uint32), axes="zyx",
                       scale=(2.0, 0.5, 0.5), chunks=(4, 24, 24))
    cells = expand_labels(path, 3.0, spacing="physical", write_to=tmp_path / "cells.zarr",
                          compute=True)  # 3 micrometres: 1 plane in z, 6 pixels in y and x
    np.testing.assert_array_equal(cells, expand_whole(nuclei, 3.0, spacing=(2.0, 0.5, 0.5)))
    assert not np.array_equal(cells, expand_whole(nuclei, 3.0))
    stored = zarr.open_array(tmp_path / "cells.zarr", mode="r")
    assert stored.attrs["blockbuster"]["spacing"] == [2.0, 0.5, 0.5]


@pytest.mark.parametrize("spacing, message", [
    ((1.0,), r"one voxel size > 0 per axis of the labels \(2 axes"),
    ((1.0, 0.0), "one voxel size > 0 per axis"),
    ("microns", "give 'physical'"),
    ("physical", "carry no physical scale"),
])
def test_bad_spacing_says_what_to_give(tmp_path, spacing, message):
    with pytest.raises(InvalidParameterError, match=message):
        expand_labels(np.zeros((8, 8), np.uint8), 2, spacing=spacing,
                      write_to=tmp_path / "c.zarr")


CHILD = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from scipy import ndimage
    import blockbuster.expand as expand

    after, out = int(sys.argv[1]), sys.argv[2]
    original, expanded = expand.expand_task, [0]

    def counting(job, indices):  # dies once the tasks begun hold more than `after` tiles
        expanded[0] += len(indices)
        if 0 <= after < expanded[0]:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(job, indices)

    expand.expand_task = counting
    rng = np.random.default_rng(4)
    nuclei = ndimage.label(ndimage.gaussian_filter(rng.random((160, 150)), 3) > 0.56)[0]
    expand.expand_labels(nuclei.astype(np.uint32), 4.5, spacing=(1.0, 0.7), write_to=out,
                         tile_shape=(20, 30), executor="threads", workers=2)
    print("expanded", expanded[0])
""")


def test_sigkill_then_resume_is_byte_identical(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)

    def run(after, out):
        return subprocess.run([sys.executable, str(script), str(after), str(out)],
                              capture_output=True, text=True)

    assert run(-1, tmp_path / "reference.zarr").stdout.split() == ["expanded", "40"]
    out = tmp_path / "crashed.zarr"
    assert run(16, out).returncode == -signal.SIGKILL
    staged = len(list((tmp_path / "crashed.zarr.stage" / "tiles").glob("*.pickle")))
    assert 1 <= staged <= 16
    resumed = run(-1, out)
    assert resumed.returncode == 0, resumed.stderr
    assert "took over the lock" in resumed.stderr
    assert resumed.stdout.split() == ["expanded", str(40 - staged)]  # only the rest
    assert store_digest(out) == store_digest(tmp_path / "reference.zarr")
    assert not (tmp_path / "crashed.zarr.stage").exists()


def test_resuming_a_different_expansion_is_refused(tmp_path):
    labels = np.zeros((40, 40), np.uint16)
    labels[5, 5] = labels[30, 30] = 1
    stage = tmp_path / "c.zarr.stage"
    with pytest.raises(InvalidParameterError):  # stopped by a bad label in the 4th tile
        expand_labels(np.where(np.arange(40)[:, None] > 35, -1, labels).astype(np.int16), 2,
                      write_to=tmp_path / "c.zarr", tile_shape=(10, 40), executor="serial")
    assert len(list((stage / "tiles").glob("*.pickle"))) == 3
    with pytest.raises(StageMismatchError, match="differs in: expand, input"):
        expand_labels(labels, 3, write_to=tmp_path / "c.zarr", tile_shape=(10, 40))
    grown = expand_labels(labels, 3, write_to=tmp_path / "c.zarr", tile_shape=(10, 40),
                          resume=False, compute=True)
    np.testing.assert_array_equal(grown, expand_whole(labels, 3))


def test_progress_counts_every_tile_of_both_stages_and_resumed_ones_as_done(tmp_path):
    from blockbuster.progress import ProgressEvent

    labels = np.zeros((40, 40), np.uint16)
    labels[5, 5], labels[30, 30] = 1, 2
    events: list[ProgressEvent] = []
    expand_labels(labels, 3, write_to=tmp_path / "c.zarr", tile_shape=(10, 20),
                  executor="threads", workers=2, progress=events.append)
    assert {e.total for e in events} == {8 * 2}
    assert [e.done for e in events] == sorted(e.done for e in events)
    assert events[-1] == ProgressEvent("write", 16, 16)
    assert next(e for e in events if e.stage == "write").done == 8  # all expanded first
    # a listener may stop the call; the same call again counts the staged tiles as done
    from blockbuster.errors import RunCancelledError

    def cancel_after_the_first_run(event: ProgressEvent) -> None:
        if event.done:
            raise RunCancelledError("stopped")

    with pytest.raises(RunCancelledError):
        expand_labels(labels, 3, write_to=tmp_path / "d.zarr", tile_shape=(5, 40),
                      executor="serial", progress=cancel_after_the_first_run)
    resumed: list[ProgressEvent] = []
    grown = expand_labels(labels, 3, write_to=tmp_path / "d.zarr", tile_shape=(5, 40),
                          executor="serial", progress=resumed.append, compute=True)
    np.testing.assert_array_equal(grown, expand_whole(labels, 3))
    assert resumed[1] == ProgressEvent("expand", 8, 16)  # the first run of 8 tiles was staged


def test_cli_expand_progress_shows_a_bar(tmp_path, capsys):
    from blockbuster.cli import main

    labels = np.zeros((40, 40), np.uint16)
    labels[5, 5] = 1
    zarr.create_array(tmp_path / "n.zarr", data=labels, chunks=(20, 20))
    assert main(["expand", str(tmp_path / "n.zarr"), str(tmp_path / "c.zarr"),
                 "--distance", "2", "--progress"]) == 0
    err = capsys.readouterr().err
    assert "blockbuster: write" in err and "8/8" in err
