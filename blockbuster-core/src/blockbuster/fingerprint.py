"""Job fingerprints: what identifies a run, so a rerun can resume and an output can be
recognised as this same job's."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from blockbuster._version import __version__
from blockbuster.tiling import TileGrid


def job_fingerprint(image, segmenter, grid: TileGrid, merge: str, connectivity) -> str:
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
    return json.dumps(job, sort_keys=True)


def describe_function(fn: Callable) -> str:
    """A stable description of ``fn`` for job fingerprints.

    A segmenter may define ``blockbuster_fingerprint()``; otherwise functions are described by
    their code and simple closure values, objects by their ``repr`` (when the class defines one)
    or their attributes.
    """
    custom = getattr(fn, "blockbuster_fingerprint", None)
    if callable(custom):
        return str(custom())
    target = getattr(fn, "__func__", fn)
    code = getattr(target, "__code__", None)
    if code is not None:
        name = f"{target.__module__}.{target.__qualname__}"
        cells = [_simple(c.cell_contents) for c in (target.__closure__ or ())]
        body = code.co_code + repr(code.co_consts).encode() + repr(cells).encode()
        return name + ":" + hashlib.sha1(body).hexdigest()
    kind = f"{type(fn).__module__}.{type(fn).__qualname__}"
    if type(fn).__repr__ is not object.__repr__:
        return f"{kind}:{fn!r}"
    return f"{kind}:{sorted((k, _simple(v)) for k, v in vars(fn).items())!r}"


def _simple(value: Any) -> Any:
    if isinstance(value, int | float | str | bool | tuple | type(None)):
        return value
    return type(value).__qualname__
