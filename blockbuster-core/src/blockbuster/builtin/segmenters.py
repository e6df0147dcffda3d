"""Built-in segmenters (no model needed): threshold + connected components, and watershed."""

from typing import Any

from blockbuster.hookspecs import hookimpl
from blockbuster.segmenter import Needs


@hookimpl
def register_segmenters(register) -> None:
    register("threshold", "blockbuster.segmenters:Threshold", aliases=("otsu",),
             description="global threshold (Otsu or given), smoothing, min size, components")
    register("watershed", "blockbuster.segmenters:Watershed",
             description="threshold, then distance-transform watershed splits touching blobs")


@hookimpl(trylast=True)
def segmenter_needs(segmenter: Any) -> Needs | None:
    method = getattr(segmenter, "blockbuster_needs", None)
    needs = method() if callable(method) else None
    return needs if isinstance(needs, Needs) else None
