/* Exact per-column fire counts over raw bits, in one pass over the data.
 *
 * count(data, rows, width, itemsize, ranges, nan_mask, nan_above, fire_counts, nan_counts,
 *       last_fired, first_vector)
 *   data: buffer of rows x width unsigned integers of `itemsize` bytes (the elements' raw bits)
 *   ranges: up to two inclusive (a, b) ranges of bits that fire
 *   nan_mask / nan_above: an element is NaN when (bits & nan_mask) > nan_above (0, 0: never)
 *   fire_counts, nan_counts: writable int64[width] buffers the counts are added into
 *   last_fired: None, or a writable int64[width] buffer raised to first_vector + the last row on
 *     which each column fired (first_vector: the stream index of the chunk's first row)
 *
 * Counts are kept per column in accumulators as wide as the data (so the compiler vectorizes the
 * loop lane for lane) and flushed into int64 before they can wrap. Narrow rows are folded: k rows
 * are treated as one row of k * width columns. The last row that fired is tracked the same way,
 * as a row number within the block (0: none) blended in lane by lane. The GIL is released.
 *
 * The module's SOURCE_SHA256 is the hash of this file as built (setup.py passes it): the tests
 * check that a build is current, and --version names it.
 *
 * count_sparse(locations, loc_code, entries, values, itemsize, ranges, nan_mask, nan_above,
 *              low, span, batches, positions, fire_counts, nan_counts) -> int
 *   a sparse cache's entries (delphi): locations is entries x 3 integers (batch, position,
 *   latent) of the struct code loc_code (H, I: uint16, uint32 as delphi saves them; i, q: int32,
 *   int64), values the entries' raw bits (2 or 4 bytes). Fires and NaNs of latent l are
 *   added at l - low of the int64[span] buffers. Returns -1 when every entry's latent is in
 *   [low, low + span) and (positions > 0) its batch and position inside [0, batches) and
 *   [0, positions); else the index of the first entry that is not (nothing is then counted
 *   reliably: the caller raises). One pass over both columns.
 *
 * Data is often a memory-mapped file: if another process truncates it while it is counted, the
 * read faults with SIGBUS. A handler jumps back out of the counting loop of the thread that
 * faulted (count() then raises BufferError); faults outside a counting loop go to the handler
 * that was there before.
 */


#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__APPLE__)
#define MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define MULTIVERSION
#endif

#define FOLD_COLUMNS 1024

static _Thread_local sigjmp_buf *fault_jump = NULL;
static struct sigaction previous_bus;

static void on_bus(int sig, siginfo_t *info, void *context)
{
    if (fault_jump)
        siglongjmp(*fault_jump, 1);
    if (previous_bus.sa_flags & SA_SIGINFO && previous_bus.sa_sigaction) {
        previous_bus.sa_sigaction(sig, info, context);
        return;
    }
    sigaction(SIGBUS, &previous_bus, NULL); /* not ours: let the old handler (or default) have it */
    raise(sig);
}

typedef struct {
    Py_ssize_t width, fold;
    int nranges;
    int64_t *fires, *nans, *last; /* last may be NULL */
    int64_t first_vector;
} Job;

/* One flush block: at most max(T) rows of `wide` columns. A single range is passed twice. */
#define DEFINE_KERNEL(S, T)                                                                      \
    MULTIVERSION static void rows_##S(const T *restrict x, Py_ssize_t rows, Py_ssize_t wide,      \
                                      int nranges, T a0, T d0, T a1, T d1, T nan_mask,            \
                                      T nan_above, T *restrict fire_acc, T *restrict nan_acc,     \
                                      T *restrict last_acc)                                       \
    {                                                                                            \
        for (Py_ssize_t r = 0; r < rows; r++) {                                                  \
            const T *restrict row = x + r * wide;                                                \
            T any_nan = 0; /* an OR-reduction is nearly free; NaNs are counted per column rarely */ \
            const T stamp = (T)(r + 1);                                                          \
            if (nranges && last_acc) {                                                           \
                for (Py_ssize_t j = 0; j < wide; j++) {                                          \
                    const T v = row[j];                                                          \
                    const T f = (T)(((T)(v - a0) <= d0) | ((T)(v - a1) <= d1));                   \
                    fire_acc[j] += f;                                                            \
                    last_acc[j] = f ? stamp : last_acc[j];                                       \
                    any_nan |= (T)((T)(v & nan_mask) > nan_above);                               \
                }                                                                                \
            } else if (nranges) {                                                                \
                for (Py_ssize_t j = 0; j < wide; j++) {                                          \
                    const T v = row[j];                                                          \
                    fire_acc[j] += (T)(((T)(v - a0) <= d0) | ((T)(v - a1) <= d1));                \
                    any_nan |= (T)((T)(v & nan_mask) > nan_above);                               \
                }                                                                                \
            } else {                                                                             \
                for (Py_ssize_t j = 0; j < wide; j++)                                            \
                    any_nan |= (T)((T)(row[j] & nan_mask) > nan_above);                          \
            }                                                                                    \
            if (any_nan) {                                                                       \
                for (Py_ssize_t j = 0; j < wide; j++)                                            \
                    nan_acc[j] += (T)((T)(row[j] & nan_mask) > nan_above);                       \
            }                                                                                    \
        }                                                                                        \
    }                                                                                            \
                                                                                                 \
    /* Move block accumulators into the int64 totals; `first` is the block's first row. */       \
    static void flush_##S(const Job *job, Py_ssize_t wide, Py_ssize_t fold, int64_t first,       \
                          T *fire_acc, T *nan_acc, T *last_acc)                                  \
    {                                                                                            \
        for (Py_ssize_t i = 0; i < wide; i++) {                                                  \
            Py_ssize_t column = i % job->width;                                                  \
            job->fires[column] += (int64_t)fire_acc[i];                                          \
            job->nans[column] += (int64_t)nan_acc[i];                                            \
            if (job->last && last_acc[i]) {                                                      \
                int64_t row = job->first_vector + first + ((int64_t)last_acc[i] - 1) * fold + i / job->width; \
                if (row > job->last[column])                                                     \
                    job->last[column] = row;                                                     \
            }                                                                                    \
        }                                                                                        \
        memset(fire_acc, 0, (size_t)wide * sizeof(T));                                           \
        memset(nan_acc, 0, (size_t)wide * sizeof(T));                                            \
        memset(last_acc, 0, (size_t)wide * sizeof(T));                                           \
    }                                                                                            \
                                                                                                 \
    static int count_##S(const Job *job, const T *x, Py_ssize_t rows, const unsigned long long *r, \
                         T nan_mask, T nan_above)                                                \
    {                                                                                            \
        const Py_ssize_t width = job->width, fold = job->fold, wide = fold * width;              \
        const int n = job->nranges;                                                              \
        const T a0 = n ? (T)r[0] : 0, d0 = n ? (T)(r[1] - r[0]) : 0;                              \
        const T a1 = n > 1 ? (T)r[2] : a0, d1 = n > 1 ? (T)(r[3] - r[2]) : d0;                    \
        /* each accumulator gains at most one per block row: flush before T can wrap */          \
        const uint64_t max_rows = (uint64_t)(T)(~(T)0);                                          \
        const Py_ssize_t limit = max_rows > (uint64_t)PY_SSIZE_T_MAX ? PY_SSIZE_T_MAX : (Py_ssize_t)max_rows; \
        T *acc = calloc((size_t)wide * 3, sizeof(T));                                            \
        if (!acc)                                                                                \
            return -1;                                                                           \
        sigjmp_buf jump;                                                                         \
        if (sigsetjmp(jump, 1)) { /* the mapped data went away under us */                      \
            fault_jump = NULL;                                                                   \
            free(acc);                                                                           \
            return -3;                                                                           \
        }                                                                                        \
        fault_jump = &jump;                                                                      \
        T *fire_acc = acc, *nan_acc = acc + wide, *last_acc = acc + 2 * wide;                    \
        T *track = job->last ? last_acc : NULL;                                                  \
        const Py_ssize_t groups = rows / fold;                                                   \
        for (Py_ssize_t g = 0; g < groups; g += limit) {                                         \
            Py_ssize_t k = groups - g < limit ? groups - g : limit;                              \
            rows_##S(x + g * wide, k, wide, n, a0, d0, a1, d1, nan_mask, nan_above, fire_acc,    \
                     nan_acc, track);                                                            \
            flush_##S(job, wide, fold, (int64_t)g * fold, fire_acc, nan_acc, last_acc);          \
        }                                                                                        \
        for (Py_ssize_t done = groups * fold; done < rows;) { /* the last rows % fold, unfolded */ \
            Py_ssize_t k = rows - done < limit ? rows - done : limit;                            \
            rows_##S(x + done * width, k, width, n, a0, d0, a1, d1, nan_mask, nan_above,         \
                     fire_acc, nan_acc, track);                                                  \
            flush_##S(job, width, 1, (int64_t)done, fire_acc, nan_acc, last_acc);                \
            done += k;                                                                           \
        }                                                                                        \
        fault_jump = NULL;                                                                       \
        free(acc);                                                                               \
        return 0;                                                                                \
    }

DEFINE_KERNEL(u8, uint8_t)
DEFINE_KERNEL(u16, uint16_t)
DEFINE_KERNEL(u32, uint32_t)
DEFINE_KERNEL(u64, uint64_t)

static int parse_ranges(PyObject *list, unsigned long long *ranges, int *nranges)
{
    PyObject *seq = PySequence_Fast(list, "ranges must be a sequence of (a, b) pairs");
    if (!seq)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    int ok = n <= 2;
    if (!ok)
        PyErr_SetString(PyExc_ValueError, "at most two fire ranges");
    for (Py_ssize_t i = 0; ok && i < n; i++) {
        ok = PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "KK", &ranges[2 * i], &ranges[2 * i + 1]);
        if (ok && ranges[2 * i] > ranges[2 * i + 1]) {
            PyErr_SetString(PyExc_ValueError, "empty fire range");
            ok = 0;
        }
    }
    Py_DECREF(seq);
    *nranges = (int)n;
    return ok ? 0 : -1;
}

static PyObject *count(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer data, fires, nans, last = {0};
    Py_ssize_t rows, width;
    int itemsize;
    PyObject *range_list, *last_obj;
    unsigned long long nan_mask, nan_above;
    long long first_vector;
    if (!PyArg_ParseTuple(args, "y*nniOKKw*w*OL", &data, &rows, &width, &itemsize, &range_list, &nan_mask,
                          &nan_above, &fires, &nans, &last_obj, &first_vector))
        return NULL;
    unsigned long long ranges[4] = {0, 0, 0, 0};
    int nranges = 0, rc = -2;
    if (last_obj != Py_None && PyObject_GetBuffer(last_obj, &last, PyBUF_WRITABLE) < 0)
        goto done;
    if (parse_ranges(range_list, ranges, &nranges) < 0)
        goto done;
    if (rows < 0 || width <= 0 || (itemsize != 1 && itemsize != 2 && itemsize != 4 && itemsize != 8) ||
        data.len < rows * width * itemsize || fires.len < width * 8 || nans.len < width * 8 ||
        (last.buf && last.len < width * 8)) {
        PyErr_SetString(PyExc_ValueError, "buffer sizes do not match rows, width and itemsize");
        goto done;
    }
    Job job = {width, width >= FOLD_COLUMNS ? 1 : (FOLD_COLUMNS + width - 1) / width, nranges,
               fires.buf, nans.buf, last.buf, first_vector};
    Py_BEGIN_ALLOW_THREADS
    switch (itemsize) {
    case 1:
        rc = count_u8(&job, data.buf, rows, ranges, (uint8_t)nan_mask, (uint8_t)nan_above);
        break;
    case 2:
        rc = count_u16(&job, data.buf, rows, ranges, (uint16_t)nan_mask, (uint16_t)nan_above);
        break;
    case 4:
        rc = count_u32(&job, data.buf, rows, ranges, (uint32_t)nan_mask, (uint32_t)nan_above);
        break;
    default:
        rc = count_u64(&job, data.buf, rows, ranges, (uint64_t)nan_mask, (uint64_t)nan_above);
    }
    Py_END_ALLOW_THREADS
    if (rc == -1)
        PyErr_NoMemory();
    if (rc == -3)
        PyErr_SetString(PyExc_BufferError, "the data went away while it was counted (a mapped file was truncated)");
done:
    PyBuffer_Release(&data);
    PyBuffer_Release(&fires);
    PyBuffer_Release(&nans);
    if (last.buf)
        PyBuffer_Release(&last);
    if (rc)
        return NULL;
    Py_RETURN_NONE;
}

#define DEFINE_SPARSE(S, L, T)                                                                   \
    static Py_ssize_t sparse_##S(const L *loc, Py_ssize_t n, const T *v, int nranges, T a0, T d0,  \
                                 T a1, T d1, T nan_mask, T nan_above, int64_t low, int64_t span,    \
                                 int64_t batches, int64_t positions, int64_t *fires, int64_t *nans) \
    {                                                                                            \
        for (Py_ssize_t i = 0; i < n; i++) {                                                     \
            const int64_t l = (int64_t)loc[3 * i + 2] - low;                                     \
            if (l < 0 || l >= span)                                                              \
                return i;                                                                        \
            if (positions > 0) {                                                                 \
                const int64_t b = (int64_t)loc[3 * i], p = (int64_t)loc[3 * i + 1];              \
                if (b < 0 || b >= batches || p < 0 || p >= positions)                            \
                    return i;                                                                    \
            }                                                                                    \
            const T x = v[i];                                                                    \
            fires[l] += nranges && (((T)(x - a0) <= d0) | ((T)(x - a1) <= d1));                  \
            nans[l] += (T)(x & nan_mask) > nan_above;                                            \
        }                                                                                        \
        return -1;                                                                               \
    }

DEFINE_SPARSE(H_u16, uint16_t, uint16_t)
DEFINE_SPARSE(H_u32, uint16_t, uint32_t)
DEFINE_SPARSE(I_u16, uint32_t, uint16_t)
DEFINE_SPARSE(I_u32, uint32_t, uint32_t)
DEFINE_SPARSE(i_u16, int32_t, uint16_t)
DEFINE_SPARSE(i_u32, int32_t, uint32_t)
DEFINE_SPARSE(q_u16, int64_t, uint16_t)
DEFINE_SPARSE(q_u32, int64_t, uint32_t)

static PyObject *count_sparse(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer loc, values, fires, nans;
    int loc_code, itemsize;
    Py_ssize_t n;
    PyObject *range_list;
    unsigned long long nan_mask, nan_above;
    long long low, span, batches, positions;
    if (!PyArg_ParseTuple(args, "y*Cny*iOKKLLLLw*w*", &loc, &loc_code, &n, &values, &itemsize, &range_list,
                          &nan_mask, &nan_above, &low, &span, &batches, &positions, &fires, &nans))
        return NULL;
    unsigned long long r[4] = {0, 0, 0, 0};
    int nranges = 0, ok = 0;
    Py_ssize_t bad = -1;
    if (parse_ranges(range_list, r, &nranges) < 0)
        goto done;
    const int loc_itemsize = loc_code == 'H' ? 2 : loc_code == 'I' || loc_code == 'i' ? 4 : loc_code == 'q' ? 8 : 0;
    if (n < 0 || span <= 0 || !loc_itemsize || (itemsize != 2 && itemsize != 4) || loc.len < n * 3 * loc_itemsize || values.len < n * itemsize || fires.len < span * 8 || nans.len < span * 8) {
        PyErr_SetString(PyExc_ValueError, "buffer sizes do not match entries, span and item sizes");
        goto done;
    }
    sigjmp_buf jump;
    volatile int faulted = 0;
    Py_BEGIN_ALLOW_THREADS
    if (sigsetjmp(jump, 1)) {
        faulted = 1;
    } else {
        fault_jump = &jump;
#define RUN(S, T)                                                                                \
    bad = sparse_##S(loc.buf, n, values.buf, nranges, nranges ? (T)r[0] : 0, nranges ? (T)(r[1] - r[0]) : 0, \
                     nranges > 1 ? (T)r[2] : (T)r[0], nranges > 1 ? (T)(r[3] - r[2]) : (T)(r[1] - r[0]), \
                     (T)nan_mask, (T)nan_above, low, span, batches, positions, fires.buf, nans.buf)
        switch (loc_code * 8 + itemsize) {
        case 'H' * 8 + 2: RUN(H_u16, uint16_t); break;
        case 'H' * 8 + 4: RUN(H_u32, uint32_t); break;
        case 'I' * 8 + 2: RUN(I_u16, uint16_t); break;
        case 'I' * 8 + 4: RUN(I_u32, uint32_t); break;
        case 'i' * 8 + 2: RUN(i_u16, uint16_t); break;
        case 'i' * 8 + 4: RUN(i_u32, uint32_t); break;
        case 'q' * 8 + 2: RUN(q_u16, uint16_t); break;
        default: RUN(q_u32, uint32_t);
        }
#undef RUN
    }
    fault_jump = NULL;
    Py_END_ALLOW_THREADS
    if (faulted)
        PyErr_SetString(PyExc_BufferError, "the data went away while it was counted (a mapped file was truncated)");
    else
        ok = 1;
done:
    PyBuffer_Release(&loc);
    PyBuffer_Release(&values);
    PyBuffer_Release(&fires);
    PyBuffer_Release(&nans);
    if (!ok)
        return NULL;
    return PyLong_FromSsize_t(bad);
}

static PyMethodDef methods[] = {
    {"count", count, METH_VARARGS, "Add exact per-column fire and NaN counts of raw bits into int64 buffers."},
    {"count_sparse", count_sparse, METH_VARARGS, "Add exact per-latent fire and NaN counts of a sparse cache's entries."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels", NULL, -1, methods, NULL, NULL, NULL, NULL};

#ifndef KERNEL_SOURCE_SHA256
#define KERNEL_SOURCE_SHA256 "unknown"
#endif

PyMODINIT_FUNC PyInit__kernels(void)
{
    PyObject *m = PyModule_Create(&module);
    struct sigaction action;
    memset(&action, 0, sizeof(action));
    action.sa_sigaction = on_bus;
    action.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&action.sa_mask);
    if (m && sigaction(SIGBUS, &action, &previous_bus) != 0) {
        Py_DECREF(m);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (m && PyModule_AddStringConstant(m, "SOURCE_SHA256", KERNEL_SOURCE_SHA256) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
