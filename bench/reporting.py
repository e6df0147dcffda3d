"""Writing a benchmark's figures: ``NAME.json`` (raw) and ``NAME.md`` (the table) in ``out``."""

from __future__ import annotations

import argparse
import json
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
