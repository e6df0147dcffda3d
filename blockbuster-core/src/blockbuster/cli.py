"""The ``blockbuster`` command: ``run``, ``verify``, ``expand``, ``relate``, ``polygons``,
``plugins``, ``info``, ``models`` and ``--version``.

Exit codes: 0 on success; 1 with a one-line error on stderr for any blockbuster error (the
full traceback only with ``--debug``; a ``keep_going`` run adds the list of failed tiles), or
when ``verify`` finds the seams below its threshold; 2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import tomllib

from blockbuster._version import __version__
from blockbuster.errors import (
    BlockbusterError,
    ConfigError,
    InvalidParameterError,
    ModelNotFoundError,
    TilesFailedError,
    UnknownBackendError,
)
from blockbuster.verify import DEFAULT_THRESHOLD, DEFAULT_WINDOWS


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except (BlockbusterError, OSError) as error:
        if args.debug:
            raise
        print(f"blockbuster: error: {error_message(error)}", file=sys.stderr)
        return 1


def error_message(error: BaseException) -> str:
    """One line for an error; a ``keep_going`` failure keeps its list of failed tiles."""
    text = str(error) or type(error).__name__
    return text if isinstance(error, TilesFailedError) else text.splitlines()[0]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blockbuster",
        description="Tiled segmentation of arbitrarily large images with consistent labels.",
    )
    parser.add_argument("--version", action="version", version=f"blockbuster {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    commands = parser.add_subparsers(dest="command")

    run = commands.add_parser("run", help="run the job described by a TOML config")
    run.add_argument("config", help="path of the TOML config")
    run.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                     help="override a config key (value parsed as TOML, else a string)")
    run.add_argument("--segmenter", help="override [segmenter] name")
    run.add_argument("--tile-shape", help="override [tiling] tile_shape, e.g. 1,1024,1024 or auto")
    run.add_argument("--overlap", type=int, help="override [tiling] overlap")
    run.add_argument("--merge", choices=["touch", "overlap", "iou"],
                     help="override [tiling] merge")
    run.add_argument("--iou-threshold", type=float, help="override [tiling] iou_threshold")
    run.add_argument("--executor", help="override [executor] name")
    run.add_argument("--workers", type=int, help="override [executor] workers")
    run.add_argument("--output", help="override [output] path")
    run.add_argument("--overwrite", action="store_true", help="replace existing output")
    run.add_argument("--progress", action="store_true", help="show a progress bar")
    run.add_argument("--merge-log", action="store_true",
                     help="write every cross-tile join beside the labels ([output] merge_log)")
    run.add_argument("--expand", type=float, metavar="PIXELS",
                     help="then grow the labels by PIXELS into a new zarr ([postprocess] expand)")
    run.set_defaults(handler=cmd_run)
    accept_debug_after(run)

    verify = commands.add_parser(
        "verify", help="run a config's job, then check its seams against windows run whole")
    verify.add_argument("config", help="path of the TOML config")
    verify.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config key (value parsed as TOML, else a string)")
    verify.add_argument("--windows", type=int,
                        help=f"seam windows to check ([verify] windows, default "
                             f"{DEFAULT_WINDOWS})")
    verify.add_argument("--threshold", type=float,
                        help=f"object F1 each window must reach ([verify] threshold, default "
                             f"{DEFAULT_THRESHOLD})")
    verify.add_argument("--overlap", type=int, help="override [tiling] overlap")
    verify.add_argument("--progress", action="store_true", help="show a progress bar")
    verify.set_defaults(handler=cmd_verify)
    accept_debug_after(verify)

    expand = commands.add_parser(
        "expand", help="grow every label by a distance without overlap (cells from nuclei), "
                       "tile by tile, equal to skimage's expand_labels")
    expand.add_argument("labels", help="path or URL of the labels (e.g. a run's output zarr)")
    expand.add_argument("output", help="path or URL of the new labels zarr")
    expand.add_argument("--distance", type=float, required=True, metavar="DISTANCE",
                        help="how far to grow: pixels, or the units of --spacing")
    expand.add_argument("--spacing", type=parse_spacing, metavar="SIZES",
                        help="voxel size per axis, e.g. 2,0.5,0.5 (then --distance is in those "
                             "units), or 'physical' for the labels' scale (default: pixels)")
    expand.add_argument("--tile-shape", help="tile core per axis, e.g. 1024,1024 (default: "
                                             "the labels' chunks)")
    expand.add_argument("--executor", help="threads (default), processes, serial...")
    expand.add_argument("--workers", type=int, help="number of workers")
    expand.add_argument("--overwrite", action="store_true", help="replace existing output")
    expand.add_argument("--progress", action="store_true", help="show a progress bar")
    expand.set_defaults(handler=cmd_expand)
    accept_debug_after(expand)

    relate = commands.add_parser(
        "relate", help="relate two label images: each child's parent (nuclei -> cells)")
    relate.add_argument("children", help="label image of the children (e.g. nuclei.zarr)")
    relate.add_argument("parents", help="label image of the parents, same shape (e.g. cells.zarr)")
    relate.add_argument("-o", "--output", required=True,
                        help="table to write (.csv or .parquet)")
    relate.add_argument("--pairs", action="store_true",
                        help="one row per overlapping (child, parent) pair instead")
    add_tiling_options(relate)
    relate.set_defaults(handler=cmd_relate)
    accept_debug_after(relate)

    polygons = commands.add_parser(
        "polygons", help="trace a 2D label image into polygons (GeoJSON for QuPath, GeoParquet)")
    polygons.add_argument("labels", help="label image (e.g. nuclei.zarr)")
    polygons.add_argument("-o", "--output", required=True, action="append",
                          help="file to write: .geojson (QuPath) or .parquet (GeoParquet); "
                               "repeat for both")
    polygons.add_argument("--table", help="object table whose columns become properties")
    polygons.add_argument("--plane", type=int,
                          help="the z plane (index on the first axis) of a 3D label image")
    polygons.add_argument("--physical", action="store_true",
                          help="GeoJSON coordinates in physical units (QuPath wants pixels)")
    polygons.add_argument("--classification", help="QuPath class of every object, e.g. Nucleus")
    add_tiling_options(polygons)
    polygons.set_defaults(handler=cmd_polygons)
    accept_debug_after(polygons)

    plugins = commands.add_parser("plugins", help="list installed plugins and backends")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")
    plugins.set_defaults(handler=cmd_plugins)
    accept_debug_after(plugins)

    info = commands.add_parser("info", help="describe an image and suggest a tiling")
    info.add_argument("image", help="path of the image")
    info.add_argument("--reader", help="reader name (chosen from the path otherwise)")
    info.set_defaults(handler=cmd_info)
    accept_debug_after(info)

    models = commands.add_parser(
        "models", help="list the pretrained models of installed backends; `models pull NAME`")
    models.add_argument("--json", action="store_true", help="machine-readable output")
    models.set_defaults(handler=cmd_models)
    accept_debug_after(models)
    actions = models.add_subparsers(dest="action")
    pull = actions.add_parser("pull", help="download a model's weights now (for offline runs)")
    pull.add_argument("name", help="model name, e.g. cyto3")
    pull.add_argument("--backend", help="backend whose model it is, when several know the name")
    pull.set_defaults(handler=cmd_models_pull)
    accept_debug_after(pull)
    return parser


def accept_debug_after(command: argparse.ArgumentParser) -> None:
    """Let ``--debug`` also follow the command (``blockbuster run x.toml --debug``)."""
    command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                         help=argparse.SUPPRESS)


def cmd_run(args: argparse.Namespace) -> int:
    from blockbuster.config import run_config

    result = run_config(args.config, overrides_from(args), progress=args.progress)
    labels, report = result if isinstance(result, tuple) else (result, None)
    print(f"wrote {labels.shape} labels ({labels.dtype}) "
          f"to {labels_path(args)}", file=sys.stderr)
    for what, where in postprocessing_of(args).written():
        print(f"wrote {what} to {where}", file=sys.stderr)
    return 0 if report is None else print_report(report)


def postprocessing_of(args: argparse.Namespace):
    from blockbuster.config import load_config, postprocessing

    return postprocessing(load_config(args.config, overrides_from(args)))


def cmd_expand(args: argparse.Namespace) -> int:
    """Grow the labels at ``args.labels`` by ``--distance`` into ``args.output``."""
    from blockbuster.expand import expand_labels

    tile_shape = [int(v) for v in args.tile_shape.split(",")] if args.tile_shape else None
    grown = expand_labels(args.labels, args.distance, write_to=args.output,
                          spacing=args.spacing, tile_shape=tile_shape, executor=args.executor,
                          workers=args.workers, overwrite=args.overwrite,
                          progress=args.progress)
    unit = "px" if args.spacing is None else "(in the units of --spacing)"
    print(f"wrote {grown.shape} labels ({grown.dtype}) grown by {args.distance:g} {unit} "
          f"to {args.output}", file=sys.stderr)
    return 0


def parse_spacing(text: str) -> str | list[float]:
    """``--spacing``: ``physical`` or numbers separated by commas."""
    if text == "physical":
        return text
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give the voxel size per axis separated by commas, e.g. 2,0.5,0.5, or "
            "'physical'") from None


def cmd_verify(args: argparse.Namespace) -> int:
    """Run the job with ``[verify]`` on (8 windows unless set); print the table and verdict."""
    from blockbuster.config import load_config, run_config

    overrides = dict(parse_assignment(item) for item in args.set)
    flags = {"verify.windows": args.windows, "verify.threshold": args.threshold,
             "tiling.overlap": args.overlap}
    overrides.update({k: v for k, v in flags.items() if v is not None})
    if load_config(args.config, overrides).get("verify", "windows") is None:
        overrides["verify.windows"] = DEFAULT_WINDOWS
    _, report = run_config(args.config, overrides, progress=args.progress)
    return print_report(report)


def print_report(report) -> int:
    """Print a verification's table and one-line verdict; the exit status (1 on FAIL)."""
    print(report.table())
    print(report.verdict())
    return 0 if report.passed else 1


def labels_path(args: argparse.Namespace) -> str:
    from blockbuster.config import load_config

    return load_config(args.config, overrides_from(args)).get("output", "path") or "(temporary)"


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    overrides = dict(parse_assignment(item) for item in args.set)
    flags = {
        "segmenter.name": args.segmenter,
        "tiling.overlap": args.overlap,
        "tiling.merge": args.merge,
        "tiling.iou_threshold": args.iou_threshold,
        "executor.name": args.executor,
        "executor.workers": args.workers,
        "output.path": args.output,
        "output.overwrite": True if args.overwrite else None,
        "output.merge_log": True if getattr(args, "merge_log", False) else None,
        "postprocess.expand": getattr(args, "expand", None),
    }
    if args.tile_shape:
        flags["tiling.tile_shape"] = (
            "auto" if args.tile_shape == "auto" else [int(v) for v in args.tile_shape.split(",")]
        )
    overrides.update({k: v for k, v in flags.items() if v is not None})
    return overrides


def parse_assignment(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or "." not in key:
        raise ConfigError(f"--set {text!r} must look like section.key=value.")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip(), value


def add_tiling_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--tile-shape", type=parse_tile_shape,
                         help="tile shape of the pass, e.g. 1024,1024 (default: chunk-aligned)")
    command.add_argument("--workers", type=int, help="threads (default: one per core, up to 8)")


def parse_tile_shape(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give integers separated by commas, e.g. 1024,1024") from None


def cmd_relate(args: argparse.Namespace) -> int:
    """Write the child -> parent table of two label images."""
    from blockbuster.relations import relate

    table = relate(args.children, args.parents, tile_shape=args.tile_shape,
                   workers=args.workers, pairs=args.pairs, table=args.output)
    with_parent = int((table["parent"] > 0).sum()) if not args.pairs else len(table)
    what = "pairs" if args.pairs else f"children ({with_parent} with a parent)"
    print(f"wrote {len(table)} {what} to {args.output}", file=sys.stderr)
    return 0


def cmd_polygons(args: argparse.Namespace) -> int:
    """Trace a 2D label image into one polygon per object and write each output file."""
    from blockbuster.polygons import polygons, write_polygons

    shapes = polygons(args.labels, table=args.table, plane=args.plane,
                      tile_shape=args.tile_shape, workers=args.workers)
    for output in args.output:
        write_polygons(shapes, output, physical=args.physical,
                       classification=args.classification)
        print(f"wrote {len(shapes)} polygons to {output}", file=sys.stderr)
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from blockbuster.registry import Registry

    registry = Registry()
    if args.json:
        print(json.dumps(plugins_report(registry), indent=2))
        return 0
    for line in plugins_text(registry):
        print(line)
    return 0


def plugins_report(registry) -> dict[str, Any]:
    """What ``blockbuster plugins --json`` prints: plugins, backends with aliases, failures."""
    from blockbuster.registry import KINDS

    backends = {kind: [{"name": b.name, "aliases": list(b.aliases),
                        "description": b.description, "plugin": b.plugin}
                       for b in registry.backends(kind)] for kind in KINDS}
    return {"plugins": [vars(p) for p in registry.plugins()], "backends": backends,
            "failures": [vars(f) for f in registry.failures],
            "blocked": [vars(f) for f in registry.skipped]}


def plugins_text(registry) -> list[str]:
    """One line per plugin, then one per backend: name, aliases and a one-line description."""
    from blockbuster.registry import KINDS

    lines = []
    for plugin in registry.plugins():
        where = f"{plugin.distribution} {plugin.version}".strip()
        lines.append(f"{plugin.name}  ({where or 'registered in code'})")
        for kind in KINDS:
            for backend in registry.backends(kind):
                if backend.plugin == plugin.name:
                    lines.append("    " + describe_backend(backend))
    for failure in registry.failures:
        lines.append(f"FAILED {failure.name}  ({failure.distribution} {failure.version}): "
                     f"{failure.error}")
    for skipped in registry.skipped:
        lines.append(f"BLOCKED {skipped.name}  ({skipped.distribution} {skipped.version}): "
                     f"{skipped.error}")
    return lines


def describe_backend(backend) -> str:
    aliases = f" (aliases: {', '.join(backend.aliases)})" if backend.aliases else ""
    about = backend.description.splitlines()[0] if backend.description else ""
    return f"{backend.kind:<9} {backend.name}{aliases}" + (f" - {about}" if about else "")


def cmd_models(args: argparse.Namespace) -> int:
    """List every model each installed backend's store knows: cached or not, size."""
    from blockbuster.registry import Registry

    listing = {store.name: store.load().models() for store in Registry().model_stores()}
    if args.json:
        print(json.dumps({backend: [{"name": m.name, "cached": m.cached, "size": m.size,
                                     "path": str(m.path)} for m in found]
                          for backend, found in listing.items()}, indent=2))
        return 0
    if not listing:
        print("no installed backend provides pretrained models")
    for backend, found in listing.items():
        print(f"{backend}  ({sum(m.cached for m in found)} of {len(found)} cached)")
        for m in found:
            state = f"cached  {m.size / 2**20:8.1f} MiB" if m.cached else "not cached"
            print(f"    {m.name:<32} {state}  {m.path}")
    return 0


def cmd_models_pull(args: argparse.Namespace) -> int:
    """Download one model's weights through the backend that knows its name."""
    from blockbuster.registry import Registry

    stores = Registry().model_stores()
    if args.backend is not None:
        stores = [s for s in stores if s.name == args.backend]
        if not stores:
            raise UnknownBackendError(f"no installed backend {args.backend!r} provides models; "
                                      "`blockbuster models` lists those that do.")
    loaded = {store.name: store.load() for store in stores}
    owners = [name for name, store in loaded.items()
              if any(m.name == args.name for m in store.models())]
    if not owners and args.backend is not None:
        owners = list(loaded)  # an open-ended store (a model zoo) fetches names it never listed
    if not owners:
        raise ModelNotFoundError(f"no installed backend knows a model {args.name!r}; "
                                 "`blockbuster models` lists the names (for a model zoo id, "
                                 "name the backend: --backend bioimageio).")
    if len(owners) > 1:
        raise InvalidParameterError(f"several backends know {args.name!r} "
                                    f"({', '.join(owners)}); choose one with --backend.")
    path = loaded[owners[0]].pull(args.name)
    print(f"{owners[0]} model {args.name}: {path}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from blockbuster.readers import describe
    from blockbuster.registry import Registry
    from blockbuster.tiling import auto_tile_shape

    reader = Registry().open_image(args.image, reader=args.reader)
    axes = tuple(reader.axes or ())
    channel = axes.index("c") if "c" in axes else None  # tile_shape is spatial: drop c
    spatial = [i for i in range(len(reader.shape)) if i != channel]
    channels = reader.shape[channel] if channel is not None else 1
    suggestion = auto_tile_shape([reader.shape[i] for i in spatial],
                                 bytes_per_voxel=reader.dtype.itemsize * channels + 28,
                                 overlap=(0,) * len(spatial), workers=2, budget_bytes=2**30,
                                 chunks=[reader.chunks[i] for i in spatial]
                                 if reader.chunks else None)
    print(f"shape:  {reader.shape}" + (f"  ({per_axis(reader.axes, reader.shape)})"
                                          if reader.axes else ""))
    print(f"dtype:  {reader.dtype}")
    print(f"chunks: {reader.chunks}")
    print(f"axes:   {reader.axes or 'unknown'}")
    physical = physical_sizes(reader)
    if physical:
        print(f"physical pixel size: {physical}")
    for label, text in describe(reader).items():
        print(f"{label}: {text}")
    by_name = f"  ({per_axis([axes[i] for i in spatial], suggestion)})" if axes else ""
    print(f"suggested tile_shape (1 GiB for 2 workers): {list(suggestion)}{by_name}")
    return 0


def per_axis(axes, values) -> str:
    return ", ".join(f"{a}={v}" for a, v in zip(axes, values))


def physical_sizes(reader) -> str:
    """``z=2.0 micrometer, y=0.5 micrometer, ...`` for the axes whose scale the reader knows."""
    meta = reader.metadata() if hasattr(reader, "metadata") else {}
    scale, units = meta.get("scale"), meta.get("units") or ()
    if not scale or not reader.axes or len(scale) != len(reader.axes):
        return ""
    units = tuple(units) + (None,) * (len(scale) - len(units))
    known = [f"{a}={s:g}" + (f" {u}" if u else "")
             for a, s, u in zip(reader.axes, scale, units) if a != "c" and (u or s != 1.0)]
    return ", ".join(known)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
