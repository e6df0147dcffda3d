"""The ``cellpose-distributed`` peer of ``peers.py``: Cellpose's own distributed mode.

Runs ``cellpose.contrib.distributed_segmentation.distributed_eval`` (cellpose 3.1) on a dask
``LocalCluster`` of 2 worker processes with 1 thread each. That module needs zarr 2 while
blockbuster needs zarr 3, so this script runs with the python of its own environment
(``make bench-env``) and talks to ``peers.py`` through files in the current directory::

    python cellpose_distributed_peer.py JOB.json

``JOB.json`` names ``image`` (a .npy file), ``labels`` (the .npy to write), ``result`` (the JSON
to write), ``blocksize``, ``weights`` (a Cellpose 3 weights file) and ``eval_kwargs``. The result
holds the wall time of the ``distributed_eval`` call (starting the cluster and a warm-up call on a
corner come before it: ``cluster_start_s``, ``warm_up_s``), the seconds the workers spent in
``CellposeModel.eval`` divided by the number of workers (``in_fn_s``), the peak RSS summed over
this process and its workers, and how many times the workers built a Cellpose model.

``distributed_eval`` builds ``cellpose.models.CellposeModel(**model_kwargs)`` for every block,
and ``CellposeModel`` only builds the stock network widths. The workers therefore get a
``CellposeModel`` that also loads narrower networks (such as the tiny test network of
blockbuster-cellpose) from the widths of the weights' own layers, built the same way: once
per block.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import dask
import distributed
import numpy as np

WORKERS = 2
#: blockbuster's memory helper (standard library only), loaded by path: this environment has
#: no blockbuster (it needs zarr 3, this one zarr 2).
MEMORY_MODULE = Path(__file__).resolve().parents[1] / "blockbuster-core/src/blockbuster/memory.py"
#: Width of the style vector ``cellpose.core.run_net`` stores (the stock bottleneck).
STYLE_SIZE = 256


def peak_rss_mb() -> float:
    """This process's own peak RSS in MB (``blockbuster.memory.peak_rss_mb``). Defined in the
    script, so dask sends it to the workers by value and each loads the helper itself."""
    spec = importlib.util.spec_from_file_location("blockbuster_memory", MEMORY_MODULE)
    memory = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(memory)
    return memory.peak_rss_mb()


def network_widths(state: dict) -> list[int]:
    """Channel widths ``[nchan, n1, n2, ...]`` of a Cellpose 3 ``CPnet`` state dict."""
    widths, level = [], 0
    while (key := f"downsample.down.res_down_{level}.conv.conv_0.2.weight") in state:
        if level == 0:
            widths.append(int(state[key].shape[1]))
        widths.append(int(state[key].shape[0]))
        level += 1
    return widths


def any_width_model_class():
    """A ``CellposeModel`` for Cellpose 3 weights of any width that counts builds and eval time."""
    import torch
    import torch.nn.functional as F
    from cellpose import models
    from cellpose.resnet_torch import CPnet

    class StylePaddedCPnet(CPnet):
        """Pads a narrow network's style vector to the width ``run_net`` stores."""

        def forward(self, data):
            output, style, downsampled = super().forward(data)
            return output, F.pad(style, (0, STYLE_SIZE - style.shape[-1])), downsampled

    class AnyWidthCellposeModel(models.CellposeModel):
        builds = 0
        seconds_in_eval = 0.0

        def __init__(self, pretrained_model: str, **kwargs):
            state = torch.load(pretrained_model, map_location="cpu", weights_only=True)
            nbase = network_widths(state)
            super().__init__(pretrained_model=False, nchan=nbase[0], **kwargs)
            self.net = StylePaddedCPnet(nbase, self.nclasses, sz=3, mkldnn=self.mkldnn,
                                        max_pool=True).to(self.device)
            self.net.load_model(pretrained_model, device=self.device)
            self.net_ortho, self.nbase, self.pretrained_model = None, nbase, pretrained_model
            self.diam_mean = float(self.net.diam_mean.data[0])
            self.diam_labels = float(self.net.diam_labels.data[0])
            AnyWidthCellposeModel.builds += 1

        def eval(self, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return super().eval(*args, **kwargs)
            finally:
                AnyWidthCellposeModel.seconds_in_eval += time.perf_counter() - t0

    return AnyWidthCellposeModel


class AnyWidthModels(distributed.WorkerPlugin):
    """Makes ``cellpose.models.CellposeModel`` the any-width model on every worker."""

    def setup(self, worker):
        from cellpose import models

        models.CellposeModel = any_width_model_class()


def worker_figures() -> dict:
    """This worker's model builds, seconds in ``eval`` and peak RSS."""
    from cellpose import models

    model = models.CellposeModel
    return {"builds": model.builds, "seconds": model.seconds_in_eval, "rss": peak_rss_mb()}


def reset_worker_figures() -> None:
    from cellpose import models

    models.CellposeModel.builds, models.CellposeModel.seconds_in_eval = 0, 0.0


def start_cluster() -> distributed.LocalCluster:
    """Worker processes with one thread each, ``.client`` set as ``distributed_eval`` expects.

    dask's nannies start workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which makes Cellpose's
    ``eval`` about twice as slow (5.5 s instead of 2.7 s on a 3 x 352 x 352 block); these
    workers keep glibc's default, like any plain process.
    """
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ"))
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        cluster = distributed.LocalCluster(n_workers=WORKERS, threads_per_worker=1,
                                           dashboard_address=None)
    cluster.client = distributed.Client(cluster)
    cluster.client.register_plugin(AnyWidthModels())
    return cluster


def segment(cluster, input_zarr, job: dict, write_path: str):
    """``distributed_eval`` of ``input_zarr`` into ``write_path``; returns the labels array."""
    from cellpose.contrib import distributed_segmentation

    labels, _ = distributed_segmentation.distributed_eval(
        input_zarr, tuple(job["blocksize"]), write_path, cluster=cluster,
        model_kwargs={"pretrained_model": job["weights"]},
        eval_kwargs=dict(job["eval_kwargs"]), temporary_directory=".")
    return labels


def run(job: dict) -> dict:
    """Start the cluster, warm it up on a corner of 2 x 2 blocks (untimed, like every peer of
    peers.py: numba compiles parts of Cellpose on first use), then segment the image."""
    from cellpose.contrib import distributed_segmentation

    blocksize = tuple(job["blocksize"])
    image = np.load(job["image"])
    corner = image[tuple(slice(0, 2 * b) for b in blocksize)]
    corner_zarr = distributed_segmentation.numpy_array_to_zarr("corner.zarr", corner, blocksize)
    image_zarr = distributed_segmentation.numpy_array_to_zarr("image.zarr", image, blocksize)
    t0 = time.perf_counter()
    with start_cluster() as cluster, cluster.client as client:
        started = time.perf_counter()
        segment(cluster, corner_zarr, job, "corner-labels.zarr")
        client.run(reset_worker_figures)
        warm = time.perf_counter()
        labels = segment(cluster, image_zarr, job, "labels.zarr")
        wall = time.perf_counter() - warm
        workers = list(client.run(worker_figures).values())
    np.save(job["labels"], labels[...])
    return {"wall_s": wall, "cluster_start_s": started - t0, "warm_up_s": warm - started,
            "in_fn_s": sum(w["seconds"] for w in workers) / WORKERS,
            "peak_rss_mb": peak_rss_mb() + sum(w["rss"] for w in workers),
            "model_builds": sum(w["builds"] for w in workers)}


if __name__ == "__main__":
    job = json.loads(Path(sys.argv[1]).read_text())
    Path(job["result"]).write_text(json.dumps(run(job)))
