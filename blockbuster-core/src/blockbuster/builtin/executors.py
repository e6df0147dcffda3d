"""Built-in executors: serial, threads (default), processes, and dask when installed.

The default is ``threads``: it runs every callable, including one that closes over a model
already loaded in this process, and the heavy libraries (numpy, scipy, torch, TensorFlow,
zarr's codecs) release the GIL while they work. ``processes`` sends the run's context to each
worker once with cloudpickle (as dask and loky do), so lambdas and closures work and a model
held by ``fn`` is loaded once per worker; choose it for pure-Python functions that hold the GIL.
"""

from __future__ import annotations

import concurrent.futures as cf
import importlib.util
import itertools
import multiprocessing
import threading
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import Any

from blockbuster.errors import NotPicklableError, WorkerCrashedError
from blockbuster.executors import Executor, Pool, Task
from blockbuster.hookspecs import hookimpl
from blockbuster.worker import WorkerInfo, set_process_worker, set_thread_worker


@hookimpl
def register_executors(register) -> None:
    register("threads", ThreadExecutor, aliases=("thread",), description="thread pool (default)")
    register("processes", ProcessExecutor, aliases=("process", "multiprocessing"),
             description="worker processes; fn sent once per worker with cloudpickle")
    register("serial", SerialExecutor, aliases=("sync",), description="one task at a time")
    if importlib.util.find_spec("distributed") is not None:
        register("dask", "blockbuster.builtin.dask:DaskExecutor", aliases=("distributed",),
                 description="dask.distributed: LocalCluster, a Client, or dask-jobqueue")


# -- serial ---------------------------------------------------------------------------------
class _SerialPool(Pool):
    def __init__(self, context):
        self.context = context

    def map_unordered(self, task, items):
        for item in items:
            yield task(self.context, item)


class SerialExecutor(Executor):
    """Runs every task in the calling thread, in order. For debugging and tiny images."""

    name = "serial"

    def __init__(self, workers: int | None = None):
        super().__init__(1)

    @contextmanager
    def start(self, context):
        set_thread_worker(WorkerInfo(0, 1))
        yield _SerialPool(context)


# -- futures-based pools ----------------------------------------------------------------------
class _FuturesPool(Pool):
    def __init__(self, executor: cf.Executor, workers: int, call: Callable):
        self.executor = executor
        self.window = 4 * workers  # bounded submission keeps memory flat
        self.call = call

    def map_unordered(self, task, items):
        items = iter(items)
        pending = {self.executor.submit(self.call, task, item) for item in itertools.islice(items, self.window)}
        try:
            while pending:
                done, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                for future in done:
                    yield future.result()
                for item in itertools.islice(items, len(done)):
                    pending.add(self.executor.submit(self.call, task, item))
        except BrokenProcessPool as error:
            raise WorkerCrashedError(
                "a worker process died: killed for lack of memory (use smaller tiles or fewer "
                "workers), crashed in native code, or the calling script lacks the "
                "`if __name__ == \"__main__\":` guard the processes executor needs. Finished "
                "tiles are staged: rerun the same call to resume, or use executor='threads'."
            ) from error
        finally:
            for future in pending:
                future.cancel()


class ThreadExecutor(Executor):
    """Runs tasks on a pool of threads sharing this process's memory (the default)."""

    name = "threads"

    @contextmanager
    def start(self, context):
        counter = itertools.count()
        lock = threading.Lock()

        def name_thread():
            with lock:
                set_thread_worker(WorkerInfo(next(counter), self.workers))

        with cf.ThreadPoolExecutor(self.workers, initializer=name_thread) as pool:
            yield _FuturesPool(pool, self.workers, lambda task, item: task(context, item))


class ProcessExecutor(Executor):
    """Runs tasks in worker processes; ``fn`` and the reader are sent once per worker.

    Worker processes are started with ``start_method`` (``"forkserver"`` by default: safe with
    threaded libraries such as torch, and fast after the first run). Scripts that use it need
    the usual ``if __name__ == "__main__":`` guard.
    """

    name = "processes"

    def __init__(self, workers: int | None = None, start_method: str = "forkserver"):
        super().__init__(workers)
        self.start_method = start_method

    @contextmanager
    def start(self, context):
        payload = serialize(context)
        mp = multiprocessing.get_context(self.start_method)
        counter = mp.Value("i", 0)
        with cf.ProcessPoolExecutor(
            self.workers, mp_context=mp, initializer=_init_process,
            initargs=(payload, counter, self.workers),
        ) as pool:
            yield _FuturesPool(pool, self.workers, _call_in_process)


def serialize(context: Any) -> bytes:
    """cloudpickle ``context``, or explain why it cannot go to another process."""
    import cloudpickle

    try:
        return cloudpickle.dumps(context)
    except Exception as error:
        raise NotPicklableError(
            f"fn cannot be sent to worker processes ({type(error).__name__}: {error}). Use "
            "executor='threads', or define fn at module level and create any model inside it "
            "lazily (once per worker) instead of capturing an open handle."
        ) from error


_CONTEXT: Any = None


def _init_process(payload: bytes, counter, workers: int) -> None:
    import cloudpickle

    global _CONTEXT
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    set_process_worker(WorkerInfo(index, workers))
    _CONTEXT = cloudpickle.loads(payload)


def _call_in_process(task: Task, item: Any) -> Any:
    return task(_CONTEXT, item)

