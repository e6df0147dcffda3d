"""The peer benchmark harness runs end to end on tiny cases (the benchmark is not a test)."""

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
    report = json.loads((tmp_path / "peers.json").read_text())
    rows = report["rows"]
    measured = [r for r in rows if "wall_s" in r]
    assert {r["peer"] for r in measured} >= {"whole", "blockbuster", "touch", "dask-image"}
    assert all("error" not in r for r in rows), [r for r in rows if "error" in r]
    cc = [r for r in measured if r["kind"] == "cc" and r["peer"] in ("blockbuster", "dask-image")]
    assert cc and all(r["f1"] == 1.0 and r["identical"] for r in cc)  # components are exact
    distributed = [r for r in rows if r["peer"] == "cellpose-distributed"]
    assert all("--tiny" in r["skipped"] for r in distributed)
    statuses = {t["status"] for t in report["targets"]}
    assert report["targets"] and statuses <= {"met", "missed", "not measured"}
    markdown = (tmp_path / "peers.md").read_text()
    assert markdown.startswith("| case | peer |") and "## Targets" in markdown
