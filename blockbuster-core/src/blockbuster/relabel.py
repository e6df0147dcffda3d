"""Final relabel: consecutive IDs ``1..N`` in a deterministic order, one small table per tile.

Objects are numbered in the order of their smallest provisional ID ``(tile, local label)``,
so the output depends only on the input, ``fn`` and the tiling — never on the executor, the
worker count or the completion order. A tile's lookup table is built from its own label count,
one offset, and the few of its labels that merged into an object owned by an earlier ID.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from blockbuster.ids import first_of_tiles, local_of, tile_of
from blockbuster.merge import connected_groups


@dataclass(frozen=True)
class TileTable:
    """What one tile needs to relabel itself."""

    count: int
    offset: int
    absorbed_local: np.ndarray
    absorbed_final: np.ndarray
    spanning: np.ndarray | None = None  # final IDs of this tile's objects that span tiles

    def lookup(self) -> np.ndarray:
        """``lut[local] = final`` for local labels ``0..count``."""
        shift = np.zeros(self.count + 1, np.int64)
        if len(self.absorbed_local):
            shift[self.absorbed_local] = 1
        lut = self.offset + np.arange(self.count + 1, dtype=np.int64) - np.cumsum(shift)
        # an absorbed label counts itself in the cumsum: its own slot is overwritten below
        if len(self.absorbed_local):
            lut[self.absorbed_local] = self.absorbed_final
        lut[0] = 0
        return lut


class Relabeling:
    """The mapping from provisional to final IDs, held as O(tiles + merged objects)."""

    def __init__(self, counts: np.ndarray, edges: np.ndarray):
        self.counts = np.asarray(counts, np.int64)
        before = np.concatenate([[0], np.cumsum(self.counts)[:-1]])
        nodes, representative = connected_groups(edges)
        absorbed = nodes != representative
        self.absorbed = nodes[absorbed]
        self._before = before
        self.absorbed_final = self._final_of_representatives(representative[absorbed])
        self.absorbed_before = np.searchsorted(
            self.absorbed, first_of_tiles(np.arange(len(self.counts)))
        )
        self.n_objects = int(self.counts.sum() - len(self.absorbed))
        self._merged = nodes  # sorted provisional IDs of the objects made of several

    def _final_of_representatives(self, ids: np.ndarray) -> np.ndarray:
        return self._before[tile_of(ids)] + local_of(ids) - np.searchsorted(self.absorbed, ids)

    def final_ids(self, ids: np.ndarray) -> np.ndarray:
        """The output ID of each provisional ID (as the tiles' lookup tables give it)."""
        ids = np.asarray(ids, np.uint64)
        final = self._final_of_representatives(ids)
        if len(self.absorbed):
            where = np.minimum(np.searchsorted(self.absorbed, ids), len(self.absorbed) - 1)
            absorbed = self.absorbed[where] == ids
            final[absorbed] = self.absorbed_final[where[absorbed]]
        return final.astype(np.int64)

    def table(self, index: int, spanning: bool = False) -> TileTable:
        """Tile ``index``'s table; with ``spanning``, also which of its objects span tiles."""
        lo, hi = np.searchsorted(
            self.absorbed, first_of_tiles(np.array([index, index + 1]))
        )
        return TileTable(
            count=int(self.counts[index]),
            offset=int(self._before[index] - self.absorbed_before[index]),
            absorbed_local=local_of(self.absorbed[lo:hi]),
            absorbed_final=self.absorbed_final[lo:hi],
            spanning=self.spanning(index) if spanning else None,
        )

    def spanning(self, index: int) -> np.ndarray:
        """The final IDs of tile ``index``'s objects that span several tiles (sorted): those
        of its provisional IDs that merged (every merge joins labels of different tiles)."""
        lo, hi = np.searchsorted(self._merged, first_of_tiles(np.array([index, index + 1])))
        return np.unique(self.final_ids(self._merged[lo:hi])).astype(np.uint64)

    @property
    def dtype(self) -> np.dtype:
        """uint32 unless the number of objects needs uint64."""
        return np.dtype(np.uint32 if self.n_objects < 2**32 else np.uint64)
