"""Cellpose 4 (Cellpose-SAM) plumbing with the real library: runs only where cellpose 4 is
installed (the main test environment has cellpose 3.1, where this file is skipped).

No Cellpose-SAM weights can be downloaded here, so a randomly initialised ViT-L network is
saved under the built-in name ``cpsam``: it finds no cells, but every call path is real
(weights lookup by name, ``CellposeModel`` construction, argument mapping, tile layouts).
ViT-L on a CPU: about 2 minutes per call on a 2-core machine, so several minutes in all.
"""

from __future__ import annotations

import numpy as np
import pytest
from blockbuster.errors import BackendOptionError
from blockbuster.plugins.cellpose import _compat, cellpose_fn

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(_compat.major_version() < 4, reason="cellpose 4 is not installed"),
]


@pytest.fixture(scope="module")
def random_cpsam(tmp_path_factory):
    """A models folder holding random Cellpose-SAM weights as ``cpsam``."""
    import torch

    try:
        from cellpose.vit import CPSAM as network  # cellpose >= 4.2

        prefix = ""
    except ImportError:
        from cellpose.vit_sam import Transformer as network  # cellpose 4.0, 4.1

        prefix = "module."  # their loader strips the DataParallel prefix unconditionally

    folder = tmp_path_factory.mktemp("models")
    state = network().state_dict()
    torch.save({prefix + k: v for k, v in state.items()}, folder / "cpsam")
    return folder


def test_cpsam_by_name_and_layouts(random_cpsam, monkeypatch):
    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(random_cpsam))
    fn = cellpose_fn("cpsam", diameter=30)
    assert fn.settings.major == 4
    rng = np.random.default_rng(0)
    labels = fn(rng.random((1, 96, 96), dtype=np.float32))
    assert labels.shape == (1, 96, 96) and labels.dtype == np.uint32
    with_channels = cellpose_fn("cpsam", channel_axis=0)
    assert with_channels(rng.random((2, 80, 96), dtype=np.float32)).shape == (80, 96)
    prepared = fn.prepare(rng.random((128, 128), dtype=np.float32))
    assert prepared(rng.random((64, 64), dtype=np.float32)).shape == (64, 64)
    with pytest.raises(BackendOptionError, match="no `channels` option"):
        cellpose_fn("cpsam", channels=[2, 3])
