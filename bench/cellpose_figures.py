"""The figures of docs/cellpose.md ("Measured here"): agreement, time and memory.

1. Agreement (object F1 at IoU >= 0.5, :func:`blockbuster.metrics.match_objects`) of
   ``tile_process`` (256² tiles, the default halo of two diameters, threads) with one
   whole-image run of the tiny test network on the 1024² disks image of
   ``tests/test_cellpose_model.py`` (seed 123), with image-wide percentiles (the default) and
   with ``global_normalization=False``; and of the whole-image run with the true disks.
2. Times, warm (after a run on a small image), wall and process CPU seconds: one padded 352²
   tile, the whole 1024² image, the 16 tiles on 2 threads; a 512² image with a randomly
   initialised stock-width network.
3. Memory of the stock-width network: ``blockbuster-cellpose/scripts/measure_memory.py``
   (each tile size in a fresh process, growth of its own peak RSS).

Usage: python bench/cellpose_figures.py [--skip-memory] [--out bench/results]
(writes cellpose.md and cellpose.json).
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from reporting import figure_arguments, save  # noqa: E402

PACKAGE = HERE.parent / "blockbuster-cellpose"
TINY = PACKAGE / "tests" / "data" / "tiny_disks_cp3"
DIAMETER = 24  # the tiny network's disks; the default halo is 2 x 24 = 48 px
TILE = (256, 256)


def script(name: str):
    """``blockbuster-cellpose/scripts/<name>.py`` as a module."""
    spec = importlib.util.spec_from_file_location(f"cellpose_{name}", PACKAGE / "scripts" /
                                                  f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timed(call) -> tuple[object, dict]:
    """``call()`` and its wall and process CPU seconds (all threads; robust to a busy machine)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = call()
    return result, {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}


def agreement_and_time() -> dict:
    import numpy as np

    from blockbuster import tile_process
    from blockbuster.metrics import match_objects
    from blockbuster.plugins.cellpose import cellpose_fn

    image, truth = script("make_tiny_model").synthetic_disks((1024, 1024), seed=123)
    fn = cellpose_fn(str(TINY), diameter=DIAMETER)
    fn(image[:128, :128])  # warm up: model, numba
    whole, whole_timing = timed(lambda: fn(image))
    found = {"disks": int(truth.max()), "whole": whole_timing,
             "whole_vs_truth": match_objects(truth, whole).f1}
    for name, option in (("global", True), ("per_tile", False)):
        tiled_fn = cellpose_fn(str(TINY), diameter=DIAMETER, global_normalization=option)
        tiled, timing = timed(lambda f=tiled_fn: tile_process(
            image, f, tile_shape=TILE, executor="threads", workers=2, compute=True))
        match = match_objects(whole, np.asarray(tiled))
        found[name] = {"f1": match.f1, "false_merges": match.false_merges,
                       "false_splits": match.false_splits, "tiled_2_threads": timing}
    halo = fn.blockbuster_needs().halo
    padded = image[: TILE[0] + 2 * halo, : TILE[1] + 2 * halo]
    _, found["padded_tile"] = timed(lambda: fn(padded))
    found["halo"], found["padded_side"] = halo, padded.shape[0]
    return found


def stock_network_time() -> dict:
    """Seconds of one 512² image with a randomly initialised stock-width network (warm)."""
    import numpy as np

    from blockbuster.plugins.cellpose import cellpose_fn

    with tempfile.TemporaryDirectory() as tmp:
        fn = cellpose_fn(str(script("measure_memory").stock_weights(Path(tmp))), diameter=30)
        rng = np.random.default_rng(0)
        fn(rng.random((96, 96), dtype=np.float32))
        return timed(lambda: fn(rng.random((512, 512), dtype=np.float32)))[1]


def memory(sizes=(512, 1024, 2048)) -> dict:
    measure = script("measure_memory")
    with tempfile.TemporaryDirectory() as tmp:
        weights = measure.stock_weights(Path(tmp))
        growth = {size: measure.measure(weights, size) for size in sizes}
    slope = (growth[sizes[-1]] - growth[sizes[0]]) / (sizes[-1] ** 2 - sizes[0] ** 2)
    return {"growth_mb": {str(s): g / 1e6 for s, g in growth.items()},
            "bytes_per_extra_pixel": slope,
            "fixed_mb": (growth[sizes[0]] - slope * sizes[0] ** 2) / 1e6}


def seconds(timing: dict) -> str:
    return f"{timing['wall_s']:.1f} s wall, {timing['cpu_s']:.1f} s CPU"


def markdown(found: dict) -> str:
    g, p = found["global"], found["per_tile"]
    lines = [
        "| what | result |", "| --- | --- |",
        f"| 1024² image of {found['disks']} disks, 256² tiles, default halo "
        f"({found['halo']} px), vs one whole-image run | F1 {g['f1']:.4f}, "
        f"{g['false_merges']} false merges, "
        f"{g['false_splits']} false splits; with `global_normalization=False`: F1 {p['f1']:.4f}, "
        f"{p['false_merges']} / {p['false_splits']} |",
        f"| whole-image run vs true disks | F1 {found['whole_vs_truth']:.4f} |",
        f"| one {found['padded_side']}² padded tile (tiny network) | "
        f"{seconds(found['padded_tile'])} |",
        f"| whole 1024² image, one call | {seconds(found['whole'])} |",
        f"| 16 tiles on 2 threads | {seconds(g['tiled_2_threads'])} |",
        f"| 512² image, random stock-width network | {seconds(found['stock_512'])} |",
    ]
    if found.get("memory"):
        m = found["memory"]
        sizes = ", ".join(f"{mb:.0f} MB for {s}²" for s, mb in m["growth_mb"].items())
        lines.append(f"| memory, stock-width network (peak RSS growth of one tile) | {sizes}: "
                     f"~{m['fixed_mb']:.0f} MB fixed + ~{m['bytes_per_extra_pixel']:.0f} B "
                     "per pixel |")
    return "\n".join(lines) + "\n"


def main() -> None:
    args = figure_arguments(__doc__)
    found = agreement_and_time()
    found["stock_512"] = stock_network_time()
    if not args.skip_memory:
        found["memory"] = memory()
    save(args.out, "cellpose", found, markdown(found))


if __name__ == "__main__":
    main()
