"""TOML run configuration: every stage chosen by name, options passed through to the backend.

::

    [input]
    path = "image.zarr"          # relative paths are relative to the config file; or a URL
    reader = "zarr"              # optional: chosen from the path otherwise
    channel_axis = 0             # optional; other keys are reader options
    storage_options = {anon = true}  # optional: options of a URL's store (s3://, gs://...)

    [segmenter]
    name = "threshold"           # other keys are options of that segmenter
    sigma = 1.0
    output = "instances"         # or "mask" | "semantic" | "probability": what it returns
    probability_threshold = 0.5  # foreground cut of output = "probability"
    instances = "watershed"      # mask/probability: split touching objects (default "components")
    min_distance = 5             # seeds' least distance (the segmenter's own option if it has one)
    split_halo = 20              # map around a tile's core its watershed sees (4 x min_distance)

    [tiling]
    tile_shape = [1024, 1024]    # or "auto"; omit for the input's chunks
    overlap = 32
    merge = "overlap"            # or "touch", or "iou" for per-slice tiles of a stack
    iou_threshold = 0.25         # merge = "iou": least IoU joining two planes' objects
    connectivity = 2

    [executor]
    name = "threads"             # threads | processes | serial | a plugin's
    workers = 2                  # other keys are executor options

    [output]
    path = "labels.zarr"
    writer = "zarr"              # other keys are writer options
    overwrite = false
    merge_log = true             # or a .parquet path: every cross-tile join and its evidence
    table = "objects.csv"        # or true: the per-object table (or .parquet)
    intensity_image = true       # intensity columns in the table: the input (true) or a path
    percentiles = [50, 95]       # with intensity_image: exact per-object percentiles
    storage_options = {endpoint_url = "http://localhost:9000"}  # optional, for a URL path

    [postprocess]                # after the run, on the labels written to [output] path
    expand = 5                   # grow every label by 5 px without overlap (cells from nuclei)
    expand_to = "cells.zarr"     # default: the output's name with .expanded.zarr
    expand_spacing = [2.0, 0.5, 0.5]  # optional: voxel size per axis (or "physical"); then
                                 # expand is in those units
    relate = "cells.zarr"        # each object's parent in these labels (e.g. expand_to)
    relate_to = "relations.csv"  # default: the output's name with .relations.csv
    polygons = "objects.geojson" # or a list, e.g. ["objects.geojson", "objects.parquet"]
    polygons_plane = 0           # 3D labels: the plane polygons trace (polygons are 2D)

    [run]
    retries = 2                  # retries of a tile whose segmenter raises
    keep_going = false           # finish the other tiles, then report the failed ones
    skip_empty = 0               # skip tiles whose maximum is at most this
    resume = true                # rerunning after a crash skips finished tiles
    offline = false              # true: never download model weights (BLOCKBUSTER_OFFLINE=1)
    stage_dir = "/scratch/stage" # optional: local folder of the staging area

    [verify]                     # check the seams after the run (``blockbuster verify``)
    windows = 8                  # seam windows re-run and compared
    threshold = 0.99             # object F1 each window must reach

    [plugins]
    block = ["some-plugin"]      # entry points not to load

Values are data only: nothing in a config is executed.
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from blockbuster.errors import ConfigError
from blockbuster.stores import is_url, local_if_file_url
from blockbuster.verify import DEFAULT_THRESHOLD

SECTIONS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "input": {"path": str, "reader": str, "channel_axis": int, "storage_options": dict},
    "segmenter": {"name": str, "output": str, "probability_threshold": (int, float),
                  "instances": str, "min_distance": int, "split_halo": int},
    "tiling": {"tile_shape": (list, str), "overlap": (int, list), "merge": str,
               "iou_threshold": (int, float), "connectivity": int, "memory_budget": int},
    "executor": {"name": str, "workers": int},
    "output": {"path": str, "writer": str, "overwrite": bool, "table": (str, bool),
               "merge_log": (str, bool), "storage_options": dict,
               "intensity_image": (str, bool), "percentiles": list},
    "postprocess": {"expand": (int, float), "expand_to": str, "expand_spacing": (list, str),
                    "relate": str, "relate_to": str, "polygons": (str, list),
                    "polygons_plane": int},
    "run": {"retries": int, "keep_going": bool, "skip_empty": (int, float), "resume": bool,
            "progress": bool, "offline": bool, "stage_dir": str},
    "verify": {"windows": int, "threshold": (int, float)},
    "plugins": {"block": list},
}
OPEN_SECTIONS = {"input", "segmenter", "executor", "output"}  # extra keys are backend options
REQUIRED = {("input", "path"), ("segmenter", "name")}


@dataclass
class RunConfig:
    """A parsed, validated configuration."""

    source: str
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)

    def get(self, section: str, key: str, default: Any = None) -> Any:
        return self.sections.get(section, {}).get(key, default)

    def options(self, section: str) -> dict[str, Any]:
        """The backend options of a section: its keys that are not core keys."""
        core = SECTIONS[section]
        return {k: v for k, v in self.sections.get(section, {}).items() if k not in core}

    def tile_process_arguments(self) -> dict[str, Any]:
        """Keyword arguments of :func:`blockbuster.tile_process` for this configuration."""
        tile_shape = self.get("tiling", "tile_shape")
        overlap = self.get("tiling", "overlap")
        return {
            "image": self.get("input", "path"),
            "fn": self.get("segmenter", "name"),
            "segmenter_options": self.options("segmenter"),
            "output": self.get("segmenter", "output"),
            "probability_threshold": self.get("segmenter", "probability_threshold"),
            "instances": self.get("segmenter", "instances"),
            "min_distance": self.get("segmenter", "min_distance"),
            "split_halo": self.get("segmenter", "split_halo"),
            "reader": self.get("input", "reader"),
            "reader_options": self.options("input") | self._storage_options("input"),
            "channel_axis": self.get("input", "channel_axis"),
            "tile_shape": tuple(tile_shape) if isinstance(tile_shape, list) else tile_shape,
            "overlap": tuple(overlap) if isinstance(overlap, list) else overlap,
            "merge": self.get("tiling", "merge"),
            "iou_threshold": self.get("tiling", "iou_threshold"),
            "connectivity": self.get("tiling", "connectivity"),
            "memory_budget": self.get("tiling", "memory_budget"),
            "executor": self.get("executor", "name"),
            "workers": self.get("executor", "workers"),
            "executor_options": self.options("executor"),
            "retries": self.get("run", "retries", 2),
            "keep_going": self.get("run", "keep_going", False),
            "skip_empty": self.get("run", "skip_empty"),
            "resume": self.get("run", "resume", True),
            "write_to": self.get("output", "path"),
            "writer": self.get("output", "writer"),
            "writer_options": self.options("output") | self._storage_options("output"),
            "overwrite": bool(self.get("output", "overwrite", False)),
            "table": self.get("output", "table"),
            "merge_log": self.get("output", "merge_log"),
            "intensity_image": self.get("output", "intensity_image"),
            "percentiles": self.get("output", "percentiles"),
            "verify": self.get("verify", "windows"),
            "verify_threshold": self.get("verify", "threshold", DEFAULT_THRESHOLD),
            "stage_dir": self.get("run", "stage_dir"),
        }

    def _storage_options(self, section: str) -> dict[str, Any]:
        """``{"storage_options": ...}`` when the section sets them (they go to its backend)."""
        options = self.get(section, "storage_options")
        return {"storage_options": options} if options is not None else {}


def load_config(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read and validate a TOML config; ``overrides`` maps ``"section.key"`` to values."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist.") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}.") from None
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        if not key:
            raise ConfigError(f"override {dotted!r} must look like section.key=value.")
        data.setdefault(section, {})[key] = value
    config = RunConfig(str(path), validate(data, str(path)))
    _resolve_paths(config, path.parent)
    return config


def validate(data: dict[str, Any], source: str) -> dict[str, dict[str, Any]]:
    """Check sections, keys and value types; return the data unchanged when valid."""
    for section, values in data.items():
        if section not in SECTIONS:
            raise ConfigError(
                f"{source}: unknown section [{section}]; valid sections: "
                f"{', '.join(f'[{s}]' for s in SECTIONS)}."
            )
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{section}] must be a table of keys.")
        for key, value in values.items():
            _check_key(source, section, key, value)
    for section, key in REQUIRED:
        if key not in data.get(section, {}):
            raise ConfigError(f"{source}: [{section}] needs the key {key!r}.")
    return data


def _check_key(source: str, section: str, key: str, value: Any) -> None:
    expected = SECTIONS[section].get(key)
    if expected is None:
        if section in OPEN_SECTIONS:
            return
        raise ConfigError(
            f"{source}: [{section}] has no key {key!r}; valid keys: "
            f"{', '.join(SECTIONS[section])}."
        )
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        names = expected.__name__ if isinstance(expected, type) else " or ".join(
            t.__name__ for t in expected
        )
        raise ConfigError(
            f"{source}: [{section}] {key} = {value!r} must be of type {names}."
        )


def _resolve_paths(config: RunConfig, base: Path) -> None:
    """Paths in a config are relative to the config file.

    Input and output paths always; a backend option (e.g. ``[segmenter] model``) when a file or
    folder of that name exists next to the config, so model names stay names.
    """
    for section, key in (("input", "path"), ("output", "path"), ("output", "table"),
                         ("output", "merge_log"), ("output", "image"), ("run", "stage_dir"),
                         ("output", "intensity_image"), ("postprocess", "expand_to"),
                         ("postprocess", "relate"), ("postprocess", "relate_to"),
                         ("postprocess", "polygons")):
        value = config.sections.get(section, {}).get(key)
        if isinstance(value, list):
            config.sections[section][key] = [_relative_to(base, v) for v in value]
        elif value is not None:
            config.sections[section][key] = _relative_to(base, value)
    for section in OPEN_SECTIONS - {"input", "output"}:
        for key, value in config.options(section).items():
            if isinstance(value, str) and not Path(value).is_absolute() and (base / value).exists():
                config.sections[section][key] = str(base / value)


def _relative_to(base: Path, value: Any) -> Any:
    """A local relative path as relative to ``base``; anything else unchanged."""
    value = local_if_file_url(value)
    if isinstance(value, str) and not is_url(value) and not Path(value).is_absolute():
        return str(base / value)
    return value


def run_config(path: str | os.PathLike, overrides: dict[str, Any] | None = None,
               *, progress: bool = False):
    """Run the job a config file describes; returns the labels as a dask array (with
    ``[verify] windows``, the labels and the :class:`~blockbuster.verify.VerifyReport`)."""
    from blockbuster.downloads import offline_mode
    from blockbuster.pipeline import tile_process
    from blockbuster.registry import Registry

    config = load_config(path, overrides)
    postprocessing(config)  # a bad [postprocess] fails before the run
    registry = Registry(block=config.get("plugins", "block", []))
    progress = progress or bool(config.get("run", "progress", False))
    switch = offline_mode() if config.get("run", "offline", False) else contextlib.nullcontext()
    with switch:
        result = tile_process(**config.tile_process_arguments(), registry=registry,
                              progress=progress)
    postprocess_as_configured(config, registry, progress=progress)
    return result


@dataclass(frozen=True)
class Postprocessing:
    """What ``[postprocess]`` writes after the run, checked before it: the grown labels, the
    relations table and the polygon files (``None`` / empty when not asked for)."""

    expanded: str | None = None
    relations: str | None = None
    polygons: tuple[str, ...] = ()
    polygons_plane: int | None = None  # the plane of 3D labels that polygons trace

    def written(self) -> list[tuple[str, str]]:
        """``(what, where)`` of every file it writes, in order."""
        files = [("the labels grown without overlap", self.expanded),
                 ("the relations table", self.relations)]
        files += [("the polygons", path) for path in self.polygons]
        return [(what, where) for what, where in files if where]


def postprocessing(config: RunConfig) -> Postprocessing:
    """Check ``[postprocess]`` and say where it writes; :class:`ConfigError` names the key and
    the fix. Outputs go beside ``[output] path`` by default (``labels.zarr`` ->
    ``labels.expanded.zarr``, ``labels.relations.csv``; ``tissue.ome.zarr`` ->
    ``tissue.expanded.ome.zarr``)."""
    get = functools.partial(config.get, "postprocess")
    for key, base in (("expand_to", "expand"), ("expand_spacing", "expand"),
                      ("relate_to", "relate"), ("polygons_plane", "polygons")):
        if get(key) is not None and get(base) is None:
            raise ConfigError(f"{config.source}: [postprocess] {key} is set but {base} is not; "
                              f"set {base} (or remove {key}).")
    asked = [key for key in ("expand", "relate", "polygons") if get(key) is not None]
    if not asked:
        return Postprocessing()
    output = config.get("output", "path")
    if output is None:
        raise ConfigError(f"{config.source}: [postprocess] {asked[0]} works on the labels "
                          "written to [output] path; set it (e.g. path = \"labels.zarr\").")
    output = output.removesuffix("/")
    zarr = ".ome.zarr" if output.endswith(".ome.zarr") else ".zarr"
    stem = output.removesuffix(zarr)  # tissue.ome.zarr -> tissue.expanded.ome.zarr
    if get("expand") is not None:
        _check_spacing(config, get("expand_spacing"))
    relations = None
    if get("relate") is not None:
        relations = _with_suffix(config, "relate_to", get("relate_to") or stem + ".relations.csv",
                                 (".csv", ".parquet", ".pq"), "a .csv or .parquet table")
        from blockbuster.table import require_table_packages

        require_table_packages("[postprocess] relate", relations)
    return Postprocessing(
        expanded=(get("expand_to") or stem + ".expanded" + zarr) if get("expand") is not None
        else None,
        relations=relations, polygons=_polygon_paths(config, get("polygons")),
        polygons_plane=get("polygons_plane"))


def _check_spacing(config: RunConfig, spacing: Any) -> None:
    numbers = isinstance(spacing, list) and spacing and all(
        isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in spacing)
    if spacing is None or spacing == "physical" or numbers:
        return
    raise ConfigError(f"{config.source}: [postprocess] expand_spacing = {spacing!r}: give the "
                      "voxel size per axis, e.g. [2.0, 0.5, 0.5], or \"physical\" for the "
                      "labels' own scale.")


def _with_suffix(config: RunConfig, key: str, path: str, suffixes: tuple[str, ...],
                 kinds: str) -> str:
    if not path.lower().endswith(suffixes):
        raise ConfigError(f"{config.source}: [postprocess] {key} = {path!r}: use {kinds}.")
    return path


def _polygon_paths(config: RunConfig, value: Any) -> tuple[str, ...]:
    """The polygon files (GeoJSON / GeoParquet by suffix); checks shapely is installed."""
    if value is None:
        return ()
    from blockbuster.polygons import GEOJSON_SUFFIXES, PARQUET_SUFFIXES, require_geo

    paths = value if isinstance(value, list) else [value]
    if not paths or not all(isinstance(p, str) for p in paths):
        raise ConfigError(f"{config.source}: [postprocess] polygons = {value!r}: give a path "
                          "or a list of paths, e.g. [\"objects.geojson\", \"objects.parquet\"].")
    for path in paths:
        _with_suffix(config, "polygons", path, GEOJSON_SUFFIXES + PARQUET_SUFFIXES,
                     "a .geojson (QuPath) or .parquet (GeoParquet) path")
    require_geo()
    return tuple(paths)


def written_labels(config: RunConfig) -> str:
    """Where the run writes its labels: ``[output] path``, or its ``labels/<name>`` for the
    ``ome-zarr`` writer (which puts them inside the image)."""
    from blockbuster.builtin.ome_zarr import DEFAULT_LABELS_NAME

    path = config.get("output", "path")
    if config.get("output", "writer") != "ome-zarr":
        return path
    name = config.options("output").get("name", DEFAULT_LABELS_NAME)
    return f"{path.removesuffix('/')}/labels/{name}"


def postprocess_as_configured(config: RunConfig, registry, progress: Any = False) -> None:
    """``[postprocess]`` on the written labels: expand, then relate (so its parents may be the
    grown labels), then trace polygons with the object table's columns."""
    from blockbuster.expand import expand_labels
    from blockbuster.planning import resolve_table_path
    from blockbuster.polygons import polygons, write_polygons
    from blockbuster.relations import relate

    plan = postprocessing(config)
    arguments = config.tile_process_arguments()
    labels, storage = written_labels(config), config.get("output", "storage_options")
    if plan.expanded:
        # a plain zarr of its own for labels the ome-zarr writer put inside an image
        same_writer = labels == arguments["write_to"]
        expand_labels(labels, config.get("postprocess", "expand"), write_to=plan.expanded,
                      spacing=config.get("postprocess", "expand_spacing"),
                      overwrite=arguments["overwrite"], executor=arguments["executor"],
                      workers=arguments["workers"],
                      executor_options=arguments["executor_options"],
                      writer=arguments["writer"] if same_writer else None,
                      writer_options=arguments["writer_options"] if same_writer else None,
                      storage_options=storage, progress=progress, registry=registry)
    if plan.relations:
        relate(labels, config.get("postprocess", "relate"), table=plan.relations,
               workers=arguments["workers"], storage_options=storage)
    if plan.polygons:
        table = resolve_table_path(arguments["table"], arguments["write_to"])
        shapes = polygons(labels, table=table, plane=plan.polygons_plane,
                          workers=arguments["workers"], storage_options=storage)
        for path in plan.polygons:
            write_polygons(shapes, path, storage_options=storage)
