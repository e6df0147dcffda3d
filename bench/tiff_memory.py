"""The figure of docs/formats-tiff.md: how much a tiled BigTIFF raises the peak memory.

Writes a tiled BigTIFF of uint8 blobs (512² TIFF tiles) and segments it with 512² tiles in a
fresh process, after a warm-up run; the figure is the growth of that process's own peak RSS
(:mod:`blockbuster.memory`) from its memory just before the run. The same measurement as
``blockbuster-core/tests/test_formats_tiff.py`` (whose helpers it runs), which asserts the
growth stays under a third of the file.

Usage: python bench/tiff_memory.py [--quick] [--out bench/results]
(64 MiB serial and 400 MiB with 2 threads; --quick: the 64 MiB file only).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "blockbuster-core" / "tests"))
from test_formats_tiff import run_memory_check  # noqa: E402

CASES = [(8192, "serial"), (20480, "threads")]  # 64 MiB and 400 MiB files
WORKERS = {"serial": "serial", "threads": "2 threads"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    rows = []
    for side, executor in CASES[:1] if args.quick else CASES:
        with tempfile.TemporaryDirectory() as tmp:
            size, grown = run_memory_check(Path(tmp), side, executor)
        rows.append({"side": side, "executor": executor, "file_mib": size / 2**20,
                     "grown_mib": grown / 2**20})
    lines = ["| file | image | tiles | executor | peak RSS growth |", "|---|---|---|---|---|"]
    lines += [f"| {r['file_mib']:.0f} MiB | {r['side']}² uint8 | {(r['side'] // 512) ** 2} "
              f"of 512² | {WORKERS[r['executor']]} | {r['grown_mib']:.0f} MiB |" for r in rows]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tiff_memory.json").write_text(json.dumps(rows, indent=1))
    (out / "tiff_memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
