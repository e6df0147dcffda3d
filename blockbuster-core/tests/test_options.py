"""Backend options are checked by name and by type before a backend is built, and the backend
kit shares placement and image-wide normalisation between the model backends."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pytest
import zarr

from blockbuster.backend import (
    checked_options,
    gpu_of_worker,
    image_percentiles,
    threads_per_worker,
)
from blockbuster.cli import main
from blockbuster.errors import BackendOptionError
from blockbuster.options import check_options, matches
from blockbuster.registry import Registry
from blockbuster.worker import WorkerInfo


def test_a_value_of_the_wrong_type_by_name_is_one_typed_error():
    with pytest.raises(BackendOptionError,
                       match=r"segmenter 'threshold' option sigma='abc' should be float, not str"):
        Registry(autoload=False).segmenter("threshold", sigma="abc")
    with pytest.raises(BackendOptionError, match=r"min_size=1.5 should be int"):
        Registry(autoload=False).segmenter("threshold", min_size=1.5)
    assert Registry(autoload=False).segmenter("threshold", sigma=2).sigma == 2  # int is a float


def test_set_with_a_wrong_type_is_a_one_line_cli_error(tmp_path, capsys):
    zarr.create_array(store=str(tmp_path / "image.zarr"), data=np.zeros((8, 8), np.float32))
    config = tmp_path / "job.toml"
    config.write_text('[input]\npath = "image.zarr"\n[segmenter]\nname = "threshold"\n'
                      '[output]\npath = "labels.zarr"\n')
    assert main(["run", str(config), "--set", "segmenter.sigma=abc"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "sigma='abc' should be float" in err and "Traceback" not in err


@pytest.mark.parametrize(("value", "annotation", "fits"), [
    (3, int, True), (True, int, False), (3, float, True), ("3", float, False),
    (None, int | None, True), ([1, 2], Sequence[int], True), ("ab", Sequence[int], False),
    ((1, 2), tuple[int, int], True), ((1,), tuple[int, int], False),
    ([1, "x"], list[int], False), ("tile", Literal["global", "tile"], True),
    ("both", Literal["global", "tile"], False), ({"a": 1}, dict, True), (len, object, True),
])
def test_matches_checks_simple_annotations(value, annotation, fits):
    assert matches(value, annotation) is fits


def test_unknown_names_list_the_valid_options():
    def factory(source, *, level: int = 0):
        return source

    with pytest.raises(BackendOptionError,
                       match="reader 'x' has no option 'levle'; valid options: level"):
        check_options(factory, {"levle": 1}, "reader 'x'", skip=1)


def test_checked_options_gives_direct_calls_the_same_errors():
    @checked_options
    def make(model, *, threshold: float = 0.5):
        return model, threshold

    assert make("m", threshold=1) == ("m", 1)
    with pytest.raises(BackendOptionError, match="threshold='high' should be float"):
        make("m", threshold="high")
    with pytest.raises(BackendOptionError, match="no option 'treshold'"):
        make("m", treshold=0.2)


def test_placement_from_the_worker():
    assert threads_per_worker(WorkerInfo(0, 3), cores=8) == 2
    assert threads_per_worker(WorkerInfo(0, 16), cores=8) == 1
    assert [gpu_of_worker(2, WorkerInfo(i, 3)) for i in range(3)] == [0, 1, 0]
    assert gpu_of_worker(0, WorkerInfo(1, 2)) is None


class CountingArray:
    """A lazily sliced image that counts the voxels read."""

    def __init__(self, data):
        self.data, self.shape, self.read = data, data.shape, 0

    def __getitem__(self, region):
        block = self.data[region]
        self.read += block.size
        return block


def test_image_percentiles_equal_the_whole_image_when_small_and_sample_when_large():
    rng = np.random.default_rng(0)
    image = rng.gamma(2.0, 10.0, (300, 200)).astype(np.float32)
    assert image_percentiles(image, (1, 99.8)) == pytest.approx(
        tuple(np.percentile(image, [1, 99.8])))
    big = CountingArray(rng.gamma(2.0, 10.0, (2048, 2048)).astype(np.float32))
    low, high = image_percentiles(big, (1, 99.8), max_voxels=2**18)
    assert big.read <= 2**18
    assert low == pytest.approx(np.percentile(big.data, 1), rel=0.05)
    assert high == pytest.approx(np.percentile(big.data, 99.8), rel=0.05)


def test_image_percentiles_per_channel():
    image = np.stack([np.arange(100.0).reshape(10, 10), 10 + np.arange(100.0).reshape(10, 10)])
    low, high = image_percentiles(image, (0, 100), channel_axis=0)
    assert low == (0.0, 10.0) and high == (99.0, 109.0)
