"""bench/bench_torch.py measures what it says: every tile, in batches of the requested size."""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_torch.py"
pytestmark = pytest.mark.skipif(not BENCH.is_file(), reason="bench/ is not part of this checkout")


@functools.cache
def bench():
    spec = importlib.util.spec_from_file_location("bench_torch", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_forward_timing_pushes_every_tile_through_the_network_in_batches():
    import torch

    seen = []

    class Net(torch.nn.Module):
        def forward(self, x):
            seen.append(tuple(x.shape))
            return torch.zeros((x.shape[0], 2, *x.shape[2:]))

    tiles = bench().make_tiles(5, 8)
    clock = bench().time_forward(Net(), tiles, batch_size=2, device="cpu")
    assert seen == [(2, 1, 8, 8), (2, 1, 8, 8), (1, 1, 8, 8)]
    assert clock.wall > 0 and clock.cpu >= 0


def test_segment_timing_hands_every_tile_over_in_batches():
    handed = []

    class Fn:
        batch_size = 3

        def segment_batch(self, tiles):
            handed.append(list(tiles))

    tiles = bench().make_tiles(7, 4)
    bench().time_segment(Fn(), tiles)
    assert [len(batch) for batch in handed] == [3, 3, 1]
    assert all(np.array_equal(a, b) for a, b in zip(sum(handed, []), tiles, strict=True))


@pytest.mark.slow
def test_run_reports_one_row_per_batch_size_with_rates_from_its_tiles():
    results = bench().run(tiles=2, tile_size=32, batch_sizes=(1, 2), width=2, repeats=1)
    assert [(r["batch_size"], r["tiles"], r["tile_size"], r["device"]) for r in results] == [
        (1, 2, 32, "cpu"), (2, 2, 32, "cpu")]
    for r in results:  # CPU time per tile and tiles per second describe the same 2 tiles
        assert 0 < r["segment_cpu_s_per_tile"] < 60 and r["segment_tiles_per_s"] > 2 / 60
