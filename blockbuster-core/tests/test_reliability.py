"""Resume after a crash, retries, keep_going and skipping empty tiles."""

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from blockbuster import tile_process
from blockbuster.builtin.segmenters import Threshold
from blockbuster.errors import StageMismatchError, TileFunctionError, TilesFailedError
from blockbuster.synthetic import touching_disks
from blockbuster.testing import store_digest

IMAGE = touching_disks((192, 160), seed=5)


class Flaky:
    """Threshold, but the tile at [64:128, 32:64] raises while ``broken`` exists, counting tries
    (found by its shape and pixels: run it with overlap=0)."""

    def __init__(self, broken: Path, failures: int = 10**6):
        self.broken, self.failures = str(broken), failures

    def __call__(self, tile):
        calls_file = Path(self.broken + ".calls")
        calls = int(calls_file.read_text()) if calls_file.exists() else 0
        target = tile.shape == (64, 32) and np.array_equal(tile, IMAGE[64:128, 32:64])
        if target and Path(self.broken).exists() and calls < self.failures:
            calls_file.write_text(str(calls + 1))
            raise RuntimeError("GPU fell off the bus")
        return Threshold(threshold=0.5)(tile)


def flaky(tmp_path, failures=10**6):
    (tmp_path / "broken").write_text("")
    return Flaky(tmp_path / "broken", failures)


def test_retries_recover_a_flaky_tile(tmp_path):
    fn = flaky(tmp_path, failures=2)
    labels = tile_process(IMAGE, fn, tile_shape=(64, 32), overlap=0, executor="serial",
                          compute=True)
    assert (tmp_path / "broken.calls").read_text() == "2"
    assert np.array_equal(labels, tile_process(IMAGE, Threshold(threshold=0.5),
                                               tile_shape=(64, 32), overlap=0, compute=True))


def test_a_tile_failing_after_retries_stops_the_run_naming_it(tmp_path):
    fn = flaky(tmp_path)
    with pytest.raises(TileFunctionError) as error:
        tile_process(IMAGE, fn, tile_shape=(64, 32), overlap=0, executor="serial", retries=1,
                     write_to=tmp_path / "out.zarr")
    assert "tile 6 at [64:128, 32:64]" in str(error.value)
    assert "GPU fell off the bus" in str(error.value) and "Traceback" in str(error.value)
    assert (tmp_path / "broken.calls").read_text() == "2"  # first try + 1 retry
    kept = list((tmp_path / "out.zarr.stage" / "tiles").glob("*.pickle"))
    assert len(kept) == 6  # kept for resume


def test_keep_going_finishes_the_rest_then_resume_reruns_only_the_failed(tmp_path):
    out = tmp_path / "out.zarr"
    fn = flaky(tmp_path)
    with pytest.raises(TilesFailedError,
                       match=r"(?s)1 of 15 tiles failed.*tile 6 at \[64:128, 32:64\]"):
        tile_process(IMAGE, fn, tile_shape=(64, 32), overlap=0, executor="threads", workers=2,
                     keep_going=True, retries=0, write_to=out)
    assert len(list((tmp_path / "out.zarr.stage" / "tiles").glob("*.pickle"))) == 14
    (tmp_path / "broken").unlink()  # the cause is fixed; the job is the same
    labels, stats = tile_process(IMAGE, fn, tile_shape=(64, 32), overlap=0, executor="serial",
                                 write_to=out, return_stats=True)
    assert stats.tiles_resumed == 14
    expected = tile_process(IMAGE, Threshold(threshold=0.5), tile_shape=(64, 32), overlap=0,
                            compute=True)
    assert np.array_equal(labels.compute(), expected)


def crash_then_fix(tmp_path, out):
    """A run into ``out`` that stops at a failing tile, leaving its stage; then the cause is
    fixed."""
    with pytest.raises(TileFunctionError):
        tile_process(IMAGE, flaky(tmp_path), tile_shape=(64, 32), overlap=0, write_to=out,
                     executor="serial", retries=0)
    (tmp_path / "broken").unlink()


def test_resuming_a_different_job_is_refused(tmp_path):
    out = tmp_path / "out.zarr"
    crash_then_fix(tmp_path, out)
    with pytest.raises(StageMismatchError, match="differs in: merge, overlap.*resume=False"):
        tile_process(IMAGE, Flaky(tmp_path / "broken"), tile_shape=(64, 32), overlap=4,
                     write_to=out)
    labels = tile_process(IMAGE, Flaky(tmp_path / "broken"), tile_shape=(64, 32), overlap=4,
                          write_to=out, resume=False, compute=True)
    assert labels.max() > 0


def test_skip_empty_by_threshold_and_by_mask():
    image = np.zeros((64, 64), np.float32)
    image[5:10, 5:10] = 1
    calls = []

    def fn(tile):
        calls.append(1)
        return (tile > 0.5).astype(np.int32)

    labels, stats = tile_process(image, fn, tile_shape=(16, 16), skip_empty=0, executor="serial",
                                 compute=True, return_stats=True)
    assert len(calls) == 1 and stats.tiles_empty == 15 and labels.max() == 1
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = True  # low-resolution foreground mask: one cell per tile
    calls.clear()
    labels = tile_process(image, fn, tile_shape=(16, 16), skip_empty=mask, executor="serial",
                          compute=True)
    assert len(calls) == 1 and labels.max() == 1


CHILD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import numpy as np
    import blockbuster.pipeline as pipeline
    from blockbuster import tile_process
    from blockbuster.builtin.segmenters import Watershed
    from blockbuster.synthetic import touching_disks

    stage, after = sys.argv[1], int(sys.argv[2])
    task = {"segment": "segment_task", "merge": "merge_task", "relabel": "relabel_task"}
    original = getattr(pipeline, task.get(stage, "segment_task"))
    calls = [0]

    def dying(job, item):  # dies once the tasks begun hold more than `after` tiles
        calls[0] += len(item) if isinstance(item, list) else 1
        if calls[0] > after:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(job, item)

    if stage in task:
        setattr(pipeline, task[stage], dying)
    if stage == "heartbeat":  # dies in the lock's heartbeat, between writing and renaming
        import blockbuster.lock as lock

        lock.HEARTBEAT_SECONDS = 0.01
        write = lock.FileLock._write_private

        def dying_beat(self, record):
            calls[0] += 1  # the first write creates the lock; the heartbeats follow
            written = write(self, record)
            if calls[0] > after and any(Path(sys.argv[3] + ".stage").glob("tiles/*.pickle")):
                os.kill(os.getpid(), signal.SIGKILL)
            return written

        lock.FileLock._write_private = dying_beat
    image = touching_disks((256, 224), seed=7)
    tile_process(image, Watershed(threshold=0.5, min_distance=5, diameter=20),
                 tile_shape=(64, 64), overlap=40, executor="threads", workers=2,
                 write_to=sys.argv[3])
""")


@pytest.mark.slow
@pytest.mark.parametrize("stage, after", [("segment", 5), ("merge", 7), ("relabel", 9),
                                          ("heartbeat", 3)])
def test_sigkill_then_resume_is_byte_identical(tmp_path, stage, after):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    reference = tmp_path / "reference.zarr"
    subprocess.run([sys.executable, str(script), "none", "0", str(reference)], check=True)
    out = tmp_path / "crashed.zarr"
    crashed = subprocess.run([sys.executable, str(script), stage, str(after), str(out)])
    assert crashed.returncode == -signal.SIGKILL
    stage_dir = Path(f"{out}.stage")
    assert stage_dir.exists()
    done_before = len(list((stage_dir / "tiles").glob("*.pickle")))
    if stage == "segment":
        assert 1 <= done_before < 16  # killed part-way; the other thread may be mid-run
    elif stage == "heartbeat":
        assert 1 <= done_before <= 16
        assert list(out.parent.glob(f"{out.name}.lock.*"))  # the beat it never finished
    else:
        assert done_before == 16  # every tile was staged before the kill
    lock = Path(f"{out}.lock")
    assert lock.exists()  # the dead run's lock: on this host, its pid gone, so taken over
    resumed = subprocess.run([sys.executable, str(script), "none", "0", str(out)],
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "took over the lock" in resumed.stderr and "no longer running" in resumed.stderr
    assert store_digest(out) == store_digest(reference)
    assert not stage_dir.exists()
    assert not list(tmp_path.glob("crashed.zarr.lock*"))  # lock and unfinished heartbeats gone


@pytest.mark.slow
def test_a_dead_worker_process_is_explained(tmp_path):
    script = tmp_path / "unguarded.py"  # no __main__ guard: forkserver workers cannot start
    script.write_text(textwrap.dedent("""
        import numpy as np
        from blockbuster import tile_process
        from blockbuster.builtin.segmenters import Threshold
        tile_process(np.eye(64, dtype=np.float32), Threshold(threshold=0.5), tile_shape=(32, 32),
                     executor="processes", workers=2, compute=True)
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode != 0
    # refused before any worker starts, with the typed WorkerCrashedError subclass and the fix
    assert "MissingMainGuardError" in done.stderr and "__main__" in done.stderr


def test_a_crashed_run_never_resumes_on_different_data(tmp_path):
    out = tmp_path / "out.zarr"
    crash_then_fix(tmp_path, out)
    other = IMAGE[::-1].copy()  # same shape and dtype, different pixels
    with pytest.raises(StageMismatchError, match="differs in: input"):
        tile_process(other, Flaky(tmp_path / "broken"), tile_shape=(64, 32), overlap=0,
                     write_to=out)
