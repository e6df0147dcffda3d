"""The staging area of a run: per-tile local labels in a tile-aligned zarr, plus per-tile records.

Layout of ``<stage>/``::

    labels.zarr        local labels (uint32), one chunk per tile core
    tiles/<i>.pickle   tile i's record: label count and face layers; written last, atomically,
                       so its presence marks the tile as done (our own format, read only by us)
    job.json           the job fingerprint; a rerun of the same job resumes from the records

Each worker writes only its own tile's chunk and record, so no locking is needed.
"""

from __future__ import annotations

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
from blockbuster.faces import LOCAL_DTYPE, Face
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
        self._labels = None
        self._records: OrderedDict[int, TileRecord] = OrderedDict()
        self._lock = threading.Lock()

    # -- creation and resume ----------------------------------------------------------------
    def open(self, fingerprint: str, *, resume: bool = True) -> dict[int, int]:
        """Create the stage, or reopen a crashed run's stage of this same job.

        Returns the label counts of the tiles already done (empty for a fresh stage). A stage
        left by a different job is never reused: :class:`StageMismatchError` says what differs.
        """
        previous = self.fingerprint()
        if previous is None or not resume:
            self.create(fingerprint)
            return {}
        if previous != fingerprint:
            raise StageMismatchError(
                f"the staging area {str(self.root)!r} holds a crashed run of a different job "
                f"(it differs in: {', '.join(_differences(previous, fingerprint))}), so it cannot "
                "be resumed. Delete that folder, or pass resume=False, to start fresh."
            )
        return {index: self.read_record(index).count for index in self.done_tiles()}

    def create(self, fingerprint: str) -> None:
        import zarr

        if self.root.exists():
            shutil.rmtree(self.root)
        (self.root / "tiles").mkdir(parents=True)
        zarr.create_array(
            store=str(self.root / "labels.zarr"),
            shape=self.grid.shape,
            chunks=self.grid.chunks,
            dtype=LOCAL_DTYPE,
            fill_value=0,
            compressors=label_compressors(),
        )
        (self.root / "job.json").write_text(fingerprint)  # last: marks the stage usable

    def fingerprint(self) -> str | None:
        path = self.root / "job.json"
        return path.read_text() if path.exists() else None

    def done_tiles(self) -> list[int]:
        """Tiles whose record (the done-marker) is on disk."""
        return sorted(int(p.stem) for p in (self.root / "tiles").glob("*.pickle"))

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    # -- per tile -------------------------------------------------------------------------
    @property
    def labels(self):
        if self._labels is None:
            import zarr

            self._labels = zarr.open_array(store=str(self.root / "labels.zarr"), mode="r+")
        return self._labels

    def write_tile(self, tile: Tile, local: np.ndarray, record: TileRecord) -> None:
        """Write the tile's core labels, then its record (the done-marker)."""
        if record.count:
            self.labels[tile.core] = local
        final = self._record_path(tile.index)
        partial = final.with_suffix(".partial")
        with open(partial, "wb") as file:
            pickle.dump(record, file, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(partial, final)

    def read_record(self, index: int) -> TileRecord:
        """A tile's record; recent ones are kept, as neighbouring merge tasks share them."""
        with self._lock:
            if index in self._records:
                self._records.move_to_end(index)
                return self._records[index]
        with open(self._record_path(index), "rb") as file:
            record = pickle.load(file)
        with self._lock:
            self._records[index] = record
            if len(self._records) > RECORD_CACHE:
                self._records.popitem(last=False)
        return record

    def read_local(self, tile: Tile) -> np.ndarray:
        return self.labels[tile.core]

    def _record_path(self, index: int) -> Path:
        return self.root / "tiles" / f"{index}.pickle"

    def __getstate__(self):
        return {"root": self.root, "grid": self.grid, "_labels": None}

    def __setstate__(self, state):
        self.__init__(state["root"], state["grid"])


def label_compressors():
    """A fast compressor for label images (long runs of equal values).

    lz4 without byte shuffling: on 1024² uint32 labels it wrote in 8.2 ms and read in 2.0 ms
    (0.25 MB) against 10.6 / 3.5 ms (0.37 MB) with shuffling.
    """
    from zarr.codecs import BloscCodec

    return (BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle"),)


def _differences(previous: str, current: str) -> list[str]:
    try:
        old, new = json.loads(previous), json.loads(current)
    except ValueError:
        return ["its description"]
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k)) or ["nothing"]
