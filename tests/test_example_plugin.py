"""The authoring guide's example backend, installed into a fresh virtual environment.

Installed normally and in editable mode, it must be discovered by ``blockbuster plugins`` and
selected by name from a TOML config through ``blockbuster run``. The fresh environment sees this
environment's packages through ``site.addsitedir`` so nothing is downloaded.
"""

import json
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import zarr

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "examples" / "blockbuster-blur"


def fresh_venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    python = path / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True).stdout.strip()
    parent = site.getsitepackages()[0]
    Path(purelib, "_blockbuster_parent.pth").write_text(
        f"import site; site.addsitedir({parent!r})\n")
    return python


def run(python: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), *args], capture_output=True, text=True, cwd=cwd)


def blur_threshold(**options):
    """The example's segmenter, imported from its source folder (no install needed)."""
    sys.path.insert(0, str(PACKAGE / "src"))
    try:
        from blockbuster_blur import BlurThreshold
    finally:
        sys.path.remove(str(PACKAGE / "src"))
    return BlurThreshold(**options)


def test_example_backend_equals_whole_image_components_on_a_dense_texture():
    """Blur, threshold, label: exact with its own halo because it returns the mask
    (``Needs.output="mask"``); labelling inside each tile made 13 false merges here."""
    from skimage.measure import label

    from blockbuster import tile_process
    from blockbuster.testing import assert_same_labels

    fn = blur_threshold(sigma=1.0)
    image = np.random.default_rng(0).random((1024, 1024)).astype(np.float32)
    expected = label(fn(image), connectivity=1)
    tiled = tile_process(image, fn, tile_shape=(128, 128), compute=True)
    assert expected.max() == 5689
    assert_same_labels(expected, tiled)


@pytest.mark.slow
@pytest.mark.parametrize("editable", [False, True], ids=["normal", "editable"])
def test_example_backend_is_discovered_and_runs_by_name(tmp_path, editable):
    python = fresh_venv(tmp_path / "venv")
    target = ["-e", str(PACKAGE)] if editable else [str(PACKAGE)]
    install = run(python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                  *target)
    assert install.returncode == 0, install.stderr

    listing = run(python, "-m", "blockbuster.cli", "plugins", "--json")
    assert listing.returncode == 0, listing.stderr
    plugins = {p["name"]: p for p in json.loads(listing.stdout)["plugins"]}
    assert plugins["blur"]["distribution"] == "blockbuster-blur"
    assert plugins["blur"]["backends"] == {"segmenter": ["blur"]}

    image = np.zeros((96, 96), np.float32)
    image[10:30, 10:80] = 1.0
    image[50:90, 40:60] = 1.0
    zarr.create_array(store=str(tmp_path / "image.zarr"), data=image, chunks=(32, 32))
    (tmp_path / "job.toml").write_text(textwrap.dedent("""
        [input]
        path = "image.zarr"
        [segmenter]
        name = "blur-threshold"
        sigma = 1.5
        [tiling]
        tile_shape = [32, 32]
        [output]
        path = "labels.zarr"
    """))
    result = run(python, "-m", "blockbuster.cli", "run", "job.toml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    labels = zarr.open_array(str(tmp_path / "labels.zarr"))[:]
    assert labels.max() == 2  # two rectangles, each one object across many tiles
    attrs = zarr.open_array(str(tmp_path / "labels.zarr")).attrs
    fingerprint = json.loads(attrs["blockbuster"]["fingerprint"])
    assert fingerprint["overlap"] == [7, 7]  # the default halo the backend asked for
