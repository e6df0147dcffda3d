"""Packaging: entry point, light plugin import, no shadowing of the real torch, wheel contents."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from importlib.metadata import distribution, entry_points
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]


def run_python(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_entry_point_registers_the_torch_segmenter():
    (point,) = [ep for ep in entry_points(group="blockbuster") if ep.name == "torch"]
    assert point.value == "blockbuster.plugins.torch._plugin"
    registered = []
    point.load().register_segmenters(
        lambda name, factory, **kw: registered.append((name, factory, kw))
    )
    assert registered[0][:2] == ("torch", "blockbuster.plugins.torch:torch_fn")


def test_distribution_metadata_depends_on_core_not_the_pypi_blockbuster():
    dist = distribution("blockbuster-torch")
    assert dist.version == "0.2.0"
    requirements = [r.split(";")[0].replace(" ", "") for r in dist.requires or []]
    assert "blockbuster-core>=0.2" in requirements
    assert not any(
        r.startswith("blockbuster") and not r.startswith("blockbuster-core") for r in requirements
    )
    assert any(r.startswith("torch") for r in requirements)


def test_plugin_module_and_package_import_without_torch():
    out = run_python(
        "import sys\n"
        "import blockbuster.plugins.torch._plugin\n"
        "import blockbuster.plugins.torch\n"
        "print('torch' in sys.modules)"
    )
    assert out == "False"


def test_registry_resolves_torch_by_name_without_importing_torch():
    out = run_python(
        "import sys\n"
        "from blockbuster.registry import Registry\n"
        "registry = Registry()\n"
        "print('torch' in registry.names('segmenter'), 'torch' in sys.modules)"
    )
    assert out == "True False"


def test_subpackage_named_torch_does_not_shadow_real_torch():
    out = run_python(
        "import blockbuster.plugins.torch as plugin\n"
        "import torch\n"
        "from blockbuster.plugins.torch import _loading\n"
        "assert torch is not plugin and hasattr(torch, 'nn') and hasattr(torch, 'Tensor')\n"
        "assert 'site-packages' in torch.__file__ or 'dist-packages' in torch.__file__, "
        "torch.__file__\n"
        "assert 'blockbuster' not in torch.__file__\n"
        "print(plugin.torch_fn.__module__)"
    )
    assert out == "blockbuster.plugins.torch._segmenter"


def test_wheel_ships_only_the_plugin_subpackage(tmp_path):
    pytest.importorskip("hatchling")
    from hatchling.builders.wheel import WheelBuilder

    wheel = Path(
        next(WheelBuilder(str(PROJECT)).build(directory=str(tmp_path), versions=["standard"]))
    )
    names = zipfile.ZipFile(wheel).namelist()
    code = [n for n in names if not n.startswith("blockbuster_torch-0.2.0.dist-info/")]
    assert code and all(n.startswith("blockbuster/plugins/torch/") for n in code), code
    assert "blockbuster/__init__.py" not in names and "blockbuster/plugins/__init__.py" not in names
    entry = (
        zipfile.ZipFile(wheel).read("blockbuster_torch-0.2.0.dist-info/entry_points.txt").decode()
    )
    assert "[blockbuster]" in entry and "torch = blockbuster.plugins.torch._plugin" in entry
