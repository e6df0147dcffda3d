"""Scale benchmark: memory flat as the image grows, and the per-tile overhead with 10,000+ tiles.

1. Peak RSS (each process's own ``VmHWM``, :mod:`blockbuster.memory`) of the parent and of the
   worker processes for 8192², 16384² and 32768² nuclei images,
   same 1024² tiling, ``processes`` executor with 2 workers (target: largest <= 1.2x smallest),
   next to the floor: the peak of a process that only imports what a run imports. The parent's
   growth above that floor is what the parent holds for the run.
2. A 3200² image cut into 32² tiles (10,000 tiles), a trivial threshold: time outside ``fn``
   per tile (target: <= 5 ms per tile on this machine).
3. ``--dense``: millions of objects instead: 2 x 2 squares on a 4-pixel grid (16.8 million at
   16384², 67 million at 32768²), 2048² tiles, the same ``processes`` run: the parent's peak
   RSS must stay flat while the object count grows four-fold (target: largest <= 1.2x
   smallest).

Usage: python bench/bench_scale.py [--quick] [--sides 8192 16384] [--no-overhead] [--dense]
       [--out bench/results]
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

DENSE_TILE = 2048


def build_dense_image(path: Path, side: int) -> None:
    """A uint8 zarr of 2 x 2 squares of 1 on a 4-pixel grid, (side / 4)² objects, written
    chunk by chunk (every chunk the same pattern)."""
    import numpy as np
    import zarr

    if (path / "zarr.json").exists():
        return
    cell = np.zeros((4, 4), np.uint8)
    cell[:2, :2] = 1
    chunk = np.tile(cell, (DENSE_TILE // 4, DENSE_TILE // 4))
    array = zarr.create_array(store=str(path), shape=(side, side), chunks=(DENSE_TILE,) * 2,
                              dtype=np.uint8)
    for i in range(0, side, DENSE_TILE):
        for j in range(0, side, DENSE_TILE):
            array[i:i + DENSE_TILE, j:j + DENSE_TILE] = chunk


def dense_run(image: str) -> dict:
    """Run in a child: the dense image with 2048² tiles, processes, 2 workers."""
    from blockbuster import tile_process
    from blockbuster.builtin.segmenters import Threshold
    from blockbuster.memory import peak_rss_mb

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        _, stats = tile_process(image, Threshold(threshold=0), tile_shape=(DENSE_TILE,) * 2,
                                executor="processes", workers=2,
                                write_to=Path(tmp) / "labels.zarr", return_stats=True)
        wall = time.perf_counter() - t0
    return {"wall_s": wall, "objects": stats.n_objects, "tiles": stats.n_tiles,
            "stages_s": stats.stage_seconds, "peak_rss_mb": peak_rss_mb(),
            "peak_rss_worker_mb": stats.worker_peak_rss_mb}


def dense(sides: list[int], data: Path, out: Path) -> None:
    rows = []
    for side in sides:
        image = data / f"dense-{side}.zarr"
        build_dense_image(image, side)
        rows.append({"side": side, **in_child("dense_run", str(image), module="bench_scale")})
        print(json.dumps(rows[-1]), flush=True)
    ratio = rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]
    lines = ["| side | tiles | objects | wall s | parent peak RSS MB | worker peak RSS MB |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['side']} | {r['tiles']} | {r['objects']:,} | {r['wall_s']:.1f} | "
              f"{r['peak_rss_mb']:.0f} | {r['peak_rss_worker_mb']:.0f} |" for r in rows]
    lines.append(f"\nParent RSS ratio largest/smallest: {ratio:.2f} (target <= 1.2: "
                 f"{met(ratio, 1.2)})")
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale-dense.json").write_text(json.dumps(rows, indent=1))
    (out / "scale-dense.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def many_tiles(side: int, tile: int, executor: str, workers: int) -> dict:
    """Run in a child: tile_process over side² with tile² tiles; per-tile overhead."""

    from blockbuster import tile_process
    from blockbuster.builtin.segmenters import Threshold
    from blockbuster.memory import peak_rss_mb
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
    parser.add_argument("--dense", action="store_true",
                        help="millions of 2 x 2 objects instead (default sides 16384 32768)")
    args = parser.parse_args()
    data = Path(args.data or tempfile.gettempdir()) / "blockbuster-bench"
    data.mkdir(parents=True, exist_ok=True)
    if args.dense:
        return dense(args.sides or [16384, 32768], data, Path(args.out))
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
