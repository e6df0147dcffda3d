"""``verify`` passes a segmenter whose seams are exact, fails one whose seams are wrong and
suggests a larger overlap that then passes; ``blockbuster verify`` exits 0 / 1 accordingly."""

import numpy as np
import pytest
import scipy.ndimage as ndi

from blockbuster import tile_process
from blockbuster.cli import main
from blockbuster.errors import InvalidParameterError
from blockbuster.synthetic import nuclei
from blockbuster.tiling import TileGrid
from blockbuster.verify import seam_windows

TEXTURE = ndi.gaussian_filter(np.random.default_rng(0).random((256, 256)), 2)
TILES = dict(tile_shape=(64, 64), compute=True)


def exact_components(tile):
    """Threshold + components with the touch rule's own (full) connectivity: exact at overlap 0."""
    return ndi.label(tile > 0.5, structure=np.ones((3, 3)))[0]


def blur_then_label(tile):
    """Labels a blurred map inside the tile: its seams need a halo of a few sigma."""
    return ndi.label(ndi.gaussian_filter(tile, 3) > 0.5)[0]


def per_tile_otsu(tile):
    from skimage.filters import threshold_otsu

    return ndi.label(tile > threshold_otsu(tile))[0]


@pytest.mark.parametrize("fn, overlap", [(exact_components, 0), (blur_then_label, 8)])
def test_exact_seams_pass(fn, overlap):
    labels, report = tile_process(TEXTURE, fn, overlap=overlap, verify=8, **TILES)
    assert report.passed and report.f1 == 1.0 and report.suggested_overlap is None
    assert len(report.checks) == 8
    assert all(c.match.false_merges == c.match.false_splits == 0 for c in report.checks)
    assert report.verdict().startswith("PASS: 8 seam windows, F1 1.0000")


def test_wrong_seams_fail_and_the_suggested_overlap_passes():
    _, report = tile_process(TEXTURE, blur_then_label, overlap=1, verify=8, **TILES)
    assert not report.passed and report.f1 < 0.99
    assert report.suggested_overlap == (8, 8)
    assert report.verdict().startswith("FAIL: 8 seam windows")
    assert report.verdict().endswith("re-verify with overlap 8")
    assert "FAIL" in report.table()
    _, again = tile_process(TEXTURE, blur_then_label, overlap=8, verify=8, **TILES)
    assert again.passed


def test_per_tile_otsu_fails_with_false_merges_or_splits():
    _, report = tile_process(TEXTURE, per_tile_otsu, overlap=4, verify=8, **TILES)
    assert not report.passed
    assert sum(c.match.false_merges + c.match.false_splits for c in report.checks) > 0
    assert report.suggested_overlap == (8, 8)


def test_the_report_is_in_the_stats_too_and_options_are_checked():
    _, stats = tile_process(TEXTURE, exact_components, verify=2, return_stats=True, **TILES)
    assert stats.verification.passed and len(stats.verification.checks) == 2
    with pytest.raises(InvalidParameterError, match="number of seam windows"):
        tile_process(TEXTURE, exact_components, verify=0, **TILES)
    with pytest.raises(InvalidParameterError, match="between 0 and 1"):
        tile_process(TEXTURE, exact_components, verify=4, verify_threshold=2, **TILES)


def test_windows_sit_on_corners_and_faces_spread_and_deterministic():
    grid = TileGrid((256, 256), (64, 64), (4, 4))
    windows = seam_windows(grid, 8)
    assert windows == seam_windows(grid, 8)
    assert [w.kind for w in windows] == ["corner"] * 4 + ["face"] * 4
    for w in windows:
        on_cut = [p % 64 == 0 and p > 0 for p in w.point]
        assert all(on_cut) if w.kind == "corner" else sum(on_cut) == 1
        assert [c.stop - c.start for c in w.centre] == [64, 64]
        assert all(r.start == max(c.start - 4, 0) for r, c in zip(w.read, w.centre))
    assert len({w.point for w in windows}) == 8
    corners = [w.point for w in windows if w.kind == "corner"]
    assert corners[0] == (64, 64) and corners[-1] == (192, 192)  # first and last in raster order


def test_per_slice_tiles_verify_in_plane_and_one_tile_has_no_seam():
    grid = TileGrid((6, 100, 100), (1, 50, 50), (0, 5, 5))
    for w in seam_windows(grid, 5):
        assert w.centre[0].stop - w.centre[0].start == 1 and w.read[0] == w.centre[0]
    assert seam_windows(TileGrid((50, 50), (50, 50), (0, 0)), 8) == []
    _, report = tile_process(TEXTURE[:64, :64], exact_components, verify=8, **TILES)
    assert report.passed and report.verdict().startswith("PASS: one tile")


CONFIG = """
[input]
path = "nuclei.zarr"
[segmenter]
name = "threshold"
sigma = 2.0
[tiling]
tile_shape = [128, 128]
{overlap}
[output]
path = "labels.zarr"
overwrite = true
"""


@pytest.fixture
def nuclei_zarr(tmp_path):
    import zarr

    zarr.create_array(store=tmp_path / "nuclei.zarr", data=nuclei((512, 512), seed=3),
                      chunks=(128, 128))
    return tmp_path


def test_cli_verify_exits_0_on_pass_and_1_on_fail(nuclei_zarr, capsys):
    config = nuclei_zarr / "job.toml"
    config.write_text(CONFIG.format(overlap=""))  # the segmenter's own halo: 4 sigma
    assert main(["verify", str(config), "--windows", "4"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1].startswith("PASS: 4 seam windows")
    assert out.splitlines()[0].split()[:3] == ["window", "seam", "centre"]
    config.write_text(CONFIG.format(overlap="overlap = 1"))
    assert main(["verify", str(config)]) == 1
    verdict = capsys.readouterr().out.splitlines()[-1]
    assert verdict.startswith("FAIL: 8 seam windows") and "re-verify with overlap 8" in verdict
    assert main(["verify", str(config), "--overlap", "8"]) == 0


def test_cli_run_verifies_when_the_config_asks(nuclei_zarr, capsys):
    config = nuclei_zarr / "job.toml"
    config.write_text(CONFIG.format(overlap="overlap = 1") + "[verify]\nwindows = 8\n")
    assert main(["run", str(config)]) == 1
    assert capsys.readouterr().out.splitlines()[-1].startswith("FAIL: 8 seam windows")


def dense_cell_stack() -> np.ndarray:
    from skimage.segmentation import expand_labels

    rng = np.random.default_rng(0)
    seeds = np.zeros((12, 96, 96), np.int32)
    seeds[tuple(rng.integers(0, s, 50) for s in seeds.shape)] = np.arange(1, 51)
    return expand_labels(seeds, distance=9)  # dense touching 3D cells


def label_one_plane(tile: np.ndarray) -> np.ndarray:
    from skimage.measure import label

    return label(tile[0], connectivity=1)[None]


def test_verify_with_iou_merge_checks_the_in_plane_seams_plane_by_plane():
    """merge="iou": without a halo, tiles of a plane join touching cells by touch and verify
    fails, suggesting an in-plane overlap; with one it passes. Planes are not seams: the
    verdict says the IoU joins are not what was checked."""
    cells = dense_cell_stack()
    _, touching = tile_process(cells, label_one_plane, tile_shape=(1, 32, 32), overlap=0,
                               merge="iou", verify=8, compute=True)
    assert not touching.passed and sum(c.match.false_merges for c in touching.checks) > 0
    assert touching.suggested_overlap == (0, 8, 8)
    assert {c.window.centre[0].stop - c.window.centre[0].start for c in touching.checks} == {1}
    assert len({c.window.point[0] for c in touching.checks}) > 2  # spread over the planes
    labels, report = tile_process(cells, label_one_plane, tile_shape=(1, 32, 32), overlap=4,
                                  merge="iou", verify=8, compute=True)
    assert report.passed and report.f1 == 1.0
    assert "in-plane seams only: planes along axis 0 are joined by IoU" in report.verdict()
    assert "IoU" not in tile_process(cells[:1], label_one_plane, tile_shape=(1, 32, 32),
                                     overlap=4, verify=2, compute=True)[1].verdict()
