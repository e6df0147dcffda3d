"""Fault injection: each fault gives a typed error that says where and what to do, loses
nothing already done, and once the fault is gone the same call resumes to the output of an
uninterrupted run.

SIGKILL during the lock's heartbeat is in test_reliability.py, with the other SIGKILL tests.
"""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

import blockbuster.faults as faults
import blockbuster.lock as lock
from blockbuster import tile_process
from blockbuster.builtin.segmenters import Threshold
from blockbuster.errors import (
    DiskFullError,
    ImageReadError,
    OutputLockedError,
    OutputWriteError,
    StageMismatchError,
    TilesFailedError,
)
from blockbuster.segmenter import describe_function
from blockbuster.synthetic import touching_disks, write_image
from blockbuster.table import read_table
from blockbuster.testing import full_disk

IMAGE = touching_disks((192, 160), seed=5)
TILES = (64, 32)  # 3 x 5 = 15 tiles, read without a halo: each tile reads its chunk
N_TILES = 15
FN = Threshold(threshold=0.5)


@pytest.fixture(scope="module")
def reference():
    """The labels of an uninterrupted run."""
    return tile_process(IMAGE, FN, tile_shape=TILES, overlap=0, executor="serial", compute=True)


def run(image=IMAGE, fn=FN, **options):
    options = {"tile_shape": TILES, "overlap": 0, "executor": "serial", **options}
    return tile_process(image, fn, **options)


def staged(out: Path) -> int:
    return len(list(Path(f"{out}.stage", "tiles").glob("*.pickle")))


def resume_equals(reference, out: Path, n_staged: int, **options) -> None:
    """Rerun the same call into ``out``: it resumes ``n_staged`` tiles and writes ``reference``."""
    labels, stats = run(write_to=out, return_stats=True, **options)
    assert stats.tiles_resumed == n_staged
    assert np.array_equal(labels.compute(), reference)
    assert not Path(f"{out}.stage").exists() and not Path(f"{out}.lock").exists()


# -- the output lock ------------------------------------------------------------------------
class Gate:
    """``fn`` that stops after its first tile until the test opens the gate."""

    def __init__(self):
        self.started, self.gate = threading.Event(), threading.Event()

    def __call__(self, tile):
        self.started.set()
        assert self.gate.wait(30)
        return FN(tile)

    def blockbuster_fingerprint(self):
        return "gate"


def test_a_second_run_on_the_same_output_fails_fast_and_the_first_finishes(tmp_path, reference):
    out = tmp_path / "out.zarr"
    first, results = Gate(), {}
    thread = threading.Thread(
        target=lambda: results.update(labels=run(fn=first, write_to=out, compute=True)))
    thread.start()
    assert first.started.wait(30)
    started = time.perf_counter()
    with pytest.raises(OutputLockedError) as error:
        run(fn=Gate(), write_to=out)  # the same job again, e.g. a requeued cluster job
    assert time.perf_counter() - started < 5  # at once: it never waits for the first run
    message = str(error.value)
    assert f"process {os.getpid()} on host {socket.gethostname()}" in message
    assert "running since" in message and "Wait for it to finish" in message
    first.gate.set()
    thread.join(30)
    assert np.array_equal(results["labels"], reference)  # the first run is intact
    assert not Path(f"{out}.lock").exists()


FIRST_RUN = """
import sys, time
from pathlib import Path
import numpy as np
from blockbuster import tile_process
from blockbuster.builtin.segmenters import Threshold
from blockbuster.synthetic import touching_disks

class Paused:  # the same job as the test's FN, paused until the gate file exists
    def __call__(self, tile):
        started.touch()
        while not gate.exists():
            time.sleep(0.01)
        return Threshold(threshold=0.5)(tile)

    def blockbuster_fingerprint(self):
        return sys.argv[4]

out, started, gate = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
tile_process(touching_disks((192, 160), seed=5), Paused(), tile_shape=(64, 32), overlap=0,
             executor="serial", write_to=out)
"""


def test_the_same_job_from_another_process_is_refused_while_the_first_runs(tmp_path, reference):
    out, started, gate = tmp_path / "out.zarr", tmp_path / "started", tmp_path / "gate"
    script = tmp_path / "first.py"
    script.write_text(FIRST_RUN)
    first = subprocess.Popen([sys.executable, str(script), str(out), str(started), str(gate),
                              describe_function(FN)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not started.exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert started.exists(), first.stderr.read() if first.poll() is not None else "slow"
        with pytest.raises(OutputLockedError, match=f"held by process {first.pid} on host"):
            run(write_to=out)  # the same job: without the lock it would resume the first's stage
    finally:
        gate.touch()
        assert first.wait(60) == 0, first.stderr.read()
    assert np.array_equal(zarr.open_array(str(out))[:], reference)
    assert not Path(f"{out}.lock").exists() and not Path(f"{out}.stage").exists()


def plant_lock(out: Path, **record) -> Path:
    path = Path(f"{out}.lock")
    now = time.time()
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                "started": now - 60, "heartbeat": now, "token": "theirs",
                                "command": "python their_job.py", **record}))
    return path


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


class LosesTile6:
    """``FN`` (the same job), but tile 6 fails as if its node were lost."""

    def __call__(self, tile):
        if np.array_equal(tile, IMAGE[64:128, 32:64]):
            raise RuntimeError("node lost")
        return FN(tile)

    def blockbuster_fingerprint(self):
        return describe_function(FN)


def crashed_run(out: Path) -> int:
    """A run of the job into ``out`` that stopped with every tile but one staged."""
    with pytest.raises(TilesFailedError):
        run(fn=LosesTile6(), write_to=out, keep_going=True, retries=0)
    return staged(out)


@pytest.mark.parametrize("holder, why", [
    ({"pid": "dead"}, "is no longer running"),
    ({"pid_started": -1}, "is no longer running"),  # the pid was reused by another process
    ({"host": "node-elsewhere", "heartbeat": time.time() - 10_000}, "last heartbeat was"),
])
def test_a_stale_lock_is_taken_over_with_a_warning_and_the_run_resumes(tmp_path, reference,
                                                                       holder, why):
    out = tmp_path / "out.zarr"
    n_staged = crashed_run(out)
    assert n_staged == N_TILES - 1
    if holder.get("pid") == "dead":
        holder["pid"] = dead_pid()
    plant_lock(out, **holder)
    stray = Path(f"{out}.lock.theirs.123")  # a heartbeat its holder never finished
    stray.write_text("{}")
    with pytest.warns(UserWarning, match=f"took over the lock .*{why}"):
        resume_equals(reference, out, n_staged)
    assert not stray.exists()


@pytest.mark.parametrize("holder", [
    {},  # this very process: alive
    {"host": "node-elsewhere"},  # another host, heartbeat fresh
])
def test_a_live_lock_is_respected(tmp_path, holder):
    out = tmp_path / "out.zarr"
    planted = plant_lock(out, **holder)
    before = planted.read_text()
    with pytest.raises(OutputLockedError, match=f"held by process .* on host "
                                                f"{holder.get('host', socket.gethostname())}"):
        run(write_to=out)
    assert planted.read_text() == before and not Path(f"{out}.stage").exists()


def test_the_heartbeat_keeps_the_lock_fresh_and_release_removes_it(tmp_path, monkeypatch):
    monkeypatch.setattr(lock, "HEARTBEAT_SECONDS", 0.02)
    held = lock.FileLock(tmp_path / "out.zarr.lock")
    held.acquire()
    first = lock.read_holder(held.path)["heartbeat"]
    time.sleep(0.2)
    assert lock.read_holder(held.path)["heartbeat"] > first
    held.check()
    held.release()
    assert not held.path.exists() and list(tmp_path.iterdir()) == []


def test_a_run_that_lost_its_lock_stops(tmp_path, monkeypatch):
    monkeypatch.setattr(lock, "HEARTBEAT_SECONDS", 0.02)
    held = lock.FileLock(tmp_path / "out.zarr.lock")
    held.acquire()
    plant_lock(tmp_path / "out.zarr", host="node-elsewhere", pid=4242)  # took it over
    time.sleep(0.2)
    with pytest.raises(OutputLockedError, match="lost its lock.*process 4242 on host node-"):
        held.check()
    held.release()
    assert lock.read_holder(held.path)["pid"] == 4242  # never removes another run's lock


def test_an_unreadable_lock_is_judged_by_its_age(tmp_path, reference):
    out = tmp_path / "out.zarr"
    Path(f"{out}.lock").write_text("")  # a holder killed while creating it
    with pytest.raises(OutputLockedError, match="unreadable"):
        run(write_to=out)
    old = time.time() - 10_000
    os.utime(f"{out}.lock", (old, old))
    with pytest.warns(UserWarning, match="took over"):
        resume_equals(reference, out, 0)


# -- disk full ------------------------------------------------------------------------------
def test_disk_full_while_staging(tmp_path, reference):
    out = tmp_path / "out.zarr"
    with full_disk(f"{out}.stage", after_bytes=3000), pytest.raises(DiskFullError) as error:
        run(write_to=out)
    n_staged = staged(out)
    assert 0 < n_staged < N_TILES
    message = str(error.value)
    assert f"the staged labels of tile {n_staged} at " in message
    assert "the disk is full" in message and "No space left on device" in message
    assert f"{n_staged} of {N_TILES} tiles are staged" in message
    assert "free space there" in message and "rerun the same call" in message
    assert isinstance(error.value, OSError)  # `except OSError` still catches it
    assert not list(Path(f"{out}.stage", "tiles").glob("*.partial"))  # no half-written files
    resume_equals(reference, out, n_staged)


def test_disk_full_at_the_final_write(tmp_path, reference):
    out = tmp_path / "out.zarr"
    with full_disk(out, after_bytes=2000), pytest.raises(DiskFullError) as error:
        run(write_to=out)
    message = str(error.value)
    assert f"to {str(out)!r}: the disk is full" in message and "tile " in message
    assert f"{N_TILES} of {N_TILES} tiles are staged" in message
    assert "no tile is segmented again" in message
    resume_equals(reference, out, N_TILES)


def test_disk_full_at_the_table_write(tmp_path, reference):
    out, table = tmp_path / "out.zarr", tmp_path / "tables" / "objects.csv"
    table.parent.mkdir()
    with full_disk(table.parent, after_bytes=100), pytest.raises(DiskFullError) as error:
        run(write_to=out, table=table)
    assert f"could not write the object table to {str(table)!r}" in str(error.value)
    assert list(table.parent.iterdir()) == []  # no half-written table
    assert np.array_equal(zarr.open_array(str(out))[:], reference)  # the labels are complete
    resume_equals(reference, out, N_TILES, table=table)
    assert len(read_table(table)) == reference.max()


def test_a_writer_failing_otherwise_is_an_output_write_error(tmp_path, monkeypatch):
    from blockbuster.builtin.zarr_writer import ZarrWriter

    def refuse(self, region, labels):
        raise PermissionError(13, "Permission denied", str(self.path))

    monkeypatch.setattr(ZarrWriter, "write", refuse)
    with pytest.raises(OutputWriteError, match=r"tile 0 at \[0:64, 0:32\].*the write failed "
                                                r"\(PermissionError.*fix the cause") as error:
        run(write_to=tmp_path / "out.zarr")
    assert not isinstance(error.value, DiskFullError)


# -- unreadable input -----------------------------------------------------------------------
@pytest.fixture
def damaged(tmp_path):
    """A zarr image with chunk (1, 0) overwritten by garbage; returns (path, restore)."""
    path = tmp_path / "image.zarr"
    zarr.create_array(str(path), shape=IMAGE.shape, chunks=(64, 64), dtype=IMAGE.dtype)[:] = IMAGE
    chunk = path / "c" / "1" / "0"
    good = chunk.read_bytes()
    chunk.write_bytes(os.urandom(len(good)))
    return path, lambda: chunk.write_bytes(good)


def test_a_corrupt_chunk_names_the_chunk_and_tile(tmp_path, damaged, reference):
    image, restore = damaged
    out = tmp_path / "out.zarr"
    with pytest.raises(ImageReadError) as error:
        run(image, write_to=out, retries=1)
    message = str(error.value)
    assert "could not read the input of tile 5 at [64:128, 0:32]" in message
    assert f"after 2 tries: unreadable chunk {str(image.resolve())}/c/1/0 [64:128, 0:64]" in message
    assert "Zstd" in message and "rerun the same call" in message
    assert staged(out) == 5  # tiles 0-4, before it
    restore()
    resume_equals(reference, out, 5, image=image)


def test_keep_going_stages_every_tile_but_those_of_a_corrupt_chunk(tmp_path, damaged, reference):
    image, restore = damaged
    out = tmp_path / "out.zarr"
    with pytest.raises(TilesFailedError) as error:
        run(image, write_to=out, keep_going=True, executor="threads", workers=2)
    assert sorted(error.value.failed) == [
        f"tile {i} at {b}: input unreadable: unreadable chunk {str(image.resolve())}/c/1/0 "
        f"[64:128, 0:64]: RuntimeError: Zstd decompression error: invalid input data"
        for i, b in [(5, "[64:128, 0:32]"), (6, "[64:128, 32:64]")]]
    assert staged(out) == N_TILES - 2
    restore()
    resume_equals(reference, out, N_TILES - 2, image=image)


class Unreliable:
    """An array whose region ``target`` fails with ``error`` the first ``failures`` reads."""

    def __init__(self, array, target, error, failures):
        self.array, self.target, self.error, self.failures = array, target, error, failures
        self.shape, self.dtype, self.reads = array.shape, array.dtype, 0

    def __getitem__(self, region):
        if region == self.target:
            self.reads += 1
            if self.reads <= self.failures:
                raise self.error
        return self.array[region]


TILE_6 = (slice(64, 128), slice(32, 64))


def test_a_read_failing_twice_transiently_is_retried_with_backoff(monkeypatch, reference):
    waits = []
    monkeypatch.setattr(faults, "sleep", waits.append)
    flaky = Unreliable(IMAGE, TILE_6, ConnectionResetError(104, "Connection reset by peer"), 2)
    labels = run(flaky, compute=True, retries=2)
    assert flaky.reads == 3 and waits == [faults.BACKOFF_SECONDS, 2 * faults.BACKOFF_SECONDS]
    assert np.array_equal(labels, reference)


class HTTPError(Exception):
    status = 503


@pytest.mark.parametrize("error, transient", [
    (TimeoutError("read timed out"), True),
    (HTTPError("Service Unavailable"), True),
    (ValueError("bad bytes"), False),
])
def test_read_retries_wait_only_for_transient_errors(monkeypatch, error, transient):
    waits = []
    monkeypatch.setattr(faults, "sleep", waits.append)
    flaky = Unreliable(IMAGE, TILE_6, error, 10)
    with pytest.raises(ImageReadError, match=r"tile 6 at \[64:128, 32:64\].*after 2 tries: "
                                             + type(error).__name__):
        run(flaky, retries=1)
    assert flaky.reads == 2 and len(waits) == (1 if transient else 0)


def test_transient_errors_are_recognised_through_their_causes():
    try:
        try:
            raise ConnectionResetError(104, "reset")
        except OSError as inner:
            raise RuntimeError("store failed") from inner
    except RuntimeError as outer:
        assert faults.is_transient(outer)
    response = type("Response", (), {"status_code": 429})()
    assert faults.is_transient(type("E", (Exception,), {"response": response})())
    assert not faults.is_transient(RuntimeError("Zstd decompression error"))


def test_the_lock_goes_into_a_new_folder_with_the_output(tmp_path, reference):
    out = tmp_path / "new" / "folder" / "out.zarr"
    assert np.array_equal(run(write_to=out, compute=True), reference)
    assert sorted(p.name for p in out.parent.iterdir()) == ["out.zarr"]


@pytest.mark.slow
def test_a_corrupt_chunk_read_in_a_worker_process_is_reported_the_same(tmp_path, damaged):
    image, _ = damaged
    with pytest.raises(TilesFailedError) as error:
        run(image, write_to=tmp_path / "out.zarr", keep_going=True, executor="processes",
            workers=2)
    assert [line.split(":")[0] for line in sorted(error.value.failed)] == [
        "tile 5 at [64", "tile 6 at [64"]
    assert all("c/1/0 [64:128, 0:64]: RuntimeError: Zstd" in line for line in error.value.failed)


def test_a_damaged_staged_record_names_its_tile(tmp_path, reference):
    out = tmp_path / "out.zarr"
    crashed_run(out)
    Path(f"{out}.stage", "tiles", "3.pickle").write_bytes(b"garbage")
    with pytest.raises(StageMismatchError, match=r"staged files of tile 3 in .*resume=False"):
        run(write_to=out)
    assert np.array_equal(run(write_to=out, resume=False, compute=True), reference)


def test_damaged_input_metadata_is_an_image_read_error(tmp_path):
    path = tmp_path / "image.zarr"
    zarr.create_array(str(path), shape=(8, 8), dtype="u1")
    (path / "zarr.json").write_text("{not json")
    with pytest.raises(ImageReadError, match="could not be opened as zarr.*metadata"):
        run(path)


def test_a_corrupt_chunk_of_an_ome_zarr_image_is_named_too(tmp_path, reference):
    image = write_image(tmp_path / "image.ome.zarr", IMAGE, axes="yx", chunks=(64, 64))
    chunk = image / "0" / "c" / "1" / "0"
    good = chunk.read_bytes()
    chunk.write_bytes(b"\0" * len(good))
    out = tmp_path / "out.zarr"
    with pytest.raises(ImageReadError, match=r"tile 5 at \[64:128, 0:32\] of .* unreadable chunk "
                                             + f"{image.resolve()}/0/c/1/0 " + r"\[64:128, 0:64\]"):
        run(image, write_to=out)
    chunk.write_bytes(good)
    resume_equals(reference, out, 5, image=image)


def test_blockbuster_run_reports_a_locked_output_in_one_line(tmp_path, capsys):
    from blockbuster.cli import main

    image = tmp_path / "in.zarr"
    zarr.create_array(str(image), shape=IMAGE.shape, chunks=(64, 32), dtype=IMAGE.dtype)[:] = IMAGE
    out = tmp_path / "out.zarr"
    config = tmp_path / "job.toml"
    config.write_text(f'[input]\npath = "{image}"\n[segmenter]\nname = "threshold"\n'
                      f'threshold = 0.5\n[output]\npath = "{out}"\n')
    other = lock.FileLock(f"{out}.lock")
    other.acquire()
    try:
        assert main(["run", str(config)]) == 1
    finally:
        other.release()
    error = capsys.readouterr().err
    assert error.startswith("blockbuster: error: another run is writing this output")
    assert error.count("\n") == 1 and f"process {os.getpid()}" in error
    assert main(["run", str(config)]) == 0
