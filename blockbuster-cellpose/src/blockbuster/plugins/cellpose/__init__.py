"""Cellpose backend for blockbuster: segment huge images tile by tile with Cellpose.

>>> from blockbuster import tile_process
>>> from blockbuster.plugins.cellpose import cellpose_fn
>>> fn = cellpose_fn("cyto3", gpu=True, diameter=30)          # doctest: +SKIP
>>> tile_process("image.zarr", fn, tile_shape=(1, 1024, 1024), overlap=60,
...              write_to="labels.zarr", progress=True)       # doctest: +SKIP

Also selectable by name: ``[segmenter] name = "cellpose"  model = "cyto3"  diameter = 30``.
Importing this module does not import cellpose or torch; the model is built lazily, once per
worker process.
"""

from blockbuster.plugins.cellpose._device import GPUUnavailableWarning
from blockbuster.plugins.cellpose._loader import CACHE as model_cache
from blockbuster.plugins.cellpose._segmenter import (
    CellposeSegmenter,
    CellposeSettings,
    cellpose_fn,
)

__version__ = "0.2.0"

__all__ = [
    "CellposeSegmenter",
    "CellposeSettings",
    "GPUUnavailableWarning",
    "__version__",
    "cellpose_fn",
    "model_cache",
]
