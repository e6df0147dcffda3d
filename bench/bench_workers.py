"""Worker scaling: does a second worker make a run faster, with threads and with processes?

Three functions, each run with ``threads`` and ``processes`` on 1 and 2 workers, every run in
a fresh process, best of ``--repeats`` (the machine is shared: the best run is the one least
disturbed by the others):

- ``sleep``: 50 ms per tile, returns no objects; stands in for a GPU model (releases the GIL).
- ``matmul``: a 1024² float32 matrix product per tile (numpy's BLAS, one BLAS thread:
  ``OPENBLAS_NUM_THREADS=1``), returns no objects; a numpy-heavy function that releases the GIL.
- ``cc``: threshold + ``scipy.ndimage.label`` (the built-in ``Threshold`` segmenter), cheap and
  holding the GIL, on the 8192² uint16 nuclei zarr of ``bench_core.py`` with 1024² tiles and
  overlap 16, written to a local zarr.

Each row also gives the CPU seconds of the run (``os.times`` of its process, plus for
``processes`` its workers' as the fork server, their parent, accounts them in ``/proc``) and
the load average around the runs.

Targets: ``sleep`` and ``matmul`` with 2 workers >= 1.8x one worker; ``cc`` with processes and
2 workers >= 1.5x one worker and never slower than threads with 2 workers.

One worker is not one core: it reads ahead and writes behind on threads of its own, so with a
cheap ``fn`` it keeps more than one core busy. Each row gives how many (CPU seconds over wall
seconds of ``threads`` with 1 worker) and the speed-up two workers could reach at most on this
machine's cores if they added no work at all: cores / that figure.

Usage: python bench/bench_workers.py [--repeats N] [--functions sleep matmul cc] [--quick]
       [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_core import THRESHOLD, TILE, fork_server_cpu_seconds  # noqa: E402
from reporting import synthetic_nuclei  # noqa: E402

SLEEP_S = 0.05
CC_OVERLAP = 16
SPEEDUP_GIL_FREE = 1.8
SPEEDUP_CC_PROCESSES = 1.5


class Sleep:
    """50 ms per tile, no objects: a stand-in for a GPU model (sleeping releases the GIL)."""

    def __call__(self, tile):
        import numpy as np

        time.sleep(SLEEP_S)
        return np.zeros(tile.shape, np.uint32)


class MatMul:
    """A float32 matrix product of the tile's first 1024² with itself (BLAS releases the GIL)."""

    def __call__(self, tile):
        import numpy as np

        square = tile[:TILE, :TILE].astype(np.float32)
        (square @ square).sum()
        return np.zeros(tile.shape, np.uint32)


def function(name: str):
    from blockbuster.builtin.segmenters import Threshold

    return {"sleep": Sleep(), "matmul": MatMul(),
            "cc": Threshold(threshold=THRESHOLD, connectivity=2)}[name]


def run_case(image: str, name: str, executor: str, workers: int) -> dict:
    """Run in a child: one warm ``tile_process``: imports done and a first run on a corner of
    2 x 2 tiles with the same executor (for ``processes`` it starts the fork server, which a
    long-running process starts once)."""
    import numpy as np
    import zarr
    from bench_core import warm_imports

    from blockbuster import tile_process

    warm_imports()
    fn = function(name)
    overlap = CC_OVERLAP if name == "cc" else 0
    corner = np.asarray(zarr.open_array(image, mode="r")[: 2 * TILE, : 2 * TILE])
    tile_process(corner, fn, tile_shape=(TILE, TILE), overlap=overlap, executor=executor,
                 workers=workers)
    with tempfile.TemporaryDirectory() as tmp:
        before, workers_before = os.times(), fork_server_cpu_seconds()
        t0 = time.perf_counter()
        _, stats = tile_process(image, fn, tile_shape=(TILE, TILE), overlap=overlap,
                                executor=executor, workers=workers,
                                write_to=Path(tmp) / "labels.zarr", return_stats=True)
        wall = time.perf_counter() - t0
        after = os.times()
        time.sleep(0.2)  # the fork server reaps its finished workers
        workers_cpu = fork_server_cpu_seconds() - workers_before  # processes: the workers'
        cpu = sum(after[i] - before[i] for i in range(4)) + workers_cpu
    return {"wall_s": wall, "cpu_s": cpu, "in_fn_s": stats.seconds_in_fn,
            "stages_s": stats.stage_seconds, "tiles": stats.n_tiles,
            "objects": stats.n_objects}


def in_child(*args) -> dict:
    code = (f"import json, sys; sys.path.insert(0, {str(HERE)!r}); import bench_workers as b; "
            f"print(json.dumps(b.run_case(*{args!r})))")
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True, cwd=HERE)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(image: str, name: str, repeats: int) -> dict:
    """Best of ``repeats`` for each (executor, workers), the four configurations interleaved."""
    configs = [("threads", 1), ("threads", 2), ("processes", 1), ("processes", 2)]
    runs: dict[str, list[dict]] = {f"{e}-{w}": [] for e, w in configs}
    loads = []
    for _ in range(repeats):
        for executor, workers in configs:
            loads.append(os.getloadavg()[0])
            runs[f"{executor}-{workers}"].append(in_child(image, name, executor, workers))
    best = {key: min(rows, key=lambda r: r["wall_s"]) for key, rows in runs.items()}
    row = {"function": name, "tiles": best["threads-1"]["tiles"], "repeats": repeats,
           "load_median": statistics.median(loads), "load_max": max(loads)}
    for key, run in best.items():
        row[f"{key}_wall_s"] = run["wall_s"]
        row[f"{key}_cpu_s"] = run["cpu_s"]
        row[f"{key}_stages_s"] = run["stages_s"]
    row["speedup_threads"] = row["threads-1_wall_s"] / row["threads-2_wall_s"]
    row["speedup_processes"] = row["threads-1_wall_s"] / row["processes-2_wall_s"]
    row["speedup_processes_own"] = row["processes-1_wall_s"] / row["processes-2_wall_s"]
    row["processes_vs_threads"] = row["threads-2_wall_s"] / row["processes-2_wall_s"]
    row["cores_one_worker"] = row["threads-1_cpu_s"] / row["threads-1_wall_s"]
    row["speedup_bound"] = usable_cores() / row["cores_one_worker"]
    return row


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def targets(rows: list[dict]) -> list[str]:
    lines = []
    for r in rows:
        if r["function"] in ("sleep", "matmul"):
            best = max(r["speedup_threads"], r["speedup_processes"])
            lines.append(f"{r['function']}: 2 workers / 1 worker = {r['speedup_threads']:.2f} "
                         f"(threads), {r['speedup_processes']:.2f} (processes) — target >= "
                         f"{SPEEDUP_GIL_FREE}: {'met' if best >= SPEEDUP_GIL_FREE else 'missed'}")
        else:
            ok = (r["speedup_processes"] >= SPEEDUP_CC_PROCESSES
                  and r["processes_vs_threads"] >= 1.0)
            lines.append(f"cc: processes 2 workers / threads 1 worker = "
                         f"{r['speedup_processes']:.2f}, processes 2 / threads 2 = "
                         f"{r['processes_vs_threads']:.2f} — target >= {SPEEDUP_CC_PROCESSES} "
                         f"and >= 1.0: {'met' if ok else 'missed'}")
    return lines


def markdown(rows: list[dict]) -> str:
    lines = ["| fn | tiles | wall s: threads 1 / 2 | processes 1 / 2 | CPU s: threads 1 / 2 | "
             "processes 1 / 2 | speed-up threads | "
             "speed-up processes (vs threads 1) | cores one worker keeps busy | bound for 2 "
             "workers | load avg median / max |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['function']} | {r['tiles']} | {r['threads-1_wall_s']:.2f} / "
            f"{r['threads-2_wall_s']:.2f} | {r['processes-1_wall_s']:.2f} / "
            f"{r['processes-2_wall_s']:.2f} | {r['threads-1_cpu_s']:.2f} / "
            f"{r['threads-2_cpu_s']:.2f} | {r['processes-1_cpu_s']:.2f} / "
            f"{r['processes-2_cpu_s']:.2f} | {r['speedup_threads']:.2f} | "
            f"{r['speedup_processes']:.2f} | {r['cores_one_worker']:.2f} | "
            f"{r['speedup_bound']:.2f} | {r['load_median']:.1f} / {r['load_max']:.1f} |")
    return "\n".join(lines + [""] + targets(rows)) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--functions", nargs="+", default=["sleep", "matmul", "cc"])
    parser.add_argument("--quick", action="store_true", help="a 4096² image (16 tiles)")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--data", default=None, help="where to keep the synthetic image")
    args = parser.parse_args()
    side = 4096 if args.quick else 8192
    image = synthetic_nuclei(args.data, side)[1]
    rows = []
    for name in args.functions:
        rows.append(measure(str(image), name, args.repeats))
        print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "workers.json").write_text(json.dumps(rows, indent=1))
    (out / "workers.md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
