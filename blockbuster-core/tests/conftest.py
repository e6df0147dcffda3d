"""Fixtures shared by the core's tests."""

import threading
import time

import pytest


@pytest.fixture
def assert_releases_gil():
    """``check(call, shortest)``: run ``call`` in a worker thread while the main thread keeps
    running Python; with the GIL held through the call, not one tick would fall in its middle
    half. A call shorter than ``shortest`` seconds is too short to tell."""

    def check(call, shortest: float) -> None:
        span, ticks = [], []

        def timed():
            span.append(time.perf_counter())
            call()
            span.append(time.perf_counter())

        worker = threading.Thread(target=timed)
        worker.start()
        while worker.is_alive():
            ticks.append(time.perf_counter())
        worker.join()
        start, stop = span
        quarter = (stop - start) / 4
        assert stop - start > shortest, "the call was too short to tell"
        assert any(start + quarter < t < stop - quarter for t in ticks)

    return check
