"""``match_objects`` on hand-made cases: every F1 and false-merge gate of the suite uses it."""

import numpy as np
import pytest

from blockbuster.errors import InvalidParameterError
from blockbuster.metrics import MatchResult, match_objects


def counts(result: MatchResult) -> tuple[int, int, int, int, int]:
    return (result.true_positives, result.false_positives, result.false_negatives,
            result.false_merges, result.false_splits)


def test_a_renumbering_matches_every_object():
    reference = np.array([[1, 1, 0, 2], [0, 0, 0, 2], [3, 0, 0, 0]])
    result = np.array([[7, 7, 0, 5], [0, 0, 0, 5], [9, 0, 0, 0]])
    score = match_objects(reference, result)
    assert counts(score) == (3, 0, 0, 0, 0) and score.f1 == 1.0


def test_three_objects_merged_into_one():
    reference = np.array([[1, 1, 0, 2, 2, 0, 3, 3]])
    result = np.array([[4, 4, 4, 4, 4, 4, 4, 4]])  # IoU 2/8 with each: no match
    score = match_objects(reference, result)
    assert counts(score) == (0, 1, 3, 1, 0)
    assert score.f1 == 0.0 and score.precision == 0.0 and score.recall == 0.0


def test_a_merge_of_two_still_matches_the_larger_one():
    reference = np.array([[1, 1, 1, 2, 2, 0]])
    result = np.array([[5, 5, 5, 5, 5, 0]])  # IoU 3/5 with 1, 2/5 with 2
    score = match_objects(reference, result)
    assert counts(score) == (1, 0, 1, 1, 0)
    assert score.precision == 1.0 and score.recall == 0.5 and score.f1 == pytest.approx(2 / 3)


def test_one_object_split_in_two_halves():
    reference = np.array([[1, 1, 1, 1, 0, 0]])
    result = np.array([[2, 2, 3, 3, 0, 0]])  # each half: IoU exactly 0.5
    assert counts(match_objects(reference, result)) == (1, 1, 0, 0, 1)
    assert counts(match_objects(reference, result, iou_threshold=0.51)) == (0, 2, 1, 0, 1)


@pytest.mark.parametrize("threshold, matched", [(0.5, 1), (0.5000001, 0), (0.75, 0)])
def test_iou_exactly_at_the_threshold_matches(threshold, matched):
    reference = np.array([[1, 1, 0, 0, 0]])
    result = np.array([[6, 6, 6, 6, 0]])  # IoU 2/4 = 0.5 exactly
    score = match_objects(reference, result, iou_threshold=threshold)
    assert (score.true_positives, score.false_positives, score.false_negatives) == (
        matched, 1 - matched, 1 - matched)
    three_of_four = match_objects(np.array([[1, 1, 1, 0]]), np.array([[2, 2, 2, 2]]), 0.75)
    assert three_of_four.true_positives == 1  # 3/4 = 0.75 exactly


def test_half_of_two_objects_is_not_a_merge():
    reference = np.array([[1, 1, 2, 2]])
    result = np.array([[0, 3, 3, 0]])  # holds exactly half of each, not most
    assert match_objects(reference, result).false_merges == 0
    assert match_objects(result, reference).false_splits == 0


def test_greedy_matching_takes_the_best_iou_first():
    reference = np.array([[1, 1, 1, 1, 2, 2, 2, 0]])
    result = np.array([[3, 3, 3, 4, 4, 4, 4, 0]])  # 1~3: 3/4, 1~4: 1/7, 2~4: 3/4
    score = match_objects(reference, result)
    assert counts(score) == (2, 0, 0, 0, 0)


def test_empty_images():
    empty = np.zeros((3, 4), np.uint32)
    some = np.zeros((3, 4), np.uint32)
    some[0, :2], some[2, 3] = 1, 2
    assert counts(match_objects(empty, empty)) == (0, 0, 0, 0, 0)
    assert match_objects(empty, empty).f1 == 1.0
    nothing_found = match_objects(some, empty)
    assert counts(nothing_found) == (0, 0, 2, 0, 0)
    assert (nothing_found.precision, nothing_found.recall, nothing_found.f1) == (1.0, 0.0, 0.0)
    all_spurious = match_objects(empty, some)
    assert counts(all_spurious) == (0, 2, 0, 0, 0)
    assert (all_spurious.precision, all_spurious.recall, all_spurious.f1) == (0.0, 1.0, 0.0)


def test_shapes_must_match():
    with pytest.raises(InvalidParameterError, match="shapes differ"):
        match_objects(np.zeros((2, 3)), np.zeros((3, 2, 1)))


@pytest.mark.parametrize("dtypes", [(np.uint32, np.uint32), (np.int32, np.uint64),
                                    (np.int64, np.int64), (np.uint8, np.int16)])
def test_distinct_pairs_equal_numpy_unique_over_columns(dtypes):
    """The packed one-key sort gives numpy's pairs and counts, for wide and negative labels
    (which take numpy's own path) too."""
    from blockbuster.metrics import distinct_pairs

    rng = np.random.default_rng(5)
    first = rng.integers(-3 if np.dtype(dtypes[0]).kind == "i" else 0, 50, 4000).astype(dtypes[0])
    second = rng.integers(0, 40, 4000).astype(dtypes[1])
    if dtypes[1] == np.uint64:
        second[0] = 2**40  # beyond 32 bits
    pairs, counts = distinct_pairs(first, second)
    expected, expected_counts = np.unique(np.stack([first, second]), axis=1, return_counts=True)
    assert np.array_equal(pairs, expected) and np.array_equal(counts, expected_counts)
