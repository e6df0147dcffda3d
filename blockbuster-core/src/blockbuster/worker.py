"""Which worker the current code runs in, so backends can pick a device per worker."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class WorkerInfo:
    """Position of the current worker: ``index`` in ``0 .. count - 1``."""

    index: int = 0
    count: int = 1


_local = threading.local()
_process_default = WorkerInfo()


def current_worker() -> WorkerInfo:
    """Return the :class:`WorkerInfo` of the calling worker (``WorkerInfo(0, 1)`` outside a run).

    A backend uses it to choose a GPU (``index % n_gpus``) and to size thread pools
    (``cores // count``).
    """
    return getattr(_local, "info", _process_default)


def set_thread_worker(info: WorkerInfo) -> None:
    """Record the worker identity of the calling thread (executors call this)."""
    _local.info = info


def set_process_worker(info: WorkerInfo) -> None:
    """Record the worker identity of the whole process (process executors call this); a
    thread identity the process inherited (a worker forked from a thread that ran a serial
    run) no longer applies."""
    global _process_default
    _process_default = info
    _local.__dict__.pop("info", None)


def usable_cores() -> int:
    """CPU cores this process may run on (affinity-aware): one worker each by default."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)
