"""The staging area of a run: per-tile local labels in a tile-aligned zarr, plus per-tile records.

Layout of ``<stage>/``::

    tiles/<i>.labels   tile i's local labels (its core), blosc-lz4 compressed, in the smallest
                       unsigned dtype that holds its label count
    tiles/<i>.stats    with a table: tile i's rows of it, per local label (measured as the
                       tile is staged, while its input is in memory; :mod:`blockbuster.table`)
    tiles/<i>.pickle   tile i's record: label count and face layers; written last, atomically,
                       so its presence marks the tile as done
    job.json           the job fingerprint; a rerun of the same job resumes from the records

The stage is on local disk whatever the output: next to a local ``write_to``
(``<write_to>.stage``), else, and always when ``stage_dir`` is given, in a folder named by the
job (:func:`stage_root`) under ``stage_dir`` (default: a local cache folder) — so a run writing
to ``s3://`` resumes after a crash like any other.

Both tile files are our own format, read only by us. Staging is plain files, not zarr: a
1024² tile of labels is compressed and written in ~1.7 ms this way against ~6 ms through
zarr's array API (the staged labels are written once and read once, so zarr's chunk
indexing buys nothing here). Each worker writes only its own tile's files, so no locking is
needed.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from blockbuster.errors import StageMismatchError
from blockbuster.faces import Face
from blockbuster.faults import write_failure
from blockbuster.ids import local_dtype
from blockbuster.stores import is_url, local_if_file_url, write_atomically
from blockbuster.tiling import Tile, TileGrid

RECORD_CACHE = 512  # records kept per worker during the merge (each is a few face layers)


@dataclass
class TileRecord:
    """What the merge needs to know about one segmented tile."""

    count: int
    faces: dict[str, Face]
    empty: bool = False  # skipped by ``skip_empty``: fn never ran


class Stage:
    """Reads and writes the staging area rooted at ``root``."""

    def __init__(self, root: str | os.PathLike, grid: TileGrid):
        self.root = Path(root)
        self.grid = grid
        self._records: OrderedDict[int, TileRecord] = OrderedDict()
        self._lock = threading.Lock()

    # -- creation and resume ----------------------------------------------------------------
    def open(self, fingerprint: str, *, resume: bool = True,
             replace_other: bool = False) -> dict[int, int]:
        """Create the stage, or reopen a crashed run's stage of this same job.

        Returns the label counts of the tiles already done (empty for a fresh stage). A stage
        left by a different job is never reused: :class:`StageMismatchError` says what differs,
        unless ``replace_other`` (the run's ``overwrite=True``) says to clear it.
        """
        previous = self.fingerprint()
        if previous is None or not resume or (replace_other and previous != fingerprint):
            self.create(fingerprint)
            return {}
        if previous != fingerprint:
            raise StageMismatchError(
                f"the staging area {str(self.root)!r} holds a crashed run of a different job "
                f"(it differs in: {', '.join(_differences(previous, fingerprint))}), so it cannot "
                "be resumed. Delete that folder, or pass overwrite=True (or resume=False) to start "
                "fresh."
            )
        return {index: self.read_record(index).count for index in self.done_tiles()}

    def create(self, fingerprint: str) -> None:
        try:
            if self.root.exists():
                shutil.rmtree(self.root)
            (self.root / "tiles").mkdir(parents=True)
            (self.root / "job.json").write_text(fingerprint)  # last: marks the stage usable
        except OSError as error:
            raise write_failure(error, self.root, "the staging area") from error

    def fingerprint(self) -> str | None:
        path = self.root / "job.json"
        return path.read_text() if path.exists() else None

    def done_tiles(self) -> list[int]:
        """Tiles whose record (the done-marker) is on disk."""
        return sorted(int(p.stem) for p in (self.root / "tiles").glob("*.pickle"))

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    # -- per tile -------------------------------------------------------------------------
    def write_tile(self, tile: Tile, local: np.ndarray | None, record: TileRecord,
                   statistics: object | None = None) -> None:
        """Write the tile's core labels and its table rows (``statistics``, when measured),
        then its record (the done-marker)."""
        try:
            if record.count:
                labels = np.ascontiguousarray(local, dtype=local_dtype(record.count))
                write_atomically(self._path(tile.index, ".labels"), _codec().encode(labels))
            rows = self._path(tile.index, ".stats")
            if statistics is None:
                rows.unlink(missing_ok=True)  # an earlier try's rows would not match these labels
            else:
                write_atomically(rows, pickle.dumps(statistics,
                                                    protocol=pickle.HIGHEST_PROTOCOL))
            write_atomically(self._path(tile.index, ".pickle"),
                             pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL))
        except OSError as error:
            raise write_failure(error, self.root / "tiles",
                                f"the staged labels of tile {tile.index} at {tile.bounds()}"
                                ) from error

    def read_record(self, index: int) -> TileRecord:
        """A tile's record; recent ones are kept, as neighbouring merge tasks share them."""
        with self._lock:
            if index in self._records:
                self._records.move_to_end(index)
                return self._records[index]
        try:
            record = pickle.loads(self._path(index, ".pickle").read_bytes())
        except (OSError, pickle.UnpicklingError, EOFError) as error:
            raise damaged_stage(self.root, index, error) from error
        with self._lock:
            self._records[index] = record
            if len(self._records) > RECORD_CACHE:
                self._records.popitem(last=False)
        return record

    def read_statistics(self, index: int) -> object | None:
        """The table rows staged with a tile, or ``None`` if it was staged without them."""
        try:
            return pickle.loads(self._path(index, ".stats").read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, pickle.UnpicklingError, EOFError) as error:
            raise damaged_stage(self.root, index, error) from error

    def read_local(self, tile: Tile, count: int) -> np.ndarray:
        """The staged local labels of a tile with ``count`` labels (``count`` > 0)."""
        dtype = local_dtype(count)
        shape = tuple(s.stop - s.start for s in tile.core)
        try:
            data = _codec().decode(self._path(tile.index, ".labels").read_bytes())
            return np.frombuffer(data, dtype).reshape(shape)
        except (OSError, RuntimeError, ValueError) as error:
            raise damaged_stage(self.root, tile.index, error) from error

    def _path(self, index: int, suffix: str) -> Path:
        return self.root / "tiles" / f"{index}{suffix}"

    def __getstate__(self):
        return {"root": self.root, "grid": self.grid}

    def __setstate__(self, state):
        self.__init__(state["root"], state["grid"])


def damaged_stage(root: Path, index: int, error: BaseException) -> StageMismatchError:
    return StageMismatchError(
        f"the staged files of tile {index} in {str(root)!r} are missing or damaged ({error}). "
        "Delete that folder, or pass resume=False, to start fresh."
    )
def stage_root(write_to: str | os.PathLike, fingerprint: str,
               stage_dir: str | os.PathLike | None = None) -> Path:
    """The local staging folder of a job writing to ``write_to``.

    ``<write_to>.stage`` for a local output without ``stage_dir``; otherwise a folder under
    ``stage_dir`` (default :func:`default_stage_dir`) named by a hash of the job fingerprint
    and the output, so the same call finds it again after a crash.
    """
    output = local_if_file_url(os.fspath(write_to))
    if stage_dir is None and not is_url(output):
        return Path(f"{output}.stage")
    base = Path(stage_dir) if stage_dir is not None else default_stage_dir()
    digest = hashlib.sha256(f"{fingerprint}\n{output}".encode()).hexdigest()[:20]
    return base / f"job-{digest}"


def default_stage_dir() -> Path:
    """``$BLOCKBUSTER_STAGE_DIR``, else ``$XDG_CACHE_HOME/blockbuster/stage`` (``~/.cache``)."""
    chosen = os.environ.get("BLOCKBUSTER_STAGE_DIR")
    if chosen:
        return Path(chosen)
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "blockbuster" / "stage"


def _codec():
    from numcodecs import Blosc

    return Blosc(cname="lz4", clevel=5, shuffle=Blosc.NOSHUFFLE)


def _differences(previous: str, current: str) -> list[str]:
    try:
        old, new = json.loads(previous), json.loads(current)
    except ValueError:
        return ["its description"]
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k)) or ["nothing"]
