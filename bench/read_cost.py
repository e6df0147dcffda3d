"""What assembling padded tiles costs on the read path alone (issue 20, item 1).

On the case of ``decode_once.py`` (8192² float32 zarr, 1024² chunks and tiles; built by it
in ``--data``), the CPU seconds of reading the 64 tiles, without ``fn`` or writes: the cores
read straight from their chunks (overlap 0), and the windows with a 16-pixel halo through a
block cache told every read, assembled from the decoded blocks or with each tile's own block
decoded straight into its buffer (``ArrayReader.read_into``). Medians of ``--repeats``
alternated rounds in this process.

Usage: python bench/read_cost.py [--repeats 5] [--data /tmp]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import zarr

from blockbuster.builtin.arrays import ArrayReader
from blockbuster.image import ImageView
from blockbuster.read_cache import plan_block_reads
from blockbuster.tiling import TileGrid

TILE, HALO = 1024, 16


def read_cores(view: ImageView) -> None:
    grid = TileGrid(view.shape, (TILE, TILE), (0, 0))
    for index in range(len(grid)):
        view.read(grid.tile(index).core)


def read_windows(view: ImageView, into: bool) -> None:
    ArrayReader.reads_into = property(lambda self: into)  # this process only
    grid = TileGrid(view.shape, (TILE, TILE), (HALO, HALO))
    plan = plan_block_reads(view, grid, max_bytes=256 * 2**20, shared=True)
    plan.cache.expect(grid.tile(index).padded for index in plan.order)
    for index in plan.order:
        plan.cache.read(view, grid.tile(index).padded)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data", default=tempfile.gettempdir())
    args = parser.parse_args()
    image = Path(args.data) / "blockbuster-bench" / "nuclei-f32-8192.zarr"
    if not image.exists():
        raise SystemExit(f"{image} is missing: run bench/decode_once.py first")
    view = ImageView.open(ArrayReader(zarr.open_array(str(image), mode="r")))
    cases = {"overlap 0, cores read directly": lambda: read_cores(view),
             f"overlap {HALO}, assembled from blocks": lambda: read_windows(view, False),
             f"overlap {HALO}, own block decoded into the buffer": lambda: read_windows(view, True)}
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, read in cases.items():
            start = time.process_time()
            read()
            seconds[name].append(time.process_time() - start)
    base = statistics.median(seconds["overlap 0, cores read directly"])
    print("| read | CPU s | extra over overlap 0 |\n|---|---|---|")
    for name, found in seconds.items():
        median = statistics.median(found)
        print(f"| {name} | {median:.3f} | {median - base:+.3f} |")


if __name__ == "__main__":
    main()
