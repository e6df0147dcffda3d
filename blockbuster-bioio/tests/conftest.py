"""Real files written by libraries that write them: a two-scene OME-TIFF (tifffile, OME-XML
with channel names and physical sizes), a zipped OME-Zarr (``.ozx``) and a TIFF named ``.lsm``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

UM = "micrometer"
CHANNELS = ("membrane", "nuclei")
SCENE1_CHANNELS = ("dapi", "gfp", "rfp")


@dataclass
class OmeTiff:
    path: Path
    scenes: list  # the arrays written, scene by scene (TCZYX, then CYX)


def blobs(shape, seed) -> np.ndarray:
    """Smooth random blobs, standardised: ``> 1`` marks a few dozen objects."""
    data = ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), 2)
    return ((data - data.mean()) / data.std()).astype(np.float32)


@pytest.fixture(scope="session")
def ome_tiff(tmp_path_factory) -> OmeTiff:
    """Scene 0: T=2, C=2 (membrane, nuclei), Z=3, 64x72, 2 x 0.5 x 0.5 micrometer, 5 s apart.
    Scene 1: C=3 (dapi, gfp, rfp), 40x48, 0.25 micrometer pixels. Tiled TIFF pages."""
    import tifffile

    path = tmp_path_factory.mktemp("bioio") / "plate.ome.tif"
    first = blobs((2, 2, 3, 64, 72), seed=1)
    second = blobs((3, 40, 48), seed=2)
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(first, tile=(32, 32), metadata={
            "axes": "TCZYX", "Channel": {"Name": list(CHANNELS)}, "PhysicalSizeZ": 2.0,
            "PhysicalSizeY": 0.5, "PhysicalSizeX": 0.5, "PhysicalSizeZUnit": "µm",
            "PhysicalSizeYUnit": "µm", "PhysicalSizeXUnit": "µm", "TimeIncrement": 5.0,
            "TimeIncrementUnit": "s"})
        tif.write(second, tile=(16, 16), metadata={
            "axes": "CYX", "Channel": {"Name": list(SCENE1_CHANNELS)},
            "PhysicalSizeY": 0.25, "PhysicalSizeX": 0.25})
    return OmeTiff(path, [first, second])


@pytest.fixture(scope="session")
def zipped_ome_zarr(tmp_path_factory):
    """A zipped OME-Zarr (``.ozx``: no core reader opens it; bioio-ome-zarr does), C=2, Z=2,
    two levels, 1 x 0.5 x 0.5 micrometer, and the array written into it (CZYX)."""
    import shutil

    from blockbuster.synthetic import write_image

    folder = tmp_path_factory.mktemp("ozx")
    data = blobs((2, 2, 48, 56), seed=3)
    write_image(folder / "cells.ome.zarr", data, axes="czyx", scale=(1.0, 1.0, 0.5, 0.5),
                units={"z": UM, "y": UM, "x": UM}, channel_labels=["dna", "actin"], levels=2,
                chunks=(1, 1, 16, 16))
    archive = shutil.make_archive(str(folder / "cells"), "zip", folder / "cells.ome.zarr")
    path = Path(archive).rename(folder / "cells.ozx")
    return path, folder / "cells.ome.zarr", data
