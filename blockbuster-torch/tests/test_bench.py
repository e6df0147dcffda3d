"""Smoke test of bench/bench_torch.py (tiny settings; the real run is manual)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_torch.py"


@pytest.mark.slow
@pytest.mark.skipif(not BENCH.is_file(), reason="bench/ is not part of this checkout")
def test_bench_reports_tiles_per_second_for_each_batch_size():
    spec = importlib.util.spec_from_file_location("bench_torch", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    results = bench.run(tiles=2, tile_size=32, batch_sizes=(1, 2), width=2, repeats=1)
    assert [r["batch_size"] for r in results] == [1, 2]
    assert all(r["forward_tiles_per_s"] > 0 and r["segment_tiles_per_s"] > 0 for r in results)
