"""StarDist backend for blockbuster.

>>> from blockbuster import tile_process
>>> from blockbuster.plugins.stardist import stardist_fn
>>> fn = stardist_fn("2D_versatile_fluo", prob_thresh=0.5, nms_thresh=0.4)
>>> tile_process("slide.zarr", fn, tile_shape=(2048, 2048), overlap=64, write_to="nuclei.zarr")

Importing this package does not import TensorFlow or stardist; the model is loaded lazily,
once per worker process, on the first tile.
"""

from ._normalization import Intensities, Percentiles
from ._segmenter import StarDistSegmenter, stardist_fn

__all__ = ["Intensities", "Percentiles", "StarDistSegmenter", "stardist_fn"]
