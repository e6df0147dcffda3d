"""Decoded input blocks shared between worker processes, so each chunk is decoded about once.

Threads share one :class:`~blockbuster.read_cache.BlockCache`; worker processes cannot, and
tasks (runs of tiles) go to whichever worker is free, so a chunk in the halo of two tasks would
be decoded by both workers. :class:`SharedBlockCache` is the cache of a worker process that
hands such chunks on through a run-scoped folder next to the staging area:

- the parent tells it which task reads each tile (:meth:`SharedBlockCache.share`) before the
  run's job is sent to the workers; a block is *shared* when tiles of more than one task read it;
- each worker claims the tasks it runs itself (:meth:`SharedBlockCache.claim_run`), walking
  a lane of consecutive tasks (:func:`lane_walk`: two workers walk a lane from either end
  towards each other), so the task that reads a block whole (its core) mostly runs on the
  worker that decoded the block for the halo of the task before, and finds it in its own cache,
  decoded straight into the tile's padded buffer (the cache is told the reads of the task it
  claims and of the task it will likely claim next);
- the first worker to need a shared block claims it (an exclusive create), decodes it and
  publishes for each other task that reads *part* of it (a halo strip) that part, with an
  atomic write and rename; a worker that needs a block claimed by another waits for its file
  (about one decode) and loads it, a small copy instead of a decode or a GET. A task that
  reads the block whole gets it too, unless it is the next task of this worker's walk (the
  next row of a lane of rows): then it most likely finds the block in this worker's cache,
  and the file says so (an empty ``.none`` file); should the other worker take it after all
  (where they meet), it decodes the block again;
- the parent deletes a task's files when the task has finished
  (:meth:`SharedBlockCache.finished`), and the whole folder at the end of the run, failed or
  cancelled runs included (:meth:`SharedBlockCache.close`).

A claimant that fails removes its claim, and a waiter gives up after :data:`CLAIM_WAIT_S` and
decodes the block itself: a missing or damaged file costs a decode, never a wrong tile.
"""

from __future__ import annotations

import itertools
import os
import shutil
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from blockbuster.faults import write_failure
from blockbuster.read_cache import BlockCache, _hull, _Part
from blockbuster.worker import current_worker

if TYPE_CHECKING:
    from blockbuster.image import ImageView
    from blockbuster.tiling import TileGrid

CLAIM_WAIT_S = 60.0  # a claimed block not published by then is decoded by the waiter itself


class SharedBlockCache(BlockCache):
    """A worker process's :class:`BlockCache` whose blocks read by several tasks are decoded
    by one worker and loaded by the others from ``folder`` (see the module)."""

    def __init__(self, block_shape: tuple[int, ...], max_bytes: int, grid: TileGrid,
                 folder: Path | None = None, task_of: np.ndarray | None = None,
                 runs: list[list[int]] | None = None):
        super().__init__(block_shape, max_bytes)
        self.grid = grid
        self.folder = folder
        self.task_of = task_of
        self.runs = runs or []
        self._walk: list[int] = []  # the order in which this process claims tasks
        self._walked = 0  # how far along it this process has claimed
        self._told_next: int | None = None  # the task whose reads the cache was told ahead
        self._reading = threading.local()
        self._claimed_here: set[tuple[int, ...]] = set()  # blocks this process decoded first
        self._users: Counter = Counter()  # the parent's: unfinished tasks reading each block
        self._blocks_of: dict[int, list[tuple[int, ...]]] = {}

    # -- the parent's side ----------------------------------------------------------------
    def share(self, folder: Path, runs: list[list[int]]) -> None:
        """Share the blocks that tiles of more than one of ``runs`` (the tasks) read, through
        ``folder`` (emptied first: a crashed run may have left one)."""
        shutil.rmtree(folder, ignore_errors=True)
        try:
            folder.mkdir(parents=True)
        except OSError as error:
            raise write_failure(error, folder, "the staging area") from error
        self.folder = Path(folder)
        self.runs = runs
        self.task_of = np.full(len(self.grid), -1, np.int32)
        for task, run in enumerate(runs):
            self.task_of[run] = task
        readers: dict[tuple[int, ...], set[int]] = {}
        for task, run in enumerate(runs):
            for index in run:
                for position in self._positions(self.grid.tile(index).padded):
                    readers.setdefault(position, set()).add(task)
        for position, tasks in readers.items():
            if len(tasks) > 1:
                self._users[position] = len(tasks)
                for task in tasks:
                    self._blocks_of.setdefault(task, []).append(position)

    def finished(self, tiles: list[int]) -> None:
        """The task holding ``tiles`` has finished: delete what was published for it, and the
        claims of the blocks no task reads any more."""
        if self.folder is None or not tiles:
            return
        task = int(self.task_of[tiles[0]])
        for position in self._blocks_of.pop(task, []):
            published = self._published(position, task)
            published.unlink(missing_ok=True)
            published.with_suffix(".none").unlink(missing_ok=True)
            self._users[position] -= 1
            if self._users[position] <= 0:
                del self._users[position]
                self._claim(position).unlink(missing_ok=True)

    def close(self) -> None:
        """Delete the folder and everything in it (the end of the run, whatever its end)."""
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    # -- the workers' side ----------------------------------------------------------------
    def claim_run(self) -> list[int]:
        """The tiles of the next task this worker process runs: the first not yet claimed in
        its :func:`lane_walk` (one per task the parent hands out, so one is always left)."""
        if not self._walk:
            worker = current_worker()
            self._walk = lane_walk(len(self.runs), worker.index, worker.count)
        for step in range(self._walked, len(self._walk)):
            task = self._walk[step]
            try:
                os.close(os.open(self._run_claim(task), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                continue
            self._walked = step + 1
            self._expect_from(task)
            return self.runs[task]
        self._expect_from(None)
        return []

    def _expect_from(self, task: int | None) -> None:
        """Tell the cache the reads of the claimed ``task`` and of the task this process will
        likely claim next (:meth:`_next_task`), so that blocks are decoded straight into the
        buffers of the tiles that read them whole, and the halo strips the next task reads of
        this one's blocks are kept. A task told as the next one but claimed by another
        process is taken back (``task`` ``None``: none is left to claim)."""
        if self._told_next not in (None, task):
            self.forget(self._padded(self._told_next))
        if task is None:
            self._told_next = None
            return
        if self._told_next != task:
            self.expect(self._padded(task))
        self._told_next = self._next_task()
        if self._told_next is not None:
            self.expect(self._padded(self._told_next))

    def _padded(self, task: int) -> list[tuple[slice, ...]]:
        return [self.grid.tile(index).padded for index in self.runs[task]]

    def read(self, image: ImageView, region: tuple[slice, ...],
             tile: int | None = None) -> np.ndarray:
        self._reading.tile = tile
        return super().read(image, region)

    def _load(self, image: ImageView, position: tuple[int, ...],
              inside: tuple[slice, ...]) -> _Part:
        tile = getattr(self._reading, "tile", None)
        readers = self._readers(position, image.shape)
        if tile is None or len(readers) < 2:
            return super()._load(image, position, inside)
        task = int(self.task_of[tile])
        others = {t: box for t, box in readers.items() if t != task}
        claim, mine = self._claim(position), self._published(position, task)
        deadline = time.monotonic() + CLAIM_WAIT_S
        pause = 0.001
        while time.monotonic() < deadline:
            part = _load_published(mine)
            if part is not None:
                if part.holds(inside):
                    return part
                break
            if _claimed(claim):  # the first to need it: decode it and hand it on
                return self._decode_and_publish(image, position, inside, claim, others)
            if position in self._claimed_here or _not_published(mine):
                break  # decoded here for another task, or not handed on to this one
            time.sleep(pause)  # another worker is decoding it
            pause = min(2 * pause, 0.02)
        return super()._load(image, position, inside)

    def _decode_and_publish(self, image: ImageView, position: tuple[int, ...],
                            inside: tuple[slice, ...], claim: Path,
                            others: dict[int, tuple[slice, ...]]) -> _Part:
        """Decode the block claimed here and publish for each of the ``others`` tasks its
        part (see :meth:`_publish`)."""
        self._claimed_here.add(position)
        try:
            part = super()._load(image, position, inside)
        except BaseException:
            claim.unlink(missing_ok=True)  # the waiting workers try for themselves
            raise
        self._publish(claim, part, others, position, image)
        return part

    def _readers(self, position: tuple[int, ...],
                 shape: tuple[int, ...]) -> dict[int, tuple[slice, ...]]:
        """What each task reads of the block at ``position``: the hull of its padded tiles
        there, by task (none without a plan)."""
        if self.folder is None:
            return {}
        bounds = self._bounds(position, shape)
        regions: dict[int, list[tuple[slice, ...]]] = {}
        for index in self._tiles_reading(bounds):
            task = int(self.task_of[index])
            if task != -1:
                regions.setdefault(task, []).append(self.grid.tile(index).padded)
        return {task: _hull(found, bounds) for task, found in regions.items()}

    def _publish(self, claim: Path, part: _Part, others: dict[int, tuple[slice, ...]],
                 position: tuple[int, ...], image: ImageView) -> None:
        """Write for each of the ``others`` tasks the part of the block it reads (a halo strip,
        or the whole block), except for this process's next task, which most likely runs here
        and finds the block cached: a note that there is none. If that fails, give the claim
        up so that the workers still waiting decode it themselves."""
        whole, mine_next = part.box, self._next_task()
        try:
            for task, box in others.items():
                path = self._published(position, task)
                if box != whole or task != mine_next:
                    _write_atomically(path, part.cropped(box, image))
                else:
                    _note_not_published(path)
        except OSError:
            claim.unlink(missing_ok=True)

    def _next_task(self) -> int | None:
        """The task this process would claim next (the first unclaimed along its walk)."""
        return next((task for task in self._walk[self._walked:]
                     if not self._run_claim(task).exists()), None)

    def _run_claim(self, task: int) -> Path:
        return self.folder / f"run-{task}.claim"

    def _tiles_reading(self, bounds: tuple[slice, ...]) -> list[int]:
        """The tiles whose padded window meets ``bounds``."""
        grid = self.grid
        ranges = [range(max(0, (b.start - o) // t), min(g, (b.stop + o - 1) // t + 1))
                  for b, o, t, g in zip(bounds, grid.overlap, grid.tile_shape, grid.grid_shape)]
        return [grid.index(p) for p in itertools.product(*ranges)]

    def _published(self, position: tuple[int, ...], task: int) -> Path:
        return self.folder / f"{'_'.join(map(str, position))}.{task}.npy"

    def _claim(self, position: tuple[int, ...]) -> Path:
        return self.folder / f"{'_'.join(map(str, position))}.claim"

    def __getstate__(self):
        return {**super().__getstate__(), "grid": self.grid, "folder": self.folder,
                "task_of": self.task_of, "runs": self.runs}

    def __setstate__(self, state):
        self.__init__(state["block_shape"], state["max_bytes"], state["grid"],
                      state["folder"], state["task_of"], state["runs"])


def _claimed(claim: Path) -> bool:
    """Claim the block whose claim file is ``claim``: ``False`` if another worker has; ``True``
    also when no claim can be made (the folder is gone), as the block is then decoded here."""
    try:
        os.close(os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    except OSError:
        pass
    return True


def _write_atomically(path: Path, part: _Part) -> None:
    """``part`` (its box, then its data) at ``path``, whole or not at all."""
    temporary = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            np.save(handle, np.array([[s.start, s.stop] for s in part.box], np.int64))
            np.save(handle, np.ascontiguousarray(part.data))
        os.replace(temporary, path)
    except OSError:
        temporary.unlink(missing_ok=True)
        raise


def _note_not_published(path: Path) -> None:
    """Say at ``path`` that nothing is published there (the reader decodes it itself)."""
    os.close(os.open(path.with_suffix(".none"), os.O_CREAT | os.O_WRONLY))


def _not_published(path: Path) -> bool:
    return path.with_suffix(".none").exists()


def _load_published(path: Path) -> _Part | None:
    """The part published at ``path``, or ``None`` while there is none (or it is unreadable)."""
    try:
        with open(path, "rb") as handle:
            box = np.load(handle)
            data = np.load(handle)
    except (OSError, ValueError, EOFError):
        return None
    return _Part(tuple(slice(int(a), int(b)) for a, b in box), data)


def lane_walk(n_tasks: int, worker: int, workers: int) -> list[int]:
    """The order in which worker ``worker`` of ``workers`` claims the ``n_tasks`` tasks (runs
    of tiles in reading order): the tasks are cut into one lane per two workers, the first
    of a pair walks its lane forward from the start, the second backward from the end, so
    that they meet; then the other lanes, for a worker done before the rest."""
    lanes = -(-workers // 2)
    size = -(-n_tasks // lanes)
    lane = min(worker // 2, lanes - 1)
    start, stop = lane * size, min(n_tasks, (lane + 1) * size)
    own = list(range(start, stop))
    if worker % 2:
        own.reverse()
    return own + [task for task in range(n_tasks) if not start <= task < stop]
