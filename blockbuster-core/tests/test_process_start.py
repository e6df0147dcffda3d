"""Worker processes start warm: the fork server imports what workers need once, not each worker."""

import subprocess
import sys
import textwrap

import cloudpickle

from blockbuster.builtin.executors import WORKER_MODULES, pickled_modules
from blockbuster.builtin.segmenters import Threshold
from blockbuster.tiling import TileGrid


def test_pickled_modules_names_the_modules_a_payload_imports():
    payload = cloudpickle.dumps({"fn": Threshold(threshold=1), "grid": TileGrid})
    found = pickled_modules(payload)
    assert {"blockbuster.builtin.segmenters", "blockbuster.tiling"} <= found
    assert not any(name.startswith("__main__") for name in found)


def test_the_worker_modules_import(tmp_path):
    """Every preloaded module exists (the fork server would skip a missing one silently)."""
    code = "import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]"
    subprocess.run([sys.executable, "-c", code, *WORKER_MODULES], check=True)


PROBE = """
import os
from pathlib import Path

IMPORTED_IN = os.getpid()  # the process that imported this module


class Probe:
    def __init__(self, log_dir):
        self.log_dir = log_dir

    def __call__(self, tile):
        import numpy as np

        where = "worker" if IMPORTED_IN == os.getpid() else "fork-server"
        Path(self.log_dir, f"{where}-{os.getpid()}").write_text("")
        return np.zeros(tile.shape, np.uint8)
"""

SCRIPT = """
import sys

import numpy as np

from blockbuster import tile_process
from probe import Probe

if __name__ == "__main__":
    tile_process(np.zeros((64, 64), np.uint8), Probe(sys.argv[1]), tile_shape=(32, 32),
                 executor="processes", workers=2, overlap=0)
"""


def test_workers_fork_from_a_server_that_imported_fn_s_module(tmp_path):
    """fn's module is imported once, in the fork server: no worker imports it again."""
    (tmp_path / "probe.py").write_text(textwrap.dedent(PROBE))
    (tmp_path / "run.py").write_text(textwrap.dedent(SCRIPT))
    log = tmp_path / "log"
    log.mkdir()
    subprocess.run([sys.executable, "run.py", str(log)], cwd=tmp_path, check=True)
    calls = sorted(p.name.split("-")[0] for p in log.iterdir())
    assert calls and set(calls) == {"fork"}, calls
