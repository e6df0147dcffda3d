"""bench/gpu/bench_gpu.py runs on the CPU in --tiny mode, so it is ready the day a GPU is there."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIELDS = {"case", "workers", "n_tiles", "n_objects", "wall_s", "tiles_per_s", "outside_fn",
          "gpu_busy_events", "gpu_busy_nvml", "whole_side", "whole_s", "tiled_vs_whole"}


@pytest.mark.slow
def test_gpu_bench_tiny_reports_every_case_and_tiles_equal_the_whole_image(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu" / "bench_gpu.py"), "--tiny",
                           "--workers", "3", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report["environment"]["device"] == "cpu" and "errors" not in report
    rows = report["rows"]
    assert {(r["case"], r["workers_default"]) for r in rows} == {
        (case, default) for case in ("unet", "cpnet", "cellpose") for default in (True, False)}
    for row in rows:
        assert FIELDS <= set(row), FIELDS - set(row)
        assert row["n_tiles"] == 16 and row["tiles_per_s"] > 0 and 0 <= row["outside_fn"] < 1
        assert row["gpu_busy_events"] is None  # no CUDA events on the CPU
        assert row["whole_side"] == 256 and row["n_objects"] > 0
        assert row["executor"] == "threads"
        if row["workers_default"]:  # where the time went: the core's steps and the backend's
            steps = row["breakdown_s"]
            assert steps["read"] > 0 and steps["stage"] > 0
            assert (steps["prepare"] > 0 and steps["launch"] > 0) == (row["case"] != "cellpose")
    unet = [r for r in rows if r["case"] == "unet"]
    # float64 network, halo beyond its receptive field: the tiled run is the whole-image run
    assert all(r["labels_match_whole"] and r["foreground_agreement"] == 1.0 for r in unet)
    assert all(r["n_objects"] > 100 for r in unet)
    statuses = {t["status"] for t in report["targets"]}
    assert statuses <= {"met", "missed", "not measured"}
    assert {t["case"] for t in report["targets"]} == {"unet", "cpnet", "cellpose"}
    assert (tmp_path / "gpu.md").read_text().startswith("| case | executor | workers |")


@pytest.mark.slow
def test_gpu_standin_bench_runs_one_worker_that_sleeps_as_a_gpu(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu" / "standin.py"),
                           "--size", "512", "--tile", "128", "--gpu-ms", "5",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (row,) = json.loads((tmp_path / "standin.json").read_text())["rows"]
    assert row["n_tiles"] == 16 and row["n_objects"] > 100
    # one worker: the stand-in sleeps 16 x 5 ms inside fn, so fn takes at least that long
    assert 0 < row["busy"] <= 1 and 0 <= row["outside_fn"] <= 1 - row["busy"] + 0.002  # rounding
