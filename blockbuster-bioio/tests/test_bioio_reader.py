"""The ``bioio`` reader on its own: picking (bioio's lookup; the core keeps its formats), the
missing-extra error, option errors, lazy plane-by-plane reads, pickling, ``blockbuster info``."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest

from blockbuster.cli import main
from blockbuster.errors import BackendNotInstalledError, ImageReadError, InvalidParameterError
from blockbuster.plugins.bioio import BioioReader
from blockbuster.plugins.bioio._formats import EXTRAS
from blockbuster.registry import Registry

pytest.importorskip("bioio_ome_tiff")
MISSING = [e for e in EXTRAS if e.name in ("czi", "nd2", "lif") and not e.installed]


def pick(source):
    return Registry().pm.hook.pick_reader(source=source)


def test_the_core_keeps_its_formats_and_bioio_takes_what_its_plugins_read(
        ome_tiff, zipped_ome_zarr, tmp_path):
    import tifffile

    ozx, ome_zarr, _ = zipped_ome_zarr
    plain = tmp_path / "plain.zarr"
    np.save(tmp_path / "x.npy", np.zeros(3))
    import zarr

    zarr.open_array(str(plain), mode="w", shape=(4, 4), dtype="u1")
    lsm = tmp_path / "scan.lsm"  # a TIFF under a microscope suffix only bioio-tifffile lists
    tifffile.imwrite(lsm, np.zeros((2, 8, 8), np.uint8))
    assert pick(ome_tiff.path) == "tiff"      # core: TIFF tiles, not whole planes
    assert pick(ome_zarr) == "ome-zarr"       # core: OME-Zarr groups
    assert pick(plain) == "zarr"              # core: never claimed by bioio
    assert pick(np.zeros((4, 4))) == "array"
    assert pick(ozx) == "bioio"               # bioio-ome-zarr reads zipped OME-Zarr
    assert pick(lsm) == "bioio"
    assert pick(tmp_path / "x.npy") is None   # no bioio plugin here reads .npy
    assert pick(tmp_path / "missing.czi") is None  # not there: the core's "no reader" error
    assert pick("s3://bucket/scan.czi") is None     # URLs are left to the core
    assert Registry().open_image(lsm).plugin == "bioio-tifffile"
    assert Registry().open_image(ome_tiff.path, reader="bioio").plugin == "bioio-ome-tiff"


@pytest.mark.skipif(not MISSING, reason="every CZI/ND2/LIF plugin is installed here")
@pytest.mark.parametrize("extra", MISSING, ids=lambda e: e.name)
def test_a_missing_format_plugin_names_the_extra(extra, tmp_path, capsys):
    path = tmp_path / f"scan{extra.suffixes[0]}"
    path.write_bytes(b"not really a microscope file")
    assert pick(path) == "bioio"  # claimed, so the error says what to install
    with pytest.raises(BackendNotInstalledError) as error:
        Registry().open_image(path)
    assert f'pip install "blockbuster-bioio[{extra.name}]"' in str(error.value)
    assert extra.distribution in str(error.value)
    assert main(["info", str(path)]) == 1
    assert f"blockbuster-bioio[{extra.name}]" in capsys.readouterr().err


def test_a_format_no_plugin_reads_is_an_image_read_error(tmp_path):
    path = tmp_path / "notes.xyz"
    path.write_text("hello")
    with pytest.raises(ImageReadError, match="no installed bioio plugin reads .*bioio-ome-tiff"):
        Registry().open_image(path, reader="bioio")


@pytest.mark.parametrize("options, message", [
    ({"scene": 2}, "scene=2 is out of range"),
    ({"scene": "Image:7"}, "scenes: 'Image:0', 'Image:1'"),
    ({"channel": "dapi"}, "labels: 'membrane', 'nuclei'"),
    ({"channel": 2}, "has 2 channels"),
    ({"level": 1}, r"resolution levels \[0\]"),
    ({"t": 2}, "t=2 is out of range"),
    ({"t": 0, "time": 1}, "disagree"),
])
def test_option_errors_say_what_exists(ome_tiff, options, message):
    with pytest.raises(InvalidParameterError, match=message):
        Registry().open_image(ome_tiff.path, reader="bioio", **options)


def test_axes_shape_and_physical_metadata(ome_tiff):
    reader = Registry().open_image(ome_tiff.path, reader="bioio", t=1)
    assert reader.axes == ("c", "z", "y", "x") and reader.shape == (2, 3, 64, 72)
    assert reader.metadata()["scale"] == (1.0, 2.0, 0.5, 0.5)
    assert reader.metadata()["units"] == (None, "micrometer", "micrometer", "micrometer")
    assert reader.channel_labels == ("membrane", "nuclei")
    every_t = Registry().open_image(ome_tiff.path, reader="bioio")
    assert every_t.axes[0] == "t" and every_t.metadata()["scale"][0] == 5.0
    assert every_t.metadata()["units"][0] == "second"


def test_a_region_read_touches_only_its_planes(ome_tiff, monkeypatch):
    """One bioio chunk per plane (chunk_dims YX): a region within 2 z-planes of one channel
    and time point decodes exactly those 2 planes, never the whole scene."""
    from bioio_ome_tiff.reader import Reader

    decoded = []
    original = Reader._get_image_data

    def counting(*, retrieve_indices, **kwargs):
        decoded.append(retrieve_indices[:3])
        return original(retrieve_indices=retrieve_indices, **kwargs)

    monkeypatch.setattr(Reader, "_get_image_data", staticmethod(counting))
    reader = BioioReader(ome_tiff.path)
    block = reader.read((slice(1, 2), slice(0, 1), slice(1, 3), slice(10, 40), slice(5, 30)))
    np.testing.assert_array_equal(block, ome_tiff.scenes[0][1:2, 0:1, 1:3, 10:40, 5:30])
    assert sorted(decoded) == [(1, 0, 1), (1, 0, 2)]


def test_pickled_reader_reopens_its_scene_and_selection(ome_tiff):
    reader = BioioReader(ome_tiff.path, scene="Image:1", channel="rfp")
    copy = pickle.loads(pickle.dumps(reader))
    region = (slice(0, 1), slice(0, 1), slice(3, 30), slice(0, 48))
    np.testing.assert_array_equal(copy.read(region), ome_tiff.scenes[1][2, 3:30][None, None])
    assert copy.identity() == reader.identity()
    assert BioioReader(ome_tiff.path, scene=1, channel=1).identity() != reader.identity()


def test_info_lists_scenes_channels_levels_sizes_and_a_tiling(ome_tiff, capsys):
    assert main(["info", str(ome_tiff.path), "--reader", "bioio"]) == 0
    out = capsys.readouterr().out
    assert "(t=2, c=2, z=3, y=64, x=72)" in out
    assert "physical pixel size: t=5 second, z=2 micrometer, y=0.5 micrometer, " \
           "x=0.5 micrometer" in out
    assert "plugin: bioio-ome-tiff" in out
    assert "scenes: 0=Image:0, 1=Image:1 (reading 0)" in out
    assert "channels: 0=membrane, 1=nuclei" in out
    assert "levels: 0: (2, 2, 3, 64, 72) (reading 0)" in out
    assert "suggested tile_shape (1 GiB for 2 workers): [2, 3, 64, 72]  (t=2, z=3, y=64, " \
           "x=72)" in out


def test_discovery_does_not_import_bioio():
    code = ("import sys\nfrom blockbuster.registry import Registry\n"
            "r = Registry()\nassert 'bioio' in r.names('reader')\n"
            "r.pm.hook.pick_reader(source=[1, 2])\nprint('bioio' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.strip() == "False", out.stderr


def test_plain_zarr_stays_with_the_core_when_the_ome_zarr_plugin_is_missing(tmp_path,
                                                                            monkeypatch):
    """A plain zarr path would otherwise be claimed to say `[ome-zarr]` is missing."""
    import zarr

    from blockbuster.plugins.bioio import _formats

    installed = _formats.version

    def without_ome_zarr(name):
        if name == "bioio-ome-zarr":
            raise _formats.PackageNotFoundError(name)
        return installed(name)

    monkeypatch.setattr(_formats, "version", without_ome_zarr)
    plain = tmp_path / "plain.zarr"
    zarr.open_array(str(plain), mode="w", shape=(4, 4), dtype="u1")
    (tmp_path / "odd.zarr").write_text("not a zarr folder")  # a file bioio would be asked about
    assert pick(plain) == "zarr"
    assert pick(tmp_path / "odd.zarr") == "bioio"
    with pytest.raises(BackendNotInstalledError, match=r"blockbuster-bioio\[ome-zarr\]"):
        Registry().open_image(tmp_path / "odd.zarr")
