"""Overlap a task's I/O with its compute: read the next tile ahead, write finished tiles behind.

A task handles a run of consecutive tiles. One background thread per task reads batch ``k + 1``
while ``fn`` works on batch ``k``, and a second one writes finished tiles (for a GPU model it
labels and stages them too, see :func:`blockbuster.tasks._stages_behind`) while the next batch
is computed. Decompression, compression and file I/O release the GIL, so even a
single worker keeps other cores busy with its I/O — and a GPU model waits neither for the disk
nor for the labelling and staging of the tiles it has already segmented.

The task leaves its ``with Background()`` block only once every write has finished, so when
a task reports a tile done, the tile is on disk (resume's done-markers stay truthful). Memory
stays bounded: a worker holds at most two batches' input (the one in hand and the one read
ahead) and ``pending`` tiles waiting to be written (``MAX_PENDING_WRITES`` by default; a
segment task allows one batch more, so ``fn`` never waits for its own batch's staging) — a
task whose compute outpaces the disk waits for it rather than queueing every tile of its run.

A GPU model's task may get more than one thread for each (``threads``, see
:func:`blockbuster.tasks.io_threads`): the tiles of the next batch are then read side by side
(:meth:`Background.each`) and several finished tiles labelled and staged at once. One worker
per GPU otherwise leaves all but about three cores of the machine idle while its reader and
its writer, one tile after another, keep the GPU waiting.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

MAX_PENDING_WRITES = 2

T = TypeVar("T")
R = TypeVar("R")


class Background:
    """A task's reader and writer threads (use as a context manager); at most ``pending``
    writes are queued at once, ``threads`` of them written side by side, and :meth:`each`
    reads on ``threads`` threads."""

    def __init__(self, pending: int = MAX_PENDING_WRITES, threads: int = 1) -> None:
        self.threads = max(1, int(threads))
        self.pending = max(1, int(pending), self.threads)

    def __enter__(self) -> Background:
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="blockbuster-read")
        self._helpers = (ThreadPoolExecutor(max_workers=self.threads - 1,
                                            thread_name_prefix="blockbuster-read-more")
                         if self.threads > 1 else None)
        self._writer = ThreadPoolExecutor(max_workers=self.threads,
                                          thread_name_prefix="blockbuster-write")
        self._writes: deque[Future] = deque()
        return self

    def read_ahead(self, items: Iterable[T], read: Callable[[T], R]) -> Iterator[R]:
        """Yield ``read(item)`` for each item, the next read already under way."""
        items = iter(items)
        pending: deque[Future] = deque(
            self._reader.submit(read, item) for item in itertools.islice(items, 1)
        )
        while pending:
            current = pending.popleft()
            pending.extend(self._reader.submit(read, item) for item in itertools.islice(items, 1))
            yield current.result()

    def each(self, read: Callable[[T], R], items: list[T]) -> list[R]:
        """``[read(item) for item in items]``, on ``threads`` threads at once: the calling
        one (the reader, in :meth:`read_ahead`) and ``threads - 1`` helpers."""
        if self._helpers is None or len(items) < 2:
            return [read(item) for item in items]
        share = len(items) * (self.threads - 1) // self.threads  # the helpers' items
        futures = [self._helpers.submit(read, item) for item in items[:share]]
        own = [read(item) for item in items[share:]]
        return [future.result() for future in futures] + own

    def write(self, write: Callable[..., Any], *args: Any) -> None:
        """Run ``write(*args)`` in the background, first waiting while too many are queued.

        A failed write raises here (when waited for) or when the block ends.
        """
        while len(self._writes) >= self.pending:
            self._writes.popleft().result()
        self._writes.append(self._writer.submit(write, *args))

    def __exit__(self, kind, error, trace) -> None:
        self._reader.shutdown(wait=True, cancel_futures=True)
        if self._helpers is not None:
            self._helpers.shutdown(wait=True, cancel_futures=True)
        self._writer.shutdown(wait=True)  # every write finishes, even when the task failed
        if kind is None:
            for future in self._writes:
                future.result()
