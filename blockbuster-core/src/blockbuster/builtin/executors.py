"""Built-in executors: serial, threads (default), processes, and dask when installed."""

import importlib.util

from blockbuster.executors import ProcessExecutor, SerialExecutor, ThreadExecutor
from blockbuster.hookspecs import hookimpl


@hookimpl
def register_executors(register) -> None:
    register("threads", ThreadExecutor, aliases=("thread",), description="thread pool (default)")
    register("processes", ProcessExecutor, aliases=("process", "multiprocessing"),
             description="worker processes; fn sent once per worker with cloudpickle")
    register("serial", SerialExecutor, aliases=("sync",), description="one task at a time")
    if importlib.util.find_spec("distributed") is not None:
        register("dask", "blockbuster.dask_executor:DaskExecutor", aliases=("distributed",),
                 description="dask.distributed: LocalCluster, a Client, or dask-jobqueue")
