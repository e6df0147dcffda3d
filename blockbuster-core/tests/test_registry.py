"""Plugin discovery and selection by name: built-ins, aliases, the three errors, options."""

import sys
import time
import types

import numpy as np
import pytest

from blockbuster import hookimpl, tile_process
from blockbuster.errors import (
    BackendBrokenError,
    BackendNotInstalledError,
    BackendOptionError,
    ImageReadError,
    UnknownBackendError,
)
from blockbuster.registry import Registry
from blockbuster.segmenter import Needs


def test_builtins_register_through_the_hooks():
    registry = Registry(autoload=False)
    assert registry.names("segmenter") == ["threshold", "watershed"]
    assert registry.names("executor") == ["dask", "processes", "serial", "threads"]
    assert registry.names("reader") == ["array", "ome-zarr", "tiff", "zarr"]
    assert registry.names("writer") == ["ome-zarr", "zarr"]
    assert registry.get("segmenter", "otsu").name == "threshold"  # alias


def test_unknown_name_lists_installed_and_suggests():
    with pytest.raises(UnknownBackendError) as error:
        Registry(autoload=False).get("segmenter", "treshold")
    message = str(error.value)
    assert "Did you mean 'threshold'?" in message and "watershed" in message


def test_known_but_not_installed_says_which_package(monkeypatch):
    registry = Registry(autoload=False)
    with pytest.raises(BackendNotInstalledError, match="pip install blockbuster-stardist"):
        registry.get("segmenter", "stardist")


class BrokenEntryPoint:
    name = "broken"
    group = "blockbuster"
    dist = types.SimpleNamespace(name="blockbuster-broken", version="9.9")

    def load(self):
        raise ImportError("No module named 'tensorflow_magic'")


def test_broken_plugin_is_recorded_and_never_takes_the_core_down(monkeypatch):
    import importlib_metadata

    monkeypatch.setattr(importlib_metadata, "entry_points", lambda group: [BrokenEntryPoint()])
    registry = Registry(autoload=True)
    assert registry.names("segmenter") == ["threshold", "watershed"]
    failure = registry.failures[0]
    assert (failure.name, failure.distribution, failure.version) == (
        "broken", "blockbuster-broken", "9.9")
    assert "tensorflow_magic" in failure.error
    with pytest.raises(BackendBrokenError, match="tensorflow_magic"):
        registry.get("segmenter", "broken")


def test_factory_that_fails_to_import_is_broken():
    class Plugin:
        @hookimpl
        def register_segmenters(self, register):
            register("ghost", "blockbuster_no_such_module:Factory")

    registry = Registry(autoload=False, plugins=[Plugin()])
    assert "ghost" in registry.names("segmenter")  # discovery imports nothing
    with pytest.raises(BackendBrokenError, match="blockbuster_no_such_module"):
        registry.segmenter("ghost")


def test_autoload_env_var_and_block(monkeypatch):
    import importlib_metadata

    calls = []
    monkeypatch.setattr(importlib_metadata, "entry_points",
                        lambda group: calls.append(group) or [BrokenEntryPoint()])
    monkeypatch.setenv("BLOCKBUSTER_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert Registry().failures == [] and calls == []
    monkeypatch.delenv("BLOCKBUSTER_DISABLE_PLUGIN_AUTOLOAD")
    assert Registry(block=["broken"]).failures == []
    assert Registry(block=["blockbuster-broken"]).failures == []
    assert len(Registry().failures) == 1


def test_options_are_validated():
    registry = Registry(autoload=False)
    with pytest.raises(BackendOptionError, match="valid options: threshold, sigma, min_size"):
        registry.segmenter("threshold", sigmaa=2)
    assert registry.segmenter("threshold", sigma=2).sigma == 2


def test_names_and_callables_are_interchangeable():
    image = np.zeros((40, 40), np.float32)
    image[5:10, 5:30] = 1
    by_name = tile_process(image, "threshold", segmenter_options={"threshold": 0.5},
                           tile_shape=(16, 16), compute=True)
    by_keyword = tile_process(image, segmenter="threshold", tile_shape=(16, 16), compute=True)
    from blockbuster.builtin.segmenters import Threshold

    by_callable = tile_process(image, Threshold(threshold=0.5), tile_shape=(16, 16), compute=True)
    assert by_name.max() == by_keyword.max() == by_callable.max() == 1
    assert tile_process(image, Threshold(0.5), executor="serial", tile_shape=(16, 16),
                        compute=True).max() == 1


def test_pick_reader_hook_lets_a_plugin_claim_a_path(tmp_path):
    path = tmp_path / "image.npy"
    np.save(path, np.eye(6, dtype=np.float32))

    class NpyPlugin:
        @hookimpl
        def register_readers(self, register):
            from blockbuster.builtin.arrays import ArrayReader

            register("npy", lambda source: ArrayReader(np.load(source, mmap_mode="r")))

        @hookimpl
        def pick_reader(self, source):
            return "npy" if str(source).endswith(".npy") else None

    with pytest.raises(ImageReadError, match="Readers tried: zarr"):
        tile_process(str(path), "threshold", compute=True)
    registry = Registry(autoload=False, plugins=[NpyPlugin()])
    labels = tile_process(str(path), "threshold", segmenter_options={"threshold": 0.5},
                          registry=registry, compute=True)
    assert labels.max() == 6


def test_segmenter_needs_hook_sets_the_default_overlap():
    seen = []

    def fn(tile):
        seen.append(tile.shape)
        return (tile > 0.5).astype(np.int32)

    class Advertiser:
        @hookimpl
        def segmenter_needs(self, segmenter):
            return Needs(halo=3) if segmenter is fn else None

    registry = Registry(autoload=False, plugins=[Advertiser()])
    tile_process(np.zeros((20, 20), np.float32), fn, tile_shape=(10, 10), registry=registry,
                 executor="serial", compute=True)
    assert (13, 13) in seen  # 10 + 3 halo on the inner side


def test_a_plugin_executor_is_used_by_name():
    from blockbuster.builtin.executors import SerialExecutor

    started = []

    class Recording(SerialExecutor):
        def start(self, context):
            started.append(True)
            return super().start(context)

    class Plugin:
        @hookimpl
        def register_executors(self, register):
            register("recording", Recording)

    registry = Registry(autoload=False, plugins=[Plugin()])
    tile_process(np.eye(8, dtype=np.float32), "threshold", executor="recording",
                 registry=registry, compute=True)
    assert started == [True]


def test_plugins_report_lists_backends_by_kind():
    infos = {p.name: p for p in Registry(autoload=False).plugins()}
    assert infos["blockbuster.builtin.segmenters"].backends == {
        "segmenter": ["threshold", "watershed"]}
    assert infos["blockbuster.builtin.segmenters"].distribution == "blockbuster-core"


def test_discovery_imports_no_heavy_library():
    import subprocess

    code = ("import sys; from blockbuster.registry import Registry; r = Registry(); "
            "r.names('segmenter'); "
            "heavy = {'torch', 'tensorflow', 'cellpose', 'stardist', 'bioimageio'}; "
            "print(sorted(heavy & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_plugin_writer_is_used_by_name(tmp_path):
    import zarr

    from blockbuster.builtin.zarr_writer import ZarrWriter

    class ZarrV2Plugin:
        @hookimpl
        def register_writers(self, register):
            register("zarr2", lambda path, overwrite=False: ZarrWriter(
                path, zarr_format=2, overwrite=overwrite))

    registry = Registry(autoload=False, plugins=[ZarrV2Plugin()])
    out = tmp_path / "labels.zarr"
    tile_process(np.eye(8, dtype=np.float32), "threshold", writer="zarr2", write_to=out,
                 registry=registry)
    assert (out / ".zarray").exists()
    assert zarr.open_array(str(out))[:].max() == 8


def test_alignment_rounds_chosen_tiles_and_warns_on_given_ones(tmp_path):
    import warnings

    import zarr

    class Aligned:
        def __call__(self, tile):
            return (tile > 0.5).astype(np.int32)

        def blockbuster_needs(self):
            return Needs(halo=8, align=8)

    image = np.zeros((100, 100), np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # chosen tiles are aligned: no warning
        tile_process(image, Aligned(), tile_shape="auto", memory_budget=45 * 45 * 37,
                     executor="serial", workers=1, write_to=tmp_path / "auto.zarr")
    chunks = zarr.open_array(str(tmp_path / "auto.zarr")).chunks
    assert chunks[0] < 100 and all(c % 8 == 0 for c in chunks)
    with pytest.warns(UserWarning, match="not a multiple of the segmenter's alignment"):
        tile_process(image, Aligned(), tile_shape=(30, 30), executor="serial", compute=True)


def test_a_reader_missing_part_of_the_contract_is_named():
    from blockbuster.errors import PluginContractError

    class Bare:  # shape, dtype and read only: no chunks, axes, source, identity, metadata
        shape, dtype = (4, 4), np.dtype(np.float32)

        def read(self, region):
            return np.zeros((4, 4), np.float32)[region]

    class BarePlugin:
        @hookimpl
        def register_readers(self, register):
            register("bare", lambda source: Bare())

    registry = Registry(autoload=False, plugins=[BarePlugin()])
    with pytest.raises(PluginContractError, match=r"reader 'bare' .* without chunks, axes, "
                                                  r"source, identity, metadata"):
        tile_process(np.eye(4), "threshold", reader="bare", registry=registry)



def install_plugin(site, name: str) -> None:
    """A distribution ``name`` with one ``blockbuster`` entry point, installed into ``site``
    as pip would: its module and its ``.dist-info`` folder."""
    (site / f"{name}.py").write_text(
        "from blockbuster.hookspecs import hookimpl\n"
        "@hookimpl\n"
        "def register_segmenters(register):\n"
        f"    register({name!r}, lambda **options: (lambda tile: tile))\n")
    info = site / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[blockbuster]\n{name} = {name}\n")


def test_the_plugin_scan_is_reused_until_a_distribution_is_installed(tmp_path, monkeypatch):
    import importlib_metadata

    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    real, scans = importlib_metadata.entry_points, []

    def counting(**kwargs):
        scans.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(importlib_metadata, "entry_points", counting)
    assert "late_plugin" not in Registry(autoload=True).names("segmenter")
    Registry(autoload=True)
    assert len(scans) == 1, "an unchanged environment is scanned once"

    time.sleep(0.01)  # a later modification time, however coarse the clock
    install_plugin(site, "late_plugin")
    assert "late_plugin" in Registry(autoload=True).names("segmenter")
    assert len(scans) == 2
