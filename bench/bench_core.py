"""Core engine benchmark: threshold + connected components with 1024² tiles.

Builds synthetic nuclei-like uint16 zarr images (8192² and 16384², tile by tile so building them
never holds the image), then for each size runs ``tile_process`` in a fresh process and reports:

- total wall time and time inside ``fn`` (summed over workers),
- time outside ``fn`` vs a plain zarr read + write of the same data — the image copied chunk
  by chunk (target: <= 1.5x). The headline ratio is like for like: against the copy with zarr's
  empty-chunk check off, as blockbuster's writer does; the ratio against zarr's default copy
  (which also compares every chunk with the fill value) is reported next to it,
- peak RSS of the run: the child process's own high-water mark (``VmHWM``, see
  :mod:`blockbuster.memory`; target: the 16384² run <= 1.2x the 8192² run),
- the 1 -> 2 worker speed-up.

``--default-halo`` measures instead what exactness by default costs: the same runs (one
worker) with ``overlap=0`` (the touch rule) and with ``overlap`` left out (the 1-pixel default
halo and the overlap rule), alternated ``--repeats`` times; medians of wall and CPU time (the
run's process: threads are all in it).

Usage: python bench/bench_core.py [--quick] [--default-halo] [--repeats N] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TILE = 1024
THRESHOLD = 20000  # the synthetic nuclei are ~0.6-0.8 of 52428; background ~2600


def build_image(path: Path, side: int, dtype: str = "uint16") -> None:
    """Synthetic nuclei in TILE² chunks, written chunk by chunk; ``float32`` scales them to
    0..1."""
    import numpy as np
    import zarr

    from blockbuster.synthetic import nuclei

    if (path / "zarr.json").exists():
        return
    array = zarr.create_array(store=str(path), shape=(side, side), chunks=(TILE, TILE),
                              dtype=dtype)
    n = side // TILE
    for i in range(n):
        for j in range(n):
            block = nuclei((TILE, TILE), density=0.003, seed=i * n + j)
            if np.dtype(dtype).kind == "f":
                block = block.astype(dtype) / 65535
            array[i * TILE:(i + 1) * TILE, j * TILE:(j + 1) * TILE] = block


def warm_imports() -> None:
    """Import what a run uses before timing it: a one-off cost per process, not per image."""
    import dask.array  # noqa: F401  (the lazy result)
    import fastremap  # noqa: F401
    import numcodecs  # noqa: F401
    import scipy.ndimage  # noqa: F401
    import scipy.sparse.csgraph  # noqa: F401
    import zarr  # noqa: F401

    import blockbuster.pipeline  # noqa: F401


def run_case(image: str, workers: int, executor: str, overlap: int | None = 0) -> dict:
    """Run in this process (called in a child): one tile_process, its stats and peak RSS.

    ``overlap=None`` leaves it to blockbuster (the default halo)."""
    warm_imports()
    from blockbuster import tile_process
    from blockbuster.builtin.segmenters import Threshold
    from blockbuster.memory import peak_rss_mb

    with tempfile.TemporaryDirectory() as tmp:
        t0, cpu0 = time.perf_counter(), time.process_time()
        _, stats = tile_process(image, Threshold(threshold=THRESHOLD), tile_shape=(TILE, TILE),
                                overlap=overlap, executor=executor, workers=workers,
                                write_to=Path(tmp) / "labels.zarr", return_stats=True)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"wall_s": wall, "cpu_s": cpu, "in_fn_s": stats.seconds_in_fn,
            "objects": stats.n_objects, "merge": "overlap" if overlap != 0 else "touch",
            "stages_s": stats.stage_seconds, "peak_rss_mb": peak_rss_mb(),
            "peak_rss_worker_mb": stats.worker_peak_rss_mb, "tiles": stats.n_tiles}


def plain_read_write(image: str, empty_chunk_check: bool = True) -> dict:
    """Copy the image chunk by chunk into a new zarr with the output's codec (one thread).

    The I/O floor of any tool that reads the image once and writes one array of its shape.
    """
    import zarr

    from blockbuster.builtin.zarr_writer import label_compressors

    source = zarr.open_array(image, mode="r")
    with tempfile.TemporaryDirectory() as tmp:
        target = zarr.create_array(store=f"{tmp}/copy.zarr", shape=source.shape,
                                   chunks=source.chunks, dtype=source.dtype,
                                   compressors=label_compressors(),
                                   config={"write_empty_chunks": not empty_chunk_check})
        t0 = time.perf_counter()
        for i in range(0, source.shape[0], TILE):
            for j in range(0, source.shape[1], TILE):
                target[i:i + TILE, j:j + TILE] = source[i:i + TILE, j:j + TILE]
        return {"wall_s": time.perf_counter() - t0}


def import_floor() -> dict:
    """Run in a child: the peak RSS of a process that only imported what a run imports."""
    warm_imports()
    from blockbuster.memory import peak_rss_mb

    return {"peak_rss_mb": peak_rss_mb()}


def fork_server_cpu_seconds() -> float:
    """CPU time of the running fork server and its reaped children (the processes executor's
    workers), read from ``/proc``; 0 when none runs."""
    import os
    from multiprocessing import forkserver

    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
    if pid is None:
        return 0.0
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # u, s, cu, cs


def in_child(function: str, *args, module: str = "bench_core") -> dict:
    """Run ``module.function(*args)`` in a fresh Python process (so peak RSS is its own)."""
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"import {module} as b; print(json.dumps(b.{function}(*{args!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2048² and 4096² only")
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--data", default=None, help="where to keep the synthetic images")
    parser.add_argument("--default-halo", action="store_true",
                        help="the cost of the default 1-pixel halo against overlap=0")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sides = [2048, 4096] if args.quick else [8192, 16384]
    data = Path(args.data or tempfile.gettempdir()) / "blockbuster-bench"
    data.mkdir(parents=True, exist_ok=True)
    if args.default_halo:
        return default_halo_cost(sides, data, Path(args.out), args.repeats)
    rows = []
    floor = in_child("import_floor")["peak_rss_mb"]
    for side in sides:
        image = data / f"nuclei-{side}.zarr"
        build_image(image, side)
        plain = in_child("plain_read_write", str(image))
        plain_unchecked = in_child("plain_read_write", str(image), False)
        one = in_child("run_case", str(image), 1, "threads")
        two = in_child("run_case", str(image), 2, "threads")
        two_p = in_child("run_case", str(image), 2, "processes")
        outside = one["wall_s"] - one["in_fn_s"]
        rows.append({
            "side": side, "tiles": one["tiles"], "objects": one["objects"],
            "plain_read_write_s": plain["wall_s"],
            "plain_read_write_unchecked_s": plain_unchecked["wall_s"],
            "total_1_worker_s": one["wall_s"], "in_fn_1_worker_s": one["in_fn_s"],
            "outside_fn_s": outside, "outside_vs_plain": outside / plain["wall_s"],
            "outside_vs_plain_unchecked": outside / plain_unchecked["wall_s"],
            "total_2_threads_s": two["wall_s"], "speedup_threads": one["wall_s"] / two["wall_s"],
            "total_2_processes_s": two_p["wall_s"],
            "speedup_processes": one["wall_s"] / two_p["wall_s"],
            "peak_rss_mb_1_worker": one["peak_rss_mb"], "peak_rss_mb_2_threads": two["peak_rss_mb"],
            "peak_rss_mb_2_processes_parent": two_p["peak_rss_mb"],
            "peak_rss_mb_2_processes_worker": two_p["peak_rss_worker_mb"],
            "stages_1_worker_s": one["stages_s"],
        })
        print(json.dumps(rows[-1], indent=1), flush=True)
    rss_ratio = rows[1]["peak_rss_mb_2_threads"] / rows[0]["peak_rss_mb_2_threads"]
    summary = {"rows": rows, "rss_ratio_large_vs_small": rss_ratio, "import_floor_rss_mb": floor}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "core.json").write_text(json.dumps(summary, indent=1))
    (out / "core.md").write_text(markdown(summary))
    print(markdown(summary))


def default_halo_cost(sides: list[int], data: Path, out: Path, repeats: int) -> None:
    """One worker, ``overlap=0`` against ``overlap`` left out, alternated; medians per side."""
    import statistics

    rows = []
    for side in sides:
        image = data / f"nuclei-{side}.zarr"
        build_image(image, side)
        runs = {0: [], None: []}
        for _ in range(repeats):
            for overlap in runs:
                runs[overlap].append(in_child("run_case", str(image), 1, "threads", overlap))
        row = {"side": side, "tiles": runs[0][0]["tiles"], "repeats": repeats}
        for overlap, name in ((0, "touch"), (None, "default")):
            row[f"objects_{name}"] = runs[overlap][0]["objects"]
            row[f"wall_{name}_s"] = statistics.median(r["wall_s"] for r in runs[overlap])
            row[f"cpu_{name}_s"] = statistics.median(r["cpu_s"] for r in runs[overlap])
            row[f"in_fn_{name}_s"] = statistics.median(r["in_fn_s"] for r in runs[overlap])
            for stage in ("segment", "merge", "relabel"):
                row[f"{stage}_{name}_s"] = statistics.median(
                    r["stages_s"][stage] for r in runs[overlap])
        row["cost"] = row["wall_default_s"] / row["wall_touch_s"] - 1
        row["cpu_cost"] = row["cpu_default_s"] / row["cpu_touch_s"] - 1
        rows.append(row)
        print(json.dumps(row, indent=1), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "core-default-halo.json").write_text(json.dumps({"rows": rows}, indent=1))
    (out / "core-default-halo.md").write_text(halo_markdown(rows))
    print(halo_markdown(rows))


def halo_markdown(rows: list[dict]) -> str:
    lines = ["| side | tiles | objects touch / default | wall s: overlap=0 / default | cost | "
             "CPU s: overlap=0 / default | CPU cost | "
             "segment s | merge s | relabel s (each overlap=0 / default) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['side']} | {r['tiles']} | {r['objects_touch']} / {r['objects_default']} | "
            f"{r['wall_touch_s']:.2f} / {r['wall_default_s']:.2f} | {r['cost']:+.0%} | "
            f"{r['cpu_touch_s']:.2f} / {r['cpu_default_s']:.2f} | {r['cpu_cost']:+.0%} | "
            + " | ".join(f"{r[f'{s}_touch_s']:.2f} / {r[f'{s}_default_s']:.2f}"
                         for s in ("segment", "merge", "relabel")) + " |")
    return "\n".join(lines) + "\n"


def met(value: float, limit: float) -> str:
    return "met" if value <= limit else "missed"


def markdown(summary: dict) -> str:
    """The table: the outside/plain ratio like for like (copy without zarr's empty-chunk
    check, as blockbuster's writer) with its target status; zarr's default copy in brackets."""
    lines = ["| side | tiles | plain copy s, no empty-chunk check (zarr default) | total 1w s | "
             "in fn s | outside fn / plain copy (vs zarr default) | target <= 1.5 | 2 threads s | "
             "speed-up thr | 2 procs s | speed-up proc | peak RSS MB: 1w / 2 thr / 2 procs "
             "parent / worker |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        lines.append(f"| {r['side']} | {r['tiles']} | {r['plain_read_write_unchecked_s']:.2f} "
                     f"({r['plain_read_write_s']:.2f}) | "
                     f"{r['total_1_worker_s']:.2f} | {r['in_fn_1_worker_s']:.2f} | "
                     f"{r['outside_vs_plain_unchecked']:.2f} ({r['outside_vs_plain']:.2f}) | "
                     f"{met(r['outside_vs_plain_unchecked'], 1.5)} | "
                     f"{r['total_2_threads_s']:.1f} | "
                     f"{r['speedup_threads']:.2f} | {r['total_2_processes_s']:.1f} | "
                     f"{r['speedup_processes']:.2f} | {r['peak_rss_mb_1_worker']:.0f} / "
                     f"{r['peak_rss_mb_2_threads']:.0f} / "
                     f"{r['peak_rss_mb_2_processes_parent']:.0f} / "
                     f"{r['peak_rss_mb_2_processes_worker']:.0f} |")
    ratio = summary["rss_ratio_large_vs_small"]
    lines.append(f"\nPeak RSS is each process's own VmHWM. A process that only imports what a run "
                 f"imports peaks at {summary['import_floor_rss_mb']:.0f} MB.")
    lines.append(f"RSS ratio largest/smallest (2 threads): {ratio:.2f} (target <= 1.2: "
                 f"{met(ratio, 1.2)})")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
