"""What a halo costs, and how often each input chunk is decoded (issue 20, item 1).

The issue's case: an 8192² float32 zarr with 1024² chunks, ``fn`` = threshold +
``scipy.ndimage.label``, 1024² tiles, ``write_to`` a local zarr. Each run happens in a fresh
process. The timed runs read the image as a user's run does (its path: local chunks are read
from their files, :mod:`blockbuster.builtin.zarr_chunks`); one more run per cell reads it
through :func:`blockbuster.testing.counting_zarr`, which logs every chunk zarr fetches (zarr
decodes each chunk it fetches, so a fetch is a decode) and so goes through zarr. The table gives
wall and CPU time (medians of ``--repeats`` alternated runs) and mean decodes per input chunk for
``overlap`` 0, 16 and left out (the 1-pixel default halo), with one worker, two threads and two
processes.

Usage: python bench/decode_once.py [--side 8192] [--repeats 3] [--cases 1-threads,2-processes]
       [--overlaps 0,16,default] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_core import (  # noqa: E402
    TILE as CHUNK,
    build_image,
    fork_server_cpu_seconds,
    in_child,
    warm_imports,
)
from reporting import save  # noqa: E402

THRESHOLD = 0.4  # the float nuclei are ~0.6-0.8, the background ~0.05


def threshold_label(tile):
    """The issue's fn: a fixed threshold, then face-connected components."""
    import scipy.ndimage

    return scipy.ndimage.label(tile > THRESHOLD)[0]


def run_case(image: str, overlap, workers: int, executor: str, counted: bool = False) -> dict:
    """In a child: one tile_process on the image (``counted``: read through zarr with every
    chunk fetch logged); wall time, and with ``counted`` decodes per chunk."""
    warm_imports()
    import math

    from blockbuster import tile_process
    from blockbuster.testing import ChunkReadLog, counting_zarr

    with tempfile.TemporaryDirectory() as tmp:
        log = ChunkReadLog(Path(tmp) / "reads.log")
        array = counting_zarr(image, log)
        source = array if counted else image
        n_chunks = math.prod(-(-s // c) for s, c in zip(array.shape, array.chunks))
        sys.path.insert(0, str(HERE))
        import decode_once

        if executor == "processes":  # start the fork server before timing, as a session would
            tile_process(array[:CHUNK // 4, :CHUNK // 4], decode_once.threshold_label,
                         executor=executor, workers=workers, compute=True)
        log.clear()
        t0, cpu0 = time.perf_counter(), cpu_seconds()
        _, stats = tile_process(source, decode_once.threshold_label, tile_shape=(CHUNK, CHUNK),
                                overlap=overlap, executor=executor, workers=workers,
                                write_to=Path(tmp) / "labels.zarr", return_stats=True)
        wall = time.perf_counter() - t0
        time.sleep(0.2)  # the fork server reaps its finished workers
        cpu = cpu_seconds() - cpu0
        reads = log.reads()
    return {"wall_s": wall, "cpu_s": cpu, "in_fn_s": stats.seconds_in_fn,
            "objects": stats.n_objects, "segment_s": stats.stage_seconds["segment"],
            "decodes_per_chunk": sum(reads.values()) / n_chunks if counted else None,
            "most_decodes": max(reads.values()) if counted else None, "tiles": stats.n_tiles}


def cpu_seconds() -> float:
    """User + system CPU time of this process, its finished children, and the fork server's
    worker processes (its children, reaped by it): less disturbed than wall time by other jobs
    on a shared machine."""
    import resource

    return sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(resource.RUSAGE_SELF),
                                                  resource.getrusage(resource.RUSAGE_CHILDREN))
               ) + fork_server_cpu_seconds()


OVERLAPS = {"0": 0, "16": 16, "default": None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", default="1-threads,2-threads,2-processes",
                        help="comma-separated WORKERS-EXECUTOR")
    parser.add_argument("--overlaps", default=",".join(OVERLAPS),
                        help="comma-separated: 0, 16, default")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--data", default=tempfile.gettempdir())
    args = parser.parse_args()
    image = Path(args.data) / "blockbuster-bench" / f"nuclei-f32-{args.side}.zarr"
    image.parent.mkdir(parents=True, exist_ok=True)
    build_image(image, args.side, "float32")
    rows = []
    for case in args.cases.split(","):
        workers, executor = case.split("-")
        runs = {name: [] for name in args.overlaps.split(",")}
        for _ in range(args.repeats):
            for name in runs:
                runs[name].append(in_child("run_case", str(image), OVERLAPS[name], int(workers),
                                           executor, module="decode_once"))
        counts = {name: in_child("run_case", str(image), OVERLAPS[name], int(workers), executor,
                                 True, module="decode_once") for name in runs}
        for name, found in runs.items():
            rows.append({"workers": int(workers), "executor": executor, "overlap": name,
                         "wall_s": statistics.median(r["wall_s"] for r in found),
                         "cpu_s": statistics.median(r["cpu_s"] for r in found),
                         "segment_s": statistics.median(r["segment_s"] for r in found),
                         "in_fn_s": statistics.median(r["in_fn_s"] for r in found),
                         "decodes_per_chunk": counts[name]["decodes_per_chunk"],
                         "most_decodes": counts[name]["most_decodes"],
                         "objects": found[0]["objects"], "walls": [r["wall_s"] for r in found]})
        case_rows = rows[-len(runs):]
        base = next((r for r in case_rows if r["overlap"] == "0"), case_rows[0])
        for r in case_rows:
            r["vs_overlap_0"] = r["wall_s"] / base["wall_s"]
            r["cpu_vs_overlap_0"] = r["cpu_s"] / base["cpu_s"]
        print(json.dumps(case_rows, indent=1), flush=True)
    save(args.out, f"decode-once-{args.side}", rows, table(rows, args))


def table(rows: list[dict], args) -> str:
    lines = [f"{args.side}² float32 zarr, {CHUNK}² chunks, threshold + scipy.ndimage.label, "
             f"{CHUNK}² tiles, write_to a local zarr; medians of {args.repeats} alternated runs",
             "", "| workers | overlap | wall s | x overlap 0 | CPU s | x overlap 0 | segment s | "
             "in fn s | decodes per chunk (most) | objects |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['workers']} {r['executor']} | {r['overlap']} | {r['wall_s']:.2f} | "
              f"{r['vs_overlap_0']:.2f} | {cpu(r)} | "
              f"{r['segment_s']:.2f} | {r['in_fn_s']:.2f} | "
              f"{r['decodes_per_chunk']:.2f} ({r['most_decodes']}) | {r['objects']} |"
              for r in rows]
    return "\n".join(lines) + "\n"


def cpu(row: dict) -> str:
    """CPU seconds (the worker processes' included) and their ratio."""
    return f"{row['cpu_s']:.2f} | {row['cpu_vs_overlap_0']:.2f}"


if __name__ == "__main__":
    main()
