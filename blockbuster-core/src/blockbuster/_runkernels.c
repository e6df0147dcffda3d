/* The per-run reductions behind the intensity columns (blockbuster.intensity), in C.
 *
 * Each kernel walks a tile's foreground runs once: ``first`` and ``lengths`` index the flat
 * values of one channel, ``rows`` names each run's object, and the per-object results go to
 * output buffers the caller allocates (one entry per object). Arguments are read through the
 * buffer protocol (any C-contiguous buffer: numpy arrays, memoryviews), so the build needs
 * only a C compiler and the Python headers. Every argument is checked before a value is read
 * (formats, lengths, every run inside the values, every row inside the outputs), and the
 * loops run with the GIL released, so worker threads measure their tiles in parallel.
 *
 * integer_runs(values, first, lengths, rows, total, squares, low, high)
 *     values: bool or integers of up to 16 bits. total, squares: int64, exact sums of the
 *     values and of their squares; low, high: float64 min and max.
 * float_runs(values, first, lengths, rows, total, low, high)
 *     values: any integer width, float32 or float64, taken as float64. total: the sum;
 *     low, high: min and max. An object holding a NaN gets NaN for all three (as numpy's
 *     sum, min and max give it).
 * deviation_runs(values, first, lengths, rows, mean, m2)
 *     m2: per object, the sum of the squared deviations of its values from ``mean``.
 *
 * first, lengths and rows are int64; the outputs are filled (never added to).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "_buffer_kinds.h"
#include "_kernel_module.h"

/* One buffer argument, held from PyObject_GetBuffer until PyBuffer_Release. */
typedef struct {
    Py_buffer view;
    int held;
    Py_ssize_t n; /* items */
    Kind kind;
} Arg;

/* Prefix the message of the exception being raised with the argument's name, keeping its type. */
static void name_error(const char *name, const char *hint) {
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *exc = PyErr_GetRaisedException();
    PyErr_Format((PyObject *)Py_TYPE(exc), "%s: %S (%s)", name, exc, hint);
    Py_DECREF(exc);
#else
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    PyErr_Format(type, "%s: %S (%s)", name, value ? value : Py_None, hint);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(traceback);
#endif
}

/* Take the buffer of ``obj`` (C-contiguous, writable if asked): 0, or -1 with the exception
 * raised by the exporter, its message prefixed by the argument's name. */
static int take(PyObject *obj, Arg *arg, int writable, const char *name) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, &arg->view, flags) < 0) {
        name_error(name, writable ? "give a C-contiguous, writable array"
                                  : "give a C-contiguous array");
        return -1;
    }
    arg->held = 1;
    arg->n = arg->view.itemsize ? arg->view.len / arg->view.itemsize : 0;
    arg->kind = kind_of(arg->view.format, arg->view.itemsize);
    return 0;
}

static void release(Arg *args, int count) {
    for (int i = 0; i < count; i++) {
        if (args[i].held) {
            PyBuffer_Release(&args[i].view);
            args[i].held = 0;
        }
    }
}

/* Whether two (contiguous) buffers share a byte: an output that overlaps another argument
 * could change the runs after they were checked. */
static int overlap(const Py_buffer *a, const Py_buffer *b) {
    const char *a0 = (const char *)a->buf, *b0 = (const char *)b->buf;
    return a->len > 0 && b->len > 0 && a0 < b0 + b->len && b0 < a0 + a->len;
}

/* What a kernel takes: its arguments' names and kinds (the values' kind is checked against
 * ``value_ok``, named ``accepted`` in errors), and which arguments it writes. */
typedef struct {
    const char *function;
    int count;
    const char *names[8];
    Kind kinds[8];
    int writable[8];
    const int *value_ok;
    const char *accepted;
} Signature;

/* Take every argument of ``sig``: the values, the three int64 run arrays, then the
 * per-object arrays, all of one length. 0, or -1 with an exception set (and nothing held). */
static int take_all(const Signature *sig, PyObject *const *objs, Py_ssize_t nargs, Arg *args) {
    const int count = sig->count;
    const char *const *names = sig->names;
    const Kind *kinds = sig->kinds;
    const int *writable = sig->writable;
    if (nargs != count) {
        PyErr_Format(PyExc_TypeError, "%s() takes %d arguments (%zd given)", sig->function,
                     count, nargs);
        return -1;
    }
    memset(args, 0, sizeof(Arg) * (size_t)count);
    for (int i = 0; i < count; i++) {
        if (take(objs[i], &args[i], writable[i], names[i]) < 0) {
            release(args, count);
            return -1;
        }
    }
    if (args[0].kind == K_NONE || !sig->value_ok[args[0].kind]) {
        PyErr_Format(PyExc_TypeError, "values: the element format '%s' of %zd bytes is not "
                     "one of %s, in native byte order", args[0].view.format ?
                     args[0].view.format : "B", args[0].view.itemsize, sig->accepted);
        release(args, count);
        return -1;
    }
    for (int i = 1; i < count; i++) {
        if (args[i].kind != kinds[i]) {
            PyErr_Format(PyExc_TypeError, "%s: must be %s, got the element format '%s' of "
                         "%zd bytes", names[i], KIND_NAMES[kinds[i]],
                         args[i].view.format ? args[i].view.format : "B", args[i].view.itemsize);
            release(args, count);
            return -1;
        }
    }
    for (int i = 0; i < count; i++) {
        for (int j = 0; j < count && writable[i]; j++) {
            if (j != i && overlap(&args[i].view, &args[j].view)) {
                PyErr_Format(PyExc_ValueError, "%s: shares memory with %s (give every output "
                             "its own array)", names[i], names[j]);
                release(args, count);
                return -1;
            }
        }
    }
    for (int i = 2; i < count; i++) {
        Py_ssize_t expected = args[i < 4 ? 1 : 4].n;
        if (args[i].n != expected) {
            PyErr_Format(PyExc_ValueError, "%s: has %zd items, %s has %zd (%s)", names[i],
                         args[i].n, names[i < 4 ? 1 : 4], expected,
                         i < 4 ? "one per run" : "one per object");
            release(args, count);
            return -1;
        }
    }
    return 0;
}

/* The first run that leaves the values or the objects (or has a negative length), or -1. */
static Py_ssize_t bad_run(const int64_t *first, const int64_t *lengths, const int64_t *rows,
                          Py_ssize_t n_runs, Py_ssize_t n_values, Py_ssize_t k) {
    for (Py_ssize_t r = 0; r < n_runs; r++) {
        if (first[r] < 0 || lengths[r] < 0 || first[r] > (int64_t)n_values ||
                lengths[r] > (int64_t)n_values - first[r] || rows[r] < 0 ||
                rows[r] >= (int64_t)k) {
            return r;
        }
    }
    return -1;
}

static void raise_bad_run(Py_ssize_t r, const int64_t *first, const int64_t *lengths,
                          const int64_t *rows, Py_ssize_t n_values, Py_ssize_t k) {
    PyErr_Format(PyExc_IndexError, "run %zd (first %lld, length %lld, row %lld) lies outside "
                 "the %zd values or the %zd objects", r, (long long)first[r],
                 (long long)lengths[r], (long long)rows[r], n_values, k);
}

/* ---- the kernels, one instance per element type ------------------------------------- */

#define DEFINE_INTEGER_RUNS(SUFFIX, T)                                                     \
static void integer_runs_##SUFFIX(const T *v, const int64_t *first, const int64_t *lengths, \
                                  const int64_t *rows, Py_ssize_t n_runs, Py_ssize_t k,    \
                                  int64_t *total, int64_t *squares, double *low,           \
                                  double *high) {                                           \
    for (Py_ssize_t j = 0; j < k; j++) {                                                    \
        total[j] = 0;                                                                       \
        squares[j] = 0;                                                                     \
        low[j] = INFINITY;                                                                  \
        high[j] = -INFINITY;                                                                \
    }                                                                                       \
    for (Py_ssize_t r = 0; r < n_runs; r++) {                                               \
        if (lengths[r] == 0) continue;                                                      \
        const T *x = v + first[r];                                                          \
        int64_t s = 0, q = 0, lo = x[0], hi = x[0];                                         \
        for (int64_t i = 0; i < lengths[r]; i++) {                                          \
            int64_t value = (int64_t)x[i];                                                  \
            s += value;                                                                     \
            q += value * value;                                                             \
            lo = value < lo ? value : lo;                                                   \
            hi = value > hi ? value : hi;                                                   \
        }                                                                                   \
        int64_t row = rows[r];                                                              \
        total[row] += s;                                                                    \
        squares[row] += q;                                                                  \
        if ((double)lo < low[row]) low[row] = (double)lo;                                   \
        if ((double)hi > high[row]) high[row] = (double)hi;                                 \
    }                                                                                       \
}

/* IS_FLOAT: whether a value can be NaN (a constant, so integer instances drop the test). */
#define DEFINE_FLOAT_RUNS(SUFFIX, T, IS_FLOAT)                                              \
static void float_runs_##SUFFIX(const T *v, const int64_t *first, const int64_t *lengths,   \
                                const int64_t *rows, Py_ssize_t n_runs, Py_ssize_t k,      \
                                double *total, double *low, double *high) {                \
    for (Py_ssize_t j = 0; j < k; j++) {                                                    \
        total[j] = 0.0;                                                                     \
        low[j] = INFINITY;                                                                  \
        high[j] = -INFINITY;                                                                \
    }                                                                                       \
    for (Py_ssize_t r = 0; r < n_runs; r++) {                                               \
        const T *x = v + first[r];                                                          \
        double s = 0.0, lo = INFINITY, hi = -INFINITY;                                      \
        for (int64_t i = 0; i < lengths[r]; i++) {                                          \
            double value = (double)x[i];                                                    \
            s += value;                                                                     \
            if (IS_FLOAT && value != value) { /* NaN: the object's min and max are NaN */   \
                lo = hi = value;                                                            \
                break;                                                                      \
            }                                                                               \
            lo = value < lo ? value : lo;                                                   \
            hi = value > hi ? value : hi;                                                   \
        }                                                                                   \
        int64_t row = rows[r];                                                              \
        if (lo != lo) {                                                                     \
            low[row] = high[row] = NAN;                                                     \
        } else { /* a NaN low and high stay NaN: every comparison with NaN is false */      \
            low[row] = lo < low[row] ? lo : low[row];                                       \
            high[row] = hi > high[row] ? hi : high[row];                                    \
        }                                                                                   \
        total[row] += s; /* NaN after a NaN, as the sum of any number and NaN is */         \
    }                                                                                       \
}

#define DEFINE_DEVIATION_RUNS(SUFFIX, T)                                                    \
static void deviation_runs_##SUFFIX(const T *v, const int64_t *first,                      \
                                    const int64_t *lengths, const int64_t *rows,           \
                                    Py_ssize_t n_runs, Py_ssize_t k, const double *mean,   \
                                    double *m2) {                                           \
    for (Py_ssize_t j = 0; j < k; j++) {                                                    \
        m2[j] = 0.0;                                                                        \
    }                                                                                       \
    for (Py_ssize_t r = 0; r < n_runs; r++) {                                               \
        const T *x = v + first[r];                                                          \
        int64_t row = rows[r];                                                              \
        double centre = mean[row], s = 0.0;                                                 \
        for (int64_t i = 0; i < lengths[r]; i++) {                                          \
            double d = (double)x[i] - centre;                                               \
            s += d * d;                                                                     \
        }                                                                                   \
        m2[row] += s;                                                                       \
    }                                                                                       \
}

DEFINE_INTEGER_RUNS(u8, uint8_t)
DEFINE_INTEGER_RUNS(i8, int8_t)
DEFINE_INTEGER_RUNS(u16, uint16_t)
DEFINE_INTEGER_RUNS(i16, int16_t)

#define DEFINE_FLOATING(SUFFIX, T, IS_FLOAT)                                                \
    DEFINE_FLOAT_RUNS(SUFFIX, T, IS_FLOAT)                                                  \
    DEFINE_DEVIATION_RUNS(SUFFIX, T)

DEFINE_FLOATING(u8, uint8_t, 0)
DEFINE_FLOATING(i8, int8_t, 0)
DEFINE_FLOATING(u16, uint16_t, 0)
DEFINE_FLOATING(i16, int16_t, 0)
DEFINE_FLOATING(u32, uint32_t, 0)
DEFINE_FLOATING(i32, int32_t, 0)
DEFINE_FLOATING(u64, uint64_t, 0)
DEFINE_FLOATING(i64, int64_t, 0)
DEFINE_FLOATING(f32, float, 1)
DEFINE_FLOATING(f64, double, 1)

/* ---- the Python functions ----------------------------------------------------------- */

/* Call CALL(suffix, C type) for the value kind: bool, whose items are 0 or 1, reads as uint8. */
#define DISPATCH_SMALL(KIND, CALL)                                                          \
    switch (KIND) {                                                                         \
        case K_BOOL: case K_U8: CALL(u8, uint8_t); break;                                   \
        case K_I8: CALL(i8, int8_t); break;                                                 \
        case K_U16: CALL(u16, uint16_t); break;                                             \
        case K_I16: CALL(i16, int16_t); break;                                              \
        default: break;                                                                     \
    }

#define DISPATCH_ANY(KIND, CALL)                                                            \
    switch (KIND) {                                                                         \
        case K_U32: CALL(u32, uint32_t); break;                                             \
        case K_I32: CALL(i32, int32_t); break;                                              \
        case K_U64: CALL(u64, uint64_t); break;                                             \
        case K_I64: CALL(i64, int64_t); break;                                              \
        case K_F32: CALL(f32, float); break;                                                \
        case K_F64: CALL(f64, double); break;                                               \
        default: DISPATCH_SMALL(KIND, CALL)                                                 \
    }

#define RUN_ARGS(a) (const int64_t *)a[1].view.buf, (const int64_t *)a[2].view.buf,         \
    (const int64_t *)a[3].view.buf, a[1].n, a[4].n

/* Check the runs, then call the kernel, all without the GIL; NULL after a bad run. */
#define CHECK_AND_RUN(a, DISPATCH, CALL_KERNEL)                                                       \
    Py_ssize_t bad;                                                                         \
    Py_BEGIN_ALLOW_THREADS                                                                  \
    bad = bad_run((const int64_t *)a[1].view.buf, (const int64_t *)a[2].view.buf,           \
                  (const int64_t *)a[3].view.buf, a[1].n, a[0].n, a[4].n);                  \
    if (bad < 0) {                                                                          \
        DISPATCH(a[0].kind, CALL_KERNEL)                                                    \
    }                                                                                       \
    Py_END_ALLOW_THREADS                                                                    \
    if (bad >= 0) {                                                                         \
        raise_bad_run(bad, (const int64_t *)a[1].view.buf, (const int64_t *)a[2].view.buf,  \
                      (const int64_t *)a[3].view.buf, a[0].n, a[4].n);                      \
    }                                                                                       \
    release(a, (int)(sizeof(a) / sizeof(a[0])));                                            \
    if (bad >= 0) return NULL;                                                              \
    Py_RETURN_NONE;

/* Which value kinds a kernel takes, indexed by Kind: bool, int8, uint8, int16, uint16, int32,
 * uint32, int64, uint64, float32, float64 */
static const int SMALL_INTEGERS[] = {1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0};
static const int ANY_NUMBER[] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
static const char SMALL_NAMES[] = "bool, int8, uint8, int16, uint16";
static const char ANY_NAMES[] = "bool, int8, uint8, int16, uint16, int32, uint32, int64, uint64, "
                                "float32, float64";

#define CALL_INTEGER(SUFFIX, T)                                                             \
    integer_runs_##SUFFIX((const T *)a[0].view.buf, RUN_ARGS(a), (int64_t *)a[4].view.buf,  \
                          (int64_t *)a[5].view.buf, (double *)a[6].view.buf,                \
                          (double *)a[7].view.buf)

static const Signature INTEGER_RUNS = {
    "integer_runs", 8,
    {"values", "first", "lengths", "rows", "total", "squares", "low", "high"},
    {K_NONE, K_I64, K_I64, K_I64, K_I64, K_I64, K_F64, K_F64},
    {0, 0, 0, 0, 1, 1, 1, 1}, SMALL_INTEGERS, SMALL_NAMES,
};

static PyObject *integer_runs(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    Arg a[8];
    if (take_all(&INTEGER_RUNS, args, nargs, a) < 0) return NULL;
    CHECK_AND_RUN(a, DISPATCH_SMALL, CALL_INTEGER)
}

#define CALL_FLOAT(SUFFIX, T)                                                               \
    float_runs_##SUFFIX((const T *)a[0].view.buf, RUN_ARGS(a), (double *)a[4].view.buf,     \
                        (double *)a[5].view.buf, (double *)a[6].view.buf)

static const Signature FLOAT_RUNS = {
    "float_runs", 7,
    {"values", "first", "lengths", "rows", "total", "low", "high"},
    {K_NONE, K_I64, K_I64, K_I64, K_F64, K_F64, K_F64},
    {0, 0, 0, 0, 1, 1, 1}, ANY_NUMBER, ANY_NAMES,
};

static PyObject *float_runs(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    Arg a[7];
    if (take_all(&FLOAT_RUNS, args, nargs, a) < 0) return NULL;
    CHECK_AND_RUN(a, DISPATCH_ANY, CALL_FLOAT)
}

#define CALL_DEVIATION(SUFFIX, T)                                                           \
    deviation_runs_##SUFFIX((const T *)a[0].view.buf, RUN_ARGS(a),                          \
                            (const double *)a[4].view.buf, (double *)a[5].view.buf)

static const Signature DEVIATION_RUNS = {
    "deviation_runs", 6,
    {"values", "first", "lengths", "rows", "mean", "m2"},
    {K_NONE, K_I64, K_I64, K_I64, K_F64, K_F64},
    {0, 0, 0, 0, 0, 1}, ANY_NUMBER, ANY_NAMES,
};

static PyObject *deviation_runs(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    Arg a[6];
    if (take_all(&DEVIATION_RUNS, args, nargs, a) < 0) return NULL;
    CHECK_AND_RUN(a, DISPATCH_ANY, CALL_DEVIATION)
}

static PyMethodDef methods[] = {
    {"integer_runs", (PyCFunction)(void (*)(void))integer_runs, METH_FASTCALL,
     "integer_runs(values, first, lengths, rows, total, squares, low, high)\n\n"
     "Per object, the exact int64 sums of the values (bool or integers of up to 16 bits) and "
     "of their squares, and their min and max (float64), into the four outputs."},
    {"float_runs", (PyCFunction)(void (*)(void))float_runs, METH_FASTCALL,
     "float_runs(values, first, lengths, rows, total, low, high)\n\n"
     "Per object, the float64 sum, min and max of the values (NaN for all three in an "
     "object that holds a NaN), into the three outputs."},
    {"deviation_runs", (PyCFunction)(void (*)(void))deviation_runs, METH_FASTCALL,
     "deviation_runs(values, first, lengths, rows, mean, m2)\n\n"
     "Per object, the sum of the squared deviations of its values from its mean, into m2."},
    {NULL, NULL, 0, NULL},
};

KERNEL_MODULE(_runkernels,
    "The per-run reductions of blockbuster.intensity, in C (see _runkernels.c). Values: "
    "bool, int8, uint8, int16, uint16 (integer_runs); those and int32, uint32, int64, uint64, "
    "float32, float64 (float_runs, deviation_runs).", methods)
