"""Device selection and CPU-thread sizing for one worker."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from blockbuster.errors import InvalidParameterError

_AUTO = "auto"
_THREADS_LOCK = threading.Lock()


@dataclass(frozen=True)
class Worker:
    """Which worker the calling code runs in (``index`` in ``0..count-1``)."""

    index: int = 0
    count: int = 1


def current_worker() -> Worker:
    """Return the calling worker as reported by ``blockbuster.current_worker()``.

    Falls back to a single worker when called outside ``tile_process`` (or when the
    core returns nothing), so a segmenter can also be called directly.
    """
    try:
        from blockbuster import current_worker as core_current_worker

        info = core_current_worker()
    except (ImportError, LookupError, RuntimeError):
        info = None
    if info is None:
        return Worker()
    return Worker(
        index=int(getattr(info, "index", 0)), count=max(1, int(getattr(info, "count", 1)))
    )


def available_cores() -> int:
    """Number of CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def resolve_device(device: str, worker: Worker) -> str:
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


def _cuda_for(worker: Worker) -> str:
    import torch

    return f"cuda:{worker.index % torch.cuda.device_count()}"


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def threads_per_worker(worker: Worker, cores: int | None = None) -> int:
    """CPU threads one worker may use so ``worker.count`` workers don't oversubscribe."""
    cores = available_cores() if cores is None else cores
    return max(1, cores // max(1, worker.count))


def configure_threads(num_threads: int | str | None, worker: Worker) -> None:
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
