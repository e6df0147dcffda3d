"""What the intensity columns of the object table cost: a 2-channel 16384² image.

Builds a 2-channel uint16 zarr (channels first, chunks ``(2, 1024, 1024)``) from the 16384²
nuclei image of ``bench_core.py`` (channel 0) and a cheap second stain derived from it, then
runs, each in a fresh process, one worker, alternated ``--repeats`` times (medians):

- ``no table``: segment channel 0 (threshold + components, 1024² tiles, the touch rule);
- ``table``: the same with ``table=`` (geometry columns);
- ``intensities``: the same with ``table=`` and ``intensity_image=True`` (mean, min, max,
  sum, std of both channels);
- once, ``+ percentiles``: also ``percentiles=[50, 95]``.

Targets (issue 21): the intensity table adds <= 30% to the run time of the same run without it,
and its peak RSS is <= 1.2x. Both ratios are reported against the table run and against the
run without a table, in wall time and in the process's CPU time (user + system: less
disturbed than wall time on a machine shared with other work).

Usage: python bench/bench_measure.py [--quick] [--repeats N] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_core import THRESHOLD, TILE, in_child, warm_imports  # noqa: E402
from reporting import synthetic_nuclei  # noqa: E402

CASES = {"no table": {}, "table": {"table": True},
         "intensities": {"table": True, "intensity_image": True}}
PERCENTILES = {"table": True, "intensity_image": True, "percentiles": [50, 95]}


def build_two_channels(path: Path, nuclei: Path) -> None:
    """Channel 0: the nuclei image; channel 1: a second stain made from it, chunk by chunk."""
    import numpy as np
    import zarr

    if (path / "zarr.json").exists():
        return
    source = zarr.open_array(str(nuclei), mode="r")
    side = source.shape[0]
    array = zarr.create_array(store=str(path), shape=(2, side, side), chunks=(2, TILE, TILE),
                              dtype=np.uint16)
    ramp = (np.add.outer(np.arange(TILE), np.arange(TILE)) % 997).astype(np.uint32)
    for i in range(0, side, TILE):
        for j in range(0, side, TILE):
            first = source[i:i + TILE, j:j + TILE]
            second = (first.astype(np.uint32) * 3 // 5 + 1000 + ramp).astype(np.uint16)
            array[:, i:i + TILE, j:j + TILE] = np.stack([first, second])


def first_channel_components(tile):
    """The bench's segmenter: channel 0 above the threshold, face-connected components."""
    from scipy import ndimage

    return ndimage.label(tile[0] > THRESHOLD)[0]


def cpu_seconds() -> float:
    """CPU time of this process so far, user + system, all its threads."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_case(image: str, options: dict) -> dict:
    """In a child process: one run, its wall and CPU time, stages and peak RSS."""
    warm_imports()
    if options.get("table"):  # what writing the table imports, once per process
        import pandas  # noqa: F401
        import pyarrow.csv  # noqa: F401
    from blockbuster import tile_process
    from blockbuster.memory import peak_rss_mb

    with tempfile.TemporaryDirectory() as tmp:
        t0, cpu0 = time.perf_counter(), cpu_seconds()
        _, stats = tile_process(image, first_channel_components, channel_axis=0,
                                tile_shape=(TILE, TILE), overlap=0, executor="threads",
                                workers=1, write_to=Path(tmp) / "labels.zarr",
                                return_stats=True, **options)
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    return {"wall_s": wall, "cpu_s": cpu, "objects": stats.n_objects,
            "stages_s": stats.stage_seconds, "peak_rss_mb": peak_rss_mb(), "tiles": stats.n_tiles}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4096² instead of 16384²")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-percentiles", action="store_true",
                        help="leave out the run with percentiles")
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--data", default=None, help="where to keep the synthetic images")
    args = parser.parse_args()
    side = 4096 if args.quick else 16384
    data, nuclei = synthetic_nuclei(args.data, side)
    image = data / f"two-channels-{side}.zarr"
    build_two_channels(image, nuclei)
    runs = {name: [] for name in CASES}
    for _ in range(args.repeats):
        for name, options in CASES.items():
            runs[name].append(in_child("run_case", str(image), options, module="bench_measure"))
            print(name, json.dumps(runs[name][-1]), flush=True)
    percentiles = None if args.skip_percentiles else in_child(
        "run_case", str(image), PERCENTILES, module="bench_measure")
    summary = {"side": side, "channels": 2, "repeats": args.repeats,
               "tiles": runs["table"][0]["tiles"], "objects": runs["table"][0]["objects"]}
    for name in CASES:
        summary[name] = {
            "wall_s": statistics.median(r["wall_s"] for r in runs[name]),
            "cpu_s": statistics.median(r["cpu_s"] for r in runs[name]),
            "relabel_s": statistics.median(r["stages_s"]["relabel"] for r in runs[name]),
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs[name]),
            "walls_s": [r["wall_s"] for r in runs[name]]}
    if percentiles is not None:
        summary["+ percentiles"] = {"wall_s": percentiles["wall_s"], "cpu_s": percentiles["cpu_s"],
                                    "relabel_s": percentiles["stages_s"]["relabel"],
                                    "peak_rss_mb": percentiles["peak_rss_mb"],
                                    "walls_s": [percentiles["wall_s"]]}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "measure.json").write_text(json.dumps(summary, indent=1))
    (out / "measure.md").write_text(markdown(summary))
    print(markdown(summary))


def markdown(summary: dict) -> str:
    rows = ["| run | wall s (median) | CPU s (median) | relabel stage s | peak RSS MB | walls s |",
            "|---|---|---|---|---|---|"]
    for name in [name for name in (*CASES, "+ percentiles") if name in summary]:
        r = summary[name]
        rows.append(f"| {name} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | {r['relabel_s']:.2f} | "
                    f"{r['peak_rss_mb']:.0f} | {', '.join(f'{w:.2f}' for w in r['walls_s'])} |")
    with_it = summary["intensities"]
    lines = ["", f"{summary['side']}², {summary['channels']} channels, {summary['tiles']} "
             f"tiles, {summary['objects']} objects, one worker, {summary['repeats']} repeats "
             "alternated (medians).", ""]
    for base in ("table", "no table"):
        time_ratio = with_it["wall_s"] / summary[base]["wall_s"] - 1
        cpu_ratio = with_it["cpu_s"] / summary[base]["cpu_s"] - 1
        rss_ratio = with_it["peak_rss_mb"] / summary[base]["peak_rss_mb"]
        lines.append(
            f"- intensities vs {base}: wall time {100 * time_ratio:+.0f}%, CPU time "
            f"{100 * cpu_ratio:+.0f}% (target <= +30%: "
            f"{'met' if max(time_ratio, cpu_ratio) <= 0.3 else 'missed'}), peak RSS "
            f"x{rss_ratio:.2f} (target <= 1.2: {'met' if rss_ratio <= 1.2 else 'missed'})")
    return "\n".join(rows + lines) + "\n"


if __name__ == "__main__":
    main()
