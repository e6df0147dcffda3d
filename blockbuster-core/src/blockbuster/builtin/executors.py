"""Built-in executors: serial, threads (default), processes, and dask when installed.

The default is ``threads``: it runs every callable, including one that closes over a model
already loaded in this process, and the heavy libraries (numpy, scipy, torch, TensorFlow,
zarr's codecs) release the GIL while they work. ``processes`` sends the run's context to each
worker once with cloudpickle (as dask and loky do), so lambdas and closures work and a model
held by ``fn`` is loaded once per worker; choose it for pure-Python functions that hold the GIL.
Its workers fork from a fork server that has already imported what they need
(:func:`preload_worker_modules`), so starting them costs milliseconds, not an interpreter's
imports per worker per run.
"""

from __future__ import annotations

import ast
import concurrent.futures as cf
import importlib.util
import itertools
import multiprocessing
import sys
import threading
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import Any

from blockbuster.errors import MissingMainGuardError, NotPicklableError, WorkerCrashedError
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
WORKER_DIED = (
    "a worker process died: killed for lack of memory (use smaller tiles or fewer "
    "workers), crashed in native code, or the calling script lacks the "
    "`if __name__ == \"__main__\":` guard the processes executor needs. Finished "
    "tiles are staged: rerun the same call to resume, or use executor='threads'."
)


class _FuturesPool(Pool):
    def __init__(self, executor: cf.Executor, workers: int, call: Callable,
                 crashes: tuple[type[BaseException], ...] = ()):
        self.executor = executor
        self.window = 4 * workers  # bounded submission keeps memory flat
        self.call = call
        self.crashes = crashes  # errors that mean a worker process is gone

    def map_unordered(self, task, items):
        items = iter(items)
        pending = {self.executor.submit(self.call, task, item)
                   for item in itertools.islice(items, self.window)}
        try:
            while pending:
                done, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                for future in done:
                    yield future.result()
                for item in itertools.islice(items, len(done)):
                    pending.add(self.executor.submit(self.call, task, item))
        except self.crashes as error:
            raise WorkerCrashedError(WORKER_DIED) from error
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
    threaded libraries such as torch). The fork server imports what workers need once, when
    the first run starts it (:func:`preload_worker_modules`), so each worker is a fork of an
    already-warm process instead of a fresh interpreter importing zarr and the codecs itself.
    Scripts that use it need the usual ``if __name__ == "__main__":`` guard.
    """

    name = "processes"

    def __init__(self, workers: int | None = None, start_method: str = "forkserver"):
        super().__init__(workers)
        self.start_method = start_method

    @contextmanager
    def start(self, context):
        if self.start_method != "fork":
            check_main_guard()
        payload = serialize(context)
        mp = multiprocessing.get_context(self.start_method)
        if self.start_method == "forkserver":
            preload_worker_modules(mp, payload)
        counter = mp.Value("i", 0)
        with cf.ProcessPoolExecutor(
            self.workers, mp_context=mp, initializer=_init_process,
            initargs=(payload, counter, self.workers),
        ) as pool:
            yield _FuturesPool(pool, self.workers, _call_in_process,
                               crashes=(BrokenProcessPool, BrokenPipeError, EOFError))


def check_main_guard() -> None:
    """Refuse to start worker processes from a script's unguarded top level.

    Worker processes (``spawn``/``forkserver``) import the main script again; a script that
    calls ``tile_process`` at its top level would rerun in each worker and fail there with a
    raw ``RuntimeError``/``BrokenPipeError``. Checked in the parent (the call sits outside an
    ``if __name__ == "__main__":`` block of the main file) and in a worker (the call happens
    while the worker imports the script as ``__mp_main__``).
    """
    script = _unguarded_main_script(sys._getframe(1))
    if script is not None:
        raise MissingMainGuardError(
            f"executor='processes' was started from the top level of {script} without the "
            "`if __name__ == \"__main__\":` guard, so every worker process would run the script "
            "again. Move the call under that guard (or into a function called from it), or use "
            "executor='threads'."
        )


def _unguarded_main_script(frame) -> str | None:
    """The main script whose top level, outside its guard, is making this call (or ``None``)."""
    while frame is not None:
        name = frame.f_globals.get("__name__")
        if frame.f_code.co_name == "<module>" and name in ("__main__", "__mp_main__"):
            path = frame.f_code.co_filename
            if name == "__mp_main__" or not _inside_main_guard(path, frame.f_lineno):
                return path
            return None
        frame = frame.f_back
    return None


def _inside_main_guard(path: str, line: int) -> bool:
    """Whether ``line`` of the file at ``path`` lies in an ``if __name__ == "__main__":`` block.

    A source that cannot be read or parsed (``python -c``, a notebook cell) is given the benefit
    of the doubt.
    """
    try:
        tree = ast.parse(open(path, encoding="utf-8").read())
    except (OSError, SyntaxError, ValueError):
        return True
    return any(
        isinstance(node, ast.If) and _is_main_test(node.test)
        and node.lineno <= line <= node.end_lineno
        for node in ast.walk(tree)
    )


def _is_main_test(test: ast.expr) -> bool:
    if isinstance(test, ast.BoolOp):  # if __name__ == "__main__" and ...:
        return any(_is_main_test(value) for value in test.values)
    if not (isinstance(test, ast.Compare) and len(test.comparators) == 1):
        return False
    sides = [test.left, test.comparators[0]]
    names = {s.id for s in sides if isinstance(s, ast.Name)}
    values = {s.value for s in sides if isinstance(s, ast.Constant)}
    return names == {"__name__"} and values == {"__main__"}


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


#: What every worker imports to run tile tasks: its own modules and the reading, writing and
#: staging stack (zarr's import alone is ~0.5 s of CPU; the codecs load on the first read).
WORKER_MODULES = (
    "blockbuster.tasks", "blockbuster.builtin.zarr_writer", "blockbuster.builtin.arrays",
    "zarr", "zarr.codecs", "numcodecs", "numcodecs.blosc", "numcodecs.zstd", "fastremap",
    "blockbuster.memory", "scipy.ndimage", "cloudpickle",
)


def preload_worker_modules(mp, payload: bytes) -> None:
    """Have the fork server import what workers need before it forks them.

    Without it each worker imports zarr, the codecs, blockbuster and the modules of ``fn``
    itself (``payload``'s classes and functions pickled by reference) on its own: seconds per
    worker per run on a loaded machine, most of a short run's time. The fork server is started
    once per process, so this takes effect in the first run that starts it; later runs fork
    from the same warm server. Of ``fn``'s modules only those this process has already
    imported are added (they import cleanly), next to any preload the caller set.
    """
    from multiprocessing import forkserver

    modules = [*WORKER_MODULES, *(m for m in pickled_modules(payload) if m in sys.modules)]
    current = list(getattr(forkserver._forkserver, "_preload_modules", ["__main__"]))
    mp.set_forkserver_preload(list(dict.fromkeys(current + modules)))


def pickled_modules(payload: bytes) -> set[str]:
    """Modules whose classes or functions ``payload`` refers to (and so imports when loaded)."""
    import pickletools

    found, strings = set(), []
    for opcode, argument, _ in pickletools.genops(payload):
        if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(argument)
        elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
            found.add(strings[-2])
        elif opcode.name == "GLOBAL":
            found.add(argument.split(" ")[0])
    return {name for name in found if name and not name.startswith(("__main__", "__mp_main__"))}


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

