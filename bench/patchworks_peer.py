"""The ``patchworks`` peer of ``peers.py``: patchworks 3.3.0's ``tile_process``.

patchworks (GPL-3.0) is driven here through its public API only, as its documentation shows:
``patchworks.tile_process(image, fn, tile_shape=..., overlap=..., max_workers=...,
write_to=...)``; none of its code is copied. It runs in its own environment,
``bench/.venv-patchworks`` (``make bench-env-patchworks``: patchworks==3.3.0 and
blockbuster-core, whose built-in segmenters give both tools the very same ``fn``), and talks
to ``peers.py`` through files in the current directory. The same script runs blockbuster in that
environment (``"tool": "blockbuster"`` in the job: the ``blockbuster-pw-env`` peer), so the two
are compared in one interpreter with the same packages: a process's peak RSS here is mostly what
it imported, and ``import dask.array`` alone costs ~100 MB more where pandas, pyarrow and xarray
are installed (the main environment) than where they are not::

    python patchworks_peer.py JOB.json

``JOB.json`` names ``image`` (a ``.npy`` file, or a zarr array read through
``dask.array.from_zarr`` with its own chunks), ``fn`` (``{"kind": "threshold" | "watershed",
...options}``), ``tile_shape``, ``overlap``, ``workers``, ``labels`` (the ``.npy`` to write)
and ``result`` (the JSON to write). An untimed warm-up on a corner of 2 x 2 tiles comes
first, as for every peer; the timed call writes its labels to a zarr (``write_to``), with
patchworks' defaults otherwise (labels unique but not consecutive: its fastest path). The
result holds the wall time, the peak RSS of this process (``VmHWM``; with a ``.npy`` input,
after the labels are read into memory, as blockbuster's ``compute=True`` result is on those
cases; with a zarr input, before) and of its largest child process, if any, and the number of
objects.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import dask.array as da
import numpy as np


def segmenter(spec: dict):
    from blockbuster.builtin.segmenters import Threshold, Watershed

    options = {k: v for k, v in spec.items() if k != "kind"}
    return {"threshold": Threshold, "watershed": Watershed}[spec["kind"]](**options)


def open_image(path: str, tile_shape: tuple[int, ...], tool: str):
    """For patchworks a dask array (of the ``.npy``, or of the zarr with its own chunks); for
    blockbuster the ``.npy`` as a dask array (computed into memory as ``peers.py`` gives it)
    or the zarr's path."""
    if path.endswith(".npy"):
        return da.from_array(np.load(path, mmap_mode="r"), chunks=tile_shape)
    return path if tool == "blockbuster" else da.from_zarr(path)


def run(image: da.Array, fn, job: dict, out: Path):
    """The job's tool on ``image``, labels written to the zarr ``out``."""
    if job.get("tool", "patchworks") == "blockbuster":
        from blockbuster import tile_process

        overlap = job["overlap"]
        return tile_process(image if isinstance(image, str) else image.compute(), fn,
                            tile_shape=tuple(job["tile_shape"]), overlap=overlap,
                            merge="overlap" if overlap else "touch", executor="threads",
                            workers=job["workers"], write_to=str(out))
    import patchworks

    return patchworks.tile_process(
        image, fn, tile_shape=tuple(job["tile_shape"]), overlap=job["overlap"],
        max_workers=job["workers"], progress=False, write_to=str(out))


def main(job_path: str) -> None:
    from blockbuster.memory import peak_rss_mb

    job = json.loads(Path(job_path).read_text())
    tile_shape = tuple(job["tile_shape"])
    image = open_image(job["image"], tile_shape, job.get("tool", "patchworks"))
    fn = segmenter(job["fn"])
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        corner = da.from_zarr(image) if isinstance(image, str) else image
        corner = corner[tuple(slice(0, 2 * t) for t in tile_shape)]
        t0 = time.perf_counter()
        run(corner, fn, job, Path(tmp) / "warm.zarr")
        warm_up = time.perf_counter() - t0
        t0 = time.perf_counter()
        labels = run(image, fn, job, Path(tmp) / "labels.zarr")
        wall = time.perf_counter() - t0
        in_memory = job["image"].endswith(".npy")
        if in_memory:  # held in memory like blockbuster's compute=True result on such cases
            labels = np.asarray(labels)
        result = {"wall_s": wall, "warm_up_s": warm_up, "peak_rss_mb": peak_rss_mb(),
                  "children_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
                  / 1024}
        array = np.asarray(labels)
        result["objects"] = int(np.unique(array).size - (array.min() == 0))
        np.save(job["labels"], array)
    Path(job["result"]).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
