"""Device selection and CPU-thread sizing for one worker (on the core's backend kit)."""

from __future__ import annotations

import threading

from blockbuster.backend import gpu_of_worker, threads_per_worker
from blockbuster.errors import InvalidParameterError
from blockbuster.worker import WorkerInfo

_AUTO = "auto"
_THREADS_LOCK = threading.Lock()


def resolve_device(device: str, worker: WorkerInfo) -> str:
    """Turn the user's ``device`` option into a concrete torch device string.

    ``"auto"`` picks CUDA when available (GPU ``worker.index % device_count`` so
    workers spread over GPUs), else Apple MPS, else CPU.  ``"cuda"`` without an
    index is spread over GPUs the same way.  Anything else is passed through.
    """
    import torch

    name = str(device).strip().lower()
    if name == _AUTO:
        if torch.cuda.is_available():
            return _cuda_for(worker)
        if _mps_available():
            return "mps"
        return "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise InvalidParameterError(
                "device='cuda' was requested but torch sees no CUDA GPU (torch "
                f"{torch.__version__}); use device='auto' or device='cpu', or install a CUDA build "
                "of torch."
            )
        return _cuda_for(worker)
    try:
        torch.device(name)
    except RuntimeError as exc:
        raise InvalidParameterError(
            f"device={device!r} is not a torch device; use 'auto', 'cpu', 'cuda', 'cuda:N' or "
            "'mps'."
        ) from exc
    return name


def _cuda_for(worker: WorkerInfo) -> str:
    import torch

    return f"cuda:{gpu_of_worker(torch.cuda.device_count(), worker)}"


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def configure_threads(num_threads: int | str | None, worker: WorkerInfo) -> None:
    """Apply the thread budget with ``torch.set_num_threads``.

    ``"auto"`` uses ``cores // workers``; an int is used as given; ``None`` leaves
    torch's setting alone.  (The setting is per process: under the threads executor
    all workers share it, which is what ``cores // workers`` accounts for.)
    """
    if num_threads is None:
        return
    import torch

    wanted = threads_per_worker(worker) if num_threads == _AUTO else int(num_threads)
    if wanted < 1:
        raise InvalidParameterError(f"num_threads={num_threads!r} must be >= 1, 'auto' or None.")
    with _THREADS_LOCK:
        if torch.get_num_threads() != wanted:
            torch.set_num_threads(wanted)
