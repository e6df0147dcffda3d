"""Image formats beyond plain zarr: OME-Zarr (NGFF 0.4/0.5) and TIFF / OME-TIFF / BigTIFF.

Readers and writers here are registered through the ordinary hooks by
:mod:`blockbuster.builtin.formats`; the heavy imports (``tifffile``) happen only when a reader
is created.

* :class:`~blockbuster.formats.ome_zarr.OmeZarrReader` -- reader ``"ome-zarr"``
* :class:`~blockbuster.formats.ome_zarr.OmeZarrLabelsWriter` -- writer ``"ome-zarr"``
* :class:`~blockbuster.formats.tiff.TiffReader` -- reader ``"tiff"``
"""

from blockbuster.formats.ome_zarr import (
    OmeZarrLabelsWriter,
    OmeZarrReader,
    is_ome_zarr,
    read_multiscales,
)
from blockbuster.formats.tiff import TiffReader, is_tiff_path

__all__ = [
    "OmeZarrLabelsWriter",
    "OmeZarrReader",
    "TiffReader",
    "is_ome_zarr",
    "is_tiff_path",
    "read_multiscales",
]
