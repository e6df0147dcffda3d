"""Pick the torch device for this worker: its own GPU, or the CPU with one warning."""

from __future__ import annotations

import os
import threading
import warnings

from blockbuster.backend import gpu_of_worker, threads_per_worker
from blockbuster.worker import current_worker


class GPUUnavailableWarning(UserWarning):
    """``gpu=True`` was asked for but torch sees no usable GPU; Cellpose runs on the CPU."""


_warned = False
_warn_lock = threading.Lock()


def select_device(gpu: bool):
    """The ``torch.device`` this worker should run Cellpose on.

    With CUDA GPUs, worker ``i`` takes ``cuda:{i % n_gpus}`` (``blockbuster.current_worker()``),
    so several workers spread over several GPUs. Apple's MPS is used when CUDA is absent.
    ``gpu=True`` without a usable GPU warns once per process and falls back to the CPU.
    """
    import torch

    if not gpu:
        return torch.device("cpu")
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n_gpus > 0:
        return torch.device(f"cuda:{gpu_of_worker(n_gpus)}")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    _warn_no_gpu_once()
    return torch.device("cpu")


#: Patches per network call on the CPU (Cellpose's own default).
CPU_PATCH_BATCH = 8
#: Working memory of one 224 x 224 patch through the stock Cellpose 3 network on a GPU
#: (activations of every level plus cuDNN workspace), rounded up.
BYTES_PER_PATCH = 96 * 2**20
#: Largest patch batch chosen from free memory, and the share of free memory it may use.
MAX_PATCH_BATCH = 64
GPU_MEMORY_FRACTION = 0.5


def gpu_workers(gpu: bool) -> int | None:
    """Workers to run by default: one per CUDA GPU with ``gpu=True``, else ``None`` (per core)."""
    if not gpu:
        return None
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return count or None


def patch_batch(device, given: int | None) -> int:
    """Patches per network call: ``given``, else as many as fit in this worker's share of the
    GPU's free memory (1..``MAX_PATCH_BATCH``), else Cellpose's default on the CPU."""
    if given is not None:
        return given
    if getattr(device, "type", "cpu") != "cuda":
        return CPU_PATCH_BATCH
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    sharing = -(-current_worker().count // max(1, torch.cuda.device_count()))
    fitting = free * GPU_MEMORY_FRACTION / sharing // BYTES_PER_PATCH
    return int(max(1, min(MAX_PATCH_BATCH, fitting)))


def _warn_no_gpu_once() -> None:
    """Warn that ``gpu=True`` falls back to the CPU, at most once per process."""
    global _warned
    with _warn_lock:
        if _warned:
            return
        _warned = True
    warnings.warn(
        "cellpose: gpu=True but torch finds no usable CUDA or MPS device in this process "
        f"(pid {os.getpid()}); running on the CPU. Install a CUDA build of torch or pass "
        "gpu=False to silence this warning.",
        GPUUnavailableWarning,
        stacklevel=3,
    )


def configure_cpu_threads() -> None:
    """Share the cores between workers: ``torch`` threads = cores // workers (at least 1).

    Only changes torch when this run has more than one worker, so a plain call keeps
    torch's own default.
    """
    import torch

    if current_worker().count <= 1:
        return
    torch.set_num_threads(threads_per_worker())
