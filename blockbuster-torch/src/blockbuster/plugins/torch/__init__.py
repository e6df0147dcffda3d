"""PyTorch backend for blockbuster: run your own model on every tile.

>>> from blockbuster.plugins.torch import torch_fn           # doctest: +SKIP
>>> fn = torch_fn(my_model, device="auto", batch_size=8,      # doctest: +SKIP
...               output="semantic", instance="connected-components")

Importing this package does not import :mod:`torch`; torch is imported when a
model is first loaded.  All imports of the real ``torch`` inside this package are
absolute, so this subpackage (``blockbuster.plugins.torch``) never shadows it.
"""

from __future__ import annotations

from blockbuster.plugins.torch._segmenter import TorchSegmenter, torch_fn

__all__ = ["TorchSegmenter", "torch_fn"]
__version__ = "0.2.0"
