"""Each worker of a run takes GPU ``index % n_gpus`` in every backend (two GPUs mocked).

The GPUs are faked at the framework boundary (torch's CUDA queries, a stand-in TensorFlow
module); the device choice itself is each backend's own code, called from inside real worker
threads of ``tile_process``, so a backend that ignored the worker would pick one GPU for all.
"""

import sys
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from blockbuster import current_worker, tile_process

torch = pytest.importorskip("torch")


def fake_tensorflow(n_gpus: int):
    """Just the calls ``configure_tensorflow`` makes; records the GPU made visible."""
    gpus = [SimpleNamespace(name=f"/physical_device:GPU:{i}") for i in range(n_gpus)]
    visible = []
    config = SimpleNamespace(
        threading=SimpleNamespace(set_intra_op_parallelism_threads=lambda n: None,
                                  set_inter_op_parallelism_threads=lambda n: None),
        list_physical_devices=lambda kind: gpus if kind == "GPU" else [],
        set_visible_devices=lambda gpu, kind: visible.append(gpu.name),
        experimental=SimpleNamespace(set_memory_growth=lambda gpu, grow: None),
    )
    return SimpleNamespace(config=config), visible


def test_every_backend_spreads_the_workers_of_a_run_over_the_gpus(monkeypatch):
    from blockbuster.plugins.cellpose._device import select_device
    from blockbuster.plugins.stardist import _tensorflow
    from blockbuster.plugins.torch._device import resolve_device
    from blockbuster.worker import current_worker as torch_worker

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    tf, visible = fake_tensorflow(2)
    monkeypatch.setitem(sys.modules, "tensorflow", tf)
    monkeypatch.setattr(_tensorflow, "_done", False)
    lock = threading.Lock()
    picks = []

    def fn(tile):
        with lock:  # configure_tensorflow runs once per process: let each call run it again
            _tensorflow._done = False
            _tensorflow.configure_tensorflow(threads=1)
            tensorflow_gpu = visible[-1]
        worker = torch_worker()
        picks.append((current_worker().index, str(select_device(True)),
                      resolve_device("auto", worker), resolve_device("cuda", worker),
                      tensorflow_gpu))
        time.sleep(0.02)  # keep every worker busy, so all three take tiles
        return np.ones(tile.shape, np.uint8)

    tile_process(np.ones((64, 64), np.float32), fn, tile_shape=(16, 16), executor="threads",
                 workers=3, compute=True)
    assert len(picks) == 16
    choices = {}
    for index, *devices in picks:
        choices.setdefault(index, set()).add(tuple(devices))
    assert choices == {
        index: {(f"cuda:{index % 2}",) * 3 + (f"/physical_device:GPU:{index % 2}",)}
        for index in (0, 1, 2)
    }
