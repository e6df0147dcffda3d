"""``tile_process``: the tile → segment → merge → relabel pipeline (the parent's side).

1. **segment** — each tile is read once (core + halo), segmented once, and its core labels
   (renumbered ``1..n``) are written once to its own staging file, with its face layers
   (:mod:`blockbuster.staging`).
2. **merge** — each tile compares its face layers with those of the tiles after it and reports
   the provisional-ID pairs that are one object (:mod:`blockbuster.merge`).
3. **relabel** — the pairs become a small per-tile lookup table; each tile is rewritten into
   the output with consecutive IDs ``1..N`` (:mod:`blockbuster.relabel`).

The parent plans the run once — the :class:`~blockbuster.image.ImageView`, the
:class:`~blockbuster.segmenter.Segmenter`, the tile grid (:mod:`blockbuster.planning`), the
writer — and sends them to the workers as one :class:`~blockbuster.tasks.Job`; the tasks
themselves live in :mod:`blockbuster.tasks`. Peak memory: workers × (two padded tiles + their
labels) + the decoded input blocks tiles share (:mod:`blockbuster.read_cache`, bounded) +
O(tiles + objects crossing faces).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from blockbuster._version import __version__
from blockbuster.errors import (
    BlockbusterError,
    DiskFullError,
    InvalidParameterError,
    OutputWriteError,
    PixelMapWarning,
    RunCancelledError,
    TilesFailedError,
)
from blockbuster.executors import Executor
from blockbuster.faults import write_failure
from blockbuster.fingerprint import job_fingerprint
from blockbuster.image import ImageView
from blockbuster.intensity import IntensityRequest, check_percentiles, intensity_view
from blockbuster.lock import OutputLock, holding, lock_output
from blockbuster.memory import release_free_memory
from blockbuster.merge import kept_pairs, no_edges
from blockbuster.mergelog import merge_log_table, resolve_merge_log_path
from blockbuster.pixelmaps import resolve_output
from blockbuster.planning import (
    check_retries,
    one_segmenter,
    plan_tiling,
    resolve_merge,
    resolve_table_path,
)
from blockbuster.progress import Listener, Progress
from blockbuster.read_cache import BlockReads, block_cache_bytes, plan_block_reads
from blockbuster.relabel import Relabeling
from blockbuster.segmenter import Segmenter
from blockbuster.shared_blocks import SharedBlockCache
from blockbuster.staging import Stage, stage_root
from blockbuster.stitching import PlaneJoins, check_iou_threshold, plane_joins
from blockbuster.stores import is_url, local_if_file_url
from blockbuster.table import combine, require_table_packages, write_table
from blockbuster.tasks import (
    Job,
    batches,
    merge_task,
    overlap_task,
    relabel_task,
    segment_claimed_task,
    segment_task,
)
from blockbuster.tiling import Tile
from blockbuster.verify import (
    DEFAULT_THRESHOLD,
    VerifyReport,
    check_verify_options,
    verify_seams,
)
from blockbuster.worker import usable_cores


@dataclass
class RunStats:
    """Figures of one run, returned by :func:`tile_process` with ``return_stats=True``."""

    n_tiles: int = 0
    n_objects: int = 0
    tiles_resumed: int = 0
    tiles_empty: int = 0
    seconds_total: float = 0.0
    seconds_in_fn: float = 0.0
    worker_peak_rss_mb: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    hint: str | None = None  # a sign that fn returned a pixel map as instances (warned once)
    verification: VerifyReport | None = None  # with verify=N


def tile_process(
    image: Any,
    fn: Callable | str | None = None,
    *,
    segmenter: Callable | str | None = None,
    segmenter_options: dict | None = None,
    tile_shape: Sequence[int] | dict | str | None = None,
    overlap: int | Sequence[int] | dict | None = None,
    merge: str | None = None,
    iou_threshold: float | None = None,
    connectivity: int | None = None,
    output: str | None = None,
    probability_threshold: float | None = None,
    instances: str | None = None,
    min_distance: int | None = None,
    split_halo: int | None = None,
    channel_axis: int | None = None,
    executor: Executor | str | None = None,
    workers: int | None = None,
    executor_options: dict | None = None,
    reader: str | None = None,
    reader_options: dict | None = None,
    writer: str | None = None,
    writer_options: dict | None = None,
    write_to: str | os.PathLike | None = None,
    overwrite: bool = False,
    compute: bool = False,
    progress: bool | Listener = False,
    memory_budget: int | None = None,
    retries: int = 2,
    keep_going: bool = False,
    skip_empty: float | Any | None = None,
    resume: bool = True,
    registry: Any = None,
    return_stats: bool = False,
    table: str | os.PathLike | bool | None = None,
    merge_log: str | os.PathLike | bool | None = None,
    verify: int | None = None,
    verify_threshold: float = DEFAULT_THRESHOLD,
    storage_options: dict | None = None,
    stage_dir: str | os.PathLike | None = None,
    intensity_image: Any = None,
    percentiles: Sequence[float] | None = None,
):
    """Segment ``image`` tile by tile with ``fn`` and return one consistently labelled array.

    Parameters
    ----------
    image
        A path or URL (zarr array or group, v2 or v3, OME-Zarr; more formats through reader
        plugins), a ``zarr.Array``, a numpy array or a dask array. Never loaded whole.
    fn
        ``tile -> labels`` (integers, 0 = background, the tile's spatial shape), or the name of
        a registered segmenter (e.g. ``"threshold"``). ``segmenter=`` is the same argument.
        A boolean mask is taken as foreground and its face-connected components become labels;
        for a mask or class map that must equal whole-image labelling, say so with ``output``.
    segmenter_options
        Options for a segmenter given by name, e.g. ``{"threshold": 0.5}``.
    tile_shape
        Core size of a tile per spatial axis (``None``/``-1`` entries: whole axis), or a dict by
        axis name (``{"z": 1, "y": 1024, "x": 1024}``) when the reader knows the axes; ``None``
        uses the input's chunks; ``"auto"`` picks the largest tile that fits ``memory_budget``.
    overlap
        Halo added on every side of a tile before ``fn`` runs: an int (applied to every axis
        whose tile is longer than 1), one value per spatial axis, or a dict by axis name.
        Defaults to the halo the segmenter asks for, else 1 pixel (0 with ``merge="touch"``
        or a pixel-map ``output``): the least halo with which the overlap merge makes
        connected components exact whatever their connectivity.
    merge
        ``"overlap"`` (default when there is a halo, which is the default) or ``"touch"``;
        see :mod:`blockbuster.merge`. ``"iou"`` for per-slice 2D labels of a stack (tiles one
        plane thick, e.g. ``tile_shape=(1, 1024, 1024)``): tiles within a plane merge by the
        overlap rule, and a 2D object joins the one in the next plane that it overlaps with
        ``IoU >= iou_threshold``, best match both ways (Cellpose's ``stitch3D`` rule), on
        whole objects across tiles; see :mod:`blockbuster.stitching`.
    iou_threshold
        The least IoU joining two planes' objects under ``merge="iou"`` (default 0.25, as
        Cellpose's ``stitch_threshold``).
    connectivity
        Which pixel neighbours across a face can join objects under ``merge="touch"``:
        1 = face neighbours only, up to the number of axes (default) = edge and corner too.
        For a pixel-map ``output``, the neighbours that join pixels into objects (default 1).
    output
        What ``fn`` returns: ``"instances"`` (labels, the default unless the segmenter
        declares otherwise in its ``Needs``), ``"mask"`` (non-zero = foreground),
        ``"semantic"`` (class ids, 0 = background) or ``"probability"``. For the three pixel
        maps blockbuster forms the objects itself from each tile's core values: connected
        components of the stitched map, equal to those of the whole-image map (per class for
        ``"semantic"``). E.g. ``fn = lambda t: model(t).argmax(0)`` with ``output="mask"``.
        A segmenter chosen by name that has an ``output`` option of its own (``"torch"``)
        receives it there.
    probability_threshold
        Foreground cut of ``output="probability"`` (``value > threshold``); default 0.5 or
        the segmenter's own.
    instances, min_distance, split_halo
        How objects are formed from a ``"mask"`` or ``"probability"`` map: ``"components"``
        (connected components, exact; the default unless the segmenter's ``Needs`` says
        otherwise) or ``"watershed"``: touching objects split by a seeded watershed on the
        distance transform of the foreground, seeds at least ``min_distance`` apart (default
        5). Each tile splits its core plus ``split_halo`` pixels (default
        ``4 * min_distance``, read on top of ``overlap``) of exact map values and tiles are
        joined by the overlap rule; see :mod:`blockbuster.splitting`. A segmenter chosen by
        name that has a ``min_distance`` option of its own receives it there.
    channel_axis
        Axis of ``image`` holding channels: never tiled, handed to ``fn`` whole. Taken from the
        reader's axis names (``"c"``) when it knows them.
    executor, workers, executor_options
        ``"threads"`` (default), ``"processes"``, ``"serial"``, ``"dask"``, another registered
        executor name, or an :class:`~blockbuster.executors.Executor`; one worker per core by
        default, or as many as the segmenter asks for (``Needs.workers``: one per GPU).
    write_to, overwrite
        Output zarr path or URL (``s3://``, ``gs://``...); refuses to replace data that is not
        this same job unless ``overwrite=True``. Without it, a temporary store is used and
        removed afterwards.
    storage_options
        Options of the remote store (credentials, ``endpoint_url``, ``anon``...) for a URL
        ``image``, ``write_to`` or ``table``; ``reader_options["storage_options"]`` and
        ``writer_options["storage_options"]`` set one side alone and win over this.
    stage_dir
        Local folder for the staging area of a run: a subfolder named by the job goes there.
        Default: ``<write_to>.stage`` next to a local output, a local cache folder
        (``$BLOCKBUSTER_STAGE_DIR`` or ``~/.cache/blockbuster/stage``) for a remote one.
    compute
        ``True`` returns a numpy array (only for results that fit in RAM); ``False`` a dask
        array over the written labels.
    progress
        ``True`` shows one progress bar for the run; a callable receives every
        :class:`~blockbuster.progress.ProgressEvent` (stage, tile steps done, total) in the
        calling thread, and may raise :class:`~blockbuster.errors.RunCancelledError` to stop
        the run: finished tiles stay staged, so the same call run again resumes from them.
    retries, keep_going
        A tile whose ``fn`` raises is tried ``retries`` more times; then the run stops naming
        the tile — or, with ``keep_going=True``, finishes every other tile first and raises
        :class:`~blockbuster.errors.TilesFailedError` listing the failed ones. Finished tiles
        stay staged either way, so rerunning the same call resumes.
    skip_empty
        Skip tiles without calling ``fn``: a number (tiles whose maximum is at most it) or a
        low-resolution boolean mask over the image (tiles where it is all False).
    resume
        Rerunning the same job into the same ``write_to`` after a crash skips the tiles already
        done (staged in ``<write_to>.stage`` or under ``stage_dir``); ``False`` starts fresh.
    table
        Write the per-object table: ``True`` for ``<write_to>.objects.csv``, or a ``.csv`` /
        ``.parquet`` path (:mod:`blockbuster.table`).
    intensity_image, percentiles
        Add intensity columns to the table (``table=``): per object and channel the mean,
        min, max, sum and standard deviation of ``True`` (the input image) or of another
        image of the same spatial shape (a path, URL, reader or array; channels on its
        ``"c"`` axis or as its extra first or last axis), and the given ``percentiles``
        (e.g. ``[50, 95]``), exact. Measured in the relabel pass, one tile core at a time
        (:mod:`blockbuster.intensity`).
    merge_log
        Write every cross-tile join with its evidence (tiles, face, labels, pixel pairs,
        final IDs): ``True`` for ``<write_to>.merges.parquet``, or a ``.parquet`` path
        (:mod:`blockbuster.mergelog`).
    verify, verify_threshold
        Check the stitching after the run: re-run ``fn`` on ``verify`` windows centred on tile
        corners and faces (each the size of a padded tile, so its centre needs no stitching)
        and compare (:mod:`blockbuster.verify`). The run passes when every window's object F1
        is at least ``verify_threshold``; a failing report suggests a larger overlap.

    Returns
    -------
    numpy.ndarray or dask.array.Array
        Labels ``1..N`` (uint32, or uint64 when N needs it), spatial shape of ``image``.
        With ``return_stats=True``, ``(labels, RunStats)``; else with ``verify``,
        ``(labels, VerifyReport)`` (the report is also ``RunStats.verification``).
    """
    from blockbuster.registry import Registry

    started = time.perf_counter()
    registry = registry if registry is not None else Registry()
    fn, output, min_distance = _segmenter_callable(registry, one_segmenter(fn, segmenter),
                                                   segmenter_options, output, min_distance)
    reader_options = with_storage_options(reader_options, image, storage_options)
    image = ImageView.open(registry.open_image(image, reader=reader, **reader_options),
                           channel_axis)
    check_retries(retries)
    if verify is not None:
        check_verify_options(verify, verify_threshold)
    needs = registry.needs(fn)
    pixel_map = resolve_output(output, probability_threshold, connectivity, needs,
                               instances=instances, min_distance=min_distance,
                               split_halo=split_halo)
    segmenter = Segmenter.of(fn, needs, retries, pixel_map)
    executor = registry.executor(executor, workers=workers or segmenter.needs.workers,
                                 **(executor_options or {}))
    grid = plan_tiling(image, tile_shape, overlap, segmenter.needs, executor.workers,
                       memory_budget, default_halo=merge != "touch" and pixel_map is None,
                       split_halo=pixel_map.split_halo if pixel_map is not None else 0)
    merge = resolve_merge(merge, grid, pixel_map)
    iou_threshold = check_iou_threshold(iou_threshold, merge)
    if pixel_map is not None:
        connectivity = pixel_map.connectivity

    table_path = resolve_table_path(table, write_to)
    measured = _intensity_view(intensity_image, percentiles, table_path, image, registry,
                               storage_options)
    log_path = resolve_merge_log_path(merge_log, write_to)
    for what, path in (("the object table (table=)", table_path),
                       ("the merge log (merge_log=)", log_path)):
        if path is not None:
            require_table_packages(what, path)
    temporary = None
    if write_to is None:
        temporary = Path(tempfile.mkdtemp(prefix="blockbuster-"))
        write_to = temporary / "labels.zarr"
    writer_options = with_storage_options(writer_options, write_to, storage_options)
    out = registry.writer(writer, write_to, overwrite=overwrite, **writer_options)
    out.set_source(image)
    fingerprint = job_fingerprint(image, segmenter, grid, merge, connectivity, pixel_map,
                                  iou_threshold)
    try:
        lock = lock_output(None if temporary else local_if_file_url(write_to),
                           writer_options.get("storage_options"))
        with holding(lock):
            out.check(fingerprint, image.source)
            segmenter = segmenter.prepared(image)
            stage = Stage(stage_root(write_to, fingerprint, stage_dir) if temporary is None
                          else temporary / "stage", grid)
            reads = _block_reads(image, grid, executor, memory_budget)
            job = Job(image, segmenter, grid, merge, connectivity, stage, out, keep_going,
                      skip_empty, table_path is not None, output=str(write_to),
                      iou_threshold=iou_threshold, blocks=reads.cache,
                      intensity=None if measured is None else IntensityRequest(
                          measured, check_percentiles(percentiles), stage.root / "intensity"))
            stats = RunStats(n_tiles=len(grid))
            try:
                n_objects = _run(job, executor, fingerprint, lock, stats, reads.order,
                                 post_workers=_post_segment_workers(executor, workers),
                                 resume=resume,
                                 overwrite=overwrite, progress=progress, table_path=table_path,
                                 log_path=log_path,
                                 table_options=writer_options.get("storage_options",
                                                                  storage_options))
            except (OutputWriteError, RunCancelledError) as error:
                add_progress(error, stage, len(grid))
                raise
            stage.remove()
        if verify is not None:
            stats.verification = _verify(image, out.open(), segmenter, grid, verify,
                                         verify_threshold, merge,
                                         registry=registry, output=output,
                                         probability_threshold=probability_threshold,
                                         connectivity=connectivity)
    except BaseException:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
        raise
    stats.n_objects = n_objects
    stats.seconds_total = time.perf_counter() - started
    result = _result(out, compute, temporary)
    if return_stats:
        return result, stats
    return (result, stats.verification) if verify is not None else result


def _verify(image: ImageView, labels, segmenter: Segmenter, grid, windows: int,
            threshold: float, merge: str, **options) -> VerifyReport:
    """Verify the stitched ``labels`` on seam windows, each window run as one tile by ``fn``
    as prepared for the whole image (so image-wide settings, e.g. a threshold, are the run's).

    A map split by a watershed is split on the whole window, its ties ranked by image
    coordinates as the run's tiles ranked them (:mod:`blockbuster.splitting`)."""
    pixel_map = segmenter.pixel_map

    def segment(window: np.ndarray, origin: tuple[int, ...]) -> np.ndarray:
        spatial = tuple(s for a, s in enumerate(window.shape) if a != image.channel_axis)
        if pixel_map is not None and pixel_map.splits:
            whole = tuple(slice(0, s) for s in spatial)
            (values,), _ = segmenter.segment([window], [Tile(0, (0,) * len(spatial), whole,
                                                             whole)])
            return pixel_map.label(pixel_map.classes(values), origin)
        return tile_process(window, segmenter.fn, tile_shape=spatial, overlap=0,
                            executor="serial", channel_axis=image.channel_axis, compute=True,
                            **options)

    return verify_seams(image, labels, segment, grid, windows, threshold, merge)


def _run(job: Job, executor: Executor, fingerprint: str, lock: OutputLock, stats: RunStats,
         order: list[int], *, post_workers: int,
         resume: bool, overwrite: bool, progress: bool | Listener, table_path: Path | str | None,
         log_path: Path | str | None = None, table_options: dict | None = None) -> int:
    """Segment, merge and relabel the job (resuming its stage), write the table and the merge
    log (URLs with ``table_options``): the run proper, under the output's lock. The passes
    after the segment stage run on ``post_workers`` (:func:`_post_segment_workers`). Returns
    the number of objects."""
    done = job.stage.open(fingerprint, resume=resume, replace_other=overwrite)
    stats.tiles_resumed = len(done)
    out = job.writer
    stages = ("segment", "merge", "stitch", "relabel") if job.merge == "iou" else (
        "segment", "merge", "relabel")
    runs = _runs([i for i in order if i not in done], job, executor.workers)
    with _sharing_blocks(job, runs), Progress(progress, len(job.grid), stages) as bar, \
            executor.start(job) as pool:
        counts = _segment_all(pool, job, done, bar, stats, runs)
        release_free_memory()  # what the segment stage freed: the later stages need little
        _warn_of_pixel_map(stats.hint)
        with _post_segment_pool(pool, executor, job, post_workers) as post:
            candidates, joined = _merge_all(post, job, bar, stats)
            edges = candidates[0][joined]
            planes = None
            if job.merge == "iou":
                planes = _stitch_planes(post, job, edges, bar, stats)
                edges = np.concatenate([edges, planes.edges])
            relabeling = Relabeling(counts, edges)
            lock.check()
            writing(out.create, job.output, "the output")(job.grid.shape, job.grid.chunks,
                                                           relabeling.dtype, fingerprint)
            partials = _relabel_all(post, job, post_workers, relabeling, bar, stats)
    release_free_memory()
    lock.check()
    writing(out.finish, job.output, "the output's completion mark")(
        n_objects=relabeling.n_objects, version=__version__)
    if table_path is not None:
        measured = job.intensity
        table = combine(_handed_over(partials), **job.image.table_metadata(),
                        percentiles=measured.percentiles if measured else (),
                        channels=measured.image.channels if measured else None)
        release_free_memory()  # what the table no longer needs, before the write's batches
        writing(write_table, table_path, "the object table")(table, table_path,
                                                             storage_options=table_options)
    if log_path is not None:
        log = merge_log_table(*candidates, joined, relabeling, job.grid, job.image.axes,
                              planes=planes)
        writing(write_table, log_path, "the merge log")(log, log_path,
                                                        storage_options=table_options)
    return relabeling.n_objects


def _handed_over(items: list) -> Iterator:
    """``items`` in order, each dropped from the list as it is taken (the list ends empty), so
    that the taker may free them once used."""
    items.reverse()
    while items:
        yield items.pop()


def _post_segment_workers(executor: Executor, workers: int | None) -> int:
    """Workers of the passes after the segment stage (merge, stitch, relabel).

    The executor's own, except where the *segmenter* chose how many (``Needs.workers``: one
    per GPU) for an in-process thread pool: its passes after ``fn`` are CPU work (reading
    staged labels, the lookup, compressing and writing the output) that one worker per GPU
    would do alone while the other cores idle, so they get a thread per usable core. A
    ``workers=`` the caller passed holds for every pass.
    """
    if workers is not None or executor.name != "threads":
        return executor.workers
    return max(executor.workers, usable_cores())


@contextmanager
def _post_segment_pool(pool, executor: Executor, job: Job, workers: int) -> Iterator:
    """``pool`` itself, or a thread pool of ``workers`` for the passes after the segment
    stage when that is more than the executor's (:func:`_post_segment_workers`)."""
    if workers <= executor.workers:
        yield pool
        return
    from blockbuster.builtin.executors import ThreadExecutor

    with ThreadExecutor(workers).start(job) as threads:
        yield threads


def _intensity_view(intensity_image, percentiles, table_path, image: ImageView, registry,
                    storage_options: dict | None) -> ImageView | None:
    """The image the table measures, or ``None``; checks that a table is written."""
    if intensity_image is None or intensity_image is False:
        if percentiles:
            raise InvalidParameterError(
                "percentiles= needs intensity_image= (True for the input image) and table=.")
        return None
    if table_path is None:
        raise InvalidParameterError(
            "intensity_image= adds columns to the object table: also pass table=True (or a "
            ".csv / .parquet path) and write_to=.")
    check_percentiles(percentiles)

    def open_image(source):
        return registry.open_image(source, **with_storage_options({}, source, storage_options))

    return intensity_view(intensity_image, image, open_image)


def writing(call: Callable, path: Any, what: str) -> Callable:
    """``call`` with its failures (other than blockbuster's own) raised as
    :class:`~blockbuster.errors.OutputWriteError` naming ``what`` and ``path``."""
    def write(*args, **kwargs):
        try:
            return call(*args, **kwargs)
        except BlockbusterError:
            raise
        except Exception as error:
            raise write_failure(error, path, what) from error
    return write


def add_progress(error: OutputWriteError | RunCancelledError, stage: Stage,
                 n_tiles: int) -> None:
    """Add to ``error`` how much of the run is done and that rerunning the same call resumes."""
    done = len(stage.done_tiles()) if stage.root.exists() else 0
    redo = ("; no tile is segmented again" if done == n_tiles else "")
    if isinstance(error, RunCancelledError):
        then = f"run the same call again to resume from them{redo}"
    else:
        fix = ("free space there (or raise the quota)" if isinstance(error, DiskFullError)
               else "fix the cause")
        then = f"{fix}, then rerun the same call; it resumes from them{redo}"
    error.args = (f"{error} {done} of {n_tiles} tiles are staged in {str(stage.root)!r}: "
                  f"{then}.",)


MAX_RUN = 16  # tiles per task at most (for a fn taking one tile at a time)
RUN_BATCHES = 4  # batches per task at most, for a fn taking batches


def _block_reads(image: ImageView, grid, executor: Executor, memory_budget: int | None
                 ) -> BlockReads:
    """The run's block cache and tile order (:mod:`blockbuster.read_cache`): threads share
    one cache and walk the order together; each worker process has its own share, and
    worker processes on this machine hand on the blocks several tasks read
    (:mod:`blockbuster.shared_blocks`)."""
    budget = block_cache_bytes(memory_budget)
    if executor.name in ("threads", "serial"):
        return plan_block_reads(image, grid, max_bytes=budget, shared=True,
                                tiles_in_flight=(executor.workers - 1) * MAX_RUN)
    reads = plan_block_reads(image, grid, max_bytes=budget // executor.workers, shared=False)
    if executor.name == "processes" and reads.cache is not None:
        cache = SharedBlockCache(reads.cache.block_shape, reads.cache.max_bytes, grid)
        return dataclasses.replace(reads, cache=cache)
    return reads


@contextmanager
def _sharing_blocks(job: Job, runs: list[list[int]]) -> Iterator[None]:
    """Worker processes hand on the blocks that several of ``runs`` read through a folder in
    the stage, deleted when the run ends, whatever the end."""
    if not isinstance(job.blocks, SharedBlockCache):
        yield
        return
    job.blocks.share(job.stage.root / "shared-blocks", runs)
    try:
        yield
    finally:
        job.blocks.close()


def with_storage_options(options: dict | None, where: Any, storage_options: dict | None) -> dict:
    """``options`` plus the run's ``storage_options`` when ``where`` is a URL (the side's own
    ``storage_options`` option wins)."""
    options = dict(options or {})
    if storage_options is not None and is_url(where):
        options.setdefault("storage_options", storage_options)
    return options


def _segmenter_callable(registry, fn, options: dict | None, output: str | None,
                        min_distance: int | None = None
                        ) -> tuple[Callable, str | None, int | None]:
    """``fn`` itself, or the registered segmenter it names, built with ``options``; and the
    ``output`` and ``min_distance`` left for the core (a named segmenter with an option of
    that name takes it, and declares what it returns in its ``Needs``)."""
    if isinstance(fn, str):
        options = dict(options or {})
        if output is not None and "output" not in options and _has_option(registry, fn, "output"):
            options["output"], output = output, None
        if (min_distance is not None and "min_distance" not in options
                and _has_option(registry, fn, "min_distance")):
            options["min_distance"], min_distance = min_distance, None
        fn = registry.segmenter(fn, **options)
    if not callable(fn):
        raise InvalidParameterError(
            f"fn must be a callable tile -> labels or a segmenter name, got {type(fn).__name__}."
        )
    return fn, output, min_distance


def _has_option(registry, name: str, option: str) -> bool:
    import inspect

    try:
        return option in inspect.signature(registry.get("segmenter", name).load()).parameters
    except (TypeError, ValueError):
        return False


def _warn_of_pixel_map(hint: str | None) -> None:
    """Warn once per run when a tile's labels looked like a mask or class map (pointing at the
    caller of ``tile_process``: this function, ``_run``, ``tile_process``, the caller)."""
    import warnings

    if hint is not None:
        warnings.warn(hint, PixelMapWarning, stacklevel=4)

# -- stages -----------------------------------------------------------------------------------
@contextmanager
def _results(pool, task, items) -> Iterator[Iterator]:
    """``pool.map_unordered(task, items)``, closed on the way out: a run stopped midway (an
    error, a cancelling progress listener) cancels the tasks not started yet at once instead of
    waiting for them while the pool shuts down."""
    results = pool.map_unordered(task, items)
    try:
        yield results
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()


def _segment_all(pool, job: Job, done: dict[int, int], bar: Progress, stats: RunStats,
                 runs: list[list[int]]) -> np.ndarray:
    """Segment the tiles not ``done``, one task per run of ``runs``; their label counts."""
    bar.stage("segment")
    t0 = time.perf_counter()
    counts = np.zeros(len(job.grid), np.int64)
    for index, count in done.items():
        counts[index] = count
    bar.advance(len(done))
    between_processes = isinstance(job.blocks, SharedBlockCache)
    if job.blocks is not None and not between_processes:  # threads: one cache, told every read
        job.blocks.expect(job.grid.tile(i).padded for run in runs for i in run)
    failed = []
    task, items = segment_task, runs
    if between_processes:  # each worker claims its next run itself, along its lane
        task, items = segment_claimed_task, range(len(runs))
    with _results(pool, task, items) as results:
        for result in results:
            if between_processes:  # free the blocks handed on that no task reads any more
                job.blocks.finished([i for i, _ in result.counts]
                                    + [_tile_number(line) for line in result.failed])
            for index, count in result.counts:
                counts[index] = count
            stats.seconds_in_fn += result.seconds
            stats.tiles_empty += result.empty
            stats.worker_peak_rss_mb = max(stats.worker_peak_rss_mb, result.peak_rss_mb)
            failed.extend(result.failed)
            stats.hint = stats.hint or result.hint
            bar.advance(len(result.counts) + len(result.failed))
    stats.stage_seconds["segment"] = time.perf_counter() - t0
    if job.blocks is not None:
        job.blocks.clear()  # this process's (threads); worker processes free theirs in merge
    if failed:
        raise tiles_failed(failed, len(job.grid), job.segmenter.retries)
    return counts


SHOWN_FAILURES = 10  # failed tiles listed in the message; the rest are counted


def tiles_failed(failed: list[str], n_tiles: int, retries: int) -> TilesFailedError:
    """The error for a ``keep_going`` run: the first failed tiles, one line each, then a count."""
    failed = sorted(failed, key=_tile_number)
    shown = failed[:SHOWN_FAILURES]
    if len(failed) > SHOWN_FAILURES:
        shown.append(f"... and {len(failed) - SHOWN_FAILURES} more")
    error = TilesFailedError(
        f"{len(failed)} of {n_tiles} tiles failed (contract violations at once, other errors "
        f"after {retries} retries); every other tile is staged, so rerunning the same call "
        "resumes with just these:\n" + "\n".join(f"  {line}" for line in shown)
    )
    error.failed = failed
    return error


def _tile_number(line: str) -> int:
    return int(line.split()[1])


def _runs(items: list, job: Job, workers: int, batch: int | None = None) -> list[list]:
    """Consecutive tiles grouped into tasks, each a whole number of ``fn``'s batches.

    A task reads ahead and writes behind within its run (:mod:`blockbuster.background`), so
    longer runs hide more I/O; at most ``MAX_RUN`` tiles, and at least four tasks per worker
    where there are enough tiles, keep the load balanced and the progress bar moving. A ``fn``
    that takes batches (a GPU model: 16 tiles a call) gets up to ``RUN_BATCHES`` of them per
    task, fewer only where the workers would otherwise go without: a task of one batch could
    neither read the next batch nor stage the last one while ``fn`` works. The relabel pass
    calls no ``fn`` and passes ``batch=1``.
    """
    batch = job.segmenter.batch_size if batch is None else batch
    length = max(1, min(MAX_RUN, len(items) // (4 * workers)))
    if batch > 1:  # several batches each: the next is read and the last staged while fn works
        length = max(length, min(RUN_BATCHES * batch, -(-len(items) // workers)))
    length = -(-length // batch) * batch
    return batches(items, length)


def _merge_all(pool, job: Job, bar: Progress, stats: RunStats
               ) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    """Every candidate pair ``(pairs, support, clean)`` across the faces, and which join."""
    bar.stage("merge")
    t0 = time.perf_counter()
    found = [no_edges()]
    with _results(pool, merge_task, range(len(job.grid))) as results:
        for edges in results:
            found.append(edges)
            bar.advance()
    pairs, support, clean = (np.concatenate(parts) for parts in zip(*found))
    joined = kept_pairs(pairs, support, clean)
    stats.stage_seconds["merge"] = time.perf_counter() - t0
    return (pairs, support, clean), joined


def _stitch_planes(pool, job: Job, in_plane: np.ndarray, bar: Progress,
                   stats: RunStats) -> PlaneJoins:
    """``merge="iou"``: the pairs of 2D objects overlapping across planes, and which join."""
    bar.stage("stitch")
    t0 = time.perf_counter()
    reports = []
    with _results(pool, overlap_task, range(len(job.grid))) as results:
        for report in results:
            reports.append(report)
            bar.advance()
    joins = plane_joins(in_plane, reports, job.iou_threshold)
    stats.stage_seconds["stitch"] = time.perf_counter() - t0
    return joins


def _relabel_all(pool, job: Job, workers: int, relabeling: Relabeling, bar: Progress,
                 stats: RunStats) -> list:
    bar.stage("relabel")
    t0 = time.perf_counter()
    dtype = relabeling.dtype
    runs = _runs(list(range(len(job.grid))), job, workers, batch=1)
    partials = []
    spanning = bool(job.intensity and job.intensity.percentiles)  # for the spill
    tables = (  # made as sent
        [(i, relabeling.table(i, spanning), dtype) for i in run] for run in runs)
    with _results(pool, relabel_task, tables) as results:
        for done in results:
            partials.extend(statistics for statistics in done if statistics is not None)
            bar.advance(len(done))
    stats.stage_seconds["relabel"] = time.perf_counter() - t0
    return partials


def _result(out, compute: bool, temporary: Path | None):
    if compute:  # read without dask where the writer can (see blockbuster.writers)
        read_all = getattr(out, "read_all", None)
        array = read_all() if read_all is not None else np.asarray(out.open().compute())
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
        return array
    labels = out.open()
    if temporary is not None:
        weakref.finalize(labels, shutil.rmtree, temporary, True)
    return labels


def merge_tile_labels(labels, *, tile_shape=None, **options):
    """Merge per-tile labels that were made independently into one consistent label array.

    ``labels`` holds, in each tile (by default each chunk), labels that are unique within that
    tile; touching labels across tile faces become one object (``merge="touch"``), IDs are
    renumbered ``1..N`` deterministically. Accepts a zarr path, zarr, dask or numpy array and
    every option of :func:`blockbuster.tile_process` except ``fn``, ``overlap`` and ``merge``.
    """
    return tile_process(
        labels, _tile_labels_as_given, tile_shape=tile_shape, overlap=0, merge="touch", **options
    )


def _tile_labels_as_given(tile: np.ndarray) -> np.ndarray:
    return tile
