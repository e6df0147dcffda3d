"""The GPU path's choices, checked on the CPU: batch sizes from free memory, workers per GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from blockbuster.errors import InvalidParameterError
from blockbuster.plugins.torch import _gpu, torch_fn
from blockbuster.plugins.torch._segmenter import _check_batch_size


class Halve(torch.nn.Module):
    def forward(self, x):
        return x * 0.5


def test_auto_batch_size_is_one_tile_on_the_cpu_and_asks_for_no_workers():
    fn = torch_fn(Halve(), device="cpu", output="probability", threshold=0.2)
    assert fn.given_batch_size is None and fn.batch_size == 1
    assert fn.blockbuster_needs().workers is None
    assert _check_batch_size("auto") is None and _check_batch_size(4) == 4
    with pytest.raises(InvalidParameterError, match="positive int, or None/'auto'"):
        _check_batch_size(0)


def test_auto_batch_size_on_cuda_hands_sixteen_tiles_and_asks_one_worker_per_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    fn = torch_fn(Halve(), device="auto", output="probability")
    assert fn.batch_size == _gpu.AUTO_TILES_PER_CALL
    assert fn.blockbuster_needs().workers == 2
    assert torch_fn(Halve(), device="cuda:1").blockbuster_needs().workers == 1
    assert torch_fn(Halve(), device="cuda", batch_size=4).batch_size == 4
    assert torch_fn(Halve(), device="cpu").blockbuster_needs().workers is None


@pytest.mark.parametrize(("free_gib", "sharing", "expected"),
                         [(8, 1, 8), (8, 4, 4), (1, 1, 2), (0.1, 1, 1)])
def test_forward_batch_fits_a_share_of_free_memory(monkeypatch, free_gib, sharing, expected):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (int(free_gib * 2**30), 0))
    # one tile: 2**20 voxels x 256 bytes = 256 MiB; half the free memory is planned with
    assert _gpu.batch_from_free_memory("cuda:0", 2**20, 256, sharing) == expected


def test_pipelined_passes_equal_one_tile_at_a_time_on_the_cpu():
    rng = np.random.default_rng(3)
    tiles = [rng.random((40, 40), dtype=np.float32) for _ in range(5)] + [
        rng.random((40, 24), dtype=np.float32)]
    single = torch_fn(Halve(), device="cpu", output="probability", threshold=0.2,
                      pad_multiple=8, batch_size=1)
    batched = torch_fn(Halve(), device="cpu", output="probability", threshold=0.2,
                       pad_multiple=8, batch_size=2)
    for alone, together in zip([single(t) for t in tiles], batched.segment_batch(tiles),
                               strict=True):
        assert alone.max() > 0 and np.array_equal(alone, together)


class RunsOutOfMemory(torch.nn.Module):
    """Halve, but a pass of more than ``fits`` tiles raises torch's out-of-memory error."""

    def __init__(self, fits: int):
        super().__init__()
        self.fits, self.batches = fits, []

    def forward(self, x):
        self.batches.append(x.shape[0])
        if x.shape[0] > self.fits:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 22.00 GiB.")
        return x * 0.5


def test_a_pass_out_of_memory_is_retried_with_half_the_tiles_and_gives_the_same_labels():
    tiles = [np.random.default_rng(k).random((32, 32), dtype=np.float32) for k in range(8)]
    fn = torch_fn(RunsOutOfMemory(fits=3), device="cpu", output="probability", threshold=0.2,
                  pad_multiple=8, batch_size=8)
    net = fn._model()[0]  # the worker's copy
    got = fn.segment_batch(tiles)
    alone = torch_fn(Halve(), device="cpu", output="probability", threshold=0.2,
                     pad_multiple=8, batch_size=1)
    assert all(np.array_equal(alone(t), g) for t, g in zip(tiles, got, strict=True))
    assert net.batches[:3] == [8, 4, 2] and set(net.batches[2:]) == {2}  # 8 -> 4 -> 2 fit
    net.batches.clear()
    fn.segment_batch(tiles)  # the worker remembers what fits
    assert net.batches == [2, 2, 2, 2]


def test_one_tile_out_of_memory_says_what_to_do():
    from blockbuster.errors import TileFunctionError

    fn = torch_fn(RunsOutOfMemory(fits=0), device="cpu", output="probability", pad_multiple=8,
                  batch_size=2)
    with pytest.raises(TileFunctionError, match=r"(?s)does not fit in the memory of cpu.*smaller "
                                                r"tiles.*fewer workers"):
        fn.segment_batch([np.zeros((16, 16), np.float32)] * 2)
