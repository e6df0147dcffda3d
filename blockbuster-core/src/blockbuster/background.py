"""Overlap a task's I/O with its compute: read the next tile ahead, write finished tiles behind.

A task handles a run of consecutive tiles. One background thread per task reads tile ``k + 1``
while ``fn`` works on tile ``k`` and writes finished tiles while the next one is computed.
Decompression, compression and file I/O release the GIL, so even a single worker keeps a
second core busy with its I/O — and a GPU model is not left waiting for the disk.

The task leaves its ``with Background()`` block only once every write has finished, so when
a task reports a tile done, the tile is on disk (resume's done-markers stay truthful). Memory
stays bounded: a worker holds at most two tiles' input (the one in hand and the one read
ahead) and ``MAX_PENDING_WRITES`` tiles waiting to be written — a task whose compute outpaces
the disk waits for it rather than queueing every tile of its run.
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
    """A one-thread helper for a task's reads and writes (use as a context manager)."""

    def __enter__(self) -> Background:
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="blockbuster-io")
        self._writes: deque[Future] = deque()
        return self

    def read_ahead(self, items: Iterable[T], read: Callable[[T], R]) -> Iterator[R]:
        """Yield ``read(item)`` for each item, the next read already under way."""
        items = iter(items)
        pending: deque[Future] = deque(
            self._thread.submit(read, item) for item in itertools.islice(items, 1)
        )
        while pending:
            current = pending.popleft()
            pending.extend(self._thread.submit(read, item) for item in itertools.islice(items, 1))
            yield current.result()

    def write(self, write: Callable[..., Any], *args: Any) -> None:
        """Run ``write(*args)`` in the background, first waiting while too many are queued.

        A failed write raises here (when waited for) or when the block ends.
        """
        while len(self._writes) >= MAX_PENDING_WRITES:
            self._writes.popleft().result()
        self._writes.append(self._thread.submit(write, *args))

    def __exit__(self, kind, error, trace) -> None:
        self._thread.shutdown(wait=True)  # every write finishes, even when the task failed
        if kind is None:
            for future in self._writes:
                future.result()
