"""Registration, packaging, model resolution and options: fast, no model is run."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from blockbuster.errors import BackendOptionError, InvalidParameterError, ModelNotFoundError
from blockbuster.plugins.stardist import Intensities, Percentiles, StarDistSegmenter, stardist_fn

PACKAGE = Path(__file__).parents[1]


def run_python(code: str) -> str:
    """Run ``code`` in a fresh interpreter and return its stdout."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_ships_only_the_plugin_subpackage():
    src = PACKAGE / "src" / "blockbuster"
    assert not (src / "__init__.py").exists()
    assert not (src / "plugins" / "__init__.py").exists()
    assert (src / "plugins" / "stardist" / "__init__.py").exists()


def test_registered_through_the_entry_point_group():
    from importlib.metadata import entry_points

    eps = {ep.name: ep.value for ep in entry_points(group="blockbuster")}
    assert eps["stardist"] == "blockbuster.plugins.stardist._plugin"


def test_discovery_and_factory_import_no_tensorflow(tiny_2d, empty_keras_home):
    """Discovery, `stardist_fn`, building by name and refusing to download offline do not
    import TensorFlow or stardist."""
    out = run_python(
        "import sys\n"
        "from blockbuster.errors import ModelNotFoundError\n"
        "from blockbuster.registry import Registry\n"
        "reg = Registry()\n"
        f"fn = reg.segmenter('stardist', model={str(tiny_2d)!r})\n"
        "try:\n"
        "    reg.segmenter('stardist', model='2D_versatile_fluo')\n"
        "except ModelNotFoundError as error:\n"
        "    print('BLOCKBUSTER_OFFLINE=1' in str(error), end=' ')\n"
        "print(type(fn).__name__, 'tensorflow' in sys.modules, 'stardist' in sys.modules)\n"
    )
    assert out == "True StarDistSegmenter False False"


def test_alias_sd_builds_the_same_segmenter(tiny_2d):
    from blockbuster.registry import Registry

    fn = Registry().segmenter("sd", model=str(tiny_2d), prob_thresh=0.6)
    assert isinstance(fn, StarDistSegmenter) and fn.prob_thresh == 0.6


def test_unknown_option_is_a_backend_option_error(tiny_2d):
    with pytest.raises(BackendOptionError, match="prob_treshold"):
        stardist_fn(tiny_2d, prob_treshold=0.5)


def test_uncached_pretrained_name_fails_fast_offline(empty_keras_home):
    with pytest.raises(ModelNotFoundError) as info:
        stardist_fn("2D_versatile_fluo")
    message = str(info.value)
    expected = empty_keras_home / "models" / "StarDist2D" / "2D_versatile_fluo"
    expected = expected / "2D_versatile_fluo"
    assert str(expected) in message and "BLOCKBUSTER_OFFLINE=1" in message
    assert "blockbuster models pull 2D_versatile_fluo" in message


def test_uncached_3d_name_points_to_the_3d_cache(empty_keras_home):
    with pytest.raises(ModelNotFoundError, match="StarDist3D/3D_demo"):
        stardist_fn("3D_demo")


def test_unknown_name_lists_the_pretrained_names(empty_keras_home):
    with pytest.raises(ModelNotFoundError, match="2D_versatile_he"):
        stardist_fn("2D_versatile_flou")


@pytest.mark.parametrize("layout", ["keras3", "keras3_extracted", "keras2"])
def test_cached_pretrained_model_is_found(empty_keras_home, tiny_2d, layout):
    """The folders csbdeep's get_model_folder leaves behind, for every Keras version."""
    base = empty_keras_home / "models" / "StarDist2D" / "2D_versatile_he"
    folder = {
        "keras3": base / "2D_versatile_he",
        "keras3_extracted": base / "2D_versatile_he_extracted",
        "keras2": base,
    }[layout]
    folder.mkdir(parents=True)
    (folder / "config.json").write_text((tiny_2d / "config.json").read_text())
    fn = stardist_fn("Versatile (H&E nuclei)")  # an alias resolves to its key
    assert fn.spec.kind == "pretrained" and fn.spec.folder == str(folder)


def test_folder_without_weights_is_model_not_found(tmp_path, tiny_2d):
    (tmp_path / "config.json").write_text((tiny_2d / "config.json").read_text())
    with pytest.raises(ModelNotFoundError, match="weights_best.h5"):
        stardist_fn(tmp_path)


def test_folder_without_config_is_model_not_found(tmp_path):
    with pytest.raises(ModelNotFoundError, match="config.json"):
        stardist_fn(str(tmp_path))


def test_path_spec_reads_dimensionality_without_tensorflow(tiny_3d):
    assert json.loads((tiny_3d / "config.json").read_text())["n_dim"] == 3
    assert stardist_fn(tiny_3d).spec.model_class == "StarDist3D"


@pytest.mark.parametrize(
    "normalize, expected",
    [
        ((1, 99.8), Percentiles(1, 99.8, "global")),
        ([2, 98], Percentiles(2, 98, "global")),
        ({"low": 100, "high": 4000}, Intensities(100.0, 4000.0)),
        ({"lo": [1, 2, 3], "hi": [9, 8, 7]}, Intensities((1.0, 2.0, 3.0), (9.0, 8.0, 7.0))),
        (None, None),
        (False, None),
    ],
)
def test_normalize_forms(tiny_2d, normalize, expected):
    assert stardist_fn(tiny_2d, normalize=normalize).normalization == expected


def test_normalize_scope_tile(tiny_2d):
    assert stardist_fn(tiny_2d, normalize_scope="tile").normalization.scope == "tile"


@pytest.mark.parametrize("bad", [(99, 1), (1, 120), "fast", {"low": 5}, {"low": 5, "high": 1}])
def test_bad_normalize_is_invalid_parameter(tiny_2d, bad):
    with pytest.raises(InvalidParameterError):
        stardist_fn(tiny_2d, normalize=bad)


def test_pickles_without_a_model(tiny_2d):
    fn = stardist_fn(tiny_2d, prob_thresh=0.4)
    clone = pickle.loads(pickle.dumps(fn))
    assert clone.spec == fn.spec and clone.prob_thresh == 0.4
    assert "tiny_2d" in repr(clone)


def test_prepare_is_a_no_op_for_fixed_intensities(tiny_2d):
    fn = stardist_fn(tiny_2d, normalize={"low": 0, "high": 200})
    assert fn.prepare(object()) is fn


def test_threads_per_worker_divides_the_cores():
    from blockbuster.backend import threads_per_worker
    from blockbuster.worker import WorkerInfo

    assert threads_per_worker(WorkerInfo(0, 2), cores=8) == 4
    assert threads_per_worker(WorkerInfo(1, 3), cores=8) == 2
    assert threads_per_worker(WorkerInfo(0, 16), cores=8) == 1


def test_fingerprint_tracks_model_content_and_options(tmp_path, tiny_2d):
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(tiny_2d, copy)
    base = stardist_fn(copy).blockbuster_fingerprint()
    assert stardist_fn(copy).blockbuster_fingerprint() == base
    assert stardist_fn(copy, nms_thresh=0.5).blockbuster_fingerprint() != base
    (copy / "thresholds.json").write_text('{"prob": 0.9, "nms": 0.3}')
    assert stardist_fn(copy).blockbuster_fingerprint() != base
