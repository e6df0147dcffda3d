"""The GPU side of a worker: batches sized from free device memory, asynchronous copies.

A worker on a CUDA device keeps the GPU fed by overlapping three things
(:meth:`TorchSegmenter.segment_batch`): while the GPU runs forward pass ``k``, the worker's
thread normalises batch ``k + 1`` into pinned memory and starts its copy on a side stream, then
labels the results of batch ``k - 1`` (copied back without blocking). The core already reads
the next tiles and writes finished ones in the background (:mod:`blockbuster.background`).

On the CPU every function here is the plain synchronous equivalent.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Tiles the core hands to one ``segment_batch`` call on a GPU when ``batch_size`` is not given;
#: they run as several forward passes, so copies and labelling overlap the GPU's work.
AUTO_TILES_PER_CALL = 16
#: Largest forward batch chosen from free memory (larger ones gain nothing on a busy GPU and
#: leave fewer passes to overlap within a call).
MAX_AUTO_BATCH = 8
#: Share of the device's free memory a forward batch may plan to use.
GPU_MEMORY_FRACTION = 0.5

_local = threading.local()


def uses_cuda(device: str) -> bool:
    """Whether the ``device`` option (``"auto"``, ``"cuda"``, ``"cuda:N"``...) runs on CUDA here."""
    name = str(device).strip().lower()
    if name not in ("auto", "cuda") and not name.startswith("cuda:"):
        return False
    import torch

    return torch.cuda.is_available()


def gpu_count(device: str) -> int | None:
    """Workers to run by default: one per GPU when the model runs on CUDA, else ``None``."""
    if not uses_cuda(device):
        return None
    import torch

    name = str(device).strip().lower()
    return 1 if name.startswith("cuda:") else max(1, torch.cuda.device_count())


def batch_from_free_memory(device: str, voxels: int, bytes_per_voxel: float,
                           sharing: int = 1) -> int:
    """Tiles of ``voxels`` voxels per forward pass that fit in this device's free memory.

    ``sharing`` workers use the same device, so each plans with its share of
    ``GPU_MEMORY_FRACTION`` of the free memory; the result is in ``1..MAX_AUTO_BATCH``.
    """
    import torch

    free, _ = torch.cuda.mem_get_info(torch.device(device))
    budget = free * GPU_MEMORY_FRACTION / max(1, sharing)
    return int(max(1, min(MAX_AUTO_BATCH, budget // max(1.0, voxels * bytes_per_voxel))))


def upload(arrays: Sequence[np.ndarray], device: str, dtype: Any) -> Any:
    """Stack ``arrays`` into one tensor of ``dtype`` on ``device``.

    On CUDA they are stacked straight into pinned memory and copied on this thread's side
    stream, so the copy overlaps the forward pass already queued; the compute stream waits
    for it before using the tensor.
    """
    import torch

    shape = (len(arrays), *arrays[0].shape)
    if not str(device).startswith("cuda"):
        return torch.from_numpy(np.stack(arrays)).to(device=device, dtype=dtype)
    host = torch.empty(shape, dtype=torch.float32, pin_memory=True)
    np.stack(arrays, out=host.numpy())
    target = torch.device(device)
    stream = _copy_stream(target)
    with torch.cuda.stream(stream):
        moved = host.to(target, non_blocking=True)
    compute = torch.cuda.current_stream(target)
    compute.wait_stream(stream)
    moved.record_stream(compute)
    return moved.to(dtype)


@dataclass
class Download:
    """A device tensor on its way to the host; :meth:`result` waits for it."""

    host: Any
    event: Any = None

    def result(self) -> np.ndarray:
        if self.event is not None:
            self.event.synchronize()
        return self.host.numpy()


def download(tensor: Any) -> Download:
    """Start copying ``tensor`` to the host (into pinned memory, without blocking, on CUDA)."""
    import torch

    if tensor.device.type != "cuda":
        return Download(tensor.cpu())
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream(tensor.device))
    return Download(host, event)


def _copy_stream(device: Any) -> Any:
    """This thread's copy stream for ``device`` (workers never share one)."""
    import torch

    streams = getattr(_local, "streams", None)
    if streams is None:
        streams = _local.streams = {}
    if device not in streams:
        streams[device] = torch.cuda.Stream(device)
    return streams[device]
