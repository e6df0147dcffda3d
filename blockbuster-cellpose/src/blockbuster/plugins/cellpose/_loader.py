"""Build Cellpose models lazily: once per worker process and device, cached, never pickled.

:func:`get_model` is what a segmenter calls on every tile; it returns the cached model of
its weights file and device, building it under a lock the first time, so several threads
of one process share a model instead of racing to build copies.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blockbuster.errors import InvalidParameterError, ModelNotFoundError
from blockbuster.plugins.cellpose import _device

logger = logging.getLogger("blockbuster.plugins.cellpose")

#: Channel widths of the stock Cellpose 3 network (``CellposeModel`` builds exactly this).
STOCK_NBASE_CP3 = (32, 64, 128, 256)


@dataclass(frozen=True)
class ModelKey:
    """What identifies a loaded model in a process: weights file, its version, device."""

    weights: str
    mtime_ns: int
    major: int
    device: str


class ModelCache:
    """Process-wide cache of built Cellpose models, with a count of builds for diagnostics."""

    def __init__(self) -> None:
        self._models: dict[ModelKey, Any] = {}
        self._lock = threading.Lock()
        self.loads = 0

    def get(self, key: ModelKey, build) -> Any:
        """The model for ``key``, calling ``build()`` only if this process has none yet."""
        model = self._models.get(key)
        if model is not None:
            return model
        with self._lock:
            model = self._models.get(key)
            if model is None:
                model = build()
                self._models[key] = model
                self.loads += 1
        return model

    def clear(self) -> None:
        """Forget every cached model (frees GPU memory once no segmenter holds them)."""
        with self._lock:
            self._models.clear()

    def __len__(self) -> int:
        return len(self._models)


CACHE = ModelCache()


def get_model(weights: Path, major: int, gpu: bool):
    """The Cellpose model for ``weights`` on this worker's device, built on first use."""
    device = _device.select_device(gpu)
    try:
        mtime = weights.stat().st_mtime_ns
    except FileNotFoundError as error:
        raise ModelNotFoundError(
            f"Cellpose weights file {weights} disappeared after the segmenter was created; "
            "restore it or create the segmenter again with an existing file."
        ) from error
    key = ModelKey(str(weights), mtime, major, str(device))
    return CACHE.get(key, lambda: build_model(weights, major, device))


def build_model(weights: Path, major: int, device):
    """Construct a ``cellpose.models.CellposeModel`` from a local weights file."""
    _device.configure_cpu_threads()
    logger.info("loading Cellpose model %s on %s (pid %d)", weights, device, os.getpid())
    with forbid_downloads():
        if major >= 4:
            return _build_cp4(weights, device)
        return _build_cp3(weights, device)


@contextlib.contextmanager
def forbid_downloads():
    """Make any Cellpose download attempt fail with :class:`ModelNotFoundError`.

    Weights are resolved to existing files (downloaded if need be) by :func:`cellpose_fn` in
    the parent process, so a worker should never reach Cellpose's downloader; this guard
    turns a surprise into a clear error instead of N workers racing for one file.
    """
    from cellpose import utils

    original = utils.download_url_to_file

    def refuse(url, dst, *args, **kwargs):
        raise ModelNotFoundError(
            f"Cellpose tried to download {url} to {dst} while building a model; blockbuster "
            "never downloads weights there (cellpose_fn fetches them once, in the parent "
            "process). Copy the file there yourself or pass the path of a local weights file."
        )

    utils.download_url_to_file = refuse
    try:
        yield
    finally:
        utils.download_url_to_file = original


def _build_cp4(weights: Path, device):
    from cellpose import models

    return models.CellposeModel(
        gpu=device.type != "cpu", device=device, pretrained_model=str(weights)
    )


def _build_cp3(weights: Path, device):
    """Cellpose 3 model; weights of a non-stock width get a matching ``CPnet``.

    ``CellposeModel`` always builds the stock network (``nbase = [nchan, 32, 64, 128, 256]``);
    weights trained with other widths (e.g. a small network trained with
    ``cellpose.train.train_seg``) are loaded into a ``CPnet`` built from their own shapes.
    """
    import torch

    from cellpose import models

    state = torch.load(str(weights), map_location="cpu", weights_only=True)
    if "W2" in state:
        raise InvalidParameterError(
            f"{weights} holds Cellpose 4 (Cellpose-SAM) weights, but cellpose 3 is installed; "
            "pip install 'cellpose>=4' or pass Cellpose 3 weights."
        )
    nbase = infer_nbase(state, weights)
    gpu = device.type != "cpu"
    if tuple(nbase[1:]) == STOCK_NBASE_CP3:
        return models.CellposeModel(
            gpu=gpu, device=device, pretrained_model=str(weights), nchan=nbase[0]
        )
    model = models.CellposeModel(gpu=gpu, device=device, pretrained_model=False, nchan=nbase[0])
    _install_custom_net(model, weights, nbase, device)
    return model


def infer_nbase(state: dict, weights: Path | str = "weights") -> list[int]:
    """Channel widths ``[nchan, n1, n2, n3, n4]`` of a Cellpose 3 ``CPnet`` state dict."""
    widths = []
    level = 0
    while f"downsample.down.res_down_{level}.conv.conv_0.2.weight" in state:
        conv = state[f"downsample.down.res_down_{level}.conv.conv_0.2.weight"]
        if level == 0:
            widths.append(int(conv.shape[1]))
        widths.append(int(conv.shape[0]))
        level += 1
    if level == 0 or "output.2.weight" not in state:
        raise InvalidParameterError(
            f"{weights} is not a Cellpose 3 network (no CPnet layers found); pass weights "
            "saved by Cellpose (CellposeModel / train_seg) or a built-in model name."
        )
    return widths


def _install_custom_net(model, weights: Path, nbase: list[int], device) -> None:
    """Replace ``model.net`` by a ``CPnet`` of widths ``nbase`` loaded from ``weights``."""
    net = _custom_cpnet_class()(list(nbase), model.nclasses, sz=3, mkldnn=model.mkldnn,
                                max_pool=True)
    net = net.to(device)
    net.load_model(str(weights), device=device)
    model.net = net
    model.net_ortho = None
    model.nbase = list(nbase)
    model.pretrained_model = str(weights)
    model.diam_mean = float(net.diam_mean.data.cpu().numpy()[0])
    model.diam_labels = float(net.diam_labels.data.cpu().numpy()[0])


STYLE_SIZE_CP3 = 256


@functools.lru_cache(maxsize=1)
def _custom_cpnet_class():
    """``CPnet`` whose style vector is zero-padded to the 256 values Cellpose 3 expects.

    ``cellpose.core.run_net`` stores styles in arrays of width 256 (the stock bottleneck);
    a narrower network's style is padded with zeros. Styles only feed Cellpose's size model,
    which blockbuster does not use, so the masks are unaffected.
    """
    import torch.nn.functional as F

    from cellpose.resnet_torch import CPnet

    class StylePaddedCPnet(CPnet):
        def forward(self, data):
            output, style, downsampled = super().forward(data)
            missing = STYLE_SIZE_CP3 - style.shape[-1]
            if missing > 0:
                style = F.pad(style, (0, missing))
            return output, style, downsampled

    return StylePaddedCPnet
