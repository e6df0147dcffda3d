"""Helpers for testing blockbuster and its plugins; also a pytest plugin (``pytest11`` entry point).

For plugin authors:

- :func:`check_segmenter` — the contract checks a segmenter must pass (integer labels, or the
  pixel map its ``Needs.output`` declares, of the tile's spatial shape, non-negative,
  picklable, deterministic, sane ``Needs``).
- :func:`assert_same_labels` — two label images are equal up to renumbering.
- :func:`serve_files` — a local HTTP server (127.0.0.1, free port, own thread) serving
  files from memory and counting requests, to test first-use downloads without internet.
- :func:`full_disk` — a disk that fills up after so many bytes under a folder (``ENOSPC``),
  without root rights or a tmpfs, to test what a run does when it runs out of space.
- :func:`store_digest` — a hash of a zarr store's chunks, to assert two runs wrote the same bytes.
- :func:`serve_s3` — a real S3-compatible HTTP server (moto's, in a thread, free port) that
  logs every request, to test ``s3://`` inputs and outputs without a cloud account.
- :class:`ChunkReadLog` and :func:`counting_zarr` — a zarr array whose every chunk read (one
  fetch and one decode) is logged, from threads and worker processes alike, to count how often
  a run decodes each input chunk.
- the ``blockbuster_registry`` fixture — an isolated :class:`~blockbuster.registry.Registry`
  (entry points not autoloaded) to which a test registers its own plugin.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import hashlib
import http.server
import io
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from zarr.storage import WrapperStore

from blockbuster.metrics import distinct_pairs
from blockbuster.pixelmaps import OUTPUTS, PixelMap
from blockbuster.registry import Registry
from blockbuster.segmenter import Needs


def assert_same_labels(expected, actual) -> None:
    """Assert ``actual`` partitions the image exactly like ``expected`` (IDs may differ)."""
    expected = np.asarray(expected)
    actual = np.asarray(actual)
    assert expected.shape == actual.shape, f"shapes differ: {expected.shape} vs {actual.shape}"
    assert np.array_equal(expected == 0, actual == 0), "background differs"
    pairs, _ = distinct_pairs(expected, actual)
    n_expected = len(np.unique(expected))
    n_actual = len(np.unique(actual))
    assert pairs.shape[1] == n_expected == n_actual, (
        f"labels are not a renumbering: {n_expected} expected labels, {n_actual} actual labels, "
        f"{pairs.shape[1]} distinct pairs (merged or split objects)"
    )


def check_segmenter(segmenter: Callable, tile: np.ndarray, *, spatial_shape=None) -> np.ndarray:
    """Run the contract checks on ``segmenter`` with one example ``tile``; return its labels
    (or, for a segmenter whose ``Needs.output`` is a pixel map, its map)."""
    import cloudpickle

    spatial_shape = tuple(spatial_shape or tile.shape)
    needs = getattr(segmenter, "blockbuster_needs", None)
    if callable(needs):
        needs = needs()
        assert isinstance(needs, Needs), "blockbuster_needs() must return blockbuster.Needs"
        assert needs.output in OUTPUTS, f"Needs.output {needs.output!r} is not one of {OUTPUTS}"
    output = needs.output if isinstance(needs, Needs) else "instances"
    labels = np.asarray(segmenter(tile))
    assert labels.shape == spatial_shape, f"labels shape {labels.shape} != {spatial_shape}"
    if output == "instances":
        assert labels.dtype == bool or np.issubdtype(labels.dtype, np.integer), (
            f"labels dtype {labels.dtype} is not integer"
        )
        assert labels.min() >= 0, "labels must be >= 0"
    else:
        PixelMap(output).checked(labels, spatial_shape, "the example tile")
    clone = cloudpickle.loads(cloudpickle.dumps(segmenter))
    assert np.array_equal(np.asarray(clone(tile)), labels), "a pickled copy labels differently"
    assert np.array_equal(np.asarray(segmenter(tile)), labels), "labels are not deterministic"
    if callable(getattr(segmenter, "segment_batch", None)):
        batch = segmenter.segment_batch([tile, tile])
        assert len(batch) == 2 and all(np.array_equal(np.asarray(b), labels) for b in batch), (
            "segment_batch must equal calling the segmenter on each tile"
        )
    return labels


@pytest.fixture
def blockbuster_registry() -> Callable[..., Registry]:
    """Build an isolated registry: ``blockbuster_registry(plugin, ...)`` registers those plugins."""

    def build(*plugins: Any, autoload: bool = False, block: Iterable[str] = ()) -> Registry:
        return Registry(autoload=autoload, plugins=plugins, block=block)

    return build


@dataclass
class FileServer:
    """What :func:`serve_files` yields: the base URL and the paths requested so far."""

    url: str
    files: dict[str, bytes]
    requests: list[str] = field(default_factory=list)
    #: Paths whose body is cut after this many bytes (the header still announces all of it).
    truncate: dict[str, int] = field(default_factory=dict)


@contextlib.contextmanager
def serve_files(files: dict[str, bytes]) -> Iterator[FileServer]:
    """Serve ``{"name": bytes}`` at ``http://127.0.0.1:<free port>/name`` in a thread.

    Every GET is recorded in ``server.requests``; unknown names get 404. Set
    ``server.truncate["name"] = n`` to send only ``n`` bytes of a full ``Content-Length``
    (an interrupted download). The server is shut down when the block ends.
    """
    state = FileServer(url="", files=dict(files))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            name = self.path.lstrip("/")
            state.requests.append(name)
            body = state.files.get(name)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:state.truncate.get(name, len(body))])

        def log_message(self, *args):
            pass

    with _serving(http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)) as url:
        state.url = url
        yield state


@contextlib.contextmanager
def _serving(server) -> Iterator[str]:
    """Run ``server`` (a socketserver bound to 127.0.0.1) in a thread; yield its base URL."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# -- faults -----------------------------------------------------------------------------------
@contextlib.contextmanager
def full_disk(root: str | os.PathLike, after_bytes: int = 0) -> Iterator[None]:
    """Within the block, files written under ``root`` (a folder, or one file) take
    ``after_bytes`` bytes in all; the write that would pass it writes what fits, then raises
    ``OSError(ENOSPC)`` like a full disk. Writes elsewhere are untouched.

    It replaces ``open`` (builtin and :func:`io.open`, which :class:`pathlib.Path` and zarr's
    local store use) for the block, in every thread.
    """
    root = os.path.abspath(root)
    budget = _Budget(after_bytes)
    real_open = io.open

    def limited_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if isinstance(file, str | os.PathLike) and set(mode) & set("wax+"):
            path = os.path.abspath(file)
            if path == root or path.startswith(root + os.sep):
                return _FillingFile(handle, budget, path)
        return handle

    builtins.open = io.open = limited_open
    try:
        yield
    finally:
        builtins.open = io.open = real_open


class _Budget:
    def __init__(self, size: int):
        self.left = size
        self.lock = threading.Lock()

    def take(self, size: int) -> int:
        """Bytes of ``size`` that still fit."""
        with self.lock:
            fits = min(size, self.left)
            self.left -= fits
            return fits


class _FillingFile:
    """A file whose writes stop with ``ENOSPC`` once the shared budget is spent."""

    def __init__(self, handle, budget: _Budget, path: str):
        self._handle, self._budget, self._path = handle, budget, path

    def write(self, data):
        size = len(data.encode()) if isinstance(data, str) else memoryview(data).nbytes
        fits = self._budget.take(size)
        if fits < size:
            self._handle.write(data[:fits] if isinstance(data, str)
                               else memoryview(data).cast("B")[:fits])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._path)
        return self._handle.write(data)

    def __getattr__(self, name: str):
        return getattr(self._handle, name)

    def __iter__(self):
        return iter(self._handle)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._handle.close()


def store_digest(path: str | os.PathLike) -> str:
    """Hash of every chunk file of a zarr store (metadata excluded): equal digests, equal
    bytes written."""
    path = Path(path)
    digest = hashlib.sha256()
    for chunk in sorted(p for p in path.rglob("*") if p.is_file() and p.name != "zarr.json"):
        digest.update(chunk.relative_to(path).as_posix().encode())
        digest.update(chunk.read_bytes())
    return digest.hexdigest()


# -- remote stores ---------------------------------------------------------------------------
@dataclass
class S3Server:
    """What :func:`serve_s3` yields: the endpoint, ``storage_options`` that reach it, and the
    log of requests as ``(method, path, query)``."""

    url: str
    storage_options: dict[str, Any]
    requests: list[tuple[str, str, str]] = field(default_factory=list)
    #: Set to refuse every request with S3's ``InvalidAccessKeyId`` (403), as for bad keys.
    refuse_credentials: bool = False

    def make_bucket(self, name: str) -> None:
        import s3fs

        s3fs.S3FileSystem(**self.storage_options, skip_instance_cache=True).mkdir(name)

    def count(self, method: str, prefix: str) -> int:
        """Requests of ``method`` whose path starts with ``prefix`` (e.g. ``/bucket/a.zarr/c/``)."""
        return sum(1 for m, path, _ in self.requests if m == method and path.startswith(prefix))


REFUSED = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InvalidAccessKeyId</Code>'
           b"<Message>The AWS Access Key Id you provided does not exist in our records."
           b"</Message></Error>")


@contextlib.contextmanager
def serve_s3() -> Iterator[S3Server]:
    """Run moto's S3 server (``moto[server]``) at ``http://127.0.0.1:<free port>`` in a thread.

    A real HTTP S3 endpoint, not a mock object: s3fs, zarr and child processes reach it with
    ``server.storage_options`` (``endpoint_url`` and test keys). Its state lives in this
    process and goes when the block ends.
    """
    import logging

    from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    app = DomainDispatcherApplication(create_backend_app)
    state = S3Server(url="", storage_options={})

    def logged(environ, start_response):
        state.requests.append((environ["REQUEST_METHOD"], environ["PATH_INFO"],
                               environ.get("QUERY_STRING", "")))
        if state.refuse_credentials:
            start_response("403 Forbidden", [("Content-Type", "application/xml"),
                                             ("Content-Length", str(len(REFUSED)))])
            return [REFUSED]
        return app(environ, start_response)

    server = make_server("127.0.0.1", 0, logged, threaded=True, request_handler=MotoRequestHandler)
    with _serving(server) as url:
        state.url = url
        state.storage_options = {"endpoint_url": url, "key": "testing", "secret": "testing"}
        yield state


class ChunkReadLog:
    """A file logging every chunk a :func:`counting_zarr` array reads, one line per read.

    Appended with ``O_APPEND`` (one ``write`` per line), so worker processes log to it too.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        Path(self.path).touch()

    def record(self, key: str) -> None:
        handle = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(handle, (key + "\n").encode())
        finally:
            os.close(handle)

    def reads(self) -> dict[str, int]:
        """How many times each chunk key was read."""
        counts: dict[str, int] = {}
        for key in Path(self.path).read_text().split():
            counts[key] = counts.get(key, 0) + 1
        return counts

    def clear(self) -> None:
        Path(self.path).write_text("")

    def per_chunk(self, n_chunks: int) -> float:
        """Mean reads (decodes) per chunk of an array of ``n_chunks`` chunks."""
        return sum(self.reads().values()) / n_chunks


ZARR_METADATA = ("zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata")


def counting_zarr(store: Any, log: ChunkReadLog):
    """The zarr array at ``store`` (a path or a zarr store), read-only, logging each chunk it
    reads to ``log``: zarr decodes every chunk it fetches, so a read is a decode."""
    import zarr
    from zarr.storage import LocalStore

    if isinstance(store, str | os.PathLike):
        store = LocalStore(str(store), read_only=True)
    return zarr.open_array(store=_CountingStore(store, log), mode="r")


class _CountingStore(WrapperStore):
    """A read-only zarr store wrapper logging each chunk key it fetches to a ChunkReadLog."""

    def __init__(self, store, log: ChunkReadLog):
        super().__init__(store)
        self.log = log

    def _with_store(self, store):
        return type(self)(store, self.log)

    async def get(self, key, prototype, byte_range=None):
        if not key.endswith(ZARR_METADATA):
            self.log.record(key)
        return await self._store.get(key, prototype, byte_range)

    def __getstate__(self):
        return {"_store": self._store, "log": self.log}

    def __setstate__(self, state):
        self.__init__(state["_store"], state["log"])
