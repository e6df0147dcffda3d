"""The per-pixel loops of a tile's labels: numbering them in order of first appearance, and
mapping them through a lookup table.

The loops are C (``_labelkernels.c``, compiled when blockbuster-core is installed). They read
the labels in place whatever their strides (a tile's core cut out of its padded window is not
copied first), release the GIL, and write straight into an output of the dtype asked for.
Numbering looks a label up only where it differs from the pixel before (labels come in runs
along a row). On a 1024² core of ~700 nuclei cut from its padded window: renumbering 1.8 ms
(2.9 ms with a lookup per pixel) against fastremap's 2.6 ms on a contiguous copy; the lookup
0.5 ms against numpy's ``take`` 2.1 ms (a branch-free lookup per pixel is faster there).
"""

from __future__ import annotations

import numpy as np

from blockbuster import _labelkernels
from blockbuster.ids import local_dtype

# A lookup table indexed by label costs 4 bytes per possible label: used while the largest
# label is at most this many times the pixel count (plus a fixed allowance); labels sparser
# than that (a function that returns global IDs) are numbered through a hash map instead.
DENSE_LABELS_PER_PIXEL = 2
DENSE_ALLOWANCE = 1 << 16
MAX_NUMBERED = 2**32 - 1  # the C loop numbers into at most uint32


def renumber_in_order(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The non-zero labels numbered ``1..n`` in order of first appearance (C order), in an
    unsigned dtype that holds ``n`` (the smallest that holds the largest label, or ``n`` for
    labels too sparse for a table); and ``present``: the labels sorted
    by value with, for each, its number (shape ``(n, 2)``, int64, columns label and number).
    """
    top = int(labels.max()) if labels.size else 0
    if top > min(DENSE_LABELS_PER_PIXEL * labels.size + DENSE_ALLOWANCE, MAX_NUMBERED):
        return _renumber_sparse(labels)
    lut = np.zeros(top + 1, np.uint32)
    numbered = np.empty(labels.shape, local_dtype(top))
    _labelkernels.renumber(_native(labels), lut, numbered)
    values = np.flatnonzero(lut)
    present = np.empty((len(values), 2), np.int64)
    present[:, 0] = values
    present[:, 1] = lut[values]
    return numbered, present


def apply_lut(labels: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """``lut[labels]`` (an unsigned ``lut``), in ``lut``'s dtype."""
    out = np.empty(labels.shape, lut.dtype)
    _labelkernels.apply_lut(_native(labels), np.ascontiguousarray(lut), out)
    return out


def _renumber_sparse(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`renumber_in_order` for labels too sparse for a lookup table: fastremap's hash
    map. fastremap walks the memory, which is C order except for a Fortran-ordered array."""
    import fastremap

    shape = labels.shape
    if labels.flags.f_contiguous and not labels.flags.c_contiguous:
        labels = np.ascontiguousarray(labels)
    numbered, remap = fastremap.renumber(np.atleast_1d(labels), preserve_zero=True,
                                         in_place=False)  # fastremap refuses a 0-d array
    remap.pop(0, None)
    present = np.array(sorted(remap.items()), dtype=np.int64).reshape(-1, 2)
    return numbered.reshape(shape).astype(local_dtype(len(present)), copy=False), present


def _native(labels: np.ndarray) -> np.ndarray:
    return labels if labels.dtype.isnative else labels.astype(labels.dtype.newbyteorder("="))
