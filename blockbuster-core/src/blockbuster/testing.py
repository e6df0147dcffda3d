"""Helpers for testing blockbuster and its plugins; also a pytest plugin (``pytest11`` entry point).

For plugin authors:

- :func:`check_segmenter` — the contract checks a segmenter must pass (integer labels, or the
  pixel map its ``Needs.output`` declares, of the tile's spatial shape, non-negative,
  picklable, deterministic, sane ``Needs``).
- :func:`assert_same_labels` — two label images are equal up to renumbering.
- :func:`serve_files` — a local HTTP server (127.0.0.1, free port, own thread) serving
  files from memory and counting requests, to test first-use downloads without internet.
- the ``blockbuster_registry`` fixture — an isolated :class:`~blockbuster.registry.Registry`
  (entry points not autoloaded) to which a test registers its own plugin.
"""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from blockbuster.pixelmaps import OUTPUTS, PixelMap
from blockbuster.registry import Registry
from blockbuster.segmenter import Needs


def assert_same_labels(expected, actual) -> None:
    """Assert ``actual`` partitions the image exactly like ``expected`` (IDs may differ)."""
    expected = np.asarray(expected)
    actual = np.asarray(actual)
    assert expected.shape == actual.shape, f"shapes differ: {expected.shape} vs {actual.shape}"
    assert np.array_equal(expected == 0, actual == 0), "background differs"
    pairs = np.unique(np.stack([expected.ravel(), actual.ravel()]), axis=1)
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

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
