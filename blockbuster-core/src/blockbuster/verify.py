"""``verify``: check a run's stitching against the segmenter's own answer across its seams.

A tiled run is exact where each tile, seeing its halo, labels its core as it would label it
inside the whole image. :func:`verify_seams` measures that where it matters: it re-runs the
segmenter on windows centred on tile corners and faces, each window the size of a padded tile
(a tile-sized centre plus a halo on both sides) so the seam in its middle needs no stitching,
and compares the stitched labels inside the window's centre with the window's own labels,
both cut to the centre, split into connected pieces and kept where they touch a tile boundary
(the objects stitching can get wrong; the others would only dilute the score)
(:func:`blockbuster.metrics.match_objects`: object F1, false merges, false splits).

Windows are chosen deterministically and spread over the image: about half on tile corners,
half on faces (shared among the tiled axes), evenly spaced in raster order. Axes whose tiles
are one pixel thick (per-slice tiles) are not seams here: each window stays one plane thick.
With ``merge="iou"`` that is the design: the in-plane seams are verified, plane by plane, and
the joins across planes (by IoU of whole 2D objects, which equal Cellpose's ``stitch3D`` on
the whole stack, :mod:`blockbuster.stitching`) are not seams; the verdict says so.
The run passes when every window's F1 reaches ``threshold``; when it fails the report
suggests a larger overlap to re-verify with.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from blockbuster.errors import InvalidParameterError
from blockbuster.metrics import MatchResult, match_objects
from blockbuster.tiling import TileGrid, span

DEFAULT_WINDOWS = 8
DEFAULT_THRESHOLD = 0.99
MIN_SUGGESTED_OVERLAP = 8


@dataclass(frozen=True)
class Window:
    """One verification window: the seam point it is centred on, the region compared
    (``centre``, tile-sized) and the region the segmenter reads (``read``: centre + halo)."""

    kind: str  # "corner" or "face"
    point: tuple[int, ...]
    centre: tuple[slice, ...]
    read: tuple[slice, ...]


@dataclass(frozen=True)
class WindowCheck:
    """How the stitched labels compare with the window's own inside one window's centre."""

    window: Window
    window_objects: int
    stitched_objects: int
    match: MatchResult

    @property
    def f1(self) -> float:
        return self.match.f1


@dataclass(frozen=True)
class VerifyReport:
    """The windows checked, the verdict and, on failure, an overlap to re-verify with."""

    checks: list[WindowCheck]
    threshold: float
    overlap: tuple[int, ...]
    suggested_overlap: tuple[int, ...] | None
    note: str = ""  # what the windows do not cover, e.g. the IoU joins across planes

    @property
    def passed(self) -> bool:
        return all(check.f1 >= self.threshold for check in self.checks)

    @property
    def f1(self) -> float:
        """Object F1 pooled over every window."""
        tp = sum(c.match.true_positives for c in self.checks)
        wrong = sum(c.match.false_positives + c.match.false_negatives for c in self.checks)
        return 2 * tp / (2 * tp + wrong) if tp + wrong else 1.0

    def verdict(self) -> str:
        """One line: PASS or FAIL, the figures, what to do on failure (and the note)."""
        return self._verdict() + (f" ({self.note})" if self.note else "")

    def _verdict(self) -> str:
        merges = sum(c.match.false_merges for c in self.checks)
        splits = sum(c.match.false_splits for c in self.checks)
        worst = min((c.f1 for c in self.checks), default=1.0)
        figures = (f"{len(self.checks)} seam windows, F1 {self.f1:.4f} (worst {worst:.4f}, "
                   f"threshold {self.threshold}), {merges} false merges, {splits} false splits")
        if not self.checks:
            return "PASS: one tile along every tiled axis, no seam to verify"
        if self.passed:
            return f"PASS: {figures}"
        return (f"FAIL: {figures}; the seams are not exact with overlap "
                f"{_axes_text(self.overlap)}: re-verify with overlap "
                f"{_axes_text(self.suggested_overlap)}")

    def table(self) -> str:
        """One row per window: where, the objects touching its seams in the window's labels and
    in the stitched ones, F1, false merges and splits."""
        rows = [("window", "seam", "centre region", "seam objects (window)", "(stitched)",
                 "F1", "false merges", "false splits", "")]
        for i, c in enumerate(self.checks):
            rows.append((str(i), f"{c.window.kind} {c.window.point}", span(c.window.centre),
                         str(c.window_objects), str(c.stitched_objects), f"{c.f1:.4f}",
                         str(c.match.false_merges), str(c.match.false_splits),
                         "" if c.f1 >= self.threshold else "FAIL"))
        widths = [max(len(r[j]) for r in rows) for j in range(len(rows[0]))]
        return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows)

    def __str__(self) -> str:
        return f"{self.table()}\n{self.verdict()}"


def verify_seams(image, labels, segment: Callable[..., np.ndarray], grid: TileGrid,
                 windows: int = DEFAULT_WINDOWS,
                 threshold: float = DEFAULT_THRESHOLD, merge: str | None = None) -> VerifyReport:
    """Compare ``labels`` (the stitched result) with ``segment`` run on seam windows.

    ``image`` is an :class:`~blockbuster.image.ImageView`; ``segment(array, origin)`` labels
    one window (its array, channels included; ``origin``: where it starts in the image) as a
    single tile; ``labels`` is anything sliceable to numpy.
    ``merge="iou"``: the windows are one plane thick and the report notes that the joins
    across planes are not among the seams checked.
    """
    check_verify_options(windows, threshold)
    checks = []
    for window in seam_windows(grid, windows):
        own = np.asarray(segment(image.read(window.read), tuple(r.start for r in window.read)))
        inside = tuple(slice(c.start - r.start, c.stop - r.start)
                       for c, r in zip(window.centre, window.read))
        checks.append(compare(window, own[inside], np.asarray(labels[window.centre]),
                              seam_mask(grid, window.centre)))
    passed = all(c.f1 >= threshold for c in checks)
    return VerifyReport(checks, threshold, grid.overlap,
                        None if passed else suggest_overlap(grid), _note(grid, merge))


def _note(grid: TileGrid, merge: str | None) -> str:
    if merge != "iou":
        return ""
    from blockbuster.stitching import stack_axis

    return (f"in-plane seams only: planes along axis {stack_axis(grid)} are joined by IoU, as "
            "Cellpose's stitch3D joins them on the whole stack, not at seams")


def check_verify_options(windows, threshold) -> None:
    if isinstance(windows, bool) or not isinstance(windows, int | np.integer) or windows < 1:
        raise InvalidParameterError(f"verify={windows!r}: give the number of seam windows to "
                                    f"check, e.g. verify={DEFAULT_WINDOWS}.")
    if not 0 <= threshold <= 1:
        raise InvalidParameterError(f"verify_threshold={threshold!r}: give an object F1 "
                                    f"between 0 and 1, e.g. {DEFAULT_THRESHOLD}.")


def compare(window: Window, own: np.ndarray, stitched: np.ndarray,
            seam: np.ndarray) -> WindowCheck:
    """Match the pieces of both labelings inside the window's centre that touch a seam."""
    own, stitched = on_seam(pieces(own), seam), on_seam(pieces(stitched), seam)
    return WindowCheck(window, _count(own), _count(stitched), match_objects(own, stitched))


def on_seam(labels: np.ndarray, seam: np.ndarray) -> np.ndarray:
    """``labels`` with only the objects that touch ``seam`` kept (the others set to 0)."""
    touching = np.unique(labels[seam & (labels != 0)])
    return np.where(np.isin(labels, touching), labels, 0)


def seam_mask(grid: TileGrid, region: tuple[slice, ...]) -> np.ndarray:
    """The pixels of ``region`` on either side of a tile boundary (of a tiled axis)."""
    mask = np.zeros(tuple(r.stop - r.start for r in region), bool)
    for axis in _seam_axes(grid):
        r, t = region[axis], grid.tile_shape[axis]
        for cut in range(-(-max(r.start, 1) // t) * t, r.stop, t):
            for side in (cut - 1, cut):
                if r.start <= side < r.stop:
                    index = [slice(None)] * mask.ndim
                    index[axis] = side - r.start
                    mask[tuple(index)] = True
    return mask


def pieces(labels: np.ndarray) -> np.ndarray:
    """Each label split into its connected pieces (edge and corner neighbours count).

    An object that leaves the centre and comes back is one label in the stitched result and
    two in the window's; compared as pieces, only a difference at the seam counts. A false
    merge stays one piece: the two objects it joins touch.
    """
    from skimage.measure import label

    return label(labels, background=0, connectivity=labels.ndim)


def _count(labels: np.ndarray) -> int:
    return int(len(np.unique(labels[labels != 0])))


def suggest_overlap(grid: TileGrid) -> tuple[int, ...]:
    """Twice the overlap on every tiled axis (at least ``MIN_SUGGESTED_OVERLAP``)."""
    return tuple(max(2 * o, MIN_SUGGESTED_OVERLAP) if axis in _seam_axes(grid) else o
                 for axis, o in enumerate(grid.overlap))


def seam_windows(grid: TileGrid, n: int) -> list[Window]:
    """Up to ``n`` windows centred on tile corners and faces, spread evenly, deterministic."""
    axes = _seam_axes(grid)
    if not axes:
        return []
    cuts = {a: [i * grid.tile_shape[a] for i in range(1, grid.grid_shape[a])] for a in axes}
    centres = [[min(i * t + t // 2, s - 1) for i in range(g)]
               for t, s, g in zip(grid.tile_shape, grid.shape, grid.grid_shape)]
    n_corners = math.ceil(n / 2) if len(axes) > 1 else 0
    points = [("corner", p) for p in _spread(
        [cuts[a] if a in axes else centres[a] for a in range(grid.ndim)], n_corners)]
    n_faces = n - len(points)
    for k, axis in enumerate(axes):
        share = n_faces // len(axes) + (k < n_faces % len(axes))
        points += [("face", p) for p in _spread(
            [cuts[a] if a == axis else centres[a] for a in range(grid.ndim)], share)]
    return [_window(grid, kind, point) for kind, point in points]


def _seam_axes(grid: TileGrid) -> list[int]:
    return [a for a in range(grid.ndim) if grid.grid_shape[a] > 1 and grid.tile_shape[a] > 1]


def _spread(choices: list[list[int]], k: int) -> list[tuple[int, ...]]:
    """``k`` points of the product of ``choices``, evenly spaced in raster order."""
    total = math.prod(len(c) for c in choices)
    if k <= 0 or total == 0:
        return []
    picks = np.unique(np.linspace(0, total - 1, min(k, total)).round().astype(np.int64))
    shape = [len(c) for c in choices]
    return [tuple(c[i] for c, i in zip(choices, np.unravel_index(int(p), shape)))
            for p in picks]


def _window(grid: TileGrid, kind: str, point: tuple[int, ...]) -> Window:
    centre, read = [], []
    for p, t, s, o in zip(point, grid.tile_shape, grid.shape, grid.overlap):
        start = min(max(p - t // 2, 0), s - t) if t > 1 else p
        centre.append(slice(start, start + t))
        read.append(slice(max(start - o, 0), min(start + t + o, s)))
    return Window(kind, tuple(int(p) for p in point), tuple(centre), tuple(read))


def _axes_text(values) -> str:
    values = tuple(values or ())
    return str(values[0]) if len(set(values)) == 1 else str(list(values))
