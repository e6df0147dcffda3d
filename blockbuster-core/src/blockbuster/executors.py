"""The executor contract: where tile tasks run.

An executor starts a *pool* for one run with a *context* (the run's
:class:`~blockbuster.tasks.Job`: image view, segmenter, stage, writer), which reaches each
worker **once**; tasks are module-level functions ``task(context, item)`` from
:mod:`blockbuster.tasks`. Serial, threads and processes are built in
(:mod:`blockbuster.builtin.executors`); more arrive through ``register_executors``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from blockbuster.worker import usable_cores

Task = Callable[[Any, Any], Any]


class Pool(ABC):
    """A started executor: runs ``task(context, item)`` for many items."""

    @abstractmethod
    def map_unordered(self, task: Task, items: Iterable[Any]) -> Iterator[Any]:
        """Yield results as tasks finish; the first failure cancels the rest and is raised."""


class Executor(ABC):
    """A way of running tile tasks. Subclass it (and register it) to add another.

    A worker learns its position through :func:`blockbuster.current_worker`: executors record
    it with :func:`blockbuster.worker.set_thread_worker` or ``set_process_worker``.
    """

    name: str = ""

    def __init__(self, workers: int | None = None):
        self.workers = int(workers) if workers else usable_cores()

    @abstractmethod
    @contextmanager
    def start(self, context: Any) -> Iterator[Pool]:
        """Start workers holding ``context`` and yield a :class:`Pool` for the run."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(workers={self.workers})"
