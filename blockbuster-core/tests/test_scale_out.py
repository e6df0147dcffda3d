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


def record_threads(monkeypatch, task_name):
    """Wrap ``blockbuster.pipeline.<task_name>`` to record the threads its tasks ran on (each
    task held a moment, so that a pool of several threads really spreads them)."""
    import threading
    import time

    import blockbuster.pipeline as pipeline

    seen = set()
    task = getattr(pipeline, task_name)

    def recorded(job, item):
        seen.add(threading.get_ident())
        time.sleep(0.02)
        return task(job, item)

    monkeypatch.setattr(pipeline, task_name, recorded)
    return seen


def test_passes_after_a_one_worker_segmenter_use_a_thread_per_core(monkeypatch, tmp_path):
    """A GPU model runs one worker; its merge and relabel passes get every core (here 3), and
    write the same bytes as a run kept to one worker throughout."""
    import blockbuster.pipeline as pipeline

    monkeypatch.setattr(pipeline, "usable_cores", lambda: 3)
    outputs = {}
    for workers in (None, 1):
        segmented = record_threads(monkeypatch, "segment_task")
        merged = record_threads(monkeypatch, "merge_task")
        relabelled = record_threads(monkeypatch, "relabel_task")
        tile_process(IMAGE, AsksForWorkers(1), tile_shape=(32, 32), overlap=12, workers=workers,
                     write_to=tmp_path / f"{workers}.zarr", table=True)
        outputs[workers] = zarr.open_array(str(tmp_path / f"{workers}.zarr"), mode="r")[...]
        assert len(segmented) == 1  # one worker, as the segmenter asked
        spread = 1 if workers == 1 else 3  # workers=1 given: every pass keeps to it
        assert len(merged) == spread and len(relabelled) == spread
        monkeypatch.undo()
        monkeypatch.setattr(pipeline, "usable_cores", lambda: 3)
    assert outputs[None].dtype == outputs[1].dtype
    assert np.array_equal(outputs[None], outputs[1])
    assert (tmp_path / "None.zarr.objects.csv").read_bytes() == \
        (tmp_path / "1.zarr.objects.csv").read_bytes()


def test_only_a_segmenter_chosen_thread_count_widens_the_passes_after_it(monkeypatch):
    import blockbuster.pipeline as pipeline
    from blockbuster.builtin.executors import ProcessExecutor, SerialExecutor, ThreadExecutor

    monkeypatch.setattr(pipeline, "usable_cores", lambda: 4)
    assert pipeline._post_segment_workers(ThreadExecutor(1), None) == 4
    assert pipeline._post_segment_workers(ThreadExecutor(6), None) == 6
    assert pipeline._post_segment_workers(ThreadExecutor(1), 1) == 1  # the caller's choice
    assert pipeline._post_segment_workers(SerialExecutor(), None) == 1
    assert pipeline._post_segment_workers(ProcessExecutor(1), None) == 1
