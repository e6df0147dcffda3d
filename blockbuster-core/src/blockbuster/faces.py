"""Per-tile labels and the thin face layers the merge needs (pure functions, no I/O).

For each tile the core keeps its *core* labels renumbered ``1..n`` (local labels) plus, at each
face shared with another tile:

- the **inner** layer: the core's outermost layer of local labels;
- the **outer** layer (``merge="overlap"`` and ``"iou"`` only): the tile's own prediction one
  pixel beyond its core, inside its halo, widened by one pixel on the other axes, mapped to
  local labels (0 where the predicted object does not reach into the core).

The merge reads only these layers, never the label image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from blockbuster._label_kernels import renumber_in_order
from blockbuster.errors import TooManyLabelsError
from blockbuster.ids import LOCAL_DTYPE, MAX_LOCAL_LABELS
from blockbuster.tiling import Tile, TileGrid


@dataclass(frozen=True)
class Face:
    """A layer of labels located in image coordinates by ``origin``."""

    origin: tuple[int, ...]
    labels: np.ndarray

    def take(self, box: tuple[slice, ...]) -> np.ndarray:
        """The part of this layer inside ``box`` (image coordinates, must be contained)."""
        return self.labels[
            tuple(slice(b.start - o, b.stop - o) for b, o in zip(box, self.origin))
        ]


def face_key(kind: str, axis: int, side: str) -> str:
    return f"{kind}{axis}{side}"


def local_labels(core_raw: np.ndarray, tile: Tile) -> tuple[np.ndarray, np.ndarray]:
    """Renumber the labels present in the core to ``1..n`` in order of first appearance.

    Returns the local labels (in an unsigned dtype that holds the largest raw label, so staging
    them costs few bytes), and the raw labels sorted by value with, for each, its local label
    (``present``: shape ``(n, 2)``, columns raw and local). The core is read in place: a core
    cut out of a padded tile is not copied first.
    """
    local, present = renumber_in_order(core_raw)
    check_label_budget(len(present), tile)
    return local, present


def check_label_budget(count: int, tile: Tile) -> None:
    """Raise :class:`TooManyLabelsError` when a tile holds more labels than its IDs can carry."""
    if count > MAX_LOCAL_LABELS:
        raise TooManyLabelsError(
            f"tile {tile.index} at {tile.bounds()} has {count} labels, more than its "
            f"provisional ID budget of {MAX_LOCAL_LABELS}; use smaller tiles."
        )


def to_local(raw: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Map raw labels to local labels; labels not in ``present`` (and 0) become 0."""
    if len(present) == 0:
        return np.zeros(raw.shape, LOCAL_DTYPE)
    keys = present[:, 0]
    position = np.minimum(np.searchsorted(keys, raw), len(keys) - 1)
    found = (keys[position] == raw) & (raw != 0)
    return np.where(found, present[position, 1], 0).astype(LOCAL_DTYPE)


def shared_axes(tile: Tile, grid: TileGrid) -> list[tuple[int, str]]:
    """The (axis, side) faces of ``tile`` that border another tile."""
    faces = []
    for axis, (p, g) in enumerate(zip(tile.position, grid.grid_shape)):
        if p > 0:
            faces.append((axis, "lo"))
        if p < g - 1:
            faces.append((axis, "hi"))
    return faces


def inner_box(tile: Tile, axis: int, side: str) -> tuple[slice, ...]:
    """The core's outermost layer on one side (image coordinates)."""
    c = tile.core[axis]
    layer = slice(c.stop - 1, c.stop) if side == "hi" else slice(c.start, c.start + 1)
    return tile.core[:axis] + (layer,) + tile.core[axis + 1 :]


def outer_box(tile: Tile, axis: int, side: str, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """The layer just beyond the core on one side, widened by one pixel on the other axes."""
    box = []
    for a, (c, size) in enumerate(zip(tile.core, shape)):
        if a == axis:
            box.append(slice(c.stop, c.stop + 1) if side == "hi" else slice(c.start - 1, c.start))
        else:
            box.append(slice(max(c.start - 1, 0), min(c.stop + 1, size)))
    return tuple(box)


def inner_faces(local: np.ndarray, tile: Tile, grid: TileGrid) -> dict[str, Face]:
    """Inner layers of the core at every face shared with another tile."""
    return _core_layers("inner", local, tile, grid, LOCAL_DTYPE)


def class_faces(classes: np.ndarray, tile: Tile, grid: TileGrid) -> dict[str, Face]:
    """The class of every pixel of the core's outermost layers (a semantic map's), so the
    merge joins only objects of one class."""
    return _core_layers("class", classes, tile, grid)


def _core_layers(kind: str, core: np.ndarray, tile: Tile, grid: TileGrid,
                 dtype: np.dtype | None = None) -> dict[str, Face]:
    """Copies of ``core``'s outermost layers at every face shared with another tile (in
    ``dtype``: only the layers are converted, never the whole core)."""
    faces = {}
    for axis, side in shared_axes(tile, grid):
        box = inner_box(tile, axis, side)
        relative = tuple(slice(b.start - c.start, b.stop - c.start) for b, c in zip(box, tile.core))
        faces[face_key(kind, axis, side)] = Face(tuple(b.start for b in box),
                                                 np.array(core[relative], dtype=dtype))
    return faces


def outer_faces(
    raw: np.ndarray, present: np.ndarray, tile: Tile, grid: TileGrid
) -> dict[str, Face]:
    """The tile's own prediction one pixel beyond its core, as local labels.

    Only faces across axes with a halo are kept; pixels outside the padded window are 0.
    """
    faces = {}
    for axis, side in shared_axes(tile, grid):
        if grid.overlap[axis] == 0:
            continue
        box = outer_box(tile, axis, side, grid.shape)
        layer = np.zeros(tuple(b.stop - b.start for b in box), LOCAL_DTYPE)
        inside = tuple(
            slice(max(b.start, p.start), min(b.stop, p.stop)) for b, p in zip(box, tile.padded)
        )
        source = tuple(slice(i.start - p.start, i.stop - p.start)
                       for i, p in zip(inside, tile.padded))
        target = tuple(slice(i.start - b.start, i.stop - b.start) for i, b in zip(inside, box))
        layer[target] = to_local(raw[source], present)
        faces[face_key("outer", axis, side)] = Face(tuple(b.start for b in box), layer)
    return faces
