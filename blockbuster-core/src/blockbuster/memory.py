"""This process's own resident memory: its current size and its peak (high-water mark).

On Linux these are ``VmRSS`` and ``VmHWM`` from ``/proc/self/status``. Not ``ru_maxrss``:
Linux carries a process's ``ru_maxrss`` over to its children through fork *and* exec, so a
worker or a fresh ``python -c`` started by a process that once peaked at 1 GB reports at least
1 GB whatever it does itself. Elsewhere (no ``/proc``) the peak falls back to ``ru_maxrss``.

To measure how much some work raises the peak, run it in a fresh process and call
:func:`peak_baseline` just before it::

    baseline = peak_baseline()
    work()
    grown = peak_rss_bytes() - baseline
"""

from __future__ import annotations

import ctypes
import functools
import resource
import sys
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far, in bytes (``VmHWM``)."""
    found = _status_kib("VmHWM")
    if found is not None:
        return found * 1024
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024  # macOS: bytes, else KiB


def peak_rss_mb() -> float:
    """:func:`peak_rss_bytes` in MiB."""
    return peak_rss_bytes() / 2**20


def rss_bytes() -> int | None:
    """Resident memory of this process now, in bytes (``VmRSS``); None without ``/proc``."""
    found = _status_kib("VmRSS")
    return None if found is None else found * 1024


def reset_peak() -> bool:
    """Lower this process's peak to its current resident memory (Linux >= 4.0).

    Writes ``5`` to ``/proc/self/clear_refs``; True when the peak is now the current size, False
    where the kernel does not allow it (the peak then keeps its earlier maximum).
    """
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    now, peak = rss_bytes(), _status_kib("VmHWM")
    # the peak may already have risen a little since the reset: allow 1 MiB
    return now is not None and peak is not None and peak * 1024 <= now + 2**20


def peak_baseline() -> int:
    """The figure to subtract from :func:`peak_rss_bytes` after some work, in bytes.

    Resets the peak where the kernel allows and returns the current resident memory, so the
    growth is that of the work alone; otherwise returns the peak so far (growth above it).
    """
    if reset_peak():
        now = rss_bytes()
        if now is not None:
            return now
    return peak_rss_bytes()


def _status_kib(field: str) -> int | None:
    try:
        text = _STATUS.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def release_free_memory() -> bool:
    """Hand the memory that the C allocator holds free back to the system (glibc's
    ``malloc_trim``); True when some was released, False otherwise or where there is no glibc.

    glibc keeps what a thread frees in that thread's arena for reuse, and a run's reader,
    writer, zarr and worker threads each have one: after a stage that allocated tile after tile,
    tens of MiB stay resident though nothing uses them (~45 MiB after a 2-worker run on an
    8192² image). The pipeline calls this between stages and when a run ends.
    """
    trim = _malloc_trim()
    return trim is not None and bool(trim(0))


@functools.cache
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim  # this process's C library (absent in musl)
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim
