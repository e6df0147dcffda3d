"""Writing a benchmark's figures: ``NAME.json`` (raw) and ``NAME.md`` (the table) in ``out``;
and where the benchmarks keep their synthetic images between runs."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def save(out: str | Path, name: str, figures, table: str) -> None:
    """Write ``figures`` as ``out/NAME.json`` and ``table`` as ``out/NAME.md``; print the table."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(figures, indent=1))
    (out / f"{name}.md").write_text(table)
    print(table)


def figure_arguments(doc: str) -> argparse.Namespace:
    """The command line of a docs-figures script: ``[--skip-memory] [--out FOLDER]``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    return parser.parse_args()


def synthetic_nuclei(data: str | None, side: int) -> tuple[Path, Path]:
    """The ``side``² synthetic nuclei image of ``bench_core.py`` in the benchmarks' data
    folder (``<data or the temp folder>/blockbuster-bench``), built on first use: ``(folder,
    image)``."""
    from bench_core import build_image

    folder = Path(data or tempfile.gettempdir()) / "blockbuster-bench"
    folder.mkdir(parents=True, exist_ok=True)
    image = folder / f"nuclei-{side}.zarr"
    build_image(image, side)
    return folder, image
