"""Peak memory of the ``bioio`` reader reading a >= 2 GiB OME-TIFF tile by tile.

Writes a tiled (512² TIFF tiles) BigTIFF OME-TIFF of 128 z-planes of 4096² uint8 (2 GiB) with
tifffile, then, in a fresh process per case, opens it with ``reader="bioio"`` (bioio-ome-tiff)
and reads every 1024² tile of every plane (2,048 reads), serially or from 2 threads. The empty
run is the same process after opening the file and reading one tile (imports, dask graph,
OME-XML parsed); the figure is how far that process's own peak RSS then rose
(:func:`blockbuster.memory.peak_baseline`). The sum of all tiles is checked against the file's.

bioio's unit of reading is a plane here (``chunk_dims="YX"``; bioio-ome-tiff decodes a whole
TIFF page per chunk), so the growth is about one 16 MiB plane per reading thread, not one tile.

Usage: python bench/bioio_memory.py [--planes 128] [--side 4096] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from reporting import save  # noqa: E402

TIFF_TILE, READ_TILE = 512, 1024
LIMIT_MIB = 300

READ_SCRIPT = r"""
import json, sys, time
from concurrent.futures import ThreadPoolExecutor
from blockbuster.memory import peak_baseline, peak_rss_bytes, rss_bytes
from blockbuster.registry import Registry

path, threads, tile = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
reader = Registry().open_image(path, reader="bioio")
planes, side = reader.shape[2], reader.shape[-1]  # t, c, z, y, x
def region(z, y, x):
    return (slice(0, 1), slice(0, 1), slice(z, z + 1), slice(y, y + tile), slice(x, x + tile))
reader.read(region(0, 0, 0))  # the empty run: everything but the reads
empty = rss_bytes()
baseline = peak_baseline()
started = time.perf_counter()
regions = [region(z, y, x) for z in range(planes) for y in range(0, side, tile)
           for x in range(0, side, tile)]
def total(part):
    return sum(int(reader.read(r).sum(dtype="uint64")) for r in part)
with ThreadPoolExecutor(threads) as pool:
    checksum = sum(pool.map(total, [regions[i::threads] for i in range(threads)]))
print(json.dumps({"reads": len(regions), "checksum": checksum, "empty_rss": empty,
                  "baseline": baseline, "peak": peak_rss_bytes(), "plugin": reader.plugin,
                  "seconds": time.perf_counter() - started}))
"""


def tile_value(plane: int, index: int) -> int:
    return (plane * 7 + index * 3) % 251


def write_ome_tiff(path: Path, planes: int, side: int) -> tuple[int, int]:
    """Write the file tile by tile (never whole in memory); its size and the sum of its voxels."""
    import tifffile

    per_plane = (side // TIFF_TILE) ** 2

    def tiles():
        for plane in range(planes):
            for index in range(per_plane):
                yield np.full((TIFF_TILE, TIFF_TILE), tile_value(plane, index), np.uint8)

    tifffile.imwrite(path, tiles(), shape=(planes, side, side), dtype=np.uint8,
                     tile=(TIFF_TILE, TIFF_TILE), bigtiff=True, ome=True,
                     metadata={"axes": "ZYX", "PhysicalSizeZ": 1.0, "PhysicalSizeY": 0.325,
                               "PhysicalSizeX": 0.325})
    checksum = sum(tile_value(p, i) for p in range(planes) for i in range(per_plane))
    return path.stat().st_size, checksum * TIFF_TILE * TIFF_TILE


def measure(path: Path, threads: int) -> dict:
    result = subprocess.run([sys.executable, "-c", READ_SCRIPT, str(path), str(threads),
                             str(READ_TILE)], capture_output=True, text=True, timeout=3600)
    if result.returncode:
        raise SystemExit(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--planes", type=int, default=128)
    parser.add_argument("--side", type=int, default=4096)
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.ome.tif"
        started = time.perf_counter()
        size, checksum = write_ome_tiff(path, args.planes, args.side)
        print(f"wrote {size / 2**30:.2f} GiB in {time.perf_counter() - started:.0f} s")
        for threads in (1, 2):
            found = measure(path, threads)
            assert found["checksum"] == checksum, "the tiles read differ from the file"
            grown = (found["peak"] - found["baseline"]) / 2**20
            rows.append({"file_gib": size / 2**30, "planes": args.planes, "side": args.side,
                         "threads": threads, "reads": found["reads"],
                         "empty_rss_mib": found["empty_rss"] / 2**20, "grown_mib": grown,
                         "seconds": found["seconds"], "plugin": found["plugin"]})
    lines = ["| file | image | reads | threads | RSS of the empty run | peak growth over it "
             f"(limit {LIMIT_MIB} MiB) | read time |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['file_gib']:.2f} GiB OME-TIFF ({r['plugin']}) | {r['planes']} x "
              f"{r['side']}² uint8, 512² TIFF tiles | {r['reads']} of {READ_TILE}² | "
              f"{r['threads']} | {r['empty_rss_mib']:.0f} MiB | {r['grown_mib']:.0f} MiB | "
              f"{r['seconds']:.0f} s |" for r in rows]
    save(args.out, "bioio_memory", rows, "\n".join(lines) + "\n")
    over = [r for r in rows if r["grown_mib"] >= LIMIT_MIB]
    if over:
        raise SystemExit(f"peak grew by {LIMIT_MIB} MiB or more: {over}")


if __name__ == "__main__":
    main()
