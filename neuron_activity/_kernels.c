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
 * count(..., first_vector, kind, value_counts, means, m2)
 *   also the moments of the chunk's values, in the same pass: kind says how the bits are read
 *   (d: F64, f: F32, h: F16, b: BF16; its size is itemsize); value_counts (int64[width]: values
 *   that are not NaN), means and m2 (float64[width]: the mean and the sum of squared deviations
 *   from it) are the running moments of each column, into which the chunk's are merged with
 *   Chan's formula (see "Moments" below).
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

/* Moments (count() with a kind): per column, each element as a double, shifted by the column's
 * first finite value K (so that the sums do not cancel when the mean is far from 0), summed as
 * sum(x - K) and sum((x - K)^2) in double over tiles of rows while the tile is in cache from the
 * fire count, then merged into the column's running (n, mean, M2) with Chan's formula. A column
 * whose sums are not finite (a NaN or an infinity in the chunk) is summed again alone, NaNs left
 * out. The columns are those of the folded rows; the folds are added up at the end. */

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__APPLE__)
#define MOMENT_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define MOMENT_MULTIVERSION
#endif
#define MOMENT_TILE_BYTES (512 * 1024) /* rows counted, then summed while they are in L2 */
#define MOMENT_BLOCK 512                 /* columns summed at a time: their sums stay in L1 */

static inline double f64_value(uint64_t v) { double d; memcpy(&d, &v, 8); return d; }
static inline double f32_value(uint32_t v) { float f; memcpy(&f, &v, 4); return (double)f; }
static inline double bf16_value(uint16_t v) { return f32_value((uint32_t)v << 16); }
static inline float f32_of(uint32_t v) { float f; memcpy(&f, &v, 4); return f; }
static inline uint32_t bits_of(float f) { uint32_t v; memcpy(&v, &f, 4); return v; }
static inline double f16_value(uint16_t v)
{
    /* exact, branch-free in 32-bit lanes so that it vectorizes: normals by rebiasing the
     * exponent into a float's, infinities and NaNs with an all-ones exponent, subnormals as
     * em * 2^-24 (every pattern is checked against a conversion in the tests) */
    const uint32_t em = v & 0x7fffu, sign = (uint32_t)(v & 0x8000u) << 16;
    const uint32_t special = 0u - (uint32_t)(em >= 0x7c00u), subnormal = 0u - (uint32_t)(em < 0x400u);
    const uint32_t normal = (em << 13) + ((uint32_t)(127 - 15) << 23), inf_nan = (em << 13) | 0x7f800000u;
    uint32_t bits = (normal & ~special) | (inf_nan & special);
    bits = (bits & ~subnormal) | (bits_of((float)(int32_t)em * 0x1p-24f) & subnormal);
    return (double)f32_of(bits | sign);
}

typedef double (*ValueFn)(const void *x, Py_ssize_t i);
typedef void (*SumsFn)(const void *x, Py_ssize_t rows, Py_ssize_t wide, Py_ssize_t lo, Py_ssize_t hi,
                       const double *k, double *s1, double *s2);

typedef struct {
    ValueFn value;                /* element i as a double */
    SumsFn sums;                  /* adds the shifted sums of rows x columns [lo, hi) */
    int64_t *counts;              /* running non-NaN values per column */
    double *means, *m2;           /* running means and sums of squared deviations */
    double *k, *s1, *s2;          /* per folded column: shift, sums (the caller allocates) */
} Moments;

#define DEFINE_SUMS(S, T, VALUE)                                                                  \
    static double value_##S(const void *x, Py_ssize_t i) { return VALUE(((const T *)x)[i]); }      \
    MOMENT_MULTIVERSION static void sums_##S(const void *data, Py_ssize_t rows, Py_ssize_t wide,  \
                                             Py_ssize_t lo, Py_ssize_t hi, const double *restrict k, \
                                             double *restrict s1, double *restrict s2)            \
    {                                                                                            \
        const T *restrict x = data;                                                              \
        Py_ssize_t r = 0;                                                                        \
        for (; r + 3 < rows; r += 4) { /* four rows per load and store of the sums */           \
            const T *restrict a = x + r * wide, *restrict b = a + wide;                          \
            const T *restrict c = b + wide, *restrict e = c + wide;                              \
            for (Py_ssize_t j = lo; j < hi; j++) {                                               \
                const double da = VALUE(a[j]) - k[j], db = VALUE(b[j]) - k[j];                   \
                const double dc = VALUE(c[j]) - k[j], de = VALUE(e[j]) - k[j];                   \
                s1[j] += (da + db) + (dc + de);                                                  \
                s2[j] += (da * da + db * db) + (dc * dc + de * de);                              \
            }                                                                                    \
        }                                                                                        \
        for (; r < rows; r++) {                                                                  \
            const T *restrict a = x + r * wide;                                                  \
            for (Py_ssize_t j = lo; j < hi; j++) {                                               \
                const double d = VALUE(a[j]) - k[j];                                             \
                s1[j] += d;                                                                      \
                s2[j] += d * d;                                                                  \
            }                                                                                    \
        }                                                                                        \
    }

DEFINE_SUMS(f64, uint64_t, f64_value)
DEFINE_SUMS(f32, uint32_t, f32_value)
DEFINE_SUMS(f16, uint16_t, f16_value)
DEFINE_SUMS(bf16, uint16_t, bf16_value)

/* K: each column's first finite value (0 if none), repeated over the folds. */
static void moments_shift(const Moments *m, const void *x, Py_ssize_t rows, Py_ssize_t width, Py_ssize_t wide)
{
    for (Py_ssize_t j = 0; j < width; j++) {
        for (Py_ssize_t r = 0; r < rows; r++) {
            const double v = m->value(x, r * width + j);
            if (v - v == 0) {
                m->k[j] = v;
                break;
            }
        }
    }
    for (Py_ssize_t i = width; i < wide; i++)
        m->k[i] = m->k[i % width];
}

static void moments_rows(const Moments *m, const void *x, Py_ssize_t rows, Py_ssize_t wide)
{
    for (Py_ssize_t lo = 0; lo < wide; lo += MOMENT_BLOCK)
        m->sums(x, rows, wide, lo, lo + MOMENT_BLOCK < wide ? lo + MOMENT_BLOCK : wide, m->k, m->s1, m->s2);
}

/* Chan et al.: a chunk's (n, mean, M2) added to a column's running ones. */
static void chan_merge(int64_t *n_a, double *mean_a, double *m2_a, int64_t n_b, double mean_b, double m2_b)
{
    if (n_b <= 0)
        return;
    if (*n_a <= 0) {
        *n_a = n_b, *mean_a = mean_b, *m2_a = m2_b;
        return;
    }
    const double n = (double)*n_a + (double)n_b, delta = mean_b - *mean_a;
    *mean_a += delta * ((double)n_b / n);
    *m2_a += m2_b + delta * delta * ((double)*n_a * (double)n_b / n);
    *n_a += n_b;
}

static void moments_finish(const Moments *m, const void *x, Py_ssize_t rows, Py_ssize_t width, Py_ssize_t wide)
{
    double *k = m->k, *s1 = m->s1, *s2 = m->s2;
    for (Py_ssize_t i = width; i < wide; i++) {
        s1[i % width] += s1[i];
        s2[i % width] += s2[i];
    }
    for (Py_ssize_t j = 0; j < width; j++) {
        int64_t n = (int64_t)rows;
        double a = s1[j], b = s2[j];
        if (!(a - a == 0 && b - b == 0)) { /* a NaN or an infinity: summed again, NaNs left out */
            n = 0, a = 0, b = 0;
            for (Py_ssize_t r = 0; r < rows; r++) {
                const double v = m->value(x, r * width + j);
                if (v == v) {
                    a += v - k[j];
                    b += (v - k[j]) * (v - k[j]);
                    n++;
                }
            }
        }
        if (n > 0) {
            const double spread = b - a * (a / (double)n); /* rounding can take it just below 0 */
            chan_merge(m->counts + j, m->means + j, m->m2 + j, n, k[j] + a / (double)n, spread < 0 ? 0.0 : spread);
        }
    }
}

/* One flush block: at most max(T) rows of `wide` columns. A single range is passed twice. */
#define DEFINE_KERNEL(S, T)                                                                      \
    MULTIVERSION static void rows_##S(const T *restrict x, Py_ssize_t rows, Py_ssize_t wide,      \
                                      Py_ssize_t first, int nranges, T a0, T d0, T a1, T d1,      \
                                      T nan_mask, T nan_above, T *restrict fire_acc,              \
                                      T *restrict nan_acc, T *restrict last_acc)                  \
    {                                                                                            \
        for (Py_ssize_t r = 0; r < rows; r++) {                                                  \
            const T *restrict row = x + r * wide;                                                \
            T any_nan = 0; /* an OR-reduction is nearly free; NaNs are counted per column rarely */ \
            const T stamp = (T)(first + r + 1); /* rows from the flush block's first */           \
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
                         T nan_mask, T nan_above, const Moments *mom)                            \
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
        Py_ssize_t tile = mom ? MOMENT_TILE_BYTES / (wide * (Py_ssize_t)sizeof(T)) : PY_SSIZE_T_MAX; \
        tile = tile < 1 ? 1 : tile;                                                              \
        if (mom)                                                                                 \
            moments_shift(mom, x, rows, width, wide);                                            \
        for (Py_ssize_t g = 0; g < groups; g += limit) {                                         \
            Py_ssize_t k = groups - g < limit ? groups - g : limit;                              \
            for (Py_ssize_t t = 0; t < k; t += tile) { /* with moments, summed while in cache */ \
                const Py_ssize_t m = k - t < tile ? k - t : tile;                                \
                rows_##S(x + (g + t) * wide, m, wide, t, n, a0, d0, a1, d1, nan_mask, nan_above, \
                         fire_acc, nan_acc, track);                                              \
                if (mom)                                                                         \
                    moments_rows(mom, x + (g + t) * wide, m, wide);                              \
            }                                                                                    \
            flush_##S(job, wide, fold, (int64_t)g * fold, fire_acc, nan_acc, last_acc);          \
        }                                                                                        \
        for (Py_ssize_t done = groups * fold; done < rows;) { /* the last rows % fold, unfolded */ \
            Py_ssize_t k = rows - done < limit ? rows - done : limit;                            \
            rows_##S(x + done * width, k, width, 0, n, a0, d0, a1, d1, nan_mask, nan_above,      \
                     fire_acc, nan_acc, track);                                                  \
            if (mom)                                                                             \
                mom->sums(x + done * width, k, width, 0, width, mom->k, mom->s1, mom->s2);       \
            flush_##S(job, width, 1, (int64_t)done, fire_acc, nan_acc, last_acc);                \
            done += k;                                                                           \
        }                                                                                        \
        if (mom)                                                                                 \
            moments_finish(mom, x, rows, width, wide);                                           \
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
    Py_buffer data, fires, nans, last = {0}, vcounts = {0}, means = {0}, m2 = {0};
    Py_ssize_t rows, width;
    int itemsize, kind = 0;
    PyObject *range_list, *last_obj, *counts_obj = Py_None, *means_obj = Py_None, *m2_obj = Py_None;
    unsigned long long nan_mask, nan_above;
    long long first_vector;
    double *moment_buf = NULL;
    if (!PyArg_ParseTuple(args, "y*nniOKKw*w*OL|COOO", &data, &rows, &width, &itemsize, &range_list, &nan_mask,
                          &nan_above, &fires, &nans, &last_obj, &first_vector, &kind, &counts_obj, &means_obj,
                          &m2_obj))
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
    Moments moments = {0}, *mom = NULL;
    if (kind) {
        const int size = kind == 'd' ? 8 : kind == 'f' ? 4 : kind == 'h' || kind == 'b' ? 2 : 0;
        if (size != itemsize) {
            PyErr_SetString(PyExc_ValueError, "kind is d (F64), f (F32), h (F16) or b (BF16), of the data's itemsize");
            goto done;
        }
        if (PyObject_GetBuffer(counts_obj, &vcounts, PyBUF_WRITABLE) < 0 ||
            PyObject_GetBuffer(means_obj, &means, PyBUF_WRITABLE) < 0 ||
            PyObject_GetBuffer(m2_obj, &m2, PyBUF_WRITABLE) < 0)
            goto done;
        if (vcounts.len < width * 8 || means.len < width * 8 || m2.len < width * 8) {
            PyErr_SetString(PyExc_ValueError, "moment buffer sizes do not match width");
            goto done;
        }
        moment_buf = calloc((size_t)(job.fold * width) * 3, sizeof(double));
        if (!moment_buf) {
            rc = -1;
            goto failed;
        }
        ValueFn values[] = {value_f64, value_f32, value_f16, value_bf16};
        SumsFn sums[] = {sums_f64, sums_f32, sums_f16, sums_bf16};
        const int at = kind == 'd' ? 0 : kind == 'f' ? 1 : kind == 'h' ? 2 : 3;
        const Py_ssize_t wide = job.fold * width;
        moments = (Moments){values[at], sums[at], vcounts.buf, means.buf, m2.buf, moment_buf, moment_buf + wide,
                            moment_buf + 2 * wide};
        mom = rows > 0 ? &moments : NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    switch (itemsize) {
    case 1:
        rc = count_u8(&job, data.buf, rows, ranges, (uint8_t)nan_mask, (uint8_t)nan_above, NULL);
        break;
    case 2:
        rc = count_u16(&job, data.buf, rows, ranges, (uint16_t)nan_mask, (uint16_t)nan_above, mom);
        break;
    case 4:
        rc = count_u32(&job, data.buf, rows, ranges, (uint32_t)nan_mask, (uint32_t)nan_above, mom);
        break;
    default:
        rc = count_u64(&job, data.buf, rows, ranges, (uint64_t)nan_mask, (uint64_t)nan_above, mom);
    }
    Py_END_ALLOW_THREADS
failed:
    if (rc == -1)
        PyErr_NoMemory();
    if (rc == -3)
        PyErr_SetString(PyExc_BufferError, "the data went away while it was counted (a mapped file was truncated)");
done:
    free(moment_buf);
    PyBuffer_Release(&data);
    PyBuffer_Release(&fires);
    PyBuffer_Release(&nans);
    if (last.buf)
        PyBuffer_Release(&last);
    if (vcounts.buf)
        PyBuffer_Release(&vcounts);
    if (means.buf)
        PyBuffer_Release(&means);
    if (m2.buf)
        PyBuffer_Release(&m2);
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
