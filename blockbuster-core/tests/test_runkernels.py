"""The C loops behind the intensity columns (``blockbuster._runkernels``, through
``blockbuster._intensity_kernels``): equal to a plain Python reference for every dtype, NaN as
numpy has it, arguments checked before a value is read, and the GIL released."""

import math
import subprocess
import sys
import threading

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from blockbuster import _runkernels
from blockbuster._intensity_kernels import deviation_runs, float_runs, integer_runs

SMALL = ["bool", "int8", "uint8", "int16", "uint16"]
WIDE = ["int32", "uint32", "int64", "uint64", "float16", "float32", "float64"]


@st.composite
def tiles(draw, dtype):
    """Flat values of ``dtype`` cut into runs, each of one of ``k`` objects, with background
    between them, in a random order: ``(values, first, lengths, rows, k)``."""
    n, k = draw(st.integers(0, 80)), draw(st.integers(0, 5))
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=25)))
    first, lengths, rows = [], [], []
    for a, b in zip([0, *cuts], [*cuts, n]):
        if b > a and k and draw(st.booleans()):
            first.append(a), lengths.append(b - a), rows.append(draw(st.integers(0, k - 1)))
    order = draw(st.permutations(range(len(first))))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    values = random_values(rng, np.dtype(dtype), n)
    if values.dtype.kind == "f" and draw(st.booleans()):
        values[rng.random(n) < 0.05] = np.nan
    runs = [np.array(x, np.int64)[list(order)] for x in (first, lengths, rows)]
    return values, *runs, k


def random_values(rng, dtype, n):
    if dtype.kind == "b":
        return rng.random(n) < 0.5
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, n, dtype=dtype, endpoint=True)
    return (rng.standard_normal(n) * 1e3).astype(dtype)


def per_object(values, first, lengths, rows, k):
    """Each object's values as Python numbers (ints stay exact), in run order."""
    objects = [[] for _ in range(k)]
    for f, n, r in zip(first, lengths, rows):
        objects[r].extend(values[f:f + n].tolist())
    return objects


def close(a, b, scale):
    """Equal up to float64 rounding of sums of numbers of magnitude ``scale``."""
    return (math.isnan(a) and math.isnan(b)) or a == b or abs(a - b) <= 1e-12 * scale


@pytest.mark.parametrize("dtype", SMALL)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_integer_runs_sum_values_and_squares_exactly(dtype, data):
    values, first, lengths, rows, k = data.draw(tiles(dtype))
    total, squares, low, high = integer_runs(values, first, lengths, rows, k)
    assert total.dtype == squares.dtype == np.int64
    for j, vs in enumerate(per_object(values, first, lengths, rows, k)):
        assert total[j] == sum(int(v) for v in vs)
        assert squares[j] == sum(int(v) ** 2 for v in vs)
        assert low[j] == (min(vs) if vs else np.inf)
        assert high[j] == (max(vs) if vs else -np.inf)


@pytest.mark.parametrize("dtype", SMALL + WIDE)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_float_and_deviation_runs_equal_the_reference(dtype, data):
    values, first, lengths, rows, k = data.draw(tiles(dtype))
    total, low, high = float_runs(values, first, lengths, rows, k)
    mean = np.array([total[j] / max(n, 1) for j, n in
                     enumerate(np.bincount(rows, lengths, minlength=k))])
    m2 = deviation_runs(values, first, lengths, rows, mean)
    for j, vs in enumerate(per_object(values, first, lengths, rows, k)):
        vs = [float(v) for v in vs]
        scale = sum(abs(v) for v in vs if not math.isnan(v)) or 1.0
        if any(math.isnan(v) for v in vs):
            assert np.isnan([total[j], low[j], high[j]]).all()
            continue
        assert close(total[j], math.fsum(vs), scale)
        assert low[j] == (min(vs) if vs else np.inf)
        assert high[j] == (max(vs) if vs else -np.inf)
        assert close(m2[j], math.fsum((v - mean[j]) ** 2 for v in vs), scale * scale)


def test_an_object_with_a_nan_anywhere_gets_nan_and_the_others_do_not():
    values = np.array([1, 2, np.nan, 4, 5, 6, 7, np.nan], np.float32)
    # object 0: NaN inside its first run; 1: NaN in its second run, after a clean one;
    # 2: clean; 3: a clean run after one with a NaN at its end
    first, lengths, rows = (np.array(x, np.int64) for x in
                            ([0, 3, 4, 2, 5, 7, 6], [2, 1, 1, 1, 1, 1, 1], [0, 1, 2, 0, 2, 3, 3]))
    total, low, high = float_runs(values, first, lengths, rows, 4)
    np.testing.assert_array_equal(total, [np.nan, 4, 11, np.nan])
    np.testing.assert_array_equal(low, [np.nan, 4, 5, np.nan])
    np.testing.assert_array_equal(high, [np.nan, 4, 6, np.nan])


def test_infinities_sum_and_extremes_as_numpy():
    values = np.array([np.inf, -np.inf, 3.0, np.inf])
    first, lengths, rows = (np.array(x, np.int64) for x in ([0, 2], [2, 2], [0, 1]))
    total, low, high = float_runs(values, first, lengths, rows, 2)
    with np.errstate(invalid="ignore"):
        expected = [np.sum(values[:2]), np.sum(values[2:])]
    np.testing.assert_array_equal(total, expected)
    np.testing.assert_array_equal(low, [-np.inf, 3.0])
    np.testing.assert_array_equal(high, [np.inf, np.inf])


def test_large_64_bit_integers_are_taken_as_float64():
    values = np.array([2**64 - 1, 2**63, 2**53 + 1], np.uint64)
    total, low, high = float_runs(values, *runs_of([[0, 1, 2]]), 1)
    assert total[0] == float(2**64 - 1) + float(2**63) + float(2**53 + 1)
    assert (low[0], high[0]) == (float(2**53 + 1), float(2**64 - 1))
    values = np.array([-2**63, 2**63 - 1], np.int64)
    assert float_runs(values, *runs_of([[0, 1]]), 1)[1][0] == -2.0**63


def runs_of(objects):
    """``first, lengths, rows`` of one-voxel runs: object ``j`` holds the indices ``objects[j]``."""
    first = [i for indices in objects for i in indices]
    rows = [j for j, indices in enumerate(objects) for _ in indices]
    return np.array(first, np.int64), np.ones(len(first), np.int64), np.array(rows, np.int64)


@pytest.mark.parametrize("k", [0, 3])
def test_no_runs_leave_every_object_empty(k):
    empty = np.zeros(0, np.int64)
    total, squares, low, high = integer_runs(np.zeros(0, np.uint16), empty, empty, empty, k)
    assert (total == 0).all() and (squares == 0).all() and len(total) == k
    assert (low == np.inf).all() and (high == -np.inf).all()
    total, low, high = float_runs(np.zeros(5), empty, empty, empty, k)
    assert (total == 0).all() and (low == np.inf).all() and (high == -np.inf).all()
    assert (deviation_runs(np.zeros(5), empty, empty, empty, np.zeros(k)) == 0).all()


def test_an_empty_run_at_the_end_reads_nothing():
    values = np.array([3, 4], np.uint16)
    first, lengths, rows = (np.array(x, np.int64) for x in ([0, 2], [2, 0], [0, 1]))
    total, _, low, high = integer_runs(values, first, lengths, rows, 2)
    assert list(total) == [7, 0] and list(low) == [3, np.inf] and list(high) == [4, -np.inf]


@pytest.mark.parametrize("dtype", [">u2", ">i4", ">f8", "float16"])
def test_big_endian_and_half_floats_are_read_as_their_values(dtype):
    values = np.array([1, -2, 3, 250], np.float64)
    values = np.abs(values) if dtype == ">u2" else values
    stored = values.astype(dtype)
    runs = runs_of([[0, 1], [2, 3]])
    native = stored.astype(stored.dtype.newbyteorder("="))
    for got, expected in zip(float_runs(stored, *runs, 2),
                             float_runs(native.astype(np.float64), *runs, 2)):
        np.testing.assert_array_equal(got, expected)
    if dtype == ">u2":
        assert list(integer_runs(stored, *runs, 2)[0]) == [3, 253]


def test_the_c_module_refuses_values_of_the_other_byte_order():
    ok = np.zeros(1)
    with pytest.raises(TypeError, match=r"values: the element format '>d'.*native byte order"):
        _runkernels.float_runs(np.zeros(2, ">f8"), *runs_of([[0]]), ok, ok.copy(), ok.copy())


def arguments(kernel):
    """Valid arguments of ``kernel`` over 6 values, 2 objects and 3 runs, as a dict."""
    values = np.arange(6, dtype=np.uint16)
    run = {"first": np.array([0, 2, 4], np.int64), "lengths": np.array([2, 2, 2], np.int64),
           "rows": np.array([0, 1, 0], np.int64)}
    if kernel is _runkernels.integer_runs:
        out = {"total": np.full(2, -7, np.int64), "squares": np.full(2, -7, np.int64),
               "low": np.full(2, -7.0), "high": np.full(2, -7.0)}
    elif kernel is _runkernels.float_runs:
        out = {"total": np.full(2, -7.0), "low": np.full(2, -7.0), "high": np.full(2, -7.0)}
    else:
        out = {"mean": np.zeros(2), "m2": np.full(2, -7.0)}
    return {"values": values, **run, **out}


KERNELS = [_runkernels.integer_runs, _runkernels.float_runs, _runkernels.deviation_runs]


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("name, bad, error, message", [
    ("first", [0, 6, 4], IndexError, r"run 1 \(first 6, length 2, row 1\) lies outside the 6 "
                                     r"values or the 2 objects"),
    ("first", [0, -1, 4], IndexError, "run 1"),
    ("lengths", [2, 5, 2], IndexError, "run 1"),
    ("lengths", [2, -1, 2], IndexError, "run 1"),
    ("lengths", [2, 2**63 - 1, 2], IndexError, "run 1"),  # first + length would overflow
    ("rows", [0, 2, 0], IndexError, "run 1"),
    ("rows", [0, -1, 0], IndexError, "run 1"),
    ("rows", np.array([0, 1, 0], np.int32), TypeError, "rows: must be int64"),
    ("first", np.array([0, 2, 4], np.uint64), TypeError, "first: must be int64"),
    ("lengths", [2, 2], ValueError, r"lengths: has 2 items, first has 3 \(one per run\)"),
    ("rows", [0, 1, 0, 0], ValueError, "rows: has 4 items"),
    ("values", np.arange(12, dtype=np.uint16)[::2], ValueError, "values: .*C-contiguous"),
    ("values", [0, 1, 2, 3, 4, 5], TypeError, "values: "),
    ("values", np.zeros(6, np.complex64), TypeError, "values: the element format 'Zf'"),
])
def test_bad_arguments_raise_before_anything_is_written(kernel, name, bad, error, message):
    args = arguments(kernel)
    outputs = {key: value.copy() for key, value in args.items() if key not in (
        "values", "first", "lengths", "rows", "mean")}
    args[name] = np.array(bad, np.int64) if isinstance(bad, list) and name != "values" else bad
    with pytest.raises(error, match=message):
        kernel(*args.values())
    for key, before in outputs.items():
        np.testing.assert_array_equal(args[key], before)


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda f: f.__name__)
def test_outputs_must_be_writable_float64_or_int64_arrays_of_one_length(kernel):
    args = arguments(kernel)
    names = list(args)
    last = names[-1]
    args[last].setflags(write=False)
    with pytest.raises(ValueError, match=f"{last}: .*read-only.*writable"):
        kernel(*args.values())
    args = arguments(kernel)
    args[last] = args[last][:1].copy()
    with pytest.raises(ValueError, match=f"{last}: has 1 items, {names[4]} has 2 "
                                         r"\(one per object\)"):
        kernel(*args.values())
    args = arguments(kernel)
    args[last] = args[last].astype(np.float32)
    with pytest.raises(TypeError, match=f"{last}: must be float64"):
        kernel(*args.values())
    with pytest.raises(TypeError, match=r"takes \d arguments \(2 given\)"):
        kernel(args["values"], args["first"])


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda f: f.__name__)
def test_an_output_that_shares_memory_with_the_runs_is_refused(kernel):
    """Writing it would change the runs after their bounds were checked."""
    args = arguments(kernel)
    last = list(args)[-1]
    shared = np.zeros(3, np.int64)
    args["rows"] = shared
    args[last] = shared[1:].view(args[last].dtype)
    with pytest.raises(ValueError, match=f"{last}: shares memory with rows"):
        kernel(*args.values())
    np.testing.assert_array_equal(shared, 0)


def test_integer_runs_refuses_values_wider_than_16_bits():
    args = arguments(_runkernels.integer_runs)
    args["values"] = args["values"].astype(np.int32)
    with pytest.raises(TypeError, match="is not one of bool, int8, uint8, int16, uint16,"):
        _runkernels.integer_runs(*args.values())


def long_float_runs(repeats):
    """``float_runs`` arguments that read 100,000 values ``repeats`` times (overlapping runs:
    a long call over little memory)."""
    values = np.random.default_rng(5).random(100_000)
    first = np.zeros(repeats, np.int64)
    lengths = np.full(repeats, len(values), np.int64)
    rows = np.arange(repeats, dtype=np.int64) % 3
    return values, first, lengths, rows, 3


def test_threads_running_the_kernels_at_once_get_the_serial_results():
    cases = [long_float_runs(50 + 10 * i) for i in range(4)]
    serial = [float_runs(*case) for case in cases]
    results = [None] * len(cases)

    def measure(i):
        results[i] = float_runs(*cases[i])

    threads = [threading.Thread(target=measure, args=(i,)) for i in range(len(cases))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for got, expected in zip(results, serial):
        for a, b in zip(got, expected):
            np.testing.assert_array_equal(a, b)


def test_the_loops_release_the_gil(assert_releases_gil):
    case = long_float_runs(1500)  # about 0.2 s
    assert_releases_gil(lambda: float_runs(*case), shortest=0.05)


def test_measuring_intensities_never_imports_numba_or_llvm():
    code = ("import sys, numpy as np\n"
            "from blockbuster.intensity import tile_intensity\n"
            "from blockbuster.runs import LabelRuns\n"
            "labels = np.array([[0, 1, 1], [2, 2, 0]], np.uint16)\n"
            "part = tile_intensity(LabelRuns.of(labels), np.ones((1, 2, 3), np.float32),\n"
            "                      np.array([2, 2]))\n"
            "assert list(part.sum[:, 0]) == [2.0, 2.0], part.sum\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('numba', 'llvmlite')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
