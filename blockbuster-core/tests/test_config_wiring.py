"""Every documented config key and CLI flag reaches ``tile_process`` with its value.

``tile_process`` is replaced by a spy where the config layer calls it, so these tests check the
wiring only (the runs themselves are tested elsewhere). A key dropped from the loader, from
``tile_process_arguments`` or from the docs fails here.
"""

import argparse
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import blockbuster.expand
import blockbuster.pipeline
import blockbuster.polygons
import blockbuster.relations
from blockbuster.cli import build_parser, main
from blockbuster.config import SECTIONS

DOCS = Path(__file__).parents[2] / "docs"

EVERY_KEY = """
[input]
path = "image.zarr"
reader = "zarr"
channel_axis = 0
level = 1                      # not a core key: a reader option
storage_options = {anon = true}  # into reader_options

[segmenter]
name = "watershed"
sigma = 1.5                    # a segmenter option
output = "mask"
probability_threshold = 0.25
instances = "watershed"
min_distance = 4               # to the segmenter's own option when it has one (watershed)
split_halo = 17

[tiling]
tile_shape = [48, 40]
overlap = [6, 5]
merge = "iou"
iou_threshold = 0.4
connectivity = 1
memory_budget = 123456789

[executor]
name = "processes"
workers = 3
start_method = "spawn"         # an executor option

[output]
path = "out.zarr"
writer = "zarr"
overwrite = true
table = "objects.csv"
merge_log = "merges.parquet"
intensity_image = "stains.zarr"  # relative to the config file
percentiles = [50, 95]
zarr_format = 2                # a writer option
storage_options = {endpoint_url = "http://127.0.0.1:9"}  # into writer_options

[run]
retries = 5
keep_going = true
skip_empty = 0.25
resume = false
progress = true
offline = true                 # not an argument: BLOCKBUSTER_OFFLINE during the run
stage_dir = "stage"            # relative to the config file

[postprocess]
expand = 4
expand_to = "cells.zarr"
expand_spacing = [2.0, 0.5]
relate = "cells.zarr"          # relative to the config file
relate_to = "relations.parquet"
polygons = ["shapes.geojson", "s3://bucket/shapes.parquet"]
polygons_plane = 0

[verify]
windows = 6
threshold = 0.95

[plugins]
block = ["blocked-plugin"]
"""


def expected_arguments(folder: Path) -> dict:
    return {
        "image": str(folder / "image.zarr"),
        "fn": "watershed",
        "segmenter_options": {"sigma": 1.5},
        "output": "mask",
        "probability_threshold": 0.25,
        "instances": "watershed",
        "min_distance": 4,
        "split_halo": 17,
        "reader": "zarr",
        "reader_options": {"level": 1, "storage_options": {"anon": True}},
        "channel_axis": 0,
        "tile_shape": (48, 40),
        "overlap": (6, 5),
        "merge": "iou",
        "iou_threshold": 0.4,
        "connectivity": 1,
        "memory_budget": 123456789,
        "executor": "processes",
        "workers": 3,
        "executor_options": {"start_method": "spawn"},
        "retries": 5,
        "keep_going": True,
        "skip_empty": 0.25,
        "resume": False,
        "write_to": str(folder / "out.zarr"),
        "writer": "zarr",
        "writer_options": {"zarr_format": 2,
                           "storage_options": {"endpoint_url": "http://127.0.0.1:9"}},
        "overwrite": True,
        "table": str(folder / "objects.csv"),
        "merge_log": str(folder / "merges.parquet"),
        "intensity_image": str(folder / "stains.zarr"),
        "percentiles": [50, 95],
        "verify": 6,
        "verify_threshold": 0.95,
        "progress": True,
        "stage_dir": str(folder / "stage"),
    }


@pytest.fixture
def calls(monkeypatch):
    """Replace ``tile_process`` where the config layer imports it; record each call (and in
    ``seen.offline`` whether downloads were switched off during it)."""
    from blockbuster.downloads import offline

    class Calls(list):
        offline: list[bool] = []

    seen = Calls()
    seen.offline = []

    def spy(**kwargs):
        seen.append(kwargs)
        seen.offline.append(offline())
        return np.zeros((2, 3), np.uint32)

    def expand_spy(labels, distance, **kwargs):
        seen.expanded.append((labels, distance, kwargs))

    def relate_spy(children, parents, **kwargs):
        seen.related.append((children, parents, kwargs))

    def polygons_spy(labels, **kwargs):
        seen.traced.append((labels, kwargs))
        return "the shapes"

    def write_spy(shapes, path, **kwargs):
        seen.written.append((shapes, path, kwargs))

    seen.expanded, seen.related, seen.traced, seen.written = [], [], [], []
    monkeypatch.setattr(blockbuster.pipeline, "tile_process", spy)
    monkeypatch.setattr(blockbuster.expand, "expand_labels", expand_spy)
    monkeypatch.setattr(blockbuster.relations, "relate", relate_spy)
    monkeypatch.setattr(blockbuster.polygons, "polygons", polygons_spy)
    monkeypatch.setattr(blockbuster.polygons, "write_polygons", write_spy)
    return seen


def documented_keys() -> set[tuple[str, str]]:
    """The ``section | key`` rows of the reference table in docs/configuration.md."""
    rows = re.findall(r"^\| (\w+) \| (\w+) \|", (DOCS / "configuration.md").read_text(), re.M)
    return {row for row in rows if row != ("section", "key")}


def core_keys() -> set[tuple[str, str]]:
    return {(section, key) for section, keys in SECTIONS.items() for key in keys}


def test_every_config_key_reaches_tile_process(tmp_path, calls):
    config = tmp_path / "job.toml"
    config.write_text(EVERY_KEY)
    assert main(["run", str(config)]) == 0
    (arguments,) = calls
    assert calls.offline == [True]
    registry = arguments.pop("registry")
    assert registry.blocked == {"blocked-plugin"}
    assert arguments == expected_arguments(tmp_path)
    ((labels, distance, options),) = calls.expanded  # [postprocess] after the run
    assert (labels, distance, options["write_to"]) == (str(tmp_path / "out.zarr"), 4,
                                                      str(tmp_path / "cells.zarr"))
    assert (options["executor"], options["workers"], options["overwrite"]) == (
        "processes", 3, True)
    assert options["spacing"] == [2.0, 0.5]
    store = {"endpoint_url": "http://127.0.0.1:9"}
    ((children, parents, options),) = calls.related  # after expand: cells may be its output
    assert (children, parents, options["table"], options["storage_options"]) == (
        str(tmp_path / "out.zarr"), str(tmp_path / "cells.zarr"),
        str(tmp_path / "relations.parquet"), store)
    ((labels, options),) = calls.traced
    assert (labels, options["table"]) == (str(tmp_path / "out.zarr"), tmp_path / "objects.csv")
    assert options["plane"] == 0
    assert [(shapes, path) for shapes, path, _ in calls.written] == [
        ("the shapes", str(tmp_path / "shapes.geojson")),
        ("the shapes", "s3://bucket/shapes.parquet")]


def test_the_config_above_sets_every_core_and_documented_key():
    import tomllib

    written = {(s, k) for s, keys in tomllib.loads(EVERY_KEY).items() for k in keys}
    assert core_keys() <= written, "a new config key needs a value in EVERY_KEY"
    assert documented_keys() == core_keys(), "docs/configuration.md's table lists every key"


def test_every_run_flag_overrides_its_key(tmp_path, calls):
    config = tmp_path / "job.toml"
    config.write_text('[input]\npath = "image.zarr"\n[segmenter]\nname = "threshold"\n')
    flags = ["--segmenter", "watershed", "--tile-shape", "30,31", "--overlap", "7",
             "--merge", "iou", "--iou-threshold", "0.3", "--executor", "serial",
             "--workers", "4",
             "--output", "o.zarr", "--overwrite", "--progress", "--merge-log",
             "--expand", "2.5",
             "--set", "run.retries=7", "--set", 'output.writer="zarr"']
    assert main(["run", str(config), *flags]) == 0
    (arguments,) = calls
    assert {k: arguments[k] for k in ("fn", "tile_shape", "overlap", "merge", "iou_threshold",
                                      "executor", "workers", "write_to", "overwrite",
                                      "progress", "retries", "writer", "merge_log")} == {
        "fn": "watershed", "tile_shape": (30, 31), "overlap": 7, "merge": "iou",
        "iou_threshold": 0.3,
        "executor": "serial", "workers": 4, "write_to": str(tmp_path / "o.zarr"),
        "overwrite": True, "progress": True, "retries": 7, "writer": "zarr",
        "merge_log": True}
    ((labels, distance, options),) = calls.expanded
    assert (labels, distance, options["write_to"]) == (str(tmp_path / "o.zarr"), 2.5,
                                                      str(tmp_path / "o.expanded.zarr"))
    used = {flag for flag in flags if flag.startswith("--")}
    assert used == run_flags() - {"--help", "--debug"}, "every run flag is exercised above"


def test_tile_shape_auto_and_defaults_without_flags(tmp_path, calls):
    config = tmp_path / "job.toml"
    config.write_text('[input]\npath = "image.zarr"\n[segmenter]\nname = "threshold"\n')
    assert main(["run", str(config), "--tile-shape", "auto"]) == 0
    (arguments,) = calls
    assert arguments["tile_shape"] == "auto"
    assert (arguments["retries"], arguments["keep_going"], arguments["resume"],
            arguments["overwrite"], arguments["progress"]) == (2, False, True, False, False)
    assert (arguments["output"], arguments["probability_threshold"]) == (None, None)


def run_flags() -> set[str]:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    run = commands.choices["run"]
    return {option for action in run._actions for option in action.option_strings
            if option.startswith("--")}


def test_every_run_flag_is_documented():
    usage = (DOCS / "cli.md").read_text()
    for flag in run_flags() - {"--help", "--debug"}:
        assert flag in usage, f"docs/cli.md does not document {flag}"


def test_info_reader_flag_reaches_the_registry(tmp_path, monkeypatch, capsys):
    from blockbuster.registry import Registry

    asked = []

    class Reader:
        shape, dtype, chunks, axes = (10, 12), np.dtype(np.uint8), (5, 6), ("y", "x")

    def open_image(self, path, reader=None, **options):
        asked.append((path, reader))
        return Reader()

    monkeypatch.setattr(Registry, "open_image", open_image)
    assert main(["info", "some.tif", "--reader", "tiff"]) == 0
    assert asked == [("some.tif", "tiff")]
    assert "shape:  (10, 12)" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["run"],                                     # missing CONFIG
    ["run", "job.toml", "--merge", "glue"],      # not a choice
    ["run", "job.toml", "--workers", "two"],     # not an int
    ["run", "job.toml", "--no-such-flag"],
    ["frobnicate"],
])
def test_usage_errors_exit_with_status_2(argv, calls, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert "usage: blockbuster" in capsys.readouterr().err
    assert calls == []


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "usage: blockbuster" in capsys.readouterr().out
    done = subprocess.run([sys.executable, "-m", "blockbuster.cli", "run"], capture_output=True,
                          text=True)
    assert done.returncode == 2 and "CONFIG" in done.stderr.upper()
