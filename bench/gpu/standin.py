"""The GPU path's CPU side, measured without a GPU: a stand-in ``fn`` that sleeps as a GPU would.

    python bench/gpu/standin.py --out bench/results/standin

The stand-in takes batches of 16 tiles like ``torch_fn`` on a GPU, sleeps ``--gpu-ms`` per tile
(the forward pass: it releases the GIL, as waiting for a CUDA result does) and returns a
speckled probability map (~10% foreground in small pieces, like a random network's output) for
blockbuster to label. One worker, as on one GPU. The share of the run the stand-in "GPU" is
busy (``busy``: seconds asleep / wall) is the GPU busy fraction such a run could reach, and
``outside_fn`` the share of the worker's time outside ``fn``: what is left of the core's
per-tile work (reading, labelling, staging, writing) on the worker's critical path.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


class SleepingSegmenter:
    """Sleeps ``seconds`` per tile and returns a fixed speckled probability map."""

    batch_size = 16

    def __init__(self, seconds: float, halo: int, side: int) -> None:
        from scipy import ndimage

        self.seconds, self.halo = seconds, halo
        noise = ndimage.gaussian_filter(np.random.default_rng(0).random((side, side),
                                                                         np.float32), 1.0)
        self.speckle = (noise > np.quantile(noise, 0.9)).astype(np.float32)

    def blockbuster_needs(self):
        from blockbuster import Needs

        return Needs(halo=self.halo, workers=1, output="probability")

    def __call__(self, tile):
        return self.segment_batch([tile])[0]

    def segment_batch(self, tiles):
        time.sleep(self.seconds * len(tiles))
        return [self.speckle[: t.shape[0], : t.shape[1]].copy() for t in tiles]


def run(size: int, tile: int, gpu_ms: float, halo: int, folder: Path) -> dict:
    import zarr
    from blockbuster import tile_process

    source = folder / "image.zarr"
    image = zarr.create_array(str(source), shape=(size, size), chunks=(tile, tile),
                              dtype=np.uint16, overwrite=True)
    image[...] = np.random.default_rng(1).integers(0, 4000, (size, size), dtype=np.uint16)
    fn = SleepingSegmenter(gpu_ms / 1000, halo, tile + 2 * halo)
    started = time.perf_counter()
    _, stats = tile_process(str(source), fn, tile_shape=(tile, tile), overlap=halo,
                            write_to=folder / "labels.zarr", overwrite=True, return_stats=True)
    wall = time.perf_counter() - started
    return {"size": size, "tile": tile, "halo": halo, "gpu_ms_per_tile": gpu_ms,
            "n_tiles": stats.n_tiles, "n_objects": stats.n_objects, "wall_s": round(wall, 3),
            "stage_s": {k: round(v, 3) for k, v in stats.stage_seconds.items()},
            "busy": round(stats.n_tiles * gpu_ms / 1000 / wall, 3),
            "outside_fn": round(1 - stats.seconds_in_fn / wall, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--halo", type=int, default=32)
    parser.add_argument("--gpu-ms", default="22,60", help="stand-in GPU ms per tile (comma list)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/standin"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="bench-standin-"))
    rows = []
    try:
        run(args.tile * 2, args.tile, 0.0, args.halo, folder)  # imports and first calls
        for gpu_ms in [float(v) for v in args.gpu_ms.split(",")]:
            rows.append(run(args.size, args.tile, gpu_ms, args.halo, folder))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    report = {"python": platform.python_version(), "rows": rows}
    (args.out / "standin.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
