"""Every Python example in the documentation pages runs as written (a page's blocks in order,
sharing one namespace, as a reader would paste them). Fragments that need the reader's own
objects (``my_model``) are fenced as ```` ```py ```` and are not run."""

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = ["index.md", "getting-started.md", "tiling-and-merging.md", "plugin-authoring.md",
         "configuration.md", "resume.md", "remote.md", "cluster.md", "torch.md",
         "stardist.md", "cellpose.md", "gpu.md", "bioio.md",
         "bioimageio.md", "measure.md"]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


@pytest.mark.parametrize("page", PAGES)
def test_examples_run(page, tmp_path, monkeypatch):
    for folder in ("examples", "blockbuster-cellpose", "blockbuster-stardist", "blockbuster-torch",
                   "blockbuster-bioimageio"):
        (tmp_path / folder).symlink_to(DOCS.parent / folder)  # paths relative to the repo work
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "docs_example"}
    blocks = BLOCK.findall((DOCS / page).read_text())
    assert blocks, f"{page} has no runnable example"
    for number, code in enumerate(blocks):
        exec(compile(code, f"<{page} example {number}>", "exec"), namespace)


def test_readme_shows_the_three_lines_the_docs_run():
    """The README's Cellpose / StarDist / PyTorch lines are the getting-started page's, whose
    StarDist and PyTorch lines run above (Cellpose's runs on the Cellpose page)."""
    readme = (DOCS.parent / "README.md").read_text()
    page = (DOCS / "getting-started.md").read_text()
    (lines,) = [block for block in re.findall(r"```py\n(.*?)```", readme, re.S)
                if "cellpose_fn" in block]
    assert lines in page
    code = "".join(BLOCK.findall(page))
    assert "lambda tile: model.predict_instances(normalize_mi_ma(tile, low, high))[0]" in code
    assert "lambda tile: my_model(torch.from_numpy(tile" in code and 'output="mask"' in code
