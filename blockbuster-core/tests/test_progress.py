"""Progress events (what the CLI's bar and the napari widget show) and stopping a run from a
progress listener: the finished tiles stay staged and the same call resumes from them."""

import numpy as np
import pytest

from blockbuster import tile_process
from blockbuster.builtin.segmenters import Threshold
from blockbuster.errors import RunCancelledError
from blockbuster.progress import ProgressEvent
from blockbuster.synthetic import touching_disks

IMAGE = touching_disks((192, 160), seed=5)
RUN = dict(tile_shape=(32, 32), overlap=0)  # 30 tiles


def test_a_listener_sees_every_stage_and_every_step_in_order():
    events: list[ProgressEvent] = []
    tile_process(IMAGE, Threshold(threshold=0.5), **RUN, executor="threads", workers=2,
                 progress=events.append, compute=True)
    assert {e.total for e in events} == {30 * 3}
    assert [e.done for e in events] == sorted(e.done for e in events)
    assert events[-1] == ProgressEvent("relabel", 90, 90)
    stages = [e.stage for e in events]
    assert sorted(set(stages), key=stages.index) == ["segment", "merge", "relabel"]
    at_merge = next(e for e in events if e.stage == "merge")
    assert at_merge.done == 30  # every tile segmented before the merge starts


def test_a_listener_raising_cancel_stops_the_run_and_the_same_call_resumes(tmp_path):
    out = tmp_path / "out.zarr"
    seen = []

    def cancel_after_first_tiles(event: ProgressEvent) -> None:
        seen.append(event)
        if event.done > 0:
            raise RunCancelledError("run cancelled.")

    with pytest.raises(RunCancelledError) as error:
        tile_process(IMAGE, Threshold(threshold=0.5), **RUN, executor="threads", workers=2,
                     write_to=out, progress=cancel_after_first_tiles)
    staged = len(list((tmp_path / "out.zarr.stage" / "tiles").glob("*.pickle")))
    # 10 tasks of 3 tiles, 8 submitted at once: the finished task, those running and a few
    # finished meanwhile are staged; the queued ones are cancelled, not run (that would be 24)
    assert 0 < staged <= 12
    assert f"{staged} of 30 tiles are staged" in str(error.value)
    assert "run the same call again to resume" in str(error.value)
    assert seen[-1].stage == "segment"

    labels, stats = tile_process(IMAGE, Threshold(threshold=0.5), **RUN, executor="threads",
                                 workers=2, write_to=out, return_stats=True)
    assert stats.tiles_resumed == staged
    expected = tile_process(IMAGE, Threshold(threshold=0.5), **RUN, compute=True)
    assert np.array_equal(labels.compute(), expected)
    assert not (tmp_path / "out.zarr.stage").exists()
