"""TensorFlow process setup: thread pools sized per worker, one GPU per worker.

Run once per process, before TensorFlow executes its first operation (TensorFlow refuses to
change its thread pools afterwards).
"""

from __future__ import annotations

import logging
import os
import warnings

from blockbuster import current_worker
from blockbuster.backend import gpu_of_worker, threads_per_worker

log = logging.getLogger(__name__)
_done = False


def configure_tensorflow(threads: int | None = None) -> None:
    """Size TensorFlow's intra/inter-op pools and choose this worker's GPU (once per process).

    ``threads`` overrides the automatic ``cores // workers`` (from
    :func:`blockbuster.current_worker`). With GPUs, worker ``index`` uses GPU
    ``index % n_gpus`` with memory growth enabled, so workers can share a device.
    """
    global _done
    if _done:
        return
    _done = True
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    worker = current_worker()
    n = threads or threads_per_worker(worker)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(n)
    except RuntimeError as error:  # TensorFlow already ran something in this process
        warnings.warn(
            f"TensorFlow was already initialized in this process, so its thread pools keep "
            f"their size ({error}); create the StarDist segmenter before using TensorFlow "
            "to let blockbuster size them per worker.",
            RuntimeWarning,
            stacklevel=3,
        )
    _pick_gpu(tf, worker)
    log.debug("TensorFlow: %d threads for worker %s", n, worker)


def _pick_gpu(tf, worker) -> None:
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return
    gpu = gpus[gpu_of_worker(len(gpus), worker)]
    try:
        tf.config.set_visible_devices(gpu, "GPU")
        tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError as error:
        warnings.warn(f"could not pin worker {worker.index} to {gpu.name}: {error}", RuntimeWarning,
                      stacklevel=3)
