"""The compiled per-run reductions behind the intensity columns (:mod:`blockbuster.intensity`).

Kept apart so that numba (about 0.5 s and 50-100 MB to import) is imported only by a run that
measures intensities. Each kernel walks a tile's foreground runs once (``first`` and
``lengths`` index the flat tile, ``rows`` names each run's object) and adds into per-object
arrays; ``nogil`` lets worker threads run them in parallel, ``cache`` compiles each dtype once
per machine.
"""

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def integer_runs(flat, first, lengths, rows, k):  # pragma: no cover - compiled
    total = np.zeros(k, np.int64)
    squares = np.zeros(k, np.int64)
    low = np.full(k, np.inf)
    high = np.full(k, -np.inf)
    for r in range(len(first)):
        row, s, q = rows[r], np.int64(0), np.int64(0)
        lo, hi = np.int64(flat[first[r]]), np.int64(flat[first[r]])
        for i in range(first[r], first[r] + lengths[r]):
            v = np.int64(flat[i])
            s += v
            q += v * v
            lo = min(lo, v)
            hi = max(hi, v)
        total[row] += s
        squares[row] += q
        low[row] = min(low[row], np.float64(lo))
        high[row] = max(high[row], np.float64(hi))
    return total, squares, low, high


@numba.njit(cache=True, nogil=True)
def float_runs(flat, first, lengths, rows, k):  # pragma: no cover - compiled
    total = np.zeros(k)
    low = np.full(k, np.inf)
    high = np.full(k, -np.inf)
    for r in range(len(first)):
        row = rows[r]
        s, lo, hi = 0.0, np.inf, -np.inf
        for i in range(first[r], first[r] + lengths[r]):
            v = np.float64(flat[i])
            s += v
            if v != v:  # NaN: the object's min and max are NaN, as numpy's are
                lo = hi = v
                break
            lo = min(lo, v)
            hi = max(hi, v)
        if lo != lo or low[row] != low[row]:
            s = low[row] = high[row] = np.nan
        else:
            low[row] = min(low[row], lo)
            high[row] = max(high[row], hi)
        total[row] += s
    return total, low, high


@numba.njit(cache=True, nogil=True)
def deviation_runs(flat, first, lengths, rows, mean):  # pragma: no cover - compiled
    m2 = np.zeros(len(mean))
    for r in range(len(first)):
        row = rows[r]
        centre, s = mean[row], 0.0
        for i in range(first[r], first[r] + lengths[r]):
            d = np.float64(flat[i]) - centre
            s += d * d
        m2[row] += s
    return m2
