"""Runs of equal labels along a tile's rows: what the object table reduces a tile to.

A segmented tile is mostly long stretches of one label along its last axis. Cut into those
runs (one pass over the tile), every per-object figure of the table becomes a reduction over
the runs, about twenty times fewer than the voxels: a run's voxel count and coordinate sums
follow from its start and length alone, and an image's sum, minimum and maximum over each run
are one pass over the tile (:func:`blockbuster.intensity.tile_intensity`). The per-object
figures then add the runs up (:meth:`LabelRuns.total`, :meth:`LabelRuns.least`,
:meth:`LabelRuns.greatest`).

Runs break at every change of label and at the start of every row, so a run never leaves its
row; background runs (label 0) are cut too, and dropped from every result.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class LabelRuns:
    """A tile's runs: where each starts, and the object of each foreground run."""

    shape: tuple[int, ...]
    starts: np.ndarray  # (R,) intp: flat index (C order) of the first voxel of every run
    foreground: np.ndarray  # (F,) intp: which runs hold an object
    lengths: np.ndarray  # (F,) int64: voxels of each foreground run
    rows: np.ndarray  # (F,) intp: the object (index into ``ids``) of each foreground run
    ids: np.ndarray  # (k,) the distinct non-zero labels of the tile, sorted

    @classmethod
    def of(cls, labels: np.ndarray) -> LabelRuns:
        """The runs of ``labels`` (any integer dtype, at least 1-D; 0 is background)."""
        labels = np.ascontiguousarray(labels)
        flat = labels.reshape(-1)
        new = np.empty(flat.size, bool)
        if flat.size:
            new[0] = True
            np.not_equal(flat[1:], flat[:-1], out=new[1:])
            new[::labels.shape[-1] or 1] = True
        starts = np.flatnonzero(new)
        stops = np.append(starts[1:], flat.size)
        values = flat[starts]
        foreground = np.flatnonzero(values)
        values = values[foreground]
        ids, rows = _distinct(values)
        return cls(labels.shape, starts, foreground,
                   (stops[foreground] - starts[foreground]).astype(np.int64), rows, ids)

    def __len__(self) -> int:
        """The number of objects."""
        return len(self.ids)

    def total(self, per_run: np.ndarray) -> np.ndarray:
        """Per object, the sum of ``per_run`` (exact for integers: int64 in, int64 out)."""
        if per_run.dtype.kind in "iub":
            out = np.zeros(len(self.ids), np.int64)
            np.add.at(out, self.rows, per_run.astype(np.int64, copy=False))
            return out
        return np.bincount(self.rows, weights=per_run, minlength=len(self.ids))

    def least(self, per_run: np.ndarray) -> np.ndarray:
        """Per object, the least of ``per_run``."""
        return self._extreme(np.minimum, per_run)

    def greatest(self, per_run: np.ndarray) -> np.ndarray:
        """Per object, the greatest of ``per_run``."""
        return self._extreme(np.maximum, per_run)

    def _extreme(self, ufunc: np.ufunc, per_run: np.ndarray) -> np.ndarray:
        # the first run of each object seeds it; ufunc.at then folds in every run
        out = np.empty(len(self.ids), per_run.dtype)
        out[self.rows[::-1]] = per_run[::-1]
        ufunc.at(out, self.rows, per_run)
        return out

    def positions(self) -> tuple[list[np.ndarray], np.ndarray]:
        """The leading-axis coordinates of each foreground run (one array per axis but the
        last) and its first position along the last axis."""
        width = self.shape[-1]
        first = self.starts[self.foreground]
        row, along = np.divmod(first, width)
        lead = list(np.unravel_index(row, self.shape[:-1])) if len(self.shape) > 1 else []
        return lead, along

    def per_voxel_rows(self) -> np.ndarray:
        """The object of each foreground voxel, in C order (as ``labels[labels > 0]``)."""
        return np.repeat(self.rows, self.lengths)


def _distinct(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct ``values`` (sorted) and the index of each value among them: a count when
    the labels are small (local labels ``1..n``), else a sort."""
    if len(values) == 0:
        return values[:0], np.zeros(0, np.intp)
    top = int(values.max())
    if values.dtype.kind in "iu" and int(values.min()) >= 0 and top <= 4 * len(values) + 4096:
        present = np.bincount(values.astype(np.intp, copy=False), minlength=top + 1) > 0
        index = np.cumsum(present) - 1
        return np.flatnonzero(present).astype(values.dtype), index[values].astype(np.intp)
    ids, rows = np.unique(values, return_inverse=True)
    return ids, rows.reshape(-1).astype(np.intp)
