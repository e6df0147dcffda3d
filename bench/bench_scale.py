"""Scale benchmark: memory flat as the image grows, and the per-tile overhead with 10,000+ tiles.

1. Peak RSS (each process's own ``VmHWM``, :mod:`blockbuster.memory`) of the parent and of the
   worker processes for 8192², 16384² and 32768² nuclei images,
   same 1024² tiling, ``processes`` executor with 2 workers (target: largest <= 1.2x smallest),
   next to the floor: the peak of a process that only imports what a run imports. The parent's
   growth above that floor is what the parent holds for the run.
2. A 3200² image cut into 32² tiles (10,000 tiles), a trivial threshold: time outside ``fn``
   per tile (target: <= 5 ms per tile on this machine).

Usage: python bench/bench_scale.py [--quick] [--sides 8192 16384] [--no-overhead] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_core import THRESHOLD, build_image, in_child, met  # noqa: E402


def many_tiles(side: int, tile: int, executor: str, workers: int) -> dict:
    """Run in a child: tile_process over side² with tile² tiles; per-tile overhead."""
    import numpy as np

    from blockbuster import tile_process
    from blockbuster.memory import peak_rss_mb
    from blockbuster.builtin.segmenters import Threshold
    from blockbuster.synthetic import nuclei

    image = nuclei((side, side), density=0.003, seed=3)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        _, stats = tile_process(image, Threshold(threshold=THRESHOLD), tile_shape=(tile, tile),
                                executor=executor, workers=workers,
                                write_to=Path(tmp) / "l.zarr", return_stats=True)
        wall = time.perf_counter() - t0
    return {"tiles": stats.n_tiles, "wall_s": wall, "in_fn_s": stats.seconds_in_fn,
            "overhead_ms_per_tile": 1000 * (wall - stats.seconds_in_fn / workers) / stats.n_tiles,
            "stages_s": stats.stage_seconds, "objects": stats.n_objects,
            "peak_rss_mb": peak_rss_mb()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller images, 2,500 tiles")
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--data", default=None)
    parser.add_argument("--sides", type=int, nargs="+", default=None,
                        help="image sides of the memory part (default: 8192 16384 32768)")
    parser.add_argument("--no-overhead", action="store_true",
                        help="the memory part only, not the 10,000-tile overhead run")
    args = parser.parse_args()
    data = Path(args.data or tempfile.gettempdir()) / "blockbuster-bench"
    data.mkdir(parents=True, exist_ok=True)
    sides = args.sides or ([2048, 4096, 8192] if args.quick else [8192, 16384, 32768])
    memory = []
    floor = in_child("import_floor")["peak_rss_mb"]
    for side in sides:
        image = data / f"nuclei-{side}.zarr"
        build_image(image, side)
        run = in_child("run_case", str(image), 2, "processes")
        memory.append({"side": side, "tiles": run["tiles"], "wall_s": run["wall_s"],
                       "parent_rss_mb": run["peak_rss_mb"],
                       "worker_rss_mb": run["peak_rss_worker_mb"]})
        print(json.dumps(memory[-1]), flush=True)
    parent_ratio = memory[-1]["parent_rss_mb"] / memory[0]["parent_rss_mb"]
    worker_ratio = memory[-1]["worker_rss_mb"] / memory[0]["worker_rss_mb"]
    side, tile = (1600, 32) if args.quick else (3200, 32)
    overhead = {} if args.no_overhead else {
        f"{ex}-{w}": in_child("many_tiles", side, tile, ex, w, module="bench_scale")
        for ex, w in [("serial", 1), ("threads", 2)]}
    for name, row in overhead.items():
        print(name, json.dumps(row), flush=True)
    summary = {"memory": memory, "import_floor_rss_mb": floor, "parent_rss_ratio": parent_ratio,
               "worker_rss_ratio": worker_ratio, "overhead": overhead}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale.json").write_text(json.dumps(summary, indent=1))
    lines = ["| side | tiles | wall s | parent peak RSS MB | parent above import floor MB | "
             "worker peak RSS MB |", "|---|---|---|---|---|---|"]
    lines += [f"| {m['side']} | {m['tiles']} | {m['wall_s']:.1f} | {m['parent_rss_mb']:.0f} | "
              f"{m['parent_rss_mb'] - floor:.0f} | {m['worker_rss_mb']:.0f} |" for m in memory]
    lines.append(f"\nPeak RSS is each process's own VmHWM; import floor {floor:.0f} MB (a process "
                 "that only imports what a run imports).")
    lines.append(f"RSS ratio largest/smallest: parent {parent_ratio:.2f}, worker "
                 f"{worker_ratio:.2f} (target <= 1.2: {met(max(parent_ratio, worker_ratio), 1.2)})")
    for name, row in overhead.items():
        lines.append(f"{name}: {row['tiles']} tiles, {row['wall_s']:.1f} s, "
                     f"{row['overhead_ms_per_tile']:.2f} ms/tile outside fn (target <= 5: "
                     f"{met(row['overhead_ms_per_tile'], 5)}), "
                     f"peak RSS {row['peak_rss_mb']:.0f} MB")
    (out / "scale.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
