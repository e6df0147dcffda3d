"""The reader contribution: a folder blockbuster wrote (a labels zarr, an OME-Zarr labels image,
or an OME-Zarr image with labels) opens as the layers the Run widget adds after a run."""

from __future__ import annotations

from blockbuster_napari._layers import is_output, output_layers


def get_reader(path):
    """napari's ``get_reader``: a function giving the layers, or ``None`` if not ours."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    if not is_output(path):
        return None
    return read_output


def read_output(path):
    path = path[0] if isinstance(path, list) else path
    return output_layers(path)
