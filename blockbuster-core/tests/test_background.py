"""Reads ahead and writes behind: order kept, the next read overlaps the work, writes are durable."""

import threading
import time

import pytest

from blockbuster.background import Background


def test_read_ahead_keeps_order_and_reads_the_next_item_during_the_work():
    started = {}

    def read(item):
        started[item] = time.perf_counter()
        return item * 10

    seen = []
    with Background() as io:
        for value in io.read_ahead(range(4), read):
            time.sleep(0.05)  # the work on this item
            seen.append((value, time.perf_counter()))
    assert [v for v, _ in seen] == [0, 10, 20, 30]
    for k in range(3):  # item k + 1 was being read before the work on item k ended
        assert started[k + 1] < seen[k][1]


def test_writes_finish_before_the_block_ends_even_when_the_work_fails():
    written = []

    def slow_write(value):
        time.sleep(0.05)
        written.append(value)

    with pytest.raises(RuntimeError, match="fn broke"):
        with Background() as io:
            io.write(slow_write, 1)
            raise RuntimeError("fn broke")
    assert written == [1]  # the finished tile still reached the disk


def test_a_failed_write_is_raised_when_the_block_ends():
    def broken_write():
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        with Background() as io:
            io.write(broken_write)
    assert threading.active_count() < 50  # the I/O thread was shut down, not leaked


def test_writes_wait_for_the_disk_rather_than_queue_a_whole_run():
    queued = []
    lock = threading.Lock()

    def slow_write(value):
        time.sleep(0.02)
        with lock:
            queued.remove(value)

    most = 0
    with Background() as io:
        for value in range(10):
            with lock:
                queued.append(value)
                most = max(most, len(queued))
            io.write(slow_write, value)
    assert not queued and most <= 3  # the one being written, MAX_PENDING_WRITES queued
