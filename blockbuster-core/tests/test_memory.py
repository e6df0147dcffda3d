"""blockbuster.memory: a process's own peak memory, not the peak its parent handed down."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from blockbuster.memory import _malloc_trim, peak_rss_bytes, rss_bytes

MiB = 2**20
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

GROWTH = textwrap.dedent("""
    import json, sys
    import numpy as np
    from blockbuster.memory import peak_baseline, peak_rss_bytes

    start = peak_rss_bytes()
    baseline = peak_baseline()
    block = np.ones(int(sys.argv[1]) * 2**20, np.uint8)  # touched: resident
    del block
    print(json.dumps({"start": start, "grown": peak_rss_bytes() - baseline}))
""")


def child(megabytes):
    done = subprocess.run([sys.executable, "-c", GROWTH, str(megabytes)], capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@linux_only
def test_child_reports_its_own_peak_not_its_parents():
    """A parent that peaked at 600 MiB starts a child: the child's peak is its own (~30-60 MiB).

    ``ru_maxrss`` would report at least the parent's 600 MiB here: Linux copies it through
    fork and exec."""
    block = np.ones(600 * MiB, np.uint8)
    parent_peak = peak_rss_bytes()
    del block
    assert parent_peak >= 600 * MiB
    assert child(1)["start"] < 300 * MiB


@linux_only
@pytest.mark.parametrize("megabytes", [16, 128])
def test_growth_from_baseline_is_the_work_alone(megabytes):
    grown = child(megabytes)["grown"]
    assert (megabytes - 1) * MiB <= grown < (megabytes + 8) * MiB


@linux_only
def test_reset_lowers_the_peak_to_the_current_size():
    code = textwrap.dedent("""
        import json
        import numpy as np
        from blockbuster.memory import peak_rss_bytes, reset_peak, rss_bytes

        block = np.ones(200 * 2**20, np.uint8)
        del block
        before = peak_rss_bytes()
        print(json.dumps({"before": before, "reset": reset_peak(), "after": peak_rss_bytes(),
                          "now": rss_bytes()}))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    if not figures["reset"]:
        pytest.skip("this kernel does not allow resetting the peak (/proc/self/clear_refs)")
    assert figures["before"] - figures["after"] >= 190 * MiB
    assert figures["after"] <= figures["now"] + MiB


@linux_only
def test_peak_is_at_least_the_current_size():
    block = np.ones(64 * MiB, np.uint8)
    assert peak_rss_bytes() >= rss_bytes() >= 64 * MiB
    del block


@linux_only
@pytest.mark.slow
def test_run_stats_report_the_workers_own_peak():
    """Worker processes of a parent that once peaked at 600 MiB report their own peak.

    Spawned workers are exec'd from this process, so ``ru_maxrss`` would say >= 600 MiB."""
    from blockbuster import tile_process
    from blockbuster.builtin.executors import ProcessExecutor

    block = np.ones(600 * MiB, np.uint8)
    del block
    image = np.zeros((256, 256), np.uint8)
    image[10:20, 10:200] = 1
    spawned = ProcessExecutor(2, start_method="spawn")
    _, stats = tile_process(image, lambda tile: (tile > 0).astype(np.uint32),
                            tile_shape=(128, 128), executor=spawned, compute=True,
                            return_stats=True)
    assert 0 < stats.worker_peak_rss_mb < 400


NUMPY_RESULT_RUN = textwrap.dedent("""
    import json, sys
    import numpy as np
    import zarr
    from scipy import ndimage

    from blockbuster import tile_process
    from blockbuster.builtin.segmenters import Threshold
    from blockbuster.testing import assert_same_labels

    image = (np.random.default_rng(0).random((256, 256)) * 1000).astype(np.uint16)
    zarr.create_array(store=sys.argv[1], shape=image.shape, chunks=(64, 64),
                      dtype=image.dtype)[...] = image
    labels = tile_process(sys.argv[1], Threshold(threshold=900, connectivity=2),
                          tile_shape=(128, 128), overlap=16, executor="threads", workers=2,
                          compute=True)
    assert isinstance(labels, np.ndarray)
    assert_same_labels(ndimage.label(image > 900, np.ones((3, 3)))[0], labels)
    print(json.dumps(sorted(m for m in ("dask", "dask.array", "pandas", "pyarrow", "xarray")
                            if m in sys.modules)))
""")


def test_a_numpy_result_never_imports_dask_or_pandas(tmp_path):
    """``compute=True`` with threads reads the output with zarr alone: ``import dask.array``
    pulls pandas, pyarrow and xarray where installed (~100 MB resident)."""
    done = subprocess.run([sys.executable, "-c", NUMPY_RESULT_RUN, str(tmp_path / "in.zarr")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


FREED_BUT_KEPT = textwrap.dedent("""
    import json
    from blockbuster.memory import release_free_memory, rss_bytes

    blocks = [b"x" * 65536 for _ in range(1600)]  # 100 MiB in the heap, below the mmap threshold
    del blocks[:-1]  # the last one stays: the heap's top cannot shrink past it by itself
    before = rss_bytes()
    released = release_free_memory()
    print(json.dumps({"released": released, "freed": before - rss_bytes()}))
""")


@pytest.mark.skipif(_malloc_trim() is None, reason="glibc's malloc_trim only")
def test_release_hands_memory_freed_inside_the_heap_back():
    """Freed memory the allocator keeps (glibc does not shrink a heap past a live block) goes
    back to the system: RSS drops by about what was freed."""
    done = subprocess.run([sys.executable, "-c", FREED_BUT_KEPT], capture_output=True,
                          text=True, check=True)
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["released"]
    assert found["freed"] >= 80 * MiB
