"""I/O failures: which look transient, retrying them, and the typed errors that say where.

A tile whose input cannot be read is handled like a tile whose ``fn`` raises: tried
``retries`` more times — after an exponential backoff when the error looks transient (a
timeout, a reset connection, HTTP 5xx or 429 from a remote store) — and then reported as an
:class:`~blockbuster.errors.ImageReadError` naming the tile, its bounds, the damaged chunk
where the reader can tell, and the cause. Writes are retried only on transient errors; a
failed write becomes an :class:`~blockbuster.errors.OutputWriteError` (a
:class:`~blockbuster.errors.DiskFullError` for a full disk) naming the path and tile.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from blockbuster.errors import DiskFullError, ImageReadError, OutputWriteError

T = TypeVar("T")

BACKOFF_SECONDS = 0.5  # the first wait before retrying a transient error; doubled each time
BACKOFF_MAX_SECONDS = 30.0
TRANSIENT_ERRNOS = {errno.EAGAIN, errno.EINTR, errno.ETIMEDOUT, errno.ECONNRESET,
                    errno.ECONNABORTED, errno.ECONNREFUSED, errno.EPIPE, errno.ENETUNREACH,
                    errno.EHOSTUNREACH}
DISK_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}  # no EDQUOT on Windows
sleep = time.sleep  # how a backoff waits (a test records the waits by replacing it)


# -- classifying ----------------------------------------------------------------------------
def causes(error: BaseException, *, implicit: bool = True) -> Iterator[BaseException]:
    """``error`` and the errors it was raised from (and, if ``implicit``, during), outermost
    first."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or (error.__context__ if implicit else None)


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` (or its cause) looks like it may pass: a timeout, a reset or refused
    connection, HTTP 5xx or 429."""
    for cause in causes(error):
        if isinstance(cause, TimeoutError | ConnectionError):
            return True
        if isinstance(cause, OSError) and cause.errno in TRANSIENT_ERRNOS:
            return True
        status = http_status(cause)
        if status is not None and (status >= 500 or status == 429):
            return True
        if "timeout" in type(cause).__name__.lower():
            return True
    return False


def http_status(error: BaseException) -> int | None:
    """The HTTP status an error carries, as aiohttp, requests, urllib and botocore put it."""
    response = getattr(error, "response", None)
    candidates = (getattr(error, "status", None), getattr(error, "status_code", None),
                  getattr(error, "code", None), getattr(response, "status_code", None),
                  getattr(response, "status", None))
    if isinstance(response, dict):  # botocore ClientError
        candidates += (response.get("ResponseMetadata", {}).get("HTTPStatusCode"),)
    for value in candidates:
        if isinstance(value, int) and 100 <= value < 600:
            return value
    return None


def is_disk_full(error: BaseException) -> bool:
    return any(isinstance(c, OSError) and c.errno in DISK_FULL_ERRNOS for c in causes(error))


def cause_text(error: BaseException) -> str:
    """``Type: message`` of the innermost explicit cause (the one that explains it), one line."""
    inner = list(causes(error, implicit=False))[-1]
    text = str(inner).splitlines()[0] if str(inner) else ""
    return f"{type(inner).__name__}: {text}" if text else type(inner).__name__


# -- retrying -------------------------------------------------------------------------------
def backoff(attempt: int) -> float:
    """Seconds to wait before retry ``attempt`` (0-based) of a transient error."""
    return min(BACKOFF_MAX_SECONDS, BACKOFF_SECONDS * 2**attempt)


def retrying(call: Callable[[], T], retries: int, *, transient_only: bool = False) -> T:
    """``call()``, tried up to ``retries`` more times when it raises.

    Transient errors wait :func:`backoff` first; other errors are retried at once, or not at
    all with ``transient_only``.
    """
    for attempt in range(retries + 1):
        try:
            return call()
        except Exception as error:
            transient = is_transient(error)
            if attempt == retries or (transient_only and not transient):
                raise
            if transient:
                sleep(backoff(attempt))
    raise AssertionError("unreachable")


# -- reporting ------------------------------------------------------------------------------
def read_failure(error: BaseException, source: str | None, where: str, tries: int,
                 chunks: list[str]) -> ImageReadError:
    """The typed error for input that could not be read at ``where`` (a tile and its bounds).

    Its ``reason`` attribute is the short form a ``keep_going`` summary lists.
    """
    of = f" of {source!r}" if source else ""
    damaged = f"unreadable chunk {', '.join(chunks)}: " if chunks else ""
    fix = ("restore or rewrite that chunk" if chunks else
           "check that the input is complete and reachable")
    failure = ImageReadError(
        f"could not read the input of {where}{of} after {tries} "
        f"{'try' if tries == 1 else 'tries'}: {damaged}{cause_text(error)}. To fix: {fix}, then "
        "rerun the same call: finished tiles are staged and resume (keep_going=True finishes "
        "every other tile first)."
    )
    failure.reason = f"input unreadable: {damaged}{cause_text(error)}"
    return failure


def write_failure(error: BaseException, path: Any, where: str) -> OutputWriteError:
    """The typed error for a write of ``where`` (e.g. ``tile 3 at [0:64, 0:64]``) to ``path``."""
    kind = DiskFullError if is_disk_full(error) else OutputWriteError
    what = "the disk is full" if kind is DiskFullError else "the write failed"
    failure = kind(f"could not write {where} to {str(path)!r}: {what} ({cause_text(error)}).")
    failure.path = str(path)
    return failure
