"""The peer benchmark harness runs end to end on a tiny case (the benchmark itself is not a test)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_peers_harness_runs_on_a_tiny_case(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "peers.py"), "--tiny",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = json.loads((tmp_path / "peers.json").read_text())
    measured = [r for r in rows if "wall_s" in r]
    assert {r["peer"] for r in measured} >= {"whole", "blockbuster", "touch", "dask-image"}
    assert all("error" not in r for r in rows), [r for r in rows if "error" in r]
    cc = [r for r in measured if r["peer"] in ("blockbuster", "dask-image")
          and not r["case"].startswith("dense")]
    assert cc and all(r["f1"] == 1.0 for r in cc)  # connected components are exact
    assert (tmp_path / "peers.md").read_text().startswith("| case | peer |")
