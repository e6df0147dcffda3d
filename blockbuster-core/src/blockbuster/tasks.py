"""The worker side of a run: the :class:`Job` each worker receives once, and the three tasks.

Everything here crosses the pickling boundary: the job is sent to each worker once by the
executor (cloudpickle for processes, see :mod:`blockbuster.builtin.executors`), and each task
``task(job, item)`` runs in a worker and returns a small, picklable result to the parent
(:mod:`blockbuster.pipeline`). Tasks take short runs of neighbouring tiles and overlap their
reads and writes with ``fn`` (:mod:`blockbuster.background`).
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np

from blockbuster._label_kernels import apply_lut
from blockbuster.background import MAX_PENDING_WRITES, Background
from blockbuster.errors import (
    BlockbusterError,
    ImageReadError,
    InvalidParameterError,
    TileFunctionError,
)
from blockbuster.faces import (
    check_label_budget,
    class_faces,
    inner_faces,
    local_labels,
    outer_faces,
)
from blockbuster.faults import read_failure, retrying, write_failure
from blockbuster.image import ImageView
from blockbuster.intensity import IntensityRequest, add_percentiles, channels_first
from blockbuster.merge import tile_edges
from blockbuster.pixelmaps import split_label
from blockbuster.read_cache import BlockCache
from blockbuster.relabel import TileTable
from blockbuster.runs import LabelRuns
from blockbuster.segmenter import Segmenter
from blockbuster.staging import Stage, TileRecord
from blockbuster.table import TileStatistics, tile_statistics
from blockbuster.tiling import Tile, TileGrid, span
from blockbuster.worker import current_worker, usable_cores
from blockbuster.writers import Writer

MAX_IO_THREADS = 4  # a GPU model's readers, and its stagers, per worker (see io_threads)


@dataclass
class Job:
    """Everything a worker needs; sent to each worker once per run."""

    image: ImageView
    segmenter: Segmenter
    grid: TileGrid
    merge: str
    connectivity: int | None
    stage: Stage
    writer: Writer
    keep_going: bool = False
    skip_empty: Any = None
    table: bool = False
    output: str = ""  # where the writer writes, for error messages
    iou_threshold: float | None = None  # merge="iou" only
    blocks: BlockCache | None = None  # decoded input blocks, per process (None: read directly)
    intensity: IntensityRequest | None = None  # table with intensity columns

    def read(self, region: tuple[slice, ...], tile: int | None = None) -> np.ndarray:
        """The input at the spatial ``region`` (of ``tile``), through the block cache when
        there is one."""
        if self.blocks is None:
            return self.image.read(region)
        return self.blocks.read(self.image, region, tile)


@dataclass
class SegmentResult:
    """What a segment task reports: label counts, time in ``fn``, and failed tiles."""

    counts: list[tuple[int, int]] = field(default_factory=list)
    seconds: float = 0.0
    empty: int = 0
    failed: list[str] = field(default_factory=list)
    peak_rss_mb: float = 0.0
    hint: str | None = None  # a sign that fn returned a pixel map as instances


def batches(items: list, size: int) -> list[list]:
    """``items`` cut into consecutive lists of ``size`` (the last may be shorter)."""
    return [items[i : i + size] for i in range(0, len(items), size)]


def ramped_batches(items: list, size: int) -> list[list]:
    """``items`` cut into consecutive batches of at most ``size`` that start and end small:
    1, 2, 4, ... up to ``size`` and back down, as evenly as possible between.

    A task's first call of ``fn`` then waits for one tile's read instead of a whole batch's,
    and once ``fn``'s last call returns only one tile is left to stage, so a GPU model idles
    for about two tiles, not two batches, where a task starts and ends (0.3 s per task of
    64 tiles with batches of 16, a fifth of what a small network spends on them).
    """
    ramp = [1 << k for k in range((size - 1).bit_length())]  # 1, 2, 4, ... below size
    while ramp and 2 * sum(ramp) > len(items):
        ramp.pop()
    middle = len(items) - 2 * sum(ramp)
    parts = -(-middle // size)
    sizes = ramp + [middle // parts + (k < middle % parts) for k in range(parts)] + ramp[::-1]
    starts = list(itertools.accumulate(sizes, initial=0))
    return [items[a:b] for a, b in zip(starts, starts[1:])]


# -- segment ------------------------------------------------------------------------------------
def segment_task(job: Job, indices: list[int]) -> SegmentResult:
    """Read, segment and stage a run of tiles, retrying reads and ``fn`` on failure.

    A tile that cannot be read or segmented stops the task, or with ``keep_going`` is listed
    in the result while the others go on. The next batch is read while ``fn`` works on this one,
    and segmented tiles are labelled, staged and written behind it (:func:`_stage_tile`); the
    task returns once they are all on disk.
    """
    result = SegmentResult()
    with Background(pending=job.segmenter.batch_size + MAX_PENDING_WRITES,
                    threads=io_threads(job)) as io:
        runs = ramped_batches(indices, job.segmenter.batch_size)
        for tiles, images in io.read_ahead(runs, partial(_read_tiles, job, io)):
            busy = [(t, image) for t, image in zip(tiles, images)
                    if not _unreadable(job, t, image, result)
                    and not _skipped_as_empty(job, t, image, result, io)]
            if busy:
                _segment_batch(job, busy, result, io)
    result.peak_rss_mb = _peak_rss_mb()
    return result


def segment_claimed_task(job: Job, ticket: int) -> SegmentResult:
    """:func:`segment_task` on the run this worker process claims next (worker processes
    sharing blocks: :meth:`~blockbuster.shared_blocks.SharedBlockCache.claim_run`); the parent
    hands out one ``ticket`` per run."""
    return segment_task(job, job.blocks.claim_run())


def _read_tiles(job: Job, io: Background, indices: list[int]) -> tuple[list[Tile], list]:
    tiles = [job.grid.tile(i) for i in indices]
    return tiles, io.each(partial(_read_tile, job), tiles)


def _read_tile(job: Job, tile: Tile) -> np.ndarray | ImageReadError:
    """The tile's padded input, tried like ``fn`` (``retries``, backoff on transient errors);
    after the last try, the :class:`ImageReadError` saying where and why, returned so that the
    rest of the run goes on."""
    try:
        return retrying(partial(job.read, tile.padded, tile.index), job.segmenter.retries)
    except Exception as error:
        where = f"tile {tile.index} at {tile.bounds()}"
        if tile.padded != tile.core:
            where += f" (read with its halo: {span(tile.padded)})"
        failure = read_failure(error, job.image.source, where, job.segmenter.retries + 1,
                               job.image.unreadable_chunks(tile.padded))
        failure.__cause__ = error
        return failure


def _unreadable(job: Job, tile: Tile, image, result: SegmentResult) -> bool:
    """Whether the tile's read failed: raised, or listed with ``keep_going``."""
    if not isinstance(image, ImageReadError):
        return False
    if not job.keep_going:
        raise image
    result.failed.append(f"tile {tile.index} at {tile.bounds()}: {image.reason}")
    return True


def _skipped_as_empty(job: Job, tile: Tile, image, result: SegmentResult, io: Background) -> bool:
    if not _is_empty(job, tile, image):
        return False
    io.write(job.stage.write_tile, tile, None, TileRecord(0, {}, empty=True))
    result.counts.append((tile.index, 0))
    result.empty += 1
    return True


def _segment_batch(job: Job, busy: list, result: SegmentResult, io: Background) -> None:
    tiles, images = [t for t, _ in busy], [image for _, image in busy]
    measured = [_measured_values(job, t, image) for t, image in busy]  # before fn sees them
    try:
        labels, seconds = job.segmenter.segment(images, tiles)
    except TileFunctionError as error:
        if not job.keep_going:
            raise
        # one line each: the traceback stays on the error, out of the summary
        reason = str(error).splitlines()[0].removesuffix(" Original traceback:")
        result.failed.extend(f"tile {t.index} at {t.bounds()}: {reason}" for t in tiles)
        return
    result.seconds += seconds
    behind = _stages_behind(job)
    for tile, raw, values in zip(tiles, labels, measured):
        if behind:
            io.write(_stage_tile, job, tile, raw, values, result)
        else:
            local, record = _stage_contents_of(job, tile, raw, result)
            rows = _table_rows_of(job, tile, local, record, values)
            io.write(_write_staged, job, tile, local, record, result, rows)


def _stages_behind(job: Job) -> bool:
    """Whether segmented tiles are staged behind ``fn`` (:func:`_stage_tile`).

    Yes for a GPU model: a ``fn`` that takes batches, or that asks for its own number of
    workers (one per GPU, its CPU-side work overlapped inside the worker), so that ``fn`` and
    the GPU it feeds go on with the next tiles while these are counted and staged. A plain
    ``fn`` runs one worker per core and stages on the worker's own thread, whose memory it
    already uses (a second thread allocating tile-sized arrays keeps a malloc arena of its own,
    10-25 MiB per worker).
    """
    return job.segmenter.batch_size > 1 or job.segmenter.needs.workers is not None


def io_threads(job: Job) -> int:
    """Threads a segment task reads its next batch with, and stages its finished tiles with:
    ``$BLOCKBUSTER_IO_THREADS`` if set, else one for a plain ``fn`` (its workers are one per
    core already) and, for a GPU model (:func:`_stages_behind`), one per core of its worker's
    share of the machine, at most :data:`MAX_IO_THREADS`.

    A GPU model's own thread mostly waits for the GPU, while reading (decompression) and
    staging (labelling, compression, file writes) release the GIL for most of their time and
    spread over the cores. With the stand-in of ``bench/gpu/standin.py`` at 5 ms a tile (a
    small network), 2 threads each took its segment stage from 1.15-1.22 s to 0.82-0.91 s
    even on 2 cores; at 22 ms a tile, where the stand-in is the bottleneck, nothing changed.
    """
    chosen = os.environ.get("BLOCKBUSTER_IO_THREADS", "").strip()
    if chosen:
        return _chosen_io_threads(chosen)
    if not _stages_behind(job):
        return 1
    return max(1, min(MAX_IO_THREADS, usable_cores() // current_worker().count))


def _chosen_io_threads(chosen: str) -> int:
    if not chosen.isdigit() or int(chosen) < 1:
        raise InvalidParameterError(
            f"BLOCKBUSTER_IO_THREADS={chosen!r} is not a whole number of threads of 1 or more; "
            "set it to e.g. 4, or unset it to let blockbuster choose."
        )
    return int(chosen)


def _stage_tile(job: Job, tile: Tile, raw: np.ndarray, values: np.ndarray | None,
                result: SegmentResult) -> None:
    """Label, renumber and stage one segmented tile with its faces, record and table rows, in
    the task's write-behind thread (see :func:`_stages_behind`)."""
    local, record = _stage_contents_of(job, tile, raw, result)
    _write_staged(job, tile, local, record, result,
                  _table_rows_of(job, tile, local, record, values))


def _stage_contents_of(job: Job, tile: Tile, raw: np.ndarray, result: SegmentResult
                       ) -> tuple[np.ndarray, TileRecord]:
    if result.hint is None and job.segmenter.pixel_map is None:
        result.hint = _pixel_map_hint(tile, raw)
    return _stage_contents(job, tile, raw)


def _write_staged(job: Job, tile: Tile, local: np.ndarray, record: TileRecord,
                  result: SegmentResult, rows: TileStatistics | None = None) -> None:
    job.stage.write_tile(tile, local, record, rows)
    result.counts.append((tile.index, record.count))


# The table's rows are measured as each tile is staged, while its input is in memory (the
# relabel pass then only gives them their final IDs), unless the table measures another image
# than the input: then the relabel pass reads that image and measures there.
def _stages_table_rows(job: Job) -> bool:
    return job.table and (job.intensity is None or job.intensity.image is job.image)


def _measured_values(job: Job, tile: Tile, image: np.ndarray) -> np.ndarray | None:
    """A copy of the tile core's input, channels first, when the table measures the input
    (``fn`` may change its input in place)."""
    if not _stages_table_rows(job) or job.intensity is None:
        return None
    return np.array(channels_first(image, job.image.channel_axis)[(slice(None),
                                                                    *tile.core_in_padded)])


def _table_rows_of(job: Job, tile: Tile, local: np.ndarray, record: TileRecord,
                   values: np.ndarray | None) -> TileStatistics | None:
    """The table rows to stage with a tile: per local label, with the input's intensities."""
    if not record.count or not _stages_table_rows(job):
        return None
    return tile_statistics(local, tuple(s.start for s in tile.core), tile.index, values)


def _peak_rss_mb() -> float:
    """Peak resident memory of this worker process so far: its own, not its parent's."""
    from blockbuster.memory import peak_rss_mb

    return peak_rss_mb()


def _stage_contents(job: Job, tile: Tile, raw: np.ndarray) -> tuple[np.ndarray, TileRecord]:
    """What to stage for a tile: its core renumbered ``1..n`` and its record.

    A pixel map keeps only its core (the exact values): its objects are the connected
    components of the core, and its faces carry the class of each pixel for the merge. A map
    split by a watershed becomes labels of the split window, then is staged as instances.
    """
    pixel_map = job.segmenter.pixel_map
    if pixel_map is not None and pixel_map.splits:
        raw = _split_window(pixel_map, tile, job.grid, raw)
    elif pixel_map is not None:
        classes = pixel_map.classes(raw[tile.core_in_padded])
        local, count = pixel_map.components(classes)  # already numbered 1..count
        check_label_budget(count, tile)
        faces = inner_faces(local, tile, job.grid)
        if pixel_map.kind == "semantic":
            faces.update(class_faces(classes, tile, job.grid))
        return local, TileRecord(count, faces)
    local, present = local_labels(raw[tile.core_in_padded], tile)
    faces = inner_faces(local, tile, job.grid)
    if job.merge in ("overlap", "iou"):
        faces.update(outer_faces(raw, present, tile, job.grid))
    return local, TileRecord(len(present), faces)


def _split_window(pixel_map, tile: Tile, grid: TileGrid, raw: np.ndarray) -> np.ndarray:
    """A pixel map split by a watershed (:mod:`blockbuster.splitting`), as the tile's labels.

    The watershed runs on the *split window*: the core plus ``split_halo`` pixels, where the
    map is exact (the map's own halo lies beyond it). Outside that window the labels are 0, so
    the overlap rule sees the tile's own prediction one pixel past its core, and no further.
    """
    window = tuple(
        slice(max(c.start - pixel_map.split_halo, 0) - p.start,
              min(c.stop + pixel_map.split_halo, size) - p.start) if t > 1 else
        slice(c.start - p.start, c.stop - p.start)
        for c, p, t, size in zip(tile.core, tile.padded, grid.tile_shape, grid.shape))
    labels = np.zeros(raw.shape, np.int32)
    origin = tuple(p.start + w.start for p, w in zip(tile.padded, window))
    labels[window] = pixel_map.label(pixel_map.classes(raw[window]), origin)
    return labels


def _pixel_map_hint(tile: Tile, raw: np.ndarray) -> str | None:
    """One line when ``raw`` looks like a mask or class map rather than instances."""
    found = split_label(raw)
    if found is None:
        return None
    label, pieces = found
    return (
        f"fn returned label {label} in {pieces} separate pieces in tile {tile.index} at "
        f"{tile.bounds()} whose largest label is {int(raw.max())}: it looks like a mask or class "
        "map, not instances, and the merge will join every tile's pieces into one object; "
        "pass output='mask' (or 'semantic'/'probability') to tile_process so blockbuster labels "
        "the pieces itself."
    )


def _is_empty(job: Job, tile: Tile, image: np.ndarray) -> bool:
    rule = job.skip_empty
    if rule is None:
        return False
    if np.isscalar(rule):
        return bool(image.size == 0 or image.max() <= rule)
    mask = np.asarray(rule)
    region = tuple(
        slice(c.start * m // s, max(c.start * m // s + 1, -(-c.stop * m // s)))
        for c, m, s in zip(tile.core, mask.shape, job.grid.shape)
    )
    return not mask[region].any()


# -- merge --------------------------------------------------------------------------------------
def merge_task(job: Job, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The provisional-ID pairs (with their support) across the faces after tile ``index``.

    The input is read no more: a worker's first merge task frees its decoded blocks."""
    if job.blocks is not None:
        job.blocks.clear()
    return tile_edges(job.grid.tile(index), job.grid, job.merge, job.stage.read_record,
                      job.connectivity)


def overlap_task(job: Job, index: int):
    """``merge="iou"``: tile ``index``'s label overlaps with the next plane, and label areas."""
    from blockbuster.stitching import plane_overlaps

    return plane_overlaps(index, job.grid, job.stage)


def _write_output(job: Job, tile: Tile, labels: np.ndarray) -> None:
    """Write a tile's final labels, retrying transient errors; a failure names the tile."""
    try:
        retrying(partial(job.writer.write, tile.core, labels), job.segmenter.retries,
                 transient_only=True)
    except BlockbusterError:
        raise
    except Exception as error:
        raise write_failure(error, job.output, f"tile {tile.index} at {tile.bounds()}") from error


# -- relabel ------------------------------------------------------------------------------------
def relabel_task(job: Job, run: list[tuple[int, TileTable, np.dtype]]) -> list:
    """Rewrite a run of tiles' staged labels with final IDs into the output.

    Staged labels are small and quick to read, so they are read here; the output writes go to
    the background. Returns each tile's object statistics (``None`` unless a table was asked
    for), with intensities when the job measures an image (its tile core read here, once).
    """
    found = []
    # one write behind: a lookup is far quicker than a write, so a longer queue would only hold
    # finished tiles in memory, not keep the writer any busier
    with Background(pending=1) as io:
        for index, table, dtype in run:
            tile = job.grid.tile(index)
            statistics = None
            if table.count:
                local = job.stage.read_local(tile, table.count)
                lut = table.lookup().astype(dtype)
                io.write(_write_output, job, tile, apply_lut(local, lut))
                if job.table:
                    statistics = _table_rows(job, tile, local, lut, table.spanning)
            found.append(statistics)
    return found


def _table_rows(job: Job, tile: Tile, local: np.ndarray, lut: np.ndarray,
                spanning: np.ndarray | None) -> TileStatistics:
    """A tile's rows of the table with their final IDs: those staged with the tile, or, where
    it was staged without them (another intensity image; a stage begun by a run without a
    table), measured now. Percentiles need the objects that span tiles, known only now: they
    read the image again."""
    staged = job.stage.read_statistics(tile.index) if _stages_table_rows(job) else None
    if staged is None or (job.intensity is not None and staged.intensity is None):
        intensities = _read_intensities(job, tile) if job.intensity else None
        return tile_statistics(local, tuple(s.start for s in tile.core), tile.index,
                               intensities, request=job.intensity, spanning=spanning, lut=lut)
    rows = replace(staged, labels=lut[staged.labels].astype(np.uint64),
                   intensity=staged.intensity if job.intensity else None)
    if job.intensity is not None and job.intensity.percentiles:
        add_percentiles(rows.intensity, local, LabelRuns.of(local), rows.labels,
                        _read_intensities(job, tile), job.intensity, spanning, tile.index)
    return rows


def _read_intensities(job: Job, tile: Tile) -> np.ndarray:
    """The tile core of the image to measure (channels first), tried like an input read."""
    try:
        return retrying(partial(job.intensity.read, tile.core), job.segmenter.retries)
    except Exception as error:
        failure = read_failure(error, job.intensity.image.source,
                               f"tile {tile.index} at {tile.bounds()} (intensity image)",
                               job.segmenter.retries + 1,
                               job.intensity.image.unreadable_chunks(tile.core))
        raise failure from error
