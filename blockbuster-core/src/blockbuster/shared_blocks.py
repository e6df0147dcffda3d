"""Decoded input blocks shared between worker processes, so each chunk is decoded about once.

Threads share one :class:`~blockbuster.read_cache.BlockCache`; worker processes cannot, and
tasks (runs of tiles) go to whichever worker is free, so a chunk in the halo of two tasks would
be decoded by both workers. :class:`SharedBlockCache` is the cache of a worker process that
hands such chunks on through a run-scoped folder next to the staging area:

- the parent tells it which task reads each tile (:meth:`SharedBlockCache.share`) before the
  run's job is sent to the workers; a block is *shared* when tiles of more than one task read it;
- the first worker to need a shared block claims it (an exclusive create), decodes it and
  publishes for each other task the part of it that task reads (one file each, often just a
  halo strip) with an atomic write and rename; a worker that needs a block claimed by another
  waits for its file (about one decode) and loads it, a copy instead of a decode or a GET;
- the parent deletes a task's files when the task has finished
  (:meth:`SharedBlockCache.finished`), and the whole folder at the end of the run, failed or
  cancelled runs included (:meth:`SharedBlockCache.close`); tasks are handed out from lanes
  far apart (:func:`in_lanes`), so workers seldom wait for each other.

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

if TYPE_CHECKING:
    from blockbuster.image import ImageView
    from blockbuster.tiling import TileGrid

CLAIM_WAIT_S = 60.0  # a claimed block not published by then is decoded by the waiter itself


class SharedBlockCache(BlockCache):
    """A worker process's :class:`BlockCache` whose blocks read by several tasks are decoded
    by one worker and loaded by the others from ``folder`` (see the module)."""

    def __init__(self, block_shape: tuple[int, ...], max_bytes: int, grid: TileGrid,
                 folder: Path | None = None, task_of: np.ndarray | None = None):
        super().__init__(block_shape, max_bytes)
        self.grid = grid
        self.folder = folder
        self.task_of = task_of
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
            self._published(position, task).unlink(missing_ok=True)
            self._users[position] -= 1
            if self._users[position] <= 0:
                del self._users[position]
                self._claim(position).unlink(missing_ok=True)

    def close(self) -> None:
        """Delete the folder and everything in it (the end of the run, whatever its end)."""
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    # -- the workers' side ----------------------------------------------------------------
    def read(self, image: ImageView, region: tuple[slice, ...],
             tile: int | None = None) -> np.ndarray:
        self._reading.tile = tile
        return super().read(image, region)

    def _load(self, image: ImageView, position: tuple[int, ...],
              inside: tuple[slice, ...]) -> _Part:
        tile = getattr(self._reading, "tile", None)
        others = self._read_by_others(position, image.shape, tile)
        if not others:
            return super()._load(image, position, inside)
        mine, claim = self._published(position, self.task_of[tile]), self._claim(position)
        deadline = time.monotonic() + CLAIM_WAIT_S
        pause = 0.001
        while time.monotonic() < deadline:
            part = _load_published(mine)
            if part is not None:
                if part.holds(inside):
                    return part
                break
            if _claimed(claim):  # the first to need it: decode it and hand it on
                self._claimed_here.add(position)
                try:
                    part = super()._load(image, position, inside)
                except BaseException:
                    claim.unlink(missing_ok=True)  # the waiting workers try for themselves
                    raise
                self._publish(position, claim, part, others, image)
                return part
            if position in self._claimed_here:  # this process decoded it, for another task
                break
            time.sleep(pause)  # another worker is decoding it
            pause = min(2 * pause, 0.02)
        return super()._load(image, position, inside)

    def _read_by_others(self, position: tuple[int, ...], shape: tuple[int, ...],
                        tile: int | None) -> dict[int, tuple[slice, ...]]:
        """What each task other than ``tile``'s reads of the block at ``position``: the hull of
        its padded tiles there, by task (none without a plan or a reading tile)."""
        if self.folder is None or tile is None:
            return {}
        bounds = self._bounds(position, shape)
        regions: dict[int, list[tuple[slice, ...]]] = {}
        for index in self._tiles_reading(bounds):
            task = int(self.task_of[index])
            if task not in (-1, self.task_of[tile]):
                regions.setdefault(task, []).append(self.grid.tile(index).padded)
        return {task: _hull(found, bounds) for task, found in regions.items()}

    def _publish(self, position: tuple[int, ...], claim: Path, part: _Part,
                 others: dict[int, tuple[slice, ...]], image: ImageView) -> None:
        """Write for each other task the part of the block it reads; if that fails, give the
        claim up so that the workers still waiting decode the block themselves."""
        try:
            for task, box in others.items():
                _write_atomically(self._published(position, task), part.cropped(box, image))
        except OSError:
            claim.unlink(missing_ok=True)

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
                "task_of": self.task_of}

    def __setstate__(self, state):
        self.__init__(state["block_shape"], state["max_bytes"], state["grid"],
                      state["folder"], state["task_of"])


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


def _load_published(path: Path) -> _Part | None:
    """The part published at ``path``, or ``None`` while there is none (or it is unreadable)."""
    try:
        with open(path, "rb") as handle:
            box = np.load(handle)
            data = np.load(handle)
    except (OSError, ValueError, EOFError):
        return None
    return _Part(tuple(slice(int(a), int(b)) for a, b in box), data)


def in_lanes(runs: list[list[int]], workers: int) -> list[list[int]]:
    """``runs`` (tasks in reading order) cut into ``workers`` lanes of consecutive runs and
    taken from the lanes in turn, so that the tasks running at the same time lie apart and
    their workers seldom wait for the same block; each lane still walks its tiles in order."""
    if workers < 2 or len(runs) < 2 * workers:
        return runs
    size = -(-len(runs) // workers)
    lanes = [runs[start:start + size] for start in range(0, len(runs), size)]
    return [run for turn in itertools.zip_longest(*lanes) for run in turn if run is not None]
