"""Reads ahead and writes behind: order kept, the next read overlaps the work, writes are
durable."""

import threading
import time

import numpy as np
import pytest

from blockbuster.background import Background


def test_read_ahead_keeps_order_and_reads_the_next_item_during_the_work():
    started = {}

    def read(item):
        started[item] = time.perf_counter()
        return item * 10

    seen = []
    with Background() as io:
        for value in io.read_ahead(range(4), read):
            time.sleep(0.05)  # the work on this item
            seen.append((value, time.perf_counter()))
    assert [v for v, _ in seen] == [0, 10, 20, 30]
    for k in range(3):  # item k + 1 was being read before the work on item k ended
        assert started[k + 1] < seen[k][1]


def test_writes_finish_before_the_block_ends_even_when_the_work_fails():
    written = []

    def slow_write(value):
        time.sleep(0.05)
        written.append(value)

    with pytest.raises(RuntimeError, match="fn broke"):
        with Background() as io:
            io.write(slow_write, 1)
            raise RuntimeError("fn broke")
    assert written == [1]  # the finished tile still reached the disk


def test_a_failed_write_is_raised_when_the_block_ends():
    def broken_write():
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        with Background() as io:
            io.write(broken_write)
    assert threading.active_count() < 50  # the I/O thread was shut down, not leaked


@pytest.mark.parametrize("pending, fewest, most", [
    (None, 1, 3),  # the one being written, MAX_PENDING_WRITES queued
    (5, 4, 6),  # more than the default allows, never more than 5 + 1
])
def test_writes_wait_for_the_disk_rather_than_queue_a_whole_run(pending, fewest, most):
    queued = []
    lock = threading.Lock()

    def slow_write(value):
        time.sleep(0.01)
        with lock:
            queued.remove(value)

    seen = 0
    with (Background() if pending is None else Background(pending=pending)) as io:
        for value in range(20):
            with lock:
                queued.append(value)
                seen = max(seen, len(queued))
            io.write(slow_write, value)
    assert not queued and fewest <= seen <= most


def test_a_write_runs_while_a_slow_read_is_under_way():
    """Reads and writes have a thread each: staging a finished tile never waits for the next
    tile's read (with one shared thread the write would queue behind the read, which waits for
    it, and the read would time out)."""
    written = threading.Event()

    def read(item):
        if item == 1:
            assert written.wait(timeout=5), "the write waited for the read"
        return item

    seen = []
    with Background() as io:
        for value in io.read_ahead([0, 1], read):  # read 1 starts as soon as 0 is handed out
            if value == 0:
                io.write(written.set)
            seen.append(value)
    assert seen == [0, 1]


class TimedBatches:
    """A batch segmenter (a threshold mask, 2 tiles per call) recording when each call starts
    and ends."""

    batch_size = 2

    def __init__(self):
        self.calls = []

    def __call__(self, tile):
        return self.segment_batch([tile])[0]

    def segment_batch(self, tiles):
        started = time.perf_counter()
        labels = [(t > 0.5).astype(np.int32) for t in tiles]
        self.calls.append((started, time.perf_counter(), len(tiles)))
        return labels


class TimedTiles(TimedBatches):
    """One tile a call, asking for one worker (as a GPU model does on one GPU)."""

    batch_size = 1
    segment_batch = None

    def __call__(self, tile):
        return TimedBatches.segment_batch(self, [tile])[0]

    def blockbuster_needs(self):
        from blockbuster import Needs

        return Needs(workers=1)


@pytest.mark.parametrize("segmenter", [TimedBatches, TimedTiles])
def test_fn_goes_on_with_the_next_batch_while_the_last_one_is_staged(monkeypatch, segmenter):
    """For a GPU model (a fn taking batches, or asking for its own worker count) labelling and
    staging a segmented tile runs behind ``fn`` (in the write-behind thread): with staging
    slowed to 0.3 s for the first tile, ``fn``'s next call does not wait for it."""
    from blockbuster import tasks, tile_process

    stage_contents = tasks._stage_contents

    def slow_stage_contents(job, tile, raw):  # labelling, renumbering, face layers
        time.sleep(0.3 if tile.index == 0 else 0)
        return stage_contents(job, tile, raw)

    monkeypatch.setattr(tasks, "_stage_contents", slow_stage_contents)
    fn = segmenter()
    image = np.random.default_rng(0).random((128, 128))  # 64 tiles: 16 a task
    labels = tile_process(image, fn, tile_shape=(16, 16), overlap=0, executor="threads",
                          workers=1, output="mask", compute=True)
    assert labels.max() > 0 and sum(n for _, _, n in fn.calls) == 64
    assert fn.calls[0][2] == fn.calls[-1][2] == 1  # a task's batches start and end small
    (_, first_end, _), (second_start, _, _) = fn.calls[:2]
    assert second_start - first_end < 0.3  # staging the first tile takes 0.3 s


@pytest.mark.parametrize("n, size", [(64, 16), (100, 16), (16, 16), (7, 2), (3, 16), (1, 16),
                                     (0, 16), (5, 1), (33, 4)])
def test_a_task_hands_fn_batches_that_start_and_end_small(n, size):
    """Batches of a task ramp 1, 2, 4, ... up to the batch size and back down to 1, so the
    first call waits for one tile's read and the last leaves one tile to stage; every tile
    comes once, in order, and no batch is larger than ``size``."""
    from blockbuster.tasks import ramped_batches

    got = ramped_batches(list(range(n)), size)
    sizes = [len(b) for b in got]
    assert sum(got, []) == list(range(n)) and all(0 < s <= size for s in sizes)
    if n:
        assert sizes[0] == sizes[-1] == 1
    ramp = [1 << k for k in range((size - 1).bit_length())]
    if ramp and n >= 2 * sum(ramp) + size:  # room for the whole ramp on both sides
        assert sizes[:len(ramp)] == ramp and sizes[-len(ramp):] == ramp[::-1]
        assert max(sizes) > size // 2  # full-sized in the middle, not all small
        assert len(sizes) <= 2 * len(ramp) + -(-n // size)


@pytest.mark.parametrize("tiles, batch, workers, length", [
    (64, 16, 1, 64),   # a GPU model alone: one task reading ahead through 4 batches
    (64, 16, 2, 32),   # two workers: a task of 2 batches each
    (64, 16, 4, 16),   # one batch each rather than idle workers
    (200, 16, 1, 64),  # at most RUN_BATCHES batches a task
    (64, 1, 1, 16),    # one tile a call: MAX_RUN tiles, four tasks per worker
    (64, 1, 4, 4),
])
def test_tasks_hold_several_batches_of_a_batch_fn(tiles, batch, workers, length):
    from types import SimpleNamespace

    from blockbuster.pipeline import _runs

    job = SimpleNamespace(segmenter=SimpleNamespace(batch_size=batch))
    runs = _runs(list(range(tiles)), job, workers)
    assert [len(r) for r in runs[:-1]] == [length] * (len(runs) - 1)
    assert sum(runs, []) == list(range(tiles))


def test_the_relabel_pass_cuts_its_runs_for_its_workers_not_for_fn_batches():
    """Relabelling calls no fn: a GPU model's 16-tile batches must not make one task of every
    tile, which would leave all but one relabel thread idle."""
    from types import SimpleNamespace

    from blockbuster.pipeline import _runs

    job = SimpleNamespace(segmenter=SimpleNamespace(batch_size=16))
    assert [len(r) for r in _runs(list(range(64)), job, 2, batch=1)] == [8] * 8
    assert [len(r) for r in _runs(list(range(64)), job, 2)] == [32] * 2


def test_each_reads_its_items_side_by_side_in_order():
    """With ``threads=3`` the three reads of a batch run at once (each waits at a barrier for
    the other two: one after another they would time out) and come back in order."""
    together = threading.Barrier(3, timeout=5)

    def read(item):
        together.wait()
        return item * 10

    with Background(threads=3) as io:
        assert io.each(read, [0, 1, 2]) == [0, 10, 20]
        assert io.each(lambda item: item + 1, [5]) == [6]


def test_writes_run_side_by_side_with_several_threads():
    together = threading.Barrier(3, timeout=5)
    with Background(pending=1, threads=3) as io:  # pending is raised to the threads
        for _ in range(3):
            io.write(together.wait)
    assert io.pending == 3


class BatchBlobs:
    """A GPU-like segmenter: batches of 4 tiles, instance labels of bright blobs (objects cut by
    tile borders, touching ones kept apart by their own IDs)."""

    batch_size = 4

    def __call__(self, tile):
        return self.segment_batch([tile])[0]

    def segment_batch(self, tiles):
        from scipy import ndimage

        return [ndimage.label(t > 0.6)[0] for t in tiles]


@pytest.mark.parametrize("executor", ["threads", "processes"])
def test_a_gpu_model_read_and_staged_on_several_threads_gives_the_same_labels(
        monkeypatch, tmp_path, executor):
    """Reading the next batch side by side and staging several tiles at once
    (``BLOCKBUSTER_IO_THREADS=4``) writes the same bytes as one thread each, and those equal
    the whole image's labels up to renumbering."""
    import zarr
    from scipy import ndimage

    from blockbuster import tile_process
    from blockbuster.testing import assert_same_labels

    rng = np.random.default_rng(3)
    image = ndimage.gaussian_filter(rng.random((192, 160)), 2)
    image = (image - image.min()) / (image.max() - image.min())
    source = tmp_path / "image.zarr"
    stored = zarr.create_array(str(source), shape=image.shape, chunks=(32, 32), dtype=image.dtype)
    stored[...] = image
    written = {}
    for threads in ("1", "4"):
        monkeypatch.setenv("BLOCKBUSTER_IO_THREADS", threads)
        out = tmp_path / f"labels-{threads}.zarr"
        tile_process(str(source), BatchBlobs(), tile_shape=(32, 32), overlap=4,
                     executor=executor, workers=2, write_to=out)
        written[threads] = zarr.open_array(str(out), mode="r")[...]
    np.testing.assert_array_equal(written["1"], written["4"])
    assert_same_labels(ndimage.label(image > 0.6)[0], written["4"])


@pytest.mark.parametrize("cores, workers, batch, expected", [
    (16, 1, 16, 4),  # one worker per GPU on 16 cores: capped at MAX_IO_THREADS
    (16, 8, 16, 2),  # eight workers share the cores
    (2, 1, 16, 2),   # this development machine: one per core
    (2, 4, 16, 1),   # more workers than cores: one each still
    (16, 1, 1, 1),   # a plain fn: one worker per core already
])
def test_io_threads_follow_the_cores_of_a_gpu_worker(monkeypatch, cores, workers,
                                                              batch, expected):
    from types import SimpleNamespace

    from blockbuster import tasks
    from blockbuster.worker import WorkerInfo

    monkeypatch.delenv("BLOCKBUSTER_IO_THREADS", raising=False)
    monkeypatch.setattr(tasks, "usable_cores", lambda: cores)
    monkeypatch.setattr(tasks, "current_worker", lambda: WorkerInfo(0, workers))
    job = SimpleNamespace(segmenter=SimpleNamespace(batch_size=batch,
                                                    needs=SimpleNamespace(workers=None)))
    assert tasks.io_threads(job) == expected


@pytest.mark.parametrize("value", ["0", "four", "-2", "1.5"])
def test_a_bad_io_threads_setting_names_the_variable_and_the_fix(monkeypatch, value):
    from types import SimpleNamespace

    from blockbuster import tasks
    from blockbuster.errors import InvalidParameterError

    monkeypatch.setenv("BLOCKBUSTER_IO_THREADS", value)
    with pytest.raises(InvalidParameterError, match="BLOCKBUSTER_IO_THREADS=.*e.g. 4"):
        tasks.io_threads(SimpleNamespace())
