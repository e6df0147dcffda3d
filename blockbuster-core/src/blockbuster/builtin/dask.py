"""The ``dask`` executor: runs tile tasks on dask.distributed — a LocalCluster, an existing
Client or scheduler, or an HPC cluster through dask-jobqueue (SLURM, LSF, PBS, SGE).

The run's context (reader, ``fn``, stage) is scattered to every worker **once**
(``broadcast=True``); tasks carry only a tile index, so a model held by ``fn`` is unpickled once
per worker and, loaded lazily by the backend, reused across tiles. Each worker learns its index
among the cluster's workers through :func:`blockbuster.current_worker`, so a backend can take
GPU ``index % n_gpus``.
"""

from __future__ import annotations

import itertools
from contextlib import contextmanager
from typing import Any

from blockbuster.errors import InvalidParameterError
from blockbuster.executors import Executor, Pool
from blockbuster.worker import WorkerInfo, set_thread_worker

JOBQUEUE_CLUSTERS = {
    "slurm": "SLURMCluster",
    "lsf": "LSFCluster",
    "pbs": "PBSCluster",
    "sge": "SGECluster",
    "htcondor": "HTCondorCluster",
}


class DaskExecutor(Executor):
    """Run on dask.distributed.

    Parameters
    ----------
    workers
        Workers of the cluster this executor starts (LocalCluster processes, or jobqueue jobs
        × processes); ignored with ``client`` or ``address``.
    client, address
        An existing ``distributed.Client``, or a scheduler address to connect to.
    cluster
        ``"local"`` (default) or a dask-jobqueue kind: ``"slurm"``, ``"lsf"``, ``"pbs"``,
        ``"sge"``, ``"htcondor"``.
    threads_per_worker
        Threads in each LocalCluster worker (default 1: one tile at a time per worker).
    cluster_options
        Passed to the cluster class, e.g. ``cores=8, memory="32GB", queue="gpu",
        job_extra_directives=["--gres=gpu:1"]`` for SLURM.
    """

    name = "dask"

    def __init__(self, workers: int | None = None, *, client: Any = None,
                 address: str | None = None, cluster: str = "local",
                 threads_per_worker: int = 1, **cluster_options: Any):
        super().__init__(workers)
        if cluster != "local" and cluster not in JOBQUEUE_CLUSTERS:
            raise InvalidParameterError(
                f"cluster={cluster!r}; use 'local' or one of {sorted(JOBQUEUE_CLUSTERS)}."
            )
        self.client = client
        self.address = address
        self.cluster = cluster
        self.threads_per_worker = threads_per_worker
        self.cluster_options = cluster_options

    @contextmanager
    def start(self, context: Any):
        with self._client() as client:
            client.wait_for_workers(1)
            addresses = sorted(client.scheduler_info()["workers"])
            ranks = {address: i for i, address in enumerate(addresses)}
            shared = client.scatter(context, broadcast=True, hash=False)
            yield _DaskPool(client, shared, ranks, window=4 * max(len(addresses), 1))

    @contextmanager
    def _client(self):
        from distributed import Client

        if self.client is not None:
            yield self.client
            return
        if self.address is not None:
            with Client(self.address) as client:
                yield client
            return
        with self._make_cluster() as cluster, Client(cluster) as client:
            yield client

    def _make_cluster(self):
        if self.cluster == "local":
            from distributed import LocalCluster

            return LocalCluster(n_workers=self.workers, threads_per_worker=self.threads_per_worker,
                                processes=True, dashboard_address=None, **self.cluster_options)
        import dask_jobqueue

        cluster = getattr(dask_jobqueue, JOBQUEUE_CLUSTERS[self.cluster])(**self.cluster_options)
        cluster.scale(self.workers)
        return cluster


class _DaskPool(Pool):
    def __init__(self, client, shared, ranks: dict[str, int], window: int):
        self.client = client
        self.shared = shared
        self.ranks = ranks
        self.window = window

    def map_unordered(self, task, items):
        from distributed import as_completed

        items = iter(items)

        def submit(item):
            return self.client.submit(_run_on_worker, task, self.shared, self.ranks, item,
                                      pure=False)

        pending = as_completed([submit(item) for item in itertools.islice(items, self.window)])
        try:
            for future in pending:
                yield future.result()
                for item in itertools.islice(items, 1):
                    pending.add(submit(item))
        finally:
            pending.clear()


def _run_on_worker(task, context, ranks: dict[str, int], item):
    from distributed import get_worker

    address = get_worker().address
    set_thread_worker(WorkerInfo(ranks.get(address, 0), max(len(ranks), 1)))
    return task(context, item)
