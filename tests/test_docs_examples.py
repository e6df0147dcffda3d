"""Every Python example in the core documentation pages runs as written."""

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = ["index.md", "getting-started.md", "tiling-and-merging.md", "plugin-authoring.md",
         "configuration.md"]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def examples():
    for page in PAGES:
        for number, code in enumerate(BLOCK.findall((DOCS / page).read_text())):
            yield pytest.param(code, id=f"{page}#{number}")


@pytest.mark.parametrize("code", list(examples()))
def test_example_runs(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "<docs example>", "exec"), {"__name__": "docs_example"})
