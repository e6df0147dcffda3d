"""The C loops over a tile's labels (``blockbuster._labelkernels``, through
``blockbuster._label_kernels``): numbering in order of first appearance and the lookup equal a
plain numpy reference for every integer dtype and any strides, bad arguments are refused with
their name, and the GIL is released."""


import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from blockbuster import _labelkernels
from blockbuster._label_kernels import apply_lut, renumber_in_order

INTEGERS = ["int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64"]


def reference_renumber(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Numbers 1..n by first appearance in C order, the slow and obvious way."""
    flat = np.asarray(labels).ravel(order="C").astype(np.int64)
    numbers = {}
    for value in flat:
        if value and value not in numbers:
            numbers[value] = len(numbers) + 1
    numbered = np.array([numbers.get(v, 0) for v in flat], np.int64).reshape(labels.shape)
    present = np.array(sorted(numbers.items()), np.int64).reshape(-1, 2)
    return numbered, present


@st.composite
def label_views(draw):
    """Label arrays of 0-3 dimensions and any dtype, often a strided, reversed or Fortran-ordered
    view of a larger array, with runs of equal labels as a label image has them."""
    dtype = np.dtype(draw(st.sampled_from(INTEGERS)))
    ndim = draw(st.integers(0, 3))
    shape = tuple(draw(st.lists(st.integers(0, 7), min_size=ndim, max_size=ndim)))
    top = min(draw(st.sampled_from([1, 5, 300, 70_000])), np.iinfo(dtype).max)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    big = tuple(2 * s + 1 for s in shape)
    values = rng.integers(0, top + 1, size=big, endpoint=False).astype(dtype)
    values[rng.random(big) < 0.4] = 0
    if ndim:
        values = np.repeat(values, 2, axis=-1)[..., : big[-1]]  # runs
    layout = draw(st.sampled_from(["strided", "reversed", "fortran", "contiguous"]))
    if layout == "strided":
        return values[tuple(slice(0, 2 * s, 2) for s in shape)]
    if layout == "reversed":
        return values[tuple(slice(s - 1, None, -1) if s else slice(0, 0) for s in shape)]
    if layout == "fortran":
        return np.asfortranarray(values[tuple(slice(0, s) for s in shape)])
    return np.ascontiguousarray(values[tuple(slice(0, s) for s in shape)])


@settings(max_examples=150, deadline=None)
@given(label_views())
def test_renumbering_follows_first_appearance_in_c_order(labels):
    numbered, present = renumber_in_order(labels)
    expected, expected_present = reference_renumber(labels)
    assert numbered.shape == labels.shape
    np.testing.assert_array_equal(numbered, expected)
    np.testing.assert_array_equal(present, expected_present)
    assert present.dtype == np.int64
    assert numbered.dtype.kind == "u" and np.iinfo(numbered.dtype).max >= len(present)


@pytest.mark.parametrize("labels", [np.int32(66144), np.uint64(2**40), np.int8(0)])
def test_a_single_label_is_numbered_too(labels):
    """A 0-d array (hypothesis found one too sparse for the table, which fastremap refused)."""
    numbered, present = renumber_in_order(np.asarray(labels))
    expected, expected_present = reference_renumber(np.asarray(labels))
    assert numbered.shape == ()
    np.testing.assert_array_equal(numbered, expected)
    np.testing.assert_array_equal(present, expected_present)


def test_labels_too_sparse_for_a_table_are_numbered_the_same_way():
    """A function returning global IDs (huge, few): numbered through the hash map, same order."""
    labels = np.zeros((4, 5), np.uint64)
    labels[0, 3], labels[1, 0], labels[2, 2:4], labels[3, 0] = 2**40, 7, 2**33, 2**40
    numbered, present = renumber_in_order(labels[:, ::-1])
    expected, expected_present = reference_renumber(labels[:, ::-1])
    np.testing.assert_array_equal(numbered, expected)
    np.testing.assert_array_equal(present, expected_present)


@settings(max_examples=100, deadline=None)
@given(label_views(), st.sampled_from(["uint8", "uint16", "uint32", "uint64"]))
def test_the_lookup_equals_numpy_indexing(labels, out_dtype):
    top = int(labels.max()) if labels.size else 0
    rng = np.random.default_rng(top)
    lut = rng.integers(0, np.iinfo(out_dtype).max, size=top + 1, dtype=out_dtype,
                       endpoint=True)
    got = apply_lut(labels, lut)
    assert got.dtype == np.dtype(out_dtype) and got.flags.c_contiguous
    np.testing.assert_array_equal(got, lut[labels.astype(np.int64)])


def test_big_endian_labels_are_read_as_their_values():
    labels = np.array([[0, 300, 300], [5, 0, 300]], ">u2")
    numbered, present = renumber_in_order(labels)
    np.testing.assert_array_equal(numbered, [[0, 1, 1], [2, 0, 1]])
    np.testing.assert_array_equal(present, [[5, 2], [300, 1]])
    np.testing.assert_array_equal(apply_lut(labels, np.arange(301, dtype=np.uint32)), labels)


@pytest.mark.parametrize("call, message", [
    (lambda: _labelkernels.renumber(np.array([[0, 3]]), np.zeros(3, np.uint32),
                                    np.empty((1, 2), np.uint8)), "the label 3 at item 1"),
    (lambda: _labelkernels.renumber(np.array([0, -2]), np.zeros(3, np.uint32),
                                    np.empty(2, np.uint8)), "the label -2 at item 1"),
    (lambda: _labelkernels.apply_lut(np.array([1, 2, 9], np.uint16), np.zeros(4, np.uint32),
                                     np.empty(3, np.uint32)), "the label 9 at item 2"),
])
def test_a_label_outside_the_table_is_named(call, message):
    with pytest.raises(IndexError, match=message):
        call()


@pytest.mark.parametrize("call, error, message", [
    (lambda: _labelkernels.renumber(np.zeros(2, np.float32), np.zeros(1, np.uint32),
                                    np.empty(2, np.uint8)), TypeError, "labels: the element"),
    (lambda: _labelkernels.renumber(np.zeros(2, np.int32), np.zeros(1, np.int64),
                                    np.empty(2, np.uint8)), TypeError, "lut: must be uint32"),
    (lambda: _labelkernels.renumber(np.zeros(2, np.int32), np.zeros(1, np.uint32),
                                    np.empty(3, np.uint8)), ValueError, "one item per label"),
    (lambda: _labelkernels.renumber(np.zeros(2, np.int32), np.zeros(1, np.uint32),
                                    np.empty(2, np.uint64)), TypeError, "out: must be uint8"),
    (lambda: _labelkernels.renumber(np.zeros(2, np.int32), np.zeros(0, np.uint32),
                                    np.empty(2, np.uint8)), ValueError, "entry for label 0"),
    (lambda: _labelkernels.apply_lut(np.zeros(2, np.int32), np.zeros(1, np.uint16),
                                     np.empty(2, np.uint32)), TypeError, "out's dtype uint32"),
    (lambda: _labelkernels.apply_lut(np.zeros(2, np.int32), np.zeros(1, np.uint16),
                                     np.empty(2, np.uint16)[::-1].copy()[::-1]), TypeError,
     "out: not a writable, C-contiguous"),
    (lambda: _labelkernels.apply_lut(np.zeros(2, np.int32), np.zeros(1, np.uint16)), TypeError,
     "takes 3 arguments"),
])
def test_bad_arguments_are_refused_by_name(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_an_output_or_table_sharing_memory_with_the_labels_is_refused():
    buffer = np.zeros(8, np.uint32)
    with pytest.raises(ValueError, match="out: shares memory"):
        _labelkernels.apply_lut(buffer[::2], np.zeros(1, np.uint32), buffer[1:5])
    with pytest.raises(ValueError, match="out: shares memory"):
        _labelkernels.apply_lut(np.zeros(4, np.uint8), buffer[:1], buffer[:4])
    with pytest.raises(ValueError, match="lut: shares memory"):
        _labelkernels.renumber(buffer[:2], buffer, np.empty(2, np.uint8))


def test_numbering_past_the_output_dtype_overflows_with_a_clear_error():
    labels = np.arange(1, 258, dtype=np.uint16)
    with pytest.raises(OverflowError, match="more labels than uint8 holds"):
        _labelkernels.renumber(labels, np.zeros(258, np.uint32), np.empty(257, np.uint8))


def test_the_loops_release_the_gil(assert_releases_gil):
    labels = np.tile(np.arange(4096, dtype=np.uint32), 16384).reshape(4096, -1)  # 64 M pixels
    assert_releases_gil(lambda: apply_lut(labels, np.arange(4096, dtype=np.uint32)),
                        shortest=0.02)
