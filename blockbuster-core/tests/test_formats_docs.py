"""The Python examples of the format pages run as written (blocks in order, one namespace).

Blocks fenced ```` ```py ```` (napari, and the ``table=`` run) are not run here."""

import re
import warnings
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
PAGES = ["formats-ome-zarr.md", "formats-tiff.md", "formats-table.md"]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


@pytest.mark.parametrize("page", PAGES)
def test_format_page_examples_run(page, tmp_path, monkeypatch):
    if not (DOCS / page).exists():
        pytest.skip(f"{page} not found")
    pytest.importorskip("tifffile")
    pytest.importorskip("pandas")
    if page == "formats-ome-zarr.md":
        pytest.importorskip("ome_zarr")
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "docs_example"}
    blocks = BLOCK.findall((DOCS / page).read_text())
    assert blocks, f"{page} has no runnable example"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for number, code in enumerate(blocks):
            exec(compile(code, f"<{page} example {number}>", "exec"), namespace)
