"""The per-run reductions behind the intensity columns (:mod:`blockbuster.intensity`).

Each kernel walks a tile's foreground runs once (``first`` and ``lengths`` index the flat
tile, ``rows`` names each run's object) and returns per-object arrays of ``k`` entries. The
loops are C (``_runkernels.c``, compiled when blockbuster-core is installed): they release the
GIL, so worker threads run them in parallel, and cost no memory beyond their arguments and
results. This module allocates the results and hands the C code values it reads: native byte
order, float16 widened to float32 (both exact).
"""

import numpy as np

from blockbuster import _runkernels


def integer_runs(flat, first, lengths, rows, k):
    """Per object: exact int64 sums of the values (bool or integers of up to 16 bits) and of
    their squares, and their min and max (float64)."""
    total, squares = np.empty(k, np.int64), np.empty(k, np.int64)
    low, high = np.empty(k), np.empty(k)
    _runkernels.integer_runs(_readable(flat), first, lengths, rows, total, squares, low, high)
    return total, squares, low, high


def float_runs(flat, first, lengths, rows, k):
    """Per object: the float64 sum, min and max of the values (NaN for all three in an
    object that holds a NaN, as numpy's are)."""
    total, low, high = np.empty(k), np.empty(k), np.empty(k)
    _runkernels.float_runs(_readable(flat), first, lengths, rows, total, low, high)
    return total, low, high


def deviation_runs(flat, first, lengths, rows, mean):
    """Per object: the sum of the squared deviations of its values from ``mean`` (float64)."""
    m2 = np.empty(len(mean))
    _runkernels.deviation_runs(_readable(flat), first, lengths, rows,
                               np.ascontiguousarray(mean, np.float64), m2)
    return m2


def _readable(flat: np.ndarray) -> np.ndarray:
    """``flat`` as values the C kernels read: float16 as float32, native byte order."""
    if flat.dtype == np.float16:
        return flat.astype(np.float32)
    return flat if flat.dtype.isnative else flat.astype(flat.dtype.newbyteorder("="))
