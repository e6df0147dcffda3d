"""blockbuster-cellpose installs beside blockbuster-core, normal and editable, in a fresh venv.

Offline and fast: the fresh venv borrows this environment's third-party packages through a
``.pth`` file (every package except blockbuster's own), and pip installs the two local
projects with ``--no-deps --no-build-isolation --no-index``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

PLUGIN_DIR = Path(__file__).resolve().parents[1]
CORE_DIR = PLUGIN_DIR.parent / "blockbuster-core"

PROBE = textwrap.dedent("""
    import json
    from importlib.metadata import distribution, entry_points
    import blockbuster, blockbuster.plugins.cellpose as cp
    from blockbuster.registry import Registry
    files = [str(f) for f in distribution("blockbuster-cellpose").files or []]
    print(json.dumps({
        "core": blockbuster.__file__,
        "plugin": cp.__file__,
        "entry_points": sorted(ep.value for ep in entry_points(group="blockbuster")
                               if ep.name == "cellpose"),
        "segmenters": Registry().names("segmenter"),
        "plugin_files": files,
    }))
""")


def _run(*args: str) -> str:
    done = subprocess.run(list(args), capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _borrowed_packages(target: Path) -> Path:
    """A folder of links to this environment's packages, minus blockbuster's own."""
    target.mkdir()
    for entry in Path(sysconfig.get_path("purelib")).iterdir():
        name = entry.name.lower()
        if "blockbuster" in name or name.startswith("__editable__"):
            continue
        (target / entry.name).symlink_to(entry)
    return target


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A fresh venv (no pip of its own) that sees this environment's dependencies."""
    root = tmp_path_factory.mktemp("install")
    _run(sys.executable, "-m", "venv", "--without-pip", str(root / "venv"))
    python = root / "venv" / "bin" / "python"
    purelib = Path(_run(str(python), "-c",
                        "import sysconfig; print(sysconfig.get_path('purelib'))").strip())
    deps = _borrowed_packages(root / "deps")
    (purelib / "_borrowed_deps.pth").write_text(f"{deps}\n")
    return python, purelib


def _pip(python: Path, *args: str) -> None:
    _run(sys.executable, "-m", "pip", "--python", str(python), *args)


def _install(python: Path, project: Path, editable: bool) -> None:
    spec = ["-e", str(project)] if editable else [str(project)]
    _pip(python, "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", *spec)


def _probe(python: Path) -> dict:
    return json.loads(_run(str(python), "-c", PROBE).strip().splitlines()[-1])


@pytest.mark.skipif(not CORE_DIR.is_dir(), reason="blockbuster-core sources not beside us")
@pytest.mark.parametrize(
    ("core_editable", "plugin_editable"),
    [(False, False), (False, True), (True, False), (True, True)],
)
def test_installs_side_by_side(venv, core_editable, plugin_editable):
    python, purelib = venv
    _pip(python, "uninstall", "-q", "-y", "blockbuster-cellpose", "blockbuster-core")
    _install(python, CORE_DIR, core_editable)
    _install(python, PLUGIN_DIR, plugin_editable)
    found = _probe(python)

    core_home = CORE_DIR / "src" if core_editable else purelib
    plugin_home = PLUGIN_DIR / "src" if plugin_editable else purelib
    assert Path(found["core"]) == core_home / "blockbuster" / "__init__.py"
    assert Path(found["plugin"]) == (
        plugin_home / "blockbuster" / "plugins" / "cellpose" / "__init__.py")
    assert found["entry_points"] == ["blockbuster.plugins.cellpose._plugin"]
    assert "cellpose" in found["segmenters"]
    shipped = [f for f in found["plugin_files"] if f.endswith(".py")]
    assert all(f.startswith("blockbuster/plugins/cellpose/") for f in shipped), shipped
    if not plugin_editable:
        assert "blockbuster/plugins/cellpose/_plugin.py" in shipped
