"""Object-level agreement between two label images (tiled vs whole-image, peer vs peer).

Objects match when their IoU is at least ``iou_threshold`` (greedy, best IoU first). A
**false merge** is a ``result`` object that holds most (over half) of two or more ``reference``
objects; a **false split** is a ``reference`` object that holds most (over half) of two or
more ``result`` objects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from blockbuster.errors import InvalidParameterError


@dataclass(frozen=True)
class MatchResult:
    """Counts and scores of an object matching."""

    true_positives: int
    false_positives: int
    false_negatives: int
    false_merges: int
    false_splits: int

    @property
    def precision(self) -> float:
        found = self.true_positives + self.false_positives
        return self.true_positives / found if found else 1.0

    @property
    def recall(self) -> float:
        real = self.true_positives + self.false_negatives
        return self.true_positives / real if real else 1.0

    @property
    def f1(self) -> float:
        total = 2 * self.true_positives + self.false_positives + self.false_negatives
        return 2 * self.true_positives / total if total else 1.0


def match_objects(reference, result, iou_threshold: float = 0.5) -> MatchResult:
    """Match the objects of ``result`` to those of ``reference`` (arrays of the same shape)."""
    reference = np.asarray(reference)
    result = np.asarray(result)
    if reference.shape != result.shape:
        raise InvalidParameterError(
            f"shapes differ: {reference.shape} vs {result.shape}; compare label images of "
            "the same shape."
        )
    reference, result = reference.ravel(), result.ravel()
    ref_ids, ref_sizes = _sizes(reference)
    res_ids, res_sizes = _sizes(result)
    both = (reference != 0) & (result != 0)
    pairs, overlap = distinct_pairs(reference[both], result[both])
    ref_size = ref_sizes[np.searchsorted(ref_ids, pairs[0])]
    res_size = res_sizes[np.searchsorted(res_ids, pairs[1])]
    iou = overlap / (ref_size + res_size - overlap)
    tp = _greedy_matches(pairs, iou, iou_threshold)
    merges = _owners_of_majorities(pairs[1], overlap / ref_size)
    splits = _owners_of_majorities(pairs[0], overlap / res_size)
    return MatchResult(tp, len(res_ids) - tp, len(ref_ids) - tp, merges, splits)


def distinct_pairs(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct ``(first[i], second[i])`` pairs, as a ``(2, n)`` array in lexicographic
    order, and how often each occurs.

    Labels that fit in 32 bits are packed into one 64-bit key, so this is one 1-D sort: on an
    8192² image ~20x faster than ``np.unique(..., axis=1)``, which sorts row records.
    """
    first, second = np.asarray(first).ravel(), np.asarray(second).ravel()
    lowest = min(first.min(), second.min()) if first.size else 0
    highest = max(first.max(), second.max()) if first.size else 0
    if first.size and lowest >= 0 and highest < 2**32:
        keys, counts = np.unique((first.astype(np.uint64) << np.uint64(32))
                                 | second.astype(np.uint64), return_counts=True)
        pairs = np.stack([keys >> np.uint64(32), keys & np.uint64(2**32 - 1)])
        return pairs.astype(np.result_type(first.dtype, second.dtype)), counts
    return np.unique(np.stack([first, second]), axis=1, return_counts=True)


def _sizes(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids, sizes = np.unique(labels[labels != 0], return_counts=True)
    return ids, sizes


def _greedy_matches(pairs: np.ndarray, iou: np.ndarray, threshold: float) -> int:
    order = np.argsort(-iou, kind="stable")
    used_ref, used_res, matched = set(), set(), 0
    for i in order:
        if iou[i] < threshold:
            break
        ref, res = int(pairs[0, i]), int(pairs[1, i])
        if ref not in used_ref and res not in used_res:
            used_ref.add(ref)
            used_res.add(res)
            matched += 1
    return matched


def _owners_of_majorities(owner: np.ndarray, fraction: np.ndarray) -> int:
    """How many owners hold over half of two or more objects."""
    majority_owners = owner[fraction > 0.5]
    _, counts = np.unique(majority_owners, return_counts=True)
    return int((counts >= 2).sum())
