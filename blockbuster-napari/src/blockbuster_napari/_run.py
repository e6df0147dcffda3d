"""What the Run widget asks of blockbuster, free of Qt: one run as a :class:`RunRequest`, run in
a worker thread with progress events and a cancel flag, and the tiling a run would pick."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blockbuster import tile_process
from blockbuster.errors import InvalidParameterError, RunCancelledError
from blockbuster.progress import ProgressEvent

CANCELLED = "run cancelled from napari."


@dataclass
class RunRequest:
    """One run as the widget's fields describe it (the arguments of ``tile_process``)."""

    image: Any  # a path or URL, or an array (an image layer's data)
    segmenter: str
    write_to: Path
    segmenter_options: dict = field(default_factory=dict)
    reader: str | None = None
    reader_options: dict = field(default_factory=dict)
    tile_shape: tuple[int, ...] | str | None = None
    overlap: int | tuple[int, ...] | None = None
    executor: str = "threads"
    workers: int | None = None
    writer: str = "zarr"
    writer_options: dict = field(default_factory=dict)
    table: bool = True
    merge_log: bool = False
    registry: Any = None  # the widget's, so the segmenters it lists are the ones that run

    def arguments(self) -> dict[str, Any]:
        """Keyword arguments of :func:`blockbuster.tile_process` (after the image)."""
        return dict(segmenter=self.segmenter, segmenter_options=self.segmenter_options,
                    reader=self.reader, reader_options=self.reader_options,
                    tile_shape=self.tile_shape, overlap=self.overlap, executor=self.executor,
                    workers=self.workers, writer=self.writer, writer_options=self.writer_options,
                    write_to=self.write_to, table=self.table or None,
                    merge_log=self.merge_log or None, registry=self.registry)

    @property
    def labels_name(self) -> str | None:
        """The labels image's name inside an OME-Zarr output (the ``ome-zarr`` writer)."""
        return self.writer_options.get("name", "segmentation") if self.writer == "ome-zarr" \
            else None


def run(request: RunRequest, *, progress: Callable[[ProgressEvent], None],
        cancel: threading.Event):
    """Run ``request``, telling ``progress`` every event; stop with
    :class:`~blockbuster.errors.RunCancelledError` at the next event once ``cancel`` is set
    (finished tiles stay staged: the same request run again resumes). Returns the RunStats."""

    def tell(event: ProgressEvent) -> None:
        if cancel.is_set():
            raise RunCancelledError(CANCELLED)
        progress(event)

    _, stats = tile_process(request.image, progress=tell, return_stats=True,
                            **request.arguments())
    return stats


def suggest_tiling(image: Any, segmenter: str, segmenter_options: dict, *,
                   reader: str | None = None, reader_options: dict | None = None,
                   workers: int | None = None, registry=None):
    """The tile shape and overlap a run would pick for ``image`` with this segmenter: from the
    segmenter's ``Needs`` (halo, memory, alignment) and the memory budget, as ``tile_process``
    plans them when neither is given."""
    from blockbuster.image import ImageView
    from blockbuster.planning import plan_tiling
    from blockbuster.registry import Registry

    registry = registry if registry is not None else Registry()
    fn = registry.segmenter(segmenter, **segmenter_options)
    view = ImageView.open(registry.open_image(image, reader=reader, **(reader_options or {})))
    needs = registry.needs(fn)
    executor = registry.executor(None, workers=workers or needs.workers)
    grid = plan_tiling(view, None, None, needs, executor.workers, None)
    return tuple(grid.tile_shape), tuple(grid.overlap)


def parse_shape(text: str, what: str) -> tuple[int, ...] | int | str | None:
    """``"1, 256, 256"`` -> ``(1, 256, 256)``; ``"8"`` -> ``8``; ``""`` -> ``None`` (the
    run picks); ``"auto"`` stays."""
    text = text.strip().strip("()[]")
    if not text:
        return None
    if text == "auto":
        return text
    try:
        values = tuple(int(v) for v in text.replace(" ", ",").split(",") if v)
    except ValueError:
        raise InvalidParameterError(
            f"{what} {text!r}: give whole numbers separated by commas, e.g. 1, 256, 256."
        ) from None
    return values[0] if len(values) == 1 else values


def shape_text(values) -> str:
    return ", ".join(str(v) for v in values)
