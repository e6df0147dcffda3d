"""bioimage.io model zoo backend for blockbuster: any zoo model, tiled.

>>> from blockbuster.plugins.bioimageio import bioimageio_fn   # doctest: +SKIP
>>> fn = bioimageio_fn("affable-shark")                          # doctest: +SKIP

Importing this package imports neither bioimageio.core nor torch; they are imported when a
model is first created.
"""

from __future__ import annotations

from blockbuster.plugins.bioimageio._segmenter import (
    BioimageioOptions,
    BioimageioSegmenter,
    bioimageio_fn,
)

__all__ = ["BioimageioOptions", "BioimageioSegmenter", "bioimageio_fn"]
__version__ = "0.2.0"
