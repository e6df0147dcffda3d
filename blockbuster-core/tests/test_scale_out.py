"""Executors at scale: dask.distributed, one model per worker, a device per worker."""

import os
from pathlib import Path

import numpy as np
import pytest
import zarr

from blockbuster import current_worker, tile_process
from blockbuster.builtin.segmenters import Watershed
from blockbuster.synthetic import touching_disks

IMAGE = touching_disks((256, 256), seed=11)
FN = Watershed(threshold=0.5, min_distance=5, diameter=20)


class LazyModel:
    """A backend-like segmenter: loads its 'model' once per process, records who did what."""

    def __init__(self, log_dir):
        self.log_dir = str(log_dir)

    def __getstate__(self):
        return {"log_dir": self.log_dir}  # the model never travels

    def model(self):
        cache = globals().setdefault("_MODELS", {})
        if self.log_dir not in cache:
            Path(self.log_dir, f"load-{os.getpid()}").write_text("")
            cache[self.log_dir] = FN
        return cache[self.log_dir]

    def __call__(self, tile):
        worker = current_worker()
        Path(self.log_dir, f"tile-{os.getpid()}-{worker.index}-{worker.count}").write_text("")
        return self.model()(tile)


def digest(path):
    import hashlib

    h = hashlib.sha256()
    for chunk in sorted(p for p in Path(path).rglob("*") if p.is_file() and p.name != "zarr.json"):
        h.update(chunk.relative_to(path).as_posix().encode() + chunk.read_bytes())
    return h.hexdigest()


@pytest.mark.slow
def test_dask_local_cluster_matches_serial_byte_for_byte(tmp_path):
    from distributed import Client, LocalCluster

    serial = tmp_path / "serial.zarr"
    tile_process(IMAGE, FN, tile_shape=(64, 64), overlap=40, executor="serial", write_to=serial)
    logs = tmp_path / "logs"
    logs.mkdir()
    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        from blockbuster.builtin.dask import DaskExecutor

        out = tmp_path / "dask.zarr"
        lazy = tile_process(IMAGE, LazyModel(logs), tile_shape=(64, 64), overlap=40,
                            executor=DaskExecutor(client=client), write_to=out)
        import dask.array as da

        assert isinstance(lazy, da.Array)
        assert int(lazy.max().compute(scheduler="sync")) > 100
    assert digest(out) == digest(serial)
    loads = [p.name for p in logs.iterdir() if p.name.startswith("load-")]
    tiles = [p.name.split("-")[1:] for p in logs.iterdir() if p.name.startswith("tile-")]
    assert 1 <= len(loads) <= 2  # once per worker process, not per tile (16 tiles)
    assert {count for _, _, count in tiles} == {"2"}
    by_pid = {}
    for pid, index, _ in tiles:
        by_pid.setdefault(pid, set()).add(index)
    assert all(len(v) == 1 for v in by_pid.values())  # each worker keeps its index
    assert len({next(iter(v)) for v in by_pid.values()}) == len(by_pid)  # distinct indices


@pytest.mark.slow
def test_dask_executor_by_name_starts_its_own_cluster(tmp_path):
    labels = tile_process(IMAGE, FN, tile_shape=(128, 128), overlap=40, executor="dask",
                          workers=2, compute=True)
    assert np.array_equal(labels, tile_process(IMAGE, FN, tile_shape=(128, 128), overlap=40,
                                               executor="serial", compute=True))


@pytest.mark.slow
def test_processes_load_the_model_once_per_worker_and_number_workers(tmp_path):
    tile_process(IMAGE, LazyModel(tmp_path), tile_shape=(32, 32), overlap=20,
                 executor="processes", workers=2)
    loads = [p for p in tmp_path.iterdir() if p.name.startswith("load-")]
    tiles = [p.name.split("-")[1:] for p in tmp_path.iterdir() if p.name.startswith("tile-")]
    assert 1 <= len(loads) <= 2  # 64 tiles, at most one load per worker process
    assert {(index, count) for _, index, count in tiles} <= {("0", "2"), ("1", "2")}


def test_jobqueue_cluster_is_built_from_config_options(monkeypatch):
    import dask_jobqueue

    from blockbuster.builtin.dask import DaskExecutor

    made = {}

    class FakeSLURM:
        def __init__(self, **options):
            made["options"] = options

        def scale(self, n):
            made["scale"] = n

    monkeypatch.setattr(dask_jobqueue, "SLURMCluster", FakeSLURM)
    executor = DaskExecutor(workers=8, cluster="slurm", cores=4, memory="16GB", queue="gpu")
    executor._make_cluster()
    assert made == {"options": {"cores": 4, "memory": "16GB", "queue": "gpu"}, "scale": 8}


class AsksForWorkers:
    """A segmenter that asks for ``count`` workers (as a GPU backend asks for one per GPU)."""

    def __init__(self, count):
        self.count = count
        self.seen = set()

    def blockbuster_needs(self):
        from blockbuster import Needs

        return Needs(workers=self.count)

    def __call__(self, tile):
        self.seen.add(current_worker().count)
        return FN(tile)


def test_needs_workers_sets_the_default_worker_count_and_workers_overrides_it():
    asks = AsksForWorkers(3)
    labels = tile_process(IMAGE, asks, tile_shape=(64, 64), overlap=40, compute=True)
    assert asks.seen == {3}
    given = AsksForWorkers(3)
    same = tile_process(IMAGE, given, tile_shape=(64, 64), overlap=40, workers=1, compute=True)
    assert given.seen == {1}
    assert np.array_equal(labels, same)
