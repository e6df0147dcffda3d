"""Built-in format plugins: OME-Zarr (reader and labels writer) and TIFF / OME-TIFF / BigTIFF.

Factories are registered as ``"module:attribute"`` strings, so discovery imports neither
tifffile nor the format modules. ``pick_reader`` is ``tryfirst`` so that an OME-Zarr path is
read by the OME-Zarr reader rather than the built-in plain-zarr reader.
"""

from __future__ import annotations

from typing import Any

from blockbuster.hookspecs import hookimpl


@hookimpl
def register_readers(register) -> None:
    register("ome-zarr", "blockbuster.formats.ome_zarr:OmeZarrReader",
             aliases=("ome_zarr", "omezarr", "ngff"),
             description="OME-Zarr image (NGFF 0.4/0.5, zarr v2/v3, bioformats2raw layout); "
                         "options level=, channel= (index or omero label), series=")
    register("tiff", "blockbuster.formats.tiff:TiffReader",
             aliases=("tif", "ome-tiff", "ome-tif", "bigtiff"),
             description="TIFF / OME-TIFF / BigTIFF file (.tif, .tiff, .ome.tif, .btf), read "
                         "tile by tile; options series=, level=, channel=")


@hookimpl
def register_writers(register) -> None:
    register("ome-zarr", "blockbuster.formats.ome_zarr:OmeZarrLabelsWriter",
             aliases=("ome_zarr", "omezarr", "ngff"),
             description="labels/<name> of an OME-Zarr image (image-label metadata, the image's "
                         "axes, units and scale, multiscale pyramid); options name=, image=, "
                         "levels=, downsample=")


@hookimpl(tryfirst=True)
def pick_reader(source: Any) -> str | None:
    from blockbuster.formats.ome_zarr import is_ome_zarr
    from blockbuster.formats.tiff import is_tiff_path

    if is_ome_zarr(source):
        return "ome-zarr"
    if is_tiff_path(source):
        return "tiff"
    return None
