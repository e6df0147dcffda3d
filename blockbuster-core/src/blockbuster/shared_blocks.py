"""Decoded input blocks shared between worker processes, so each chunk is decoded about once.

Threads share one :class:`~blockbuster.read_cache.BlockCache`; worker processes cannot, and
tasks (runs of tiles) go to whichever worker is free, so a chunk in the halo of two tasks would
be decoded by both workers. :class:`SharedBlockCache` is the cache of a worker process that
hands such chunks on through a run-scoped folder next to the staging area:

- the parent tells it which task reads each tile (:meth:`SharedBlockCache.share`) before the
  run's job is sent to the workers; a block is *shared* when tiles of more than one task read it;
- the first worker to need a shared block claims it (an exclusive create), decodes it and
  publishes the part that the *other* tasks read (often just their halo strips) with an atomic
  write and rename; a worker that needs a block claimed by another waits for it (about one
  decode) and loads it, a copy instead of a decode or a GET;
- the parent deletes a published block once every task reading it has finished
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

import numpy as np

from blockbuster.image import ImageView
from blockbuster.read_cache import BlockCache, _hull, _Part
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
        self._users: Counter = Counter()  # the parent's: unfinished tasks reading each block
        self._blocks_of: dict[int, list[tuple[int, ...]]] = {}

    # -- the parent's side ----------------------------------------------------------------
    def share(self, folder: Path, runs: list[list[int]]) -> None:
        """Share the blocks that tiles of more than one of ``runs`` (the tasks) read, through
        ``folder`` (emptied first: a crashed run may have left one)."""
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        self.folder = Path(folder)
        self.task_of = np.full(len(self.grid), -1, np.int64)
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
        """The task holding ``tiles`` has finished: delete the blocks no task reads any more."""
        if self.folder is None or not tiles:
            return
        for position in self._blocks_of.pop(int(self.task_of[tiles[0]]), []):
            self._users[position] -= 1
            if self._users[position] <= 0:
                del self._users[position]
                for path in self._paths(position):
                    path.unlink(missing_ok=True)

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
        others = self._wanted_by_others(position, image.shape)
        if others is None:
            return super()._load(image, position, inside)
        published, claim = self._paths(position)
        deadline = time.monotonic() + CLAIM_WAIT_S
        pause = 0.001
        while time.monotonic() < deadline:
            part = _load_published(published)
            if part is not None:
                if part.holds(inside):
                    return part
                break  # published for the other tasks' tiles, not for this one
            if _claimed(claim):  # first: decode it and hand it on
                try:
                    part = super()._load(image, position, inside)
                except BaseException:
                    claim.unlink(missing_ok=True)  # the waiting workers try for themselves
                    raise
                _publish(published, claim, part.cropped(others, image))
                return part
            time.sleep(pause)  # another worker is decoding it
            pause = min(2 * pause, 0.02)
        return super()._load(image, position, inside)

    def _wanted_by_others(self, position: tuple[int, ...],
                          shape: tuple[int, ...]) -> tuple[slice, ...] | None:
        """The part of the block at ``position`` that tasks other than the reading tile's read
        (their padded tiles' hull), or ``None`` when no other task reads it."""
        tile = getattr(self._reading, "tile", None)
        if self.folder is None or tile is None:
            return None
        mine = self.task_of[tile]
        bounds = self._bounds(position, shape)
        regions = [self.grid.tile(i).padded for i in self._tiles_reading(bounds)
                   if self.task_of[i] not in (-1, mine)]
        return _hull(regions, bounds) if regions else None

    def _tiles_reading(self, bounds: tuple[slice, ...]) -> list[int]:
        """The tiles whose padded window meets ``bounds``."""
        grid = self.grid
        ranges = [range(max(0, (b.start - o) // t), min(g, (b.stop + o - 1) // t + 1))
                  for b, o, t, g in zip(bounds, grid.overlap, grid.tile_shape, grid.grid_shape)]
        return [grid.index(p) for p in itertools.product(*ranges)]

    def _paths(self, position: tuple[int, ...]) -> tuple[Path, Path]:
        name = "_".join(map(str, position))
        return self.folder / f"{name}.npy", self.folder / f"{name}.claim"

    def __getstate__(self):
        return {**super().__getstate__(), "grid": self.grid, "folder": self.folder,
                "task_of": self.task_of}

    def __setstate__(self, state):
        self.__init__(state["block_shape"], state["max_bytes"], state["grid"],
                      state["folder"], state["task_of"])


def _claimed(claim: Path) -> bool:
    """Claim the block whose claim file is ``claim``; ``False`` if another worker has."""
    try:
        os.close(os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def _publish(path: Path, claim: Path, part: _Part) -> None:
    """Write ``part`` to ``path`` atomically; if that fails, give the claim up so that the
    waiting workers decode the block themselves."""
    temporary = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            np.save(handle, np.array([[s.start, s.stop] for s in part.box], np.int64))
            np.save(handle, np.ascontiguousarray(part.data))
        os.replace(temporary, path)
    except OSError:
        temporary.unlink(missing_ok=True)
        claim.unlink(missing_ok=True)


def _load_published(path: Path) -> _Part | None:
    """The part published at ``path``, or ``None`` while there is none (or it is unreadable)."""
    try:
        with open(path, "rb") as handle:
            box = np.load(handle)
            data = np.load(handle)
    except (OSError, ValueError, EOFError):
        return None
    return _Part(tuple(slice(int(a), int(b)) for a, b in box), data)
