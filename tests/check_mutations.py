"""Mutation check: inject the bugs of issue 13 one at a time and report which tests catch each.

Each mutation is ``(file, exact old text, new text)`` plus the test files that should catch it.
The script copies the repository (sources, tests, docs, bench; no virtualenv, no .git) to a
temporary folder, runs the tests there with that copy's ``src`` folders first on
``PYTHONPATH``, so the working tree is never modified. Per mutation it patches the copy,
runs the named tests, and restores the file in ``finally``. A mutation whose old text is not
found exactly once stops the script (a refactor moved the code: update the entry).

Usage (from the repository root; not part of ``make test``, it takes several minutes)::

    .venv/bin/python tests/check_mutations.py              # every mutation
    .venv/bin/python tests/check_mutations.py -k tiling    # those whose name contains "tiling"
    .venv/bin/python tests/check_mutations.py --list       # names and files only

It first runs the named tests unmutated (they must pass), then prints a table
``mutation | caught by``. Exit status 0 when every mutation is caught, 1 otherwise, 2 when a
mutation no longer applies, the unmutated tests fail or the copy cannot be imported.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("blockbuster-core", "blockbuster-cellpose", "blockbuster-stardist",
            "blockbuster-torch", "blockbuster-bioio",
            "blockbuster-bioimageio", "blockbuster-napari")
NOT_COPIED = shutil.ignore_patterns(".venv*", ".git", "build", "site", "__pycache__",
                                    ".hypothesis", ".pytest_cache", "*.egg-info", "results")


@dataclass(frozen=True)
class Mutation:
    item: str     # the bullet of issue 13 it belongs to
    name: str
    path: str     # relative to the repository root
    old: str      # exact text, found exactly once
    new: str
    tests: tuple[str, ...]  # pytest paths or node ids that should catch it
    parent_peak_mib: int = 0  # run pytest in a process that first peaked at this much memory


CORE = "blockbuster-core/src/blockbuster/"
CORE_TESTS = "blockbuster-core/tests/"
BIOIO = "blockbuster-bioio/src/blockbuster/plugins/bioio/"
BIOIO_TESTS = "blockbuster-bioio/tests/"
BIOIMAGEIO = "blockbuster-bioimageio/src/blockbuster/plugins/bioimageio/"
BIOIMAGEIO_TESTS = "blockbuster-bioimageio/tests/"
NAPARI = "blockbuster-napari/src/blockbuster_napari/"
NAPARI_TESTS = "blockbuster-napari/tests/"

MUTATIONS = [
    Mutation("1", "TIFF reader leaks 1 MiB per tile read", CORE + "builtin/tiff.py",
             '    def _source(self):\n        array = self.__dict__.get("_zarr")\n',
             '    def _source(self):\n'
             '        globals().setdefault("_LEAK", []).append(b"\\x01" * 2**20)\n'
             '        array = self.__dict__.get("_zarr")\n',
             (CORE_TESTS + "test_formats_tiff.py",),
             # as in the issue: a parent that had peaked at 1.2 GB hid the leak from ru_maxrss
             parent_peak_mib=1200),
    Mutation("2", "config loader drops [tiling] merge/iou_threshold/connectivity/memory_budget",
             CORE + "config.py",
             '"merge": str,\n               "iou_threshold": (int, float), "connectivity": int, '
             '"memory_budget": int},',
             "},",
             (CORE_TESTS + "test_config_wiring.py",)),
    Mutation("2", "config loader drops the [run] section", CORE + "config.py",
             '    "run": {"retries": int, "keep_going": bool, "skip_empty": (int, float), '
             '"resume": bool,\n            "progress": bool, "offline": bool, "stage_dir": str},\n',
             "",
             (CORE_TESTS + "test_config_wiring.py",)),
    Mutation("2", "config loader drops [input] channel_axis", CORE + "config.py",
             '"input": {"path": str, "reader": str, "channel_axis": int, "storage_options": dict},',
             '"input": {"path": str, "reader": str, "storage_options": dict},',
             (CORE_TESTS + "test_config_wiring.py",)),
    Mutation("2", "run config ignores [tiling] connectivity", CORE + "config.py",
             '"connectivity": self.get("tiling", "connectivity"),',
             '"connectivity": None,',
             (CORE_TESTS + "test_config_wiring.py",)),
    Mutation("2", "--workers flag is dropped", CORE + "cli.py",
             '        "executor.workers": args.workers,\n', "",
             (CORE_TESTS + "test_config_wiring.py",)),
    Mutation("2", "--merge flag is dropped", CORE + "cli.py",
             '        "tiling.merge": args.merge,\n', "",
             (CORE_TESTS + "test_config_wiring.py",)),
    Mutation("2", "[plugins] block is ignored", CORE + "config.py",
             'registry = Registry(block=config.get("plugins", "block", []))',
             "registry = Registry()",
             (CORE_TESTS + "test_config_wiring.py",)),
    Mutation("2", "no command exits 0 instead of 2", CORE + "cli.py",
             "        parser.print_help()\n        return 2\n",
             "        parser.print_help()\n        return 0\n",
             (CORE_TESTS + "test_config_wiring.py",)),
    Mutation("3", "Threshold.prepare is a no-op (each tile its own Otsu)",
             CORE + "builtin/segmenters.py",
             "        if self.threshold is not None:\n            return self\n"
             "        return replace(self, threshold=otsu_threshold(sample_blocks(image)))\n",
             "        return self\n",
             (CORE_TESTS + "test_segmenters.py",)),
    Mutation("4", "per-tile statistics get origin 0", CORE + "tasks.py",
             "tile_statistics(local, tuple(s.start for s in tile.core), tile.index, values)",
             "tile_statistics(local, (0,) * local.ndim, tile.index, values)",
             (CORE_TESTS + "test_formats_table.py",)),
    Mutation("4", "per-object table forgets which tiles an object spans", CORE + "tasks.py",
             "tile_statistics(local, tuple(s.start for s in tile.core), tile.index, values)",
             "tile_statistics(local, tuple(s.start for s in tile.core), 0, values)",
             (CORE_TESTS + "test_formats_table.py",)),
    Mutation("21", "a resumed run trusts staged rows measured for another image",
             CORE + "tasks.py",
             "read_statistics(tile.index) if _stages_table_rows(job) else None",
             "read_statistics(tile.index)",
             (CORE_TESTS + "test_intensity.py",)),
    Mutation("5", "cellpose: every worker picks cuda:0",
             "blockbuster-cellpose/src/blockbuster/plugins/cellpose/_device.py",
             'return torch.device(f"cuda:{gpu_of_worker(n_gpus)}")',
             'return torch.device("cuda:0")',
             ("tests/test_gpu_per_worker.py",)),
    Mutation("5", "torch: every worker picks cuda:0",
             "blockbuster-torch/src/blockbuster/plugins/torch/_device.py",
             'return f"cuda:{gpu_of_worker(torch.cuda.device_count(), worker)}"',
             'return "cuda:0"',
             ("tests/test_gpu_per_worker.py",)),
    Mutation("5", "stardist: every worker pins GPU 0",
             "blockbuster-stardist/src/blockbuster/plugins/stardist/_tensorflow.py",
             "gpu = gpus[gpu_of_worker(len(gpus), worker)]", "gpu = gpus[0]",
             ("tests/test_gpu_per_worker.py",)),
    Mutation("5", "backend kit: every worker takes GPU 0", CORE + "backend.py",
             "return (worker or current_worker()).index % n_gpus", "return 0",
             ("tests/test_gpu_per_worker.py", CORE_TESTS + "test_options.py")),
    Mutation("5", "neighbours_after returns []", CORE + "tiling.py",
             "        return [\n            self.tile(self.index(pos))\n"
             "            for pos in itertools.product(*ranges)\n"
             "            if self.contains(pos)\n        ]\n",
             "        return []\n",
             (CORE_TESTS + "test_tiling.py",)),
    Mutation("5", "uint64 rule: always uint32", CORE + "relabel.py",
             "return np.dtype(np.uint32 if self.n_objects < 2**32 else np.uint64)",
             "return np.dtype(np.uint32)",
             (CORE_TESTS + "test_io.py",)),
    Mutation("5", "bench targets: every measured target is met", "bench/peers.py",
             'status = "not measured" if met is None else "met" if met else "missed"',
             'status = "not measured" if met is None else "met"',
             ("tests/test_bench_harness.py::"
              "test_targets_are_met_missed_or_not_measured_from_the_rows",)),
    Mutation("5", "hook spec reference page leaves specs out", "docs/hookspecs.md",
             "      members_order: source\n",
             "      members_order: source\n      members: [register_readers]\n",
             (CORE_TESTS + "test_hookspecs.py",)),
    Mutation("5", "bench_torch times only the first tile of each batch", "bench/bench_torch.py",
             "fn.segment_batch(tiles[first : first + fn.batch_size])",
             "fn.segment_batch(tiles[first : first + 1])",
             ("blockbuster-torch/tests/test_bench.py",)),
    Mutation("6", "overlap rule never asks the halo (merges like touch)", CORE + "merge.py",
             'overlap = mode in ("overlap", "iou") and _seen_by_both(tile, other, grid)',
             "overlap = False",
             (CORE_TESTS + "test_context_dependent.py::"
              "test_overlap_merge_of_a_watershed_is_within_one_object_of_the_whole_image",)),
    Mutation("6", "overlap rule asks only the earlier tile", CORE + "merge.py",
             "keep &= (mine[there] == a) & (yours[here] == b)",
             "keep &= mine[there] == a",
             (CORE_TESTS + "test_context_dependent.py",)),
    Mutation("19", "semantic maps join touching objects of two classes", CORE + "merge.py",
             "            keep &= classes[0][here] == classes[1][there]\n",
             "            pass\n",
             (CORE_TESTS + "test_pixel_maps.py",)),
    Mutation("19", "pixel maps are labelled through the halo", CORE + "tasks.py",
             "        local, count = pixel_map.components(classes)  # already numbered 1..count\n",
             "        local, count = pixel_map.components(pixel_map.classes(raw))\n"
             "        local = local[tile.core_in_padded]\n",
             (CORE_TESTS + "test_pixel_maps.py",)),
    Mutation("20", "gpu: tiles are staged on the worker's thread, before fn's next batch",
             CORE + "tasks.py",
             "            io.write(_stage_tile, job, tile, raw, values, result)\n",
             "            _stage_tile(job, tile, raw, values, result)\n",
             (CORE_TESTS + "test_background.py",)),
    Mutation("20", "gpu: a task's batches are all full-sized (a batch read before fn starts)",
             CORE + "tasks.py", "runs = ramped_batches(indices, job.segmenter.batch_size)",
             "runs = batches(indices, job.segmenter.batch_size)",
             (CORE_TESTS + "test_background.py",)),
    Mutation("20", "gpu: a one-tile fn asking for a worker per GPU stages on its thread",
             CORE + "tasks.py",
             "    return job.segmenter.batch_size > 1 or job.segmenter.needs.workers is not None\n",
             "    return job.segmenter.batch_size > 1\n",
             (CORE_TESTS + "test_background.py",)),
    Mutation("20", "gpu: a task of a batch fn holds one batch", CORE + "pipeline.py",
             "        length = max(length, min(RUN_BATCHES * batch, -(-len(items) // workers)))\n",
             "        pass\n",
             (CORE_TESTS + "test_background.py",)),
    Mutation("20", "gpu: a foreground map's components are numbered from 0",
             CORE + "pixelmaps.py",
             "        count = ndimage.label(classes, structure, output=labels)\n",
             "        count = ndimage.label(classes, structure, output=labels)\n"
             "        labels[labels > 0] -= 1\n",
             (CORE_TESTS + "test_pixel_maps.py",)),
    Mutation("20", "gpu: a pass out of device memory is retried with one tile fewer",
             "blockbuster-torch/src/blockbuster/plugins/torch/_segmenter.py",
             "        self._batch_caps[device] = too_large.batch // 2\n",
             "        self._batch_caps[device] = too_large.batch - 1\n",
             ("blockbuster-torch/tests/test_gpu_path.py",)),
    Mutation("19", "pixel maps join across faces at full connectivity", CORE + "pipeline.py",
             "        connectivity = pixel_map.connectivity\n", "        connectivity = None\n",
             (CORE_TESTS + "test_pixel_maps.py",)),
    Mutation("9", "match_objects: IoU at the threshold does not match", CORE + "metrics.py",
             "if iou[i] < threshold:", "if iou[i] <= threshold:",
             (CORE_TESTS + "test_metrics.py",)),
    Mutation("9", "match_objects: half an object counts as most of it", CORE + "metrics.py",
             "majority_owners = owner[fraction > 0.5]",
             "majority_owners = owner[fraction >= 0.5]",
             (CORE_TESTS + "test_metrics.py",)),
    Mutation("9", "match_objects: greedy matching in the wrong order", CORE + "metrics.py",
             'order = np.argsort(-iou, kind="stable")', 'order = np.argsort(iou, kind="stable")',
             (CORE_TESTS + "test_metrics.py",)),
    Mutation("16", "remote reads: the read cache never keeps a chunk", CORE + "read_cache.py",
             "if byte_range is not None or not self.max_bytes:", "if True:",
             (CORE_TESTS + "test_remote.py",)),
    Mutation("16", "storage_options= reaches neither reader nor writer", CORE + "pipeline.py",
             'options.setdefault("storage_options", storage_options)', "pass",
             (CORE_TESTS + "test_remote.py",)),
    Mutation("16", "a remote output is staged next to its URL", CORE + "staging.py",
             "if stage_dir is None and not is_url(output):", "if stage_dir is None:",
             (CORE_TESTS + "test_remote.py",)),
    Mutation("17", "faults: a run takes no lock on its output", CORE + "lock.py",
             '    if write_to is None:\n        return NoLock()',
             '    if True:\n        return NoLock()',
             (CORE_TESTS + "test_faults.py",)),
    Mutation("17", "faults: an S3 output is not locked", CORE + "lock.py",
             '        return StoreLock(Location(f"{write_to}.lock", storage_options))',
             "        return NoLock()",
             (CORE_TESTS + "test_remote.py::"
              "test_an_s3_output_is_locked_for_the_run_and_a_gone_holder_is_taken_over",)),
    Mutation("17", "faults: a lock whose holder died on this host is never taken over",
             CORE + "lock.py",
             'if not process_alive(pid, holder.get("pid_started")):', "if False:",
             (CORE_TESTS + "test_faults.py",)),
    Mutation("17", "faults: a tile's read is never retried", CORE + "tasks.py",
             "retrying(partial(job.read, tile.padded, tile.index), job.segmenter.retries)",
             "retrying(partial(job.read, tile.padded, tile.index), 0)",
             (CORE_TESTS + "test_faults.py",)),
    Mutation("17", "faults: transient errors are retried without a backoff", CORE + "faults.py",
             "            if transient:\n                sleep(backoff(attempt))",
             "            if False:\n                sleep(backoff(attempt))",
             (CORE_TESTS + "test_faults.py",)),
    Mutation("17", "faults: an unreadable tile stops a keep_going run", CORE + "tasks.py",
             "    if not job.keep_going:\n        raise image",
             "    if True:\n        raise image",
             (CORE_TESTS + "test_faults.py",)),
    Mutation("17", "faults: a failed stage write leaves its partial file", CORE + "stores.py",
             "    except BaseException:\n        partial.unlink(missing_ok=True)\n        raise",
             "    except BaseException:\n        raise",
             (CORE_TESTS + "test_faults.py",)),
    Mutation("16", "bioio reader ignores t= (reads the first time point)", BIOIO + "_reader.py",
             'self._fixed[axis] = _index(self.t, shape[axis], "t", self.path)',
             'self._fixed[axis] = 0 * _index(self.t, shape[axis], "t", self.path)',
             (BIOIO_TESTS + "test_bioio_pipeline.py",)),
    Mutation("16", "bioio reader reads a whole Z-stack per chunk", BIOIO + "_reader.py",
             'return {"chunk_dims": ONE_PLANE} if accepts else {}', "return {}",
             (BIOIO_TESTS + "test_bioio_reader.py",)),
    Mutation("16", "bioio pick_reader steals plain zarr paths", BIOIO + "_plugin.py",
             "if not Path(source).exists() or is_zarr_path(source):",
             "if not Path(source).exists():",
             (BIOIO_TESTS + "test_bioio_reader.py::"
              "test_plain_zarr_stays_with_the_core_when_the_ome_zarr_plugin_is_missing",)),
    Mutation("15", "bioimageio: statistics per window, not fixed over the whole image",
             BIOIMAGEIO + "_segmenter.py",
             "prepared.stats = image_measures(self.package, self.layout, image, channel_axis)",
             "prepared.stats = None",
             (BIOIMAGEIO_TESTS + "test_bioimageio.py::test_tiled_equals_whole_image_exactly",)),
    Mutation("15", "bioimageio: the halo ignores the model's output halo",
             BIOIMAGEIO + "_layout.py",
             "by_axis = {str(a): max(h.left, h.right) for a, h in halos.items()}",
             "by_axis = {}",
             (BIOIMAGEIO_TESTS
              + "test_bioimageio.py::test_description_drives_halo_alignment_and_kind",)),
    Mutation("18", "watershed split: ties go by flood order, not by pixel rank",
             CORE + "splitting.py",
             "height = -distance if origin is None else (",
             "height = -distance if True else (",
             (CORE_TESTS + "test_split_maps.py",)),
    Mutation("18", "watershed split: the window is the core alone (no split halo)",
             CORE + "tasks.py",
             "slice(max(c.start - pixel_map.split_halo, 0) - p.start,\n"
             "              min(c.stop + pixel_map.split_halo, size) - p.start) if t > 1 else",
             "slice(c.start - p.start, c.stop - p.start) if t > 1 else",
             (CORE_TESTS + "test_split_maps.py",)),
    Mutation("18", "merge log: the IoU joins across planes are left out",
             CORE + "pipeline.py",
             "                              planes=planes)",
             "                              planes=None)",
             (CORE_TESTS + "test_merge_log.py",)),
    Mutation("20", "reads: the block cache never keeps a decoded block", CORE + "read_cache.py",
             "if part.nbytes > self.max_bytes:", "if True:",
             (CORE_TESTS + "test_decode_once.py",)),
    Mutation("20", "reads: tiles walked row by row across the image, never in bands",
             CORE + "read_cache.py", "while band > 1 and need(band) > max_bytes:",
             "while False:", (CORE_TESTS + "test_decode_once.py",)),
    Mutation("20", "reads: a block is kept whole to the end, never cut to the strips wanted",
             CORE + "read_cache.py", "if box == self.box:", "if True:",
             (CORE_TESTS + "test_decode_once.py",)),
    Mutation("20", "merge: tiles one after the other along an axis without a halo are asked "
             "for predictions they never made", CORE + "merge.py",
             "return all(o > 0 for o, i, j in", "return True or all(o > 0 for o, i, j in",
             (CORE_TESTS + "test_merge_pairs.py",)),
    Mutation("20", "the passes after a one-GPU-worker segment stage stay on that one worker",
             CORE + "pipeline.py", "    return max(executor.workers, usable_cores())",
             "    return executor.workers", (CORE_TESTS + "test_scale_out.py",)),
    Mutation("22", "a stopped run waits for every queued task instead of cancelling them",
             CORE + "pipeline.py",
             "        if close is not None:\n            close()\n",
             "        pass\n",
             (CORE_TESTS + "test_progress.py",)),
    Mutation("22", "napari: Cancel is never seen by the run",
             NAPARI + "_run.py", "        if cancel.is_set():", "        if False:",
             (NAPARI_TESTS + "test_widget.py::"
              "test_cancel_stops_the_run_and_run_again_resumes_from_the_stage",)),
    Mutation("22", "napari: the overlap does not follow the segmenter's options",
             NAPARI + "_widget.py",
             "        self.segmenter_options.changed.connect(self._suggest_tiling)", "",
             (NAPARI_TESTS + "test_widget.py::"
              "test_run_on_a_file_shows_tile_process_labels_at_the_physical_scale",)),
    Mutation("22", "napari: table rows attached to the wrong labels",
             NAPARI + "_layers.py", 'table["label"].astype(np.int64))',
             'table["label"].astype(np.int64) + 1)',
             (NAPARI_TESTS + "test_widget.py::"
              "test_run_on_a_file_shows_tile_process_labels_at_the_physical_scale",)),
    Mutation("22", "napari: an image layer's scale is lost in the output",
             NAPARI + "_widget.py", "            record_layer_scale(request.write_to, layer)",
             "            pass",
             (NAPARI_TESTS + "test_widget.py::test_run_on_an_image_layer_keeps_its_scale",)),
    Mutation("22", "a plain zarr output forgets the input's physical scale",
             CORE + "builtin/zarr_writer.py",
             '        found = {"axes": image.axes, **image.metadata}',
             '        found = {"axes": image.axes}',
             (CORE_TESTS + "test_io.py", NAPARI_TESTS + "test_reader.py")),
    Mutation("21", "expand_labels: the halo ignores the voxel spacing", CORE + "expand.py",
             "halo = tuple(math.floor(distance / step) + 1 for step in spacing)",
             "halo = (math.floor(distance) + 1,) * view.ndim",
             (CORE_TESTS + "test_expand.py::"
              "test_tiled_expansion_equals_skimage_on_the_whole_image",)),
    Mutation("21", "expand_labels: a rerun expands every tile again", CORE + "expand.py",
             "done = stage.open(fingerprint, resume=resume, replace_other=overwrite)",
             "done = stage.open(fingerprint, resume=False, replace_other=overwrite)",
             (CORE_TESTS + "test_expand.py::test_sigkill_then_resume_is_byte_identical",)),
    Mutation("21", "polygons: the physical outlines live in attrs only (a merge drops them)",
             CORE + "polygons.py",
             "        frame[physical_column(frame)] = gpd.GeoSeries(physical, index=frame.index)",
             "        pass",
             (CORE_TESTS + "test_polygons.py::"
              "test_the_physical_units_survive_a_merge_with_another_table",)),
    Mutation("21", "[postprocess] reads the ome-zarr writer's image as labels",
             CORE + "config.py",
             '    if config.get("output", "writer") != "ome-zarr":\n        return path\n',
             "    return path\n",
             (CORE_TESTS + "test_postprocess.py",)),
    Mutation("21", "plain zarr labels hide the scale their run recorded",
             CORE + "builtin/arrays.py",
             "                       axes=axes, physical=physical)",
             "                       axes=axes)",
             (CORE_TESTS + "test_postprocess.py",)),
    Mutation("20", "merge examines a diagonal neighbour once per axis (corner support doubled)",
             CORE + "tiling.py",
             "[p] if a < axis else [p + 1] if a == axis", "[p + 1] if a == axis",
             (CORE_TESTS + "test_merge_pairs.py::test_each_pixel_pair_across_tiles_is_counted_once",
              CORE_TESTS + "test_merge_log.py", CORE_TESTS + "test_tiling.py")),
]
# Issue 13 item 7 (Cellpose 4 in CI) changes how tests run, not code a bug can be put in.
# Not listed: "keep &= agreed | ~both" -> "keep &= agreed" survives every test, and looks
# equivalent: a pixel pair one tile never saw crosses an axis without a halo, and the face of
# that axis joins it by the touch rule anyway.


def copy_repository(target: Path) -> Path:
    shutil.copytree(ROOT, target, ignore=NOT_COPIED, symlinks=True)
    return target


def environment(copy: Path) -> dict[str, str]:
    paths = [str(copy / package / "src") for package in PACKAGES]
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


class StaleMutation(Exception):
    """A mutation's old text is not in its file exactly once (the code moved or changed)."""


def apply(copy: Path, mutation: Mutation) -> str:
    """Patch the copy; return the original text (to restore). Fails loudly when stale."""
    path = copy / mutation.path
    text = path.read_text() if path.is_file() else ""
    found = text.count(mutation.old)
    if found != 1:
        raise StaleMutation(f"mutation {mutation.name!r}: its old text occurs {found} times in "
                            f"{mutation.path} (expected once); update the entry in {__file__}.")
    path.write_text(text.replace(mutation.old, mutation.new))
    return text


PEAK_FIRST = ("import sys; peak = bytearray(b'\\x01') * ({} << 20); del peak; import pytest; "
              "sys.exit(pytest.main(sys.argv[1:]))")


def run_tests(copy: Path, tests, timeout: float, parent_peak_mib: int = 0
              ) -> tuple[int | str, list[str], str]:
    """Run pytest in the copy; return (exit code or 'timeout', failed test ids, output).

    ``parent_peak_mib``: pytest runs in a process that first touched this much memory, like
    pytest after collecting the whole suite (memory tests must not depend on the parent's peak).
    """
    start = ["-c", PEAK_FIRST.format(parent_peak_mib)] if parent_peak_mib else ["-m", "pytest"]
    command = [sys.executable, *start, "-q", "--no-header", "-rfE", "-p", "no:cacheprovider",
               *tests]
    try:
        done = subprocess.run(command, cwd=copy, env=environment(copy), capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", [], ""
    output = done.stdout + done.stderr
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", output, re.M)
    return done.returncode, sorted(set(failed)), output


def imports_from_copy(copy: Path) -> bool:
    """The copy's sources, not the working tree's, must be the ones imported."""
    probe = ("import blockbuster.merge, blockbuster.plugins.torch._device as t; "
             "print(blockbuster.merge.__file__); print(t.__file__)")
    done = subprocess.run([sys.executable, "-c", probe], cwd=copy, env=environment(copy),
                          capture_output=True, text=True)
    files = done.stdout.split()
    if done.returncode or not files or not all(f.startswith(str(copy)) for f in files):
        print(f"the copy's sources are not the ones imported: {done.stdout}{done.stderr}",
              file=sys.stderr)
        return False
    return True


def describe(code: int | str, failed: list[str]) -> str:
    if code == "timeout":
        return "NOT CAUGHT (timed out)"
    if code == 1 and failed:
        names = [short(test) for test in failed]
        more = f" (+{len(names) - 3} more)" if len(names) > 3 else ""
        return ", ".join(names[:3]) + more
    if code == 0:
        return "NOT CAUGHT"
    return f"NOT CAUGHT (pytest exit {code}: collection or usage error)"


def short(test_id: str) -> str:
    path, _, name = test_id.partition("::")
    return f"{Path(path).name}::{name}" if name else Path(path).name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", dest="pattern", default="",
                        help="only mutations whose name or item contains this")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per pytest run")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip running the tests unmutated first")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS
              if args.pattern.lower() in f"{m.item} {m.name} {m.path}".lower()]
    if args.list:
        for m in chosen:
            print(f"[{m.item}] {m.name}: {m.path} -> {' '.join(m.tests)}")
        return 0
    with tempfile.TemporaryDirectory(prefix="blockbuster-mutations-") as folder:
        copy = copy_repository(Path(folder) / "repo")
        if not imports_from_copy(copy):
            return 2
        try:
            for m in chosen:  # every entry still applies, before any time is spent
                (copy / m.path).write_text(apply(copy, m))
        except StaleMutation as error:
            print(error, file=sys.stderr)
            return 2
        if not args.no_baseline and not baseline_passes(copy, chosen, args.timeout):
            return 2
        rows = [(m, *check(copy, m, args.timeout)) for m in chosen]
    print_table(rows)
    return 1 if any(caught.startswith("NOT CAUGHT") for _, caught, _ in rows) else 0


def baseline_passes(copy: Path, chosen: list[Mutation], timeout: float) -> bool:
    """Without any mutation every named test passes (else "caught" would mean nothing)."""
    code, failed, output = run_tests(copy, sorted({t for m in chosen for t in m.tests}), timeout)
    if code != 0:
        print(output[-4000:])
        print(f"the tests fail without any mutation (exit {code}): {failed}", file=sys.stderr)
    return code == 0


def check(copy: Path, mutation: Mutation, timeout: float) -> tuple[str, float]:
    """Apply one mutation, run its tests, restore the file; return (caught by, seconds)."""
    original = apply(copy, mutation)
    start = time.perf_counter()
    try:
        code, failed, _ = run_tests(copy, mutation.tests, timeout, mutation.parent_peak_mib)
    finally:
        (copy / mutation.path).write_text(original)
    caught, seconds = describe(code, failed), time.perf_counter() - start
    print(f"[{mutation.item}] {mutation.name}: {caught} ({seconds:.0f} s)", flush=True)
    return caught, seconds


def print_table(rows) -> None:
    print("\n| item | mutation | caught by |\n|---|---|---|")
    for m, caught, _ in rows:
        parent = f", pytest's parent at {m.parent_peak_mib} MiB" if m.parent_peak_mib else ""
        print(f"| {m.item} | {m.name} (`{m.path}`{parent}) | {caught} |")
    missed = sum(caught.startswith("NOT CAUGHT") for _, caught, _ in rows)
    print(f"\n{len(rows) - missed} of {len(rows)} mutations caught.")

if __name__ == "__main__":
    sys.exit(main())
