"""Job fingerprints: what identifies a run, so a rerun can resume and an output can be
recognised as this same job's."""

from __future__ import annotations

import json

from blockbuster._version import __version__
from blockbuster.tiling import TileGrid


def job_fingerprint(image, segmenter, grid: TileGrid, merge: str, connectivity,
                    pixel_map=None, iou_threshold=None) -> str:
    """The job's identity: the input (:class:`~blockbuster.image.ImageView`), the segmenter
    (:class:`~blockbuster.segmenter.Segmenter`), the tiling and the merge."""
    job = {
        "connectivity": connectivity,
        "input": image.identity(),
        "fn": segmenter.describe(),
        "tile_shape": grid.tile_shape,
        "overlap": grid.overlap,
        "merge": merge,
        "channel_axis": image.channel_axis,
        "blockbuster": __version__,
    }
    if iou_threshold is not None:  # merge="iou" only, so other jobs' stages still resume
        job["iou_threshold"] = iou_threshold
    if pixel_map is not None:  # absent for instances, so older stages still resume
        job["output"] = pixel_map.describe()
    return json.dumps(job, sort_keys=True)
