"""Each input chunk is decoded about once although tiles overlap (issue 20, item 1).

Counted, not timed: the input is read through :func:`blockbuster.testing.counting_zarr`, which
logs every chunk zarr fetches (and so decodes).
"""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import zarr
from scipy import ndimage

from blockbuster import shared_blocks, tile_process
from blockbuster.builtin.arrays import ArrayReader
from blockbuster.builtin.executors import ProcessExecutor
from blockbuster.errors import TileFunctionError
from blockbuster.image import ImageView
from blockbuster.read_cache import BlockCache, plan_block_reads
from blockbuster.shared_blocks import SharedBlockCache, lane_walk
from blockbuster.synthetic import nuclei
from blockbuster.testing import ChunkReadLog, assert_same_labels, counting_zarr
from blockbuster.tiling import TileGrid
from blockbuster.worker import WorkerInfo, set_thread_worker

SIDE, CHUNK = 256, 32
N_CHUNKS = (SIDE // CHUNK) ** 2


def components(tile: np.ndarray) -> np.ndarray:
    return ndimage.label(tile > 15000)[0]


@pytest.fixture(scope="module")
def image():
    return nuclei((SIDE, SIDE), seed=3)


@pytest.fixture
def counted(tmp_path, image):
    """The image as a zarr of 32² chunks, and the log of the chunks read from it."""
    zarr.create_array(store=str(tmp_path / "image.zarr"), data=image, chunks=(CHUNK, CHUNK))
    log = ChunkReadLog(tmp_path / "reads.log")
    return counting_zarr(tmp_path / "image.zarr", log), log


@pytest.mark.parametrize("overlap", [None, 4, 20])
@pytest.mark.parametrize("executor,workers", [("serial", 1), ("threads", 2)])
def test_each_chunk_is_decoded_once_with_a_halo(counted, image, overlap, executor, workers):
    """Tiles of one chunk with a halo touch up to 9 chunks; each is still decoded once, and
    the labels are the whole image's."""
    array, log = counted
    labels = tile_process(array, components, tile_shape=(CHUNK, CHUNK), overlap=overlap,
                          executor=executor, workers=workers, compute=True)
    reads = log.reads()
    assert len(reads) == N_CHUNKS
    assert log.per_chunk(N_CHUNKS) <= 1.2, f"{log.per_chunk(N_CHUNKS):.2f} decodes per chunk"
    assert max(reads.values()) <= 2
    assert_same_labels(components(image), labels)


def test_tiles_smaller_than_chunks_decode_each_chunk_once(counted, image):
    """Four 16² tiles share each 32² chunk: read from the decoded chunk, not four decodes."""
    array, log = counted
    labels = tile_process(array, components, tile_shape=(16, 16), overlap=2, executor="threads",
                          workers=2, compute=True)
    assert max(log.reads().values()) == 1
    assert_same_labels(components(image), labels)


def test_a_stack_segmented_slice_by_slice_decodes_each_chunk_once(tmp_path, monkeypatch):
    """Planes share no chunk: each is walked whole before the next, in bands when the cache
    is small, and each chunk is still decoded about once."""
    stack = np.stack([nuclei((128, 128), seed=s) for s in range(4)])
    zarr.create_array(store=str(tmp_path / "stack.zarr"), data=stack, chunks=(1, 16, 16))
    log = ChunkReadLog(tmp_path / "reads.log")
    run = dict(tile_shape=(1, 16, 16), overlap=(0, 3, 3), executor="threads", workers=2,
               compute=True)
    monkeypatch.setenv("BLOCKBUSTER_BLOCK_CACHE_MB", "0")
    direct = tile_process(stack, components, **run)
    monkeypatch.setenv("BLOCKBUSTER_BLOCK_CACHE_MB", str(40 * 16 * 16 * 2 / 2**20))
    labels = tile_process(counting_zarr(tmp_path / "stack.zarr", log), components, **run)
    assert log.per_chunk(4 * 64) <= 1.3, f"{log.per_chunk(4 * 64):.2f} decodes per chunk"
    assert np.array_equal(labels, direct)  # the same labels as read straight from the array


@pytest.mark.parametrize("overlap", [4, 20])
def test_worker_processes_hand_on_the_chunks_they_share(counted, image, tmp_path, overlap):
    """Tasks (rows of tiles) alternate between two worker processes, and each row's halo
    reads the chunks of the rows next to it: those are decoded by one process and loaded by
    the other, so each chunk is still decoded about once; the labels are the serial run's,
    and the folder that carried the blocks is gone."""
    array, log = counted
    run = dict(tile_shape=(CHUNK, CHUNK), overlap=overlap, compute=True)
    serial = tile_process(array, components, executor="serial", **run)
    log.clear()
    labels = tile_process(array, components, executor="processes", workers=2,
                          write_to=tmp_path / "labels.zarr", **run)
    assert log.per_chunk(N_CHUNKS) <= 1.2, f"{log.per_chunk(N_CHUNKS):.2f} decodes per chunk"
    assert np.array_equal(labels, serial)
    assert not (tmp_path / "labels.zarr.stage").exists()


def test_worker_processes_hand_on_halo_strips_not_whole_blocks(counted, image, tmp_path,
                                                              monkeypatch):
    """Each worker walks a lane of rows of tiles and keeps the blocks it decoded for the next
    row's halo: between the two processes go halo strips (``overlap`` rows of a block), whole
    blocks only where the lanes meet, and each chunk is still decoded about once."""
    array, log = counted
    sizes = tmp_path / "published.log"
    monkeypatch.setattr(shared_blocks, "_write_atomically", _LoggedWrite(str(sizes)))
    overlap, itemsize = 4, image.dtype.itemsize
    labels = tile_process(array, components, tile_shape=(CHUNK, CHUNK), overlap=overlap,
                          executor=ProcessExecutor(2, start_method="fork"),  # keeps the patch
                          write_to=tmp_path / "labels.zarr", compute=True)
    published = [int(line) for line in sizes.read_text().split()]
    strips = 2 * overlap * SIDE * (SIDE // CHUNK) * itemsize  # two per row of blocks at most
    whole_row = CHUNK * SIDE * itemsize  # whole blocks go only where the two lanes meet
    assert published and sum(published) <= strips + 2 * whole_row  # was 6 rows of them
    assert log.per_chunk(N_CHUNKS) <= 1.2, f"{log.per_chunk(N_CHUNKS):.2f} decodes per chunk"
    assert_same_labels(components(image), labels)


class _LoggedWrite:
    """``shared_blocks._write_atomically``, logging the bytes of each part it publishes."""

    def __init__(self, log: str):
        self.log, self.write = log, shared_blocks._write_atomically

    def __call__(self, path, part):
        handle = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(handle, f"{part.data.nbytes}\n".encode())
        finally:
            os.close(handle)
        self.write(path, part)


def test_a_failed_processes_run_leaves_no_shared_blocks_and_resumes_the_same(
        counted, image, tmp_path):
    """A tile failing mid-run stops it: the finished tiles stay staged, the blocks handed
    between processes do not, and the rerun resumes to the serial run's labels."""
    array, _ = counted
    out, stage, broken = tmp_path / "labels.zarr", tmp_path / "labels.zarr.stage", tmp_path / "x"
    broken.write_text("")
    fn = FailsOnTheLastTile(str(broken))
    run = dict(tile_shape=(CHUNK, CHUNK), overlap=4, executor="processes", workers=2,
               write_to=out)
    with pytest.raises(TileFunctionError, match="fails on purpose"):
        tile_process(array, fn, retries=0, **run)
    assert list((stage / "tiles").iterdir()) and not (stage / "shared-blocks").exists()
    broken.unlink()  # the cause is fixed; the job is the same
    labels, stats = tile_process(array, fn, compute=True, return_stats=True, **run)
    assert stats.tiles_resumed > 0 and not stage.exists()
    serial = tile_process(array, components, tile_shape=(CHUNK, CHUNK), overlap=4,
                          executor="serial", compute=True)
    assert np.array_equal(labels, serial)


class FailsOnTheLastTile:
    """``components``, but the bottom-right tile (with its halo of 4) raises while the file
    ``broken`` exists."""

    last = nuclei((SIDE, SIDE), seed=3)[-CHUNK - 4:, -CHUNK - 4:]

    def __init__(self, broken: str):
        self.broken = broken

    def __call__(self, tile: np.ndarray) -> np.ndarray:
        if np.array_equal(tile, self.last) and os.path.exists(self.broken):
            raise RuntimeError("fails on purpose")
        return components(tile)


def test_without_a_halo_tiles_are_read_directly(counted):
    """Tiles made of whole chunks with no halo share nothing: no cache, one read per chunk."""
    array, log = counted
    tile_process(array, components, tile_shape=(64, 64), overlap=0, compute=True)
    assert log.per_chunk(N_CHUNKS) == 1
    view = ImageView.open(ArrayReader(array))
    reads = plan_block_reads(view, TileGrid(view.shape, (64, 64), (0, 0)), max_bytes=2**30,
                             shared=True)
    assert reads.cache is None and reads.order == list(range(16))


class CountingReader(ArrayReader):
    """An in-memory image that says it is stored in chunks and counts the blocks read."""

    def __init__(self, array, chunks):
        super().__init__(array)
        self.chunks = chunks
        self.reads = []

    def read(self, region):
        self.reads.append(region)
        return super().read(region)


@pytest.mark.parametrize("channels", [False, True])
def test_block_cache_assembles_tiles_exactly_and_frees_what_no_tile_wants(channels):
    """Every padded tile equals a direct read, channels included; each block is read once, the
    cache stays within a few rows of blocks, and it is empty after the last tile."""
    rng = np.random.default_rng(0)
    data = rng.integers(0, 1000, (96, 160, 3) if channels else (96, 160), dtype=np.uint16)
    reader = CountingReader(data, (16, 16, 3) if channels else (16, 16))
    view = ImageView.open(reader, channel_axis=2 if channels else None)
    grid = TileGrid(view.shape, (16, 16), (3, 3))
    plan = plan_block_reads(view, grid, max_bytes=2**30, shared=True)
    cache = plan.cache
    cache.expect(grid.tile(i).padded for i in plan.order)
    block_bytes = 16 * 16 * data.itemsize * (3 if channels else 1)
    largest = 0
    for i in plan.order:
        tile = grid.tile(i)
        assert np.array_equal(cache.read(view, tile.padded), view.read(tile.padded))
        largest = max(largest, cache.size)
    assert len(reader.reads) == 6 * 10 + len(plan.order)  # each block once, plus the checks
    assert largest <= (grid.grid_shape[1] + 4) * block_bytes  # about one row of 10 blocks
    assert cache.size == 0


@pytest.mark.parametrize("channels", [False, True])
def test_a_tiles_own_blocks_are_decoded_into_its_buffer_and_its_halo_copied(tmp_path,
                                                                             channels):
    """From a zarr, a block that a tile to come reads whole is decoded straight into that
    tile's padded buffer, which the tile's read returns after copying in only its halo (no
    tile-sized copy); the strips later tiles want are copied out first, so a caller changing
    the tile it got changes no other tile; the cache is empty after the last tile."""
    rng = np.random.default_rng(1)
    data = rng.integers(0, 1000, (96, 160, 3) if channels else (96, 160), dtype=np.uint16)
    array = zarr.create_array(store=str(tmp_path / "image.zarr"), data=data,
                              chunks=(16, 16, 3) if channels else (16, 16))
    reader = DecodingInto(array)
    view = ImageView.open(reader, channel_axis=2 if channels else None)
    grid = TileGrid(view.shape, (16, 16), (3, 3))
    plan = plan_block_reads(view, grid, max_bytes=2**30, shared=True)
    cache = plan.cache
    cache.expect(grid.tile(i).padded for i in plan.order)
    in_place = 0
    for i in plan.order:
        tile = grid.tile(i)
        got = cache.read(view, tile.padded)
        assert np.array_equal(got, data[view._with_channels(tile.padded)])
        in_place += any(got is base for base in reader.buffers)
        got[...] = 7  # the caller's to change
    assert in_place == len(grid) - 1  # all but the first: its halo decodes the next's blocks
    assert cache.size == 0


def test_a_halo_copied_from_a_tile_handed_over_meanwhile_is_still_the_input(tmp_path):
    """A thread that got a block living in another tile's buffer, and copies from it only
    after that tile was read and changed by its caller, still copies the input (the strips
    kept in its place), not the caller's changes."""
    data = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    array = zarr.create_array(store=str(tmp_path / "image.zarr"), data=data, chunks=(16, 16))
    view = ImageView.open(ArrayReader(array))
    grid = TileGrid(view.shape, (16, 16), (2, 2))
    plan = plan_block_reads(view, grid, max_bytes=2**30, shared=True)
    cache = plan.cache
    cache.expect(grid.tile(i).padded for i in plan.order)
    cache.read(view, grid.tile(0).padded)  # decodes tile 5's block into tile 5's buffer
    halo = grid.tile(6).padded  # reads a strip of that block
    inside = tuple(slice(max(h.start, 16), min(h.stop, 32)) for h in halo)
    held = cache._part(view, (1, 1), inside)
    assert held.buffer == grid.tile(5).padded
    for i in [1, 2, 3, 4, 5]:
        cache.read(view, grid.tile(i).padded)[...] = 0  # tile 5 handed over and changed
    out = np.zeros([h.stop - h.start for h in halo], data.dtype)
    cache._copy(out, halo, held, (1, 1), inside, view)
    assert np.array_equal(out[tuple(slice(i.start - h.start, i.stop - h.start)
                                    for i, h in zip(inside, halo))], data[inside])


class DecodingInto(ArrayReader):
    """A zarr array's reader keeping the buffers it was asked to decode into."""

    def __init__(self, array):
        super().__init__(array)
        self.buffers = []

    def read_into(self, region, out):
        self.buffers.append(out.base)
        super().read_into(region, out)


def test_a_small_cache_walks_in_bands_and_stays_within_its_bytes():
    """A cache too small for a row of blocks walks narrower bands; it never holds more than its
    bytes, and only the band edges are read twice."""
    data = np.arange(128 * 512, dtype=np.float32).reshape(128, 512)
    reader = CountingReader(data, (16, 16))
    view = ImageView.open(reader)
    grid = TileGrid(view.shape, (16, 16), (2, 2))
    block_bytes = 16 * 16 * 4
    plan = plan_block_reads(view, grid, max_bytes=24 * block_bytes, shared=True)
    assert plan.band < grid.grid_shape[1]
    positions = [grid.position(i) for i in plan.order]
    assert positions[:2] == [(0, 0), (0, 1)] and positions[plan.band] == (1, 0)
    plan.cache.expect(grid.tile(i).padded for i in plan.order)
    for i in plan.order:
        tile = grid.tile(i)
        assert np.array_equal(plan.cache.read(view, tile.padded), data[tile.padded])
        assert plan.cache.size <= 24 * block_bytes
    assert len(reader.reads) / (8 * 32) <= 1 + 2.5 / plan.band


def test_a_failed_block_read_is_raised_and_read_again_next_time():
    """A read error reaches the tile (to be retried); the next read of the block tries again."""
    data = np.ones((64, 64), np.uint8)
    reader = CountingReader(data, (32, 32))
    view = ImageView.open(reader)
    cache = BlockCache((32, 32), 2**20)
    failing = [True]
    read = reader.read

    def flaky(region):
        if failing.pop() if failing else False:
            raise OSError("connection reset")
        return read(region)

    reader.read = flaky
    with pytest.raises(OSError, match="connection reset"):
        cache.read(view, (slice(0, 40), slice(0, 40)))
    assert np.array_equal(cache.read(view, (slice(0, 40), slice(0, 40))), data[:40, :40])


def test_two_tasks_share_a_block_through_halo_strips_only(tmp_path):
    """Two worker processes' caches (two objects here) share one folder and claim their
    tasks walking a lane from either end: a block is decoded by the first task that needs it,
    which publishes for each other task reading part of it (a halo strip) that part, equal
    to a direct read; the task reading it whole is the worker's next one and finds it in
    that worker's cache. Each block is decoded once, no whole block is published, and each
    task's files go when it finishes."""
    data = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)
    reader = CountingReader(data, (16, 16))
    view, grid, runs, parent, (first, second) = _two_workers(reader, tmp_path)
    try:
        for cache, worker, task in [(first, 0, 0), (second, 1, 3), (second, 1, 2),
                                    (first, 0, 1)]:  # two workers walking the lane, meeting
            set_thread_worker(WorkerInfo(worker, 2))
            assert cache.claim_run() == runs[task]
            for i in runs[task]:
                assert np.array_equal(cache.read(view, grid.tile(i).padded, i),
                                      data[grid.tile(i).padded])
    finally:
        set_thread_worker(WorkerInfo(0, 1))
    assert sorted(map(str, reader.reads)) == sorted(
        map(str, {str(b): b for b in reader.reads}.values()))  # each block decoded once
    assert len(reader.reads) == 16
    published = list((tmp_path / "blocks").glob("*.npy"))
    assert published and all(_published_rows(path) == 2 for path in published)  # the halo
    parent.finished(runs[1])
    assert not list((tmp_path / "blocks").glob("*.1.npy"))
    parent.close()
    assert not (tmp_path / "blocks").exists()


def test_worker_processes_decode_blocks_into_the_tiles_that_read_them_whole(tmp_path):
    """Each worker process's cache is told the reads of the task it claims and of the task it
    will likely claim next: blocks are decoded straight into the padded buffers of the tiles
    that read them whole (no tile-sized copy), tiles stay the input however callers change
    the ones they got, and a task told ahead but claimed by the other worker is taken back,
    leaving nothing held."""
    data = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)
    array = zarr.create_array(store=str(tmp_path / "image.zarr"), data=data, chunks=(16, 16))
    reader = DecodingInto(array)
    view, grid, runs, parent, (first, second) = _two_workers(reader, tmp_path)
    in_place = 0
    try:
        # the second worker expects task 2 next, but the first takes it
        for cache, worker, task in [(first, 0, 0), (second, 1, 3), (first, 0, 1),
                                    (first, 0, 2), (second, 1, None)]:
            set_thread_worker(WorkerInfo(worker, 2))
            assert cache.claim_run() == ([] if task is None else runs[task])
            for i in [] if task is None else runs[task]:
                got = cache.read(view, grid.tile(i).padded, i)
                assert np.array_equal(got, data[grid.tile(i).padded])
                in_place += any(got is base for base in reader.buffers)
                got[...] = -1  # the caller's to change
    finally:
        set_thread_worker(WorkerInfo(0, 1))
    # all but the first tile each worker reads and the first of task 2, where the lanes meet
    # (its blocks were decoded by the second worker, for whose next task they were meant)
    assert in_place == 13
    for cache in (first, second):
        assert cache.size == 0 and not cache._buffers and not cache._wanted
    parent.close()


def _two_workers(reader, tmp_path):
    """A 64² image of 16² blocks in 16² tiles with a 2-pixel halo, one row of tiles per task,
    and the caches of two worker processes sharing blocks (two copies of the parent's)."""
    view = ImageView.open(reader)
    grid = TileGrid(view.shape, (16, 16), (2, 2))
    runs = [list(range(k, k + 4)) for k in range(0, 16, 4)]
    parent = SharedBlockCache((16, 16), 2**20, grid)
    parent.share(tmp_path / "blocks", runs)
    return view, grid, runs, parent, [pickle.loads(pickle.dumps(parent)) for _ in range(2)]


def _published_rows(path) -> int:
    with open(path, "rb") as handle:
        box = np.load(handle)
    return int(box[0, 1] - box[0, 0])


def test_a_block_whose_claimant_failed_is_read_by_the_next_who_needs_it(tmp_path):
    """A worker failing to decode a block it claimed gives the claim up: the next worker
    needing the block decodes it instead of waiting for it."""
    data = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)
    view = ImageView.open(CountingReader(data, (16, 16)))
    grid = TileGrid(view.shape, (16, 16), (2, 2))
    parent = SharedBlockCache((16, 16), 2**20, grid)
    parent.share(tmp_path / "blocks", [list(range(k, k + 4)) for k in range(0, 16, 4)])
    failing, second = (pickle.loads(pickle.dumps(parent)) for _ in range(2))
    broken = CountingReader(data, (16, 16))
    broken.read = lambda region: (_ for _ in ()).throw(OSError("connection reset"))
    with pytest.raises(OSError, match="connection reset"):
        failing.read(ImageView.open(broken), grid.tile(4).padded, 4)  # row 1: row 0's halo
    assert not list((tmp_path / "blocks").glob("*.claim"))  # given up for the next reader
    assert np.array_equal(second.read(view, grid.tile(4).padded, 4),
                          data[grid.tile(4).padded])  # not left waiting on the failed claim
    parent.close()


def test_each_worker_walks_its_lane_and_two_workers_meet():
    """Worker pairs walk a lane of consecutive tasks from either end; then the others."""
    assert lane_walk(6, 0, 2) == [0, 1, 2, 3, 4, 5]
    assert lane_walk(6, 1, 2) == [5, 4, 3, 2, 1, 0]
    assert lane_walk(6, 2, 3) == [3, 4, 5, 0, 1, 2]
    assert lane_walk(3, 0, 1) == [0, 1, 2]
