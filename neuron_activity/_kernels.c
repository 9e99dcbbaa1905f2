/* Exact per-column fire counts over raw bits, in one pass over the data.
 *
 * count(data, rows, width, itemsize, ranges, nan_mask, nan_above, fire_counts, nan_counts)
 *   data: buffer of rows x width unsigned integers of `itemsize` bytes (the elements' raw bits)
 *   ranges: up to two inclusive (a, b) ranges of bits that fire
 *   nan_mask / nan_above: an element is NaN when (bits & nan_mask) > nan_above (0, 0: never)
 *   fire_counts, nan_counts: writable int64[width] buffers the counts are added into
 *
 * Counts are kept per column in accumulators as wide as the data (so the compiler vectorizes the
 * loop lane for lane) and flushed into int64 before they can wrap. Narrow rows are folded: k rows
 * are treated as one row of k * width columns. The GIL is released while counting.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__APPLE__)
#define MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define MULTIVERSION
#endif

#define FOLD_COLUMNS 1024

#define DEFINE_KERNEL(SUFFIX, T)                                                                  \
    MULTIVERSION static void rows_##SUFFIX(const T *restrict x, Py_ssize_t rows, Py_ssize_t width, \
                                           int nranges, T a0, T d0, T a1, T d1, T nan_mask,       \
                                           T nan_above, T *restrict fire_acc, T *restrict nan_acc) \
    {                                                                                             \
        for (Py_ssize_t r = 0; r < rows; r++) {                                                   \
            const T *restrict row = x + r * width;                                                \
            T any_nan = 0; /* an OR-reduction is nearly free; NaNs are counted per column rarely */ \
            if (nranges == 1) {                                                                   \
                for (Py_ssize_t j = 0; j < width; j++) {                                          \
                    fire_acc[j] += (T)((T)(row[j] - a0) <= d0);                                   \
                    any_nan |= (T)((T)(row[j] & nan_mask) > nan_above);                           \
                }                                                                                 \
            } else if (nranges == 2) {                                                            \
                for (Py_ssize_t j = 0; j < width; j++) {                                          \
                    fire_acc[j] += (T)(((T)(row[j] - a0) <= d0) | ((T)(row[j] - a1) <= d1));      \
                    any_nan |= (T)((T)(row[j] & nan_mask) > nan_above);                           \
                }                                                                                 \
            } else {                                                                              \
                for (Py_ssize_t j = 0; j < width; j++)                                            \
                    any_nan |= (T)((T)(row[j] & nan_mask) > nan_above);                           \
            }                                                                                     \
            if (any_nan) {                                                                        \
                for (Py_ssize_t j = 0; j < width; j++)                                            \
                    nan_acc[j] += (T)((T)(row[j] & nan_mask) > nan_above);                        \
            }                                                                                     \
        }                                                                                         \
    }                                                                                             \
                                                                                                  \
    static void flush_##SUFFIX(T *acc, Py_ssize_t n, Py_ssize_t width, int64_t *out)              \
    {                                                                                             \
        for (Py_ssize_t i = 0; i < n; i++) {                                                      \
            out[i % width] += (int64_t)acc[i];                                                    \
            acc[i] = 0;                                                                           \
        }                                                                                         \
    }                                                                                             \
                                                                                                  \
    static int count_##SUFFIX(const T *x, Py_ssize_t rows, Py_ssize_t width, int nranges,         \
                              const unsigned long long *ranges, T nan_mask, T nan_above,          \
                              int64_t *fires, int64_t *nans)                                      \
    {                                                                                             \
        T a0 = nranges > 0 ? (T)ranges[0] : 0, d0 = nranges > 0 ? (T)(ranges[1] - ranges[0]) : 0; \
        T a1 = nranges > 1 ? (T)ranges[2] : 0, d1 = nranges > 1 ? (T)(ranges[3] - ranges[2]) : 0; \
        Py_ssize_t fold = width >= FOLD_COLUMNS ? 1 : (FOLD_COLUMNS + width - 1) / width;        \
        Py_ssize_t wide = fold * width;                                                           \
        /* each accumulator gains at most one per folded row: flush before T can wrap */          \
        uint64_t max_rows = (uint64_t)(T)(~(T)0);                                                 \
        Py_ssize_t limit = max_rows > (uint64_t)PY_SSIZE_T_MAX ? PY_SSIZE_T_MAX : (Py_ssize_t)max_rows; \
        T *fire_acc = calloc((size_t)wide, sizeof(T));                                            \
        T *nan_acc = calloc((size_t)wide, sizeof(T));                                             \
        if (!fire_acc || !nan_acc) {                                                              \
            free(fire_acc);                                                                       \
            free(nan_acc);                                                                        \
            return -1;                                                                            \
        }                                                                                         \
        Py_ssize_t groups = rows / fold;                                                          \
        for (Py_ssize_t g = 0; g < groups; g += limit) {                                          \
            Py_ssize_t n = groups - g < limit ? groups - g : limit;                               \
            rows_##SUFFIX(x + g * wide, n, wide, nranges, a0, d0, a1, d1, nan_mask, nan_above,    \
                          fire_acc, nan_acc);                                                     \
            flush_##SUFFIX(fire_acc, wide, width, fires);                                         \
            flush_##SUFFIX(nan_acc, wide, width, nans);                                           \
        }                                                                                         \
        const T *rest = x + groups * wide; /* the last rows % fold rows, unfolded */            \
        for (Py_ssize_t left = rows - groups * fold; left > 0; left -= limit) {                   \
            Py_ssize_t n = left < limit ? left : limit;                                           \
            rows_##SUFFIX(rest, n, width, nranges, a0, d0, a1, d1, nan_mask, nan_above,           \
                          fire_acc, nan_acc);                                                     \
            flush_##SUFFIX(fire_acc, width, width, fires);                                        \
            flush_##SUFFIX(nan_acc, width, width, nans);                                          \
            rest += n * width;                                                                    \
        }                                                                                         \
        free(fire_acc);                                                                           \
        free(nan_acc);                                                                            \
        return 0;                                                                                 \
    }

DEFINE_KERNEL(u8, uint8_t)
DEFINE_KERNEL(u16, uint16_t)
DEFINE_KERNEL(u32, uint32_t)
DEFINE_KERNEL(u64, uint64_t)

static PyObject *count(PyObject *self, PyObject *args)
{
    Py_buffer data, fires, nans;
    Py_ssize_t rows, width;
    int itemsize;
    PyObject *range_list;
    unsigned long long nan_mask, nan_above;
    if (!PyArg_ParseTuple(args, "y*nniOKKw*w*", &data, &rows, &width, &itemsize, &range_list, &nan_mask,
                          &nan_above, &fires, &nans))
        return NULL;
    unsigned long long ranges[4] = {0, 0, 0, 0};
    int nranges = 0, rc = 0;
    PyObject *seq = PySequence_Fast(range_list, "ranges must be a sequence of (a, b) pairs");
    if (!seq) {
        rc = -2;
        goto done;
    }
    if (PySequence_Fast_GET_SIZE(seq) > 2) {
        PyErr_SetString(PyExc_ValueError, "at most two fire ranges");
        rc = -2;
        goto done;
    }
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "KK", &ranges[2 * i], &ranges[2 * i + 1])) {
            rc = -2;
            goto done;
        }
        if (ranges[2 * i] > ranges[2 * i + 1]) {
            PyErr_SetString(PyExc_ValueError, "empty fire range");
            rc = -2;
            goto done;
        }
        nranges++;
    }
    if (rows < 0 || width < 0 || (itemsize != 1 && itemsize != 2 && itemsize != 4 && itemsize != 8) ||
        data.len < rows * width * itemsize || fires.len < width * 8 || nans.len < width * 8) {
        PyErr_SetString(PyExc_ValueError, "buffer sizes do not match rows, width and itemsize");
        rc = -2;
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    switch (itemsize) {
    case 1:
        rc = count_u8(data.buf, rows, width, nranges, ranges, (uint8_t)nan_mask, (uint8_t)nan_above,
                      fires.buf, nans.buf);
        break;
    case 2:
        rc = count_u16(data.buf, rows, width, nranges, ranges, (uint16_t)nan_mask, (uint16_t)nan_above,
                       fires.buf, nans.buf);
        break;
    case 4:
        rc = count_u32(data.buf, rows, width, nranges, ranges, (uint32_t)nan_mask, (uint32_t)nan_above,
                       fires.buf, nans.buf);
        break;
    default:
        rc = count_u64(data.buf, rows, width, nranges, ranges, (uint64_t)nan_mask, (uint64_t)nan_above,
                       fires.buf, nans.buf);
    }
    Py_END_ALLOW_THREADS
    if (rc == -1)
        PyErr_NoMemory();
done:
    Py_XDECREF(seq);
    PyBuffer_Release(&data);
    PyBuffer_Release(&fires);
    PyBuffer_Release(&nans);
    if (rc)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"count", count, METH_VARARGS, "Add exact per-column fire and NaN counts of raw bits into int64 buffers."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels", NULL, -1, methods};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&module); }
