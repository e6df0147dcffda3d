"""Self-check: every hook spec is documented and exercised by a test (as datasette does)."""

import inspect
import re
import textwrap
from pathlib import Path

import pytest
import yaml

from blockbuster import hookspecs

SPECS = [name for name, f in vars(hookspecs).items()
         if inspect.isfunction(f) and hasattr(f, "blockbuster_spec")]
TESTS = "\n".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py")
                  if p.name != Path(__file__).name)
DOCS = (Path(__file__).parents[2] / "docs" / "hookspecs.md").read_text()


def test_there_are_hook_specs():
    assert {"register_readers", "register_segmenters", "register_executors",
            "register_writers", "pick_reader", "segmenter_needs"} <= set(SPECS)


@pytest.mark.parametrize("name", SPECS)
def test_hook_spec_is_documented(name):
    doc = inspect.getdoc(getattr(hookspecs, name)) or ""
    assert len(doc) > 80, f"hook spec {name} needs a docstring saying what it receives and returns"
    assert "Receives" in doc and "Return" in doc, f"{name}: say what it receives and returns"


def rendered_options() -> dict:
    """The mkdocstrings options under ``::: blockbuster.hookspecs`` in docs/hookspecs.md."""
    found = re.search(r"^::: blockbuster\.hookspecs\n((?:[ \t]+.*\n?)*)", DOCS, re.M)
    assert found, "docs/hookspecs.md must render the module with ::: blockbuster.hookspecs"
    return (yaml.safe_load(textwrap.dedent(found.group(1))) or {}).get("options") or {}


@pytest.mark.parametrize("name", SPECS)
def test_hook_spec_is_rendered_on_the_reference_page(name):
    options = rendered_options()
    if options.get("members") is not None:
        assert name in options["members"], f"docs/hookspecs.md's members list leaves out {name}"
    for rule in options.get("filters") or []:
        excluded = rule.startswith("!") and re.search(rule[1:], name)
        assert not excluded, f"docs/hookspecs.md's filter {rule!r} hides {name}"
        assert rule.startswith("!") or re.search(rule, name), f"filter {rule!r} hides {name}"


@pytest.mark.parametrize("name", SPECS)
def test_hook_spec_has_a_test(name):
    assert f"def {name}(" in TESTS, f"no test implements hook {name}"
