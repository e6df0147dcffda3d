"""Fetch model weights into a library's cache folder, once, in the parent process.

Backends resolve a model name in their factory (which runs in the parent process, before any
worker starts); when the library's cache lacks the weights they call :func:`download_weights`,
so N workers never race for the same file and workers never touch the network.

- **Atomic**: the body is written to a temporary file in the destination folder and moved
  into place only once it is complete (its length equals ``Content-Length``, and its SHA-256
  equals the library's checksum when it has one). A cut connection never leaves a
  half-written file where the library would load it.
- **Offline switch**: with ``BLOCKBUSTER_OFFLINE=1`` (or ``offline = true`` in a config's
  ``[run]`` table) nothing is downloaded; :func:`download_weights` raises
  :class:`~blockbuster.errors.ModelNotFoundError` with the backend's advice instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from blockbuster.errors import ModelNotFoundError

OFFLINE_ENV = "BLOCKBUSTER_OFFLINE"
CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60.0


@dataclass(frozen=True)
class ModelInfo:
    """A pretrained model a backend knows (``blockbuster models``): where its weights go,
    whether they are there, and their size in bytes when they are."""

    name: str
    path: Path
    cached: bool
    size: int | None = None

    @classmethod
    def at(cls, name: str, path: Path) -> ModelInfo:
        """The entry of ``name`` whose weights file is (or will be) ``path``."""
        cached = path.is_file()
        return cls(name, path, cached, path.stat().st_size if cached else None)


def offline() -> bool:
    """Whether downloads are switched off (``BLOCKBUSTER_OFFLINE`` set to 1/true/yes/on)."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


@contextlib.contextmanager
def offline_mode(enabled: bool = True) -> Iterator[None]:
    """Switch downloads off (or on) inside the block, as ``BLOCKBUSTER_OFFLINE`` does."""
    previous = os.environ.get(OFFLINE_ENV)
    os.environ[OFFLINE_ENV] = "1" if enabled else "0"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(OFFLINE_ENV, None)
        else:
            os.environ[OFFLINE_ENV] = previous


def refuse_offline(missing: str) -> None:
    """Raise :class:`ModelNotFoundError` (``missing`` plus how downloads were switched off)
    when offline; for a backend that must know before it even looks up a download URL."""
    if offline():
        raise ModelNotFoundError(f"{missing} (Downloads are off: {OFFLINE_ENV}=1 or "
                                 "offline = true in the config.)")


def download_weights(url: str, destination: Path, *, missing: str, sha256: str | None = None,
                     progress: bool = True) -> Path:
    """Download ``url`` to ``destination`` atomically and return ``destination``.

    ``missing`` is the backend's :class:`ModelNotFoundError` message (where to put the file by
    hand); it is raised as is when offline, and with the network cause appended when the
    download fails.
    """
    refuse_offline(missing)
    destination = Path(destination)
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        _fetch_atomically(url, destination, sha256=sha256, progress=progress)
    except (OSError, ValueError) as error:
        raise ModelNotFoundError(
            f"{missing} Downloading {url} failed: {type(error).__name__}: {error}"
        ) from error
    return destination


def _fetch_atomically(url: str, destination: Path, *, sha256: str | None, progress: bool) -> None:
    """Stream ``url`` into a temporary file next to ``destination``, check it, move it."""
    handle, partial = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.",
                                       suffix=".part")
    try:
        with (os.fdopen(handle, "wb") as out,
              urllib.request.urlopen(url, timeout=TIMEOUT_S) as response):
            expected = response.headers.get("Content-Length")
            size, digest = _copy_with_progress(response, out, expected, destination.name,
                                               progress)
        if expected is not None and size != int(expected):
            raise OSError(f"connection closed after {size} of {expected} bytes")
        if sha256 is not None and digest != sha256.lower():
            raise ValueError(f"SHA-256 {digest} differs from the expected {sha256}")
        os.replace(partial, destination)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(partial)


def _copy_with_progress(response, out, expected: str | None, name: str,
                        progress: bool) -> tuple[int, str]:
    """Copy the body to ``out`` with a tqdm bar; returns (bytes written, SHA-256 hex)."""
    from tqdm.auto import tqdm

    digest = hashlib.sha256()
    size = 0
    total = int(expected) if expected is not None else None
    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, disable=not progress,
              desc=f"downloading {name}") as bar:
        while chunk := response.read(CHUNK_BYTES):
            out.write(chunk)
            digest.update(chunk)
            size += len(chunk)
            bar.update(len(chunk))
    return size, digest.hexdigest()
