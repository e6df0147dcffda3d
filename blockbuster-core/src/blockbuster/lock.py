"""One run at a time per output: a lock file next to ``write_to``, kept alive by a heartbeat.

A run writing to ``labels.zarr`` holds ``labels.zarr.lock`` for its whole length, because the
output and its stage (``labels.zarr.stage``) are rewritten in place. The lock file is JSON:
who holds it (host, pid, the process's start time, the command), since when, and a heartbeat
that a daemon thread refreshes every ``HEARTBEAT_SECONDS``.

A second run on the same output gets :class:`~blockbuster.errors.OutputLockedError` naming the
holder. A lock whose holder is gone is taken over with a warning, so a requeued cluster job
resumes instead of failing: gone means the same host with that pid no longer running (or
running another program), or a heartbeat older than ``STALE_SECONDS`` (a holder on another
host, or one too stuck to beat).

The lock is created atomically (the complete file is hard-linked into place, which fails if one
exists; ``O_CREAT | O_EXCL`` where links are not supported) and removed on every exit path of
the run. Remote outputs (``s3://``...) get a :class:`StoreLock`, the same record as an object
next to the output, created with the store's put-if-absent write (see ``docs/remote.md``).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from blockbuster.errors import OutputLockedError, StoreError
from blockbuster.faults import write_failure

HEARTBEAT_SECONDS = 10.0
STALE_SECONDS = 120.0  # a heartbeat this old marks the holder as gone


class OutputLock:
    """The interface of an output lock: ``acquire()`` or raise, ``check()``, ``release()``."""

    def acquire(self) -> None:
        """Take the lock, or raise :class:`~blockbuster.errors.OutputLockedError`."""

    def check(self) -> None:
        """Raise :class:`~blockbuster.errors.OutputLockedError` if the lock was taken over."""

    def release(self) -> None:
        """Give the lock up (only if still held by this run)."""


class FileLock(OutputLock):
    """The lock file ``path`` on a local (or shared POSIX) file system."""

    def __init__(self, path: str | os.PathLike, *, heartbeat: float | None = None,
                 stale: float | None = None):
        self.path = Path(path)
        self.heartbeat = heartbeat or HEARTBEAT_SECONDS
        self.stale = stale or STALE_SECONDS
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._beating: threading.Thread | None = None
        self.lost_to: dict[str, Any] | None = None

    # -- taking it ------------------------------------------------------------------------
    def acquire(self) -> None:
        self._started = time.time()
        self._prepare()
        while not self._create():
            holder = self._read()
            if holder is None:
                continue  # released in between: try again
            reason = gone_reason(holder, self.stale)
            if reason is None:
                raise OutputLockedError(locked_message(self.path, holder, self.stale))
            if self._take_over(holder):
                warnings.warn(f"took over the lock {str(self.path)!r} of a run that is gone "
                              f"({reason}); resuming its work.", stacklevel=3)
                break
        self._start_heartbeat()

    def _prepare(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise write_failure(error, self.path, "the output's lock") from error

    def _create(self) -> bool:
        """Create the lock file with our record, atomically; ``False`` if one exists."""
        try:
            staging = self._write_private(self._record())
        except OSError as error:
            raise write_failure(error, self.path, "the output's lock") from error
        try:
            os.link(staging, self.path)
            return True
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links
            return self._create_exclusive()
        finally:
            staging.unlink(missing_ok=True)

    def _create_exclusive(self) -> bool:
        try:
            descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(descriptor, "w") as file:
            json.dump(self._record(), file)
        return True

    def _take_over(self, holder: dict[str, Any]) -> bool:
        """Replace the gone ``holder``'s lock with ours, unless another run got there first.

        A short-lived ``<lock>.takeover`` file (created exclusively) makes the check-and-replace
        one step among runs taking over at the same moment.
        """
        mutex = self.path.with_name(self.path.name + ".takeover")
        try:
            os.close(os.open(mutex, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            with contextlib.suppress(OSError):  # a taker that died mid-takeover
                if time.time() - mutex.stat().st_mtime > self.stale:
                    mutex.unlink()
            time.sleep(0.05)
            return False
        try:
            if read_holder(self.path) != holder:
                return False  # it changed: released, or already taken over
            self._replace()
        finally:
            mutex.unlink(missing_ok=True)
        for left in self.path.parent.glob(f"{self.path.name}.{holder.get('token')}.*"):
            left.unlink(missing_ok=True)  # a heartbeat the gone holder never finished
        return True

    # -- keeping it -----------------------------------------------------------------------
    def _start_heartbeat(self) -> None:
        self._beating = threading.Thread(target=self._beat, name="blockbuster-lock",
                                         daemon=True)
        self._beating.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            holder = self._read()
            if holder is not None and "unreadable" in holder:
                continue  # a file system hiccup: look again at the next beat
            if holder is None or holder.get("token") != self.token:
                self.lost_to = holder or {}
                return
            with contextlib.suppress(OSError):  # a missed beat is retried at the next one
                self._replace()

    def check(self) -> None:
        holder = self._read()
        if self.lost_to is None and holder is not None and holder.get("token") == self.token:
            return
        raise OutputLockedError(
            f"this run lost its lock {str(self.path)!r}: its heartbeat stopped for over "
            f"{self.stale:.0f} s (a suspended machine or a stalled file system?) and "
            + (describe_holder(holder) + " took it over" if holder else "it was removed")
            + ". Let that run finish; rerun this call afterwards if its output is not what you "
            "want."
        )

    # -- giving it up ---------------------------------------------------------------------
    def release(self) -> None:
        self._stop.set()
        if self._beating is not None:
            self._beating.join()
        holder = self._read()
        if holder is not None and holder.get("token") == self.token:
            self._remove()

    # -- the lock file --------------------------------------------------------------------
    def _read(self) -> dict[str, Any] | None:
        return read_holder(self.path)

    def _replace(self) -> None:
        """Our fresh record in place of whatever the lock file holds, atomically."""
        os.replace(self._write_private(self._record()), self.path)

    def _remove(self) -> None:
        self.path.unlink(missing_ok=True)

    # -- the record -----------------------------------------------------------------------
    def _record(self) -> dict[str, Any]:
        return {"host": socket.gethostname(), "pid": os.getpid(),
                "pid_started": process_start_ticks(os.getpid()), "started": self._started,
                "heartbeat": time.time(), "command": " ".join(sys.argv)[:300],
                "token": self.token}

    def _write_private(self, record: dict[str, Any]) -> Path:
        """``record`` in a file of this run's own, next to the lock (same file system)."""
        private = self.path.with_name(f"{self.path.name}.{self.token}.{time.monotonic_ns()}")
        private.write_text(json.dumps(record))
        return private


class StoreLock(FileLock):
    """The lock object ``<write_to>.lock`` in a remote store (S3, GCS...), a
    :class:`~blockbuster.stores.Location`.

    It is taken with a put-if-absent write (:meth:`Location.create`): on S3 a conditional PUT,
    so of two runs starting together exactly one gets it. On stores without one
    (:attr:`Location.exclusive_create` is false) two runs starting in the same instant can both
    write it; the one whose record was overwritten finds out at its next heartbeat and stops
    before writing its output (:meth:`check`). A gone holder is taken over the same way: our
    record is written, read back after a moment, and kept only if it is still ours.
    """

    SETTLE_SECONDS = 0.5  # how long a racing taker's write is given to land

    def __init__(self, location, **kwargs):
        super().__init__(str(location), **kwargs)
        self.path = location

    def _prepare(self) -> None:
        """Nothing to make: object stores have no folders."""

    def _create(self) -> bool:
        try:
            self.path.create(json.dumps(self._record()).encode())
        except FileExistsError:
            return False
        except StoreError:
            raise  # a missing bucket, refused credentials: already named and explained
        except OSError as error:
            raise write_failure(error, self.path, "the output's lock") from error
        return True

    def _take_over(self, holder: dict[str, Any]) -> bool:
        if self._read() != holder:
            return False  # it changed: released, or already taken over
        try:
            self._replace()
        except OSError as error:
            raise write_failure(error, self.path, "the output's lock") from error
        time.sleep(self.SETTLE_SECONDS)
        return (self._read() or {}).get("token") == self.token

    def _read(self) -> dict[str, Any] | None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as error:
            return {"unreadable": str(error), "heartbeat": 0.0, "started": 0.0}
        return parse_record(data, modified=0.0)  # one PUT writes it whole: a bad one is stale

    def _replace(self) -> None:
        self.path.write_bytes(json.dumps(self._record()).encode())

    def _remove(self) -> None:
        with contextlib.suppress(OSError):  # a lock left behind is taken over once stale
            self.path.remove()


class NoLock(OutputLock):
    """For outputs that need none: a run's private temporary output."""


def lock_output(write_to: str | os.PathLike | None,
                storage_options: dict | None = None) -> OutputLock:
    """The lock guarding ``write_to`` and its stage: a :class:`FileLock` for a local path, a
    :class:`StoreLock` for a URL (with ``storage_options``); none for ``None`` (a private
    temporary output)."""
    if write_to is None:
        return NoLock()
    if "://" in str(write_to):
        from blockbuster.stores import Location

        return StoreLock(Location(f"{write_to}.lock", storage_options))
    return FileLock(f"{write_to}.lock")


@contextlib.contextmanager
def holding(lock: OutputLock) -> Iterator[OutputLock]:
    """Hold ``lock`` for the block; released however the block ends."""
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()


# -- reading a lock ---------------------------------------------------------------------------
def read_holder(path: Path) -> dict[str, Any] | None:
    """The record in the lock file, or ``None`` when there is none.

    An unreadable lock file (a run killed while creating it without hard links) stands for a
    holder that is only known by the file's age.
    """
    try:
        text = path.read_text()
        modified = path.stat().st_mtime
    except FileNotFoundError:
        return None
    except OSError as error:
        return {"unreadable": str(error), "heartbeat": 0.0, "started": 0.0}
    return parse_record(text, modified)


def parse_record(text: str | bytes, modified: float) -> dict[str, Any]:
    """The lock record in ``text``; one that is not, as a holder known only by ``modified``."""
    try:
        record = json.loads(text)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        return {"unreadable": "not a lock record", "heartbeat": modified, "started": modified}
    return record


def gone_reason(holder: dict[str, Any], stale: float) -> str | None:
    """Why the lock's holder is known to be gone, or ``None`` while it may still be running."""
    age = time.time() - float(holder.get("heartbeat", 0))
    if holder.get("host") == socket.gethostname():
        pid = int(holder.get("pid", 0))
        if not process_alive(pid, holder.get("pid_started")):
            return f"process {pid} on this host is no longer running"
    if age > stale:
        return f"its last heartbeat was {age:.0f} s ago, over the {stale:.0f} s limit"
    return None


def process_alive(pid: int, started: int | None) -> bool:
    """Whether process ``pid`` runs, and is the same process (start time) as recorded."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: alive
    return started is None or process_start_ticks(pid) in (None, started)


def process_start_ticks(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, Linux), to tell a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def describe_holder(holder: dict[str, Any]) -> str:
    """``process 123 on host node7 (python run.py), running since 2026-11-27 21:50:03 UTC``."""
    if "unreadable" in holder:
        return f"an unknown run (the lock file is unreadable: {holder['unreadable']})"
    since = datetime.fromtimestamp(float(holder.get("started", 0)), timezone.utc)
    command = f" ({holder['command']})" if holder.get("command") else ""
    return (f"process {holder.get('pid')} on host {holder.get('host')}{command}, running since "
            f"{since:%Y-%m-%d %H:%M:%S} UTC")


def locked_message(path: Path, holder: dict[str, Any], stale: float) -> str:
    age = time.time() - float(holder.get("heartbeat", 0))
    return (
        f"another run is writing this output: the lock {str(path)!r} is held by "
        f"{describe_holder(holder)}, last heartbeat {age:.0f} s ago. Wait for it to finish, or "
        f"stop it; a rerun of the same call then resumes from its staged tiles. If that run is "
        f"gone, its lock is taken over once its heartbeat is {stale:.0f} s old (at once on the "
        "same host); to take it sooner, delete the lock file."
    )
