"""The blockbuster command and TOML configs."""

import json
import subprocess
import sys

import numpy as np
import pytest
import zarr

from blockbuster import __version__
from blockbuster.cli import main
from blockbuster.config import load_config
from blockbuster.errors import ConfigError, UnknownBackendError
from blockbuster.synthetic import nuclei

CONFIG = """
[input]
path = "image.zarr"

[segmenter]
name = "threshold"
sigma = 1.0

[tiling]
tile_shape = [64, 64]
overlap = 8

[executor]
name = "threads"
workers = 2

[output]
path = "labels.zarr"
"""


@pytest.fixture
def job(tmp_path):
    image = nuclei((200, 180), seed=2)
    zarr.create_array(store=str(tmp_path / "image.zarr"), data=image, chunks=(64, 64))
    path = tmp_path / "job.toml"
    path.write_text(CONFIG)
    return path


def test_run_writes_labels_equal_to_the_python_api(job, capsys):
    from blockbuster import tile_process
    from blockbuster.builtin.segmenters import Threshold

    assert main(["run", str(job), "--progress"]) == 0
    labels = zarr.open_array(str(job.parent / "labels.zarr"))[:]
    expected = tile_process(str(job.parent / "image.zarr"), Threshold(sigma=1.0),
                            tile_shape=(64, 64), overlap=8, compute=True)
    assert np.array_equal(labels, expected) and labels.max() > 10
    assert "relabel" in capsys.readouterr().err


def test_flags_and_set_override_config_keys(job):
    assert main(["run", str(job), "--tile-shape", "50,50", "--set", "tiling.overlap=4",
                 "--set", "segmenter.sigma=0.0", "--executor", "serial",
                 "--output", "other.zarr"]) == 0
    out = zarr.open_array(str(job.parent / "other.zarr"))
    assert out.chunks == (50, 50)
    fingerprint = json.loads(out.attrs["blockbuster"]["fingerprint"])
    assert fingerprint["overlap"] == [4, 4] and "sigma=0.0" in fingerprint["fn"]


def test_errors_are_one_line_with_exit_1(job, capsys):
    job.write_text(CONFIG.replace('name = "threshold"', 'name = "treshold"'))
    assert main(["run", str(job)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("blockbuster: error: unknown segmenter 'treshold'")
    assert "\n" not in err and "Traceback" not in err
    with pytest.raises(UnknownBackendError, match="treshold"):  # --debug: the error itself
        main(["--debug", "run", str(job)])


def test_existing_output_needs_overwrite(job, capsys):
    assert main(["run", str(job)]) == 0
    job.write_text(CONFIG.replace("sigma = 1.0", "sigma = 2.0"))
    assert main(["run", str(job)]) == 1
    assert "overwrite" in capsys.readouterr().err
    assert main(["run", str(job), "--overwrite"]) == 0


@pytest.mark.parametrize(
    "text, message",
    [
        ("[inputs]\npath='x'", "unknown section [inputs]"),
        ("[input]\npath='x'\n[segmenter]\nname='threshold'\n[tiling]\ntile_size=[1,2]",
         "[tiling] has no key 'tile_size'"),
        ("[input]\npath='x'\n[segmenter]\nname='threshold'\n[tiling]\noverlap='big'",
         "[tiling] overlap = 'big' must be of type int or list"),
        ("[input]\npath='x'", "[segmenter] needs the key 'name'"),
        ("[input\npath='x'", "not valid TOML"),
    ],
)
def test_config_errors_name_file_section_and_key(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert message in str(error.value) and str(path) in str(error.value)


def test_config_values_are_data_and_paths_are_relative_to_the_file(job):
    config = load_config(job)
    assert config.get("input", "path") == str(job.parent / "image.zarr")
    assert config.options("segmenter") == {"sigma": 1.0}


def test_plugins_json_and_text(capsys):
    assert main(["plugins", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    names = {p["name"]: p for p in report["plugins"]}
    assert names["blockbuster.builtin.segmenters"]["backends"]["segmenter"] == [
        "threshold", "watershed"]
    assert main(["plugins"]) == 0
    text = capsys.readouterr().out
    assert "segmenter threshold (aliases: otsu) - global threshold" in text
    assert text.index("segmenter threshold") < text.index("segmenter watershed")


def test_info_and_version(job, capsys):
    assert main(["info", str(job.parent / "image.zarr")]) == 0
    out = capsys.readouterr().out
    assert "shape:  (200, 180)" in out and "chunks: (64, 64)" in out
    assert "suggested tile_shape" in out
    version = subprocess.run([sys.executable, "-m", "blockbuster.cli", "--version"],
                             capture_output=True, text=True)
    assert version.stdout.strip() == f"blockbuster {__version__}"


def test_backend_paths_are_relative_to_the_config_but_names_stay_names(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "unet.pt").write_text("weights")
    path = tmp_path / "job.toml"
    path.write_text('[input]\npath = "x.zarr"\n[segmenter]\nname = "torch"\n'
                    'model = "models/unet.pt"\nnormalize = "percentile"\n')
    config = load_config(path)
    assert config.options("segmenter") == {"model": str(tmp_path / "models" / "unet.pt"),
                                           "normalize": "percentile"}
