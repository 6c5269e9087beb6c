/* xnatdrop._md5lanes: the MD5 digests of many spans of one buffer, eight at a time.

   Why: MD5 was 43 % of the upload's CPU (issue 13). OpenSSL's MD5, behind hashlib, hashes one
   message at a time, and each of its 64 steps waits for the one before: one core runs it at
   about 0.57 GB/s, mostly waiting. A run of the upload zip (`packread.read_run`) holds some
   twenty files in one buffer, independent messages: here each of the eight 32-bit lanes of an
   AVX2 register hashes one of them, so one instruction stream advances eight digests (the
   multi-buffer technique of Intel ISA-L's md5_mb and minio/md5-simd). A lane whose message
   ends takes the next one; its last one or two blocks (the padding and the length) are built
   in the lane's own 128 bytes.

   The MD5 steps are RFC 1321's, written for eight lanes. Only the CPython API; AVX2 is asked of
   the compiler per function (target attribute), and of the CPU at import: `AVX2` is False where
   the CPU lacks it, and md5_spans then raises (xnatdrop.md5lanes uses hashlib instead). */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define HAVE_AVX2_BUILD 1
#include <immintrin.h>
#define AVX2_FN __attribute__((target("avx2")))
#else
#define HAVE_AVX2_BUILD 0
#endif

static int cpu_avx2 = 0;

#if HAVE_AVX2_BUILD

/* RFC 1321, 3.4: T[i] = floor(2^32 * abs(sin(i + 1))), in step order. */
static const uint32_t T[64] = {
    0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501,
    0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821,
    0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
    0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a,
    0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70,
    0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
    0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
    0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391,
};

#define LANES 8
#define IV_A 0x67452301u
#define IV_B 0xefcdab89u
#define IV_C 0x98badcfeu
#define IV_D 0x10325476u

/* RFC 1321, 3.4: the four auxiliary functions, as x86 evaluates them cheaply. */
#define F(b, c, d) _mm256_xor_si256(d, _mm256_and_si256(b, _mm256_xor_si256(c, d)))
#define G(b, c, d) _mm256_xor_si256(c, _mm256_and_si256(d, _mm256_xor_si256(b, c)))
#define H(b, c, d) _mm256_xor_si256(_mm256_xor_si256(b, c), d)
#define I(b, c, d) _mm256_xor_si256(c, _mm256_or_si256(b, _mm256_xor_si256(d, ones)))
#define ROTL(x, s) _mm256_or_si256(_mm256_slli_epi32(x, s), _mm256_srli_epi32(x, 32 - (s)))
/* a = b + ((a + FN(b,c,d) + X[k] + T[i]) <<< s) */
#define STEP(FN, a, b, c, d, k, s, i)                                                          \
    a = _mm256_add_epi32(                                                                      \
        b, ROTL(_mm256_add_epi32(_mm256_add_epi32(a, FN(b, c, d)),                             \
                                 _mm256_add_epi32(X[k], _mm256_set1_epi32((int)T[i]))),        \
                s))

/* Words w..w+7 of each lane's block, transposed: out[j] holds word w+j of lanes 0..7. */
static inline AVX2_FN void transpose(const uint8_t *const block[LANES], int w, __m256i *out)
{
    __m256i r[LANES], t[LANES], u[LANES];
    for (int l = 0; l < LANES; l++)
        r[l] = _mm256_loadu_si256((const __m256i *)(block[l] + 4 * w));
    for (int l = 0; l < LANES; l += 2) {
        t[l] = _mm256_unpacklo_epi32(r[l], r[l + 1]);     /* l[0] l+1[0] l[1] l+1[1] | [4] [5] */
        t[l + 1] = _mm256_unpackhi_epi32(r[l], r[l + 1]); /* [2] [3] | [6] [7] */
    }
    for (int h = 0; h < LANES; h += 4) { /* lanes h..h+3 */
        u[h] = _mm256_unpacklo_epi64(t[h], t[h + 2]);         /* word 0 | 4 */
        u[h + 1] = _mm256_unpackhi_epi64(t[h], t[h + 2]);     /* word 1 | 5 */
        u[h + 2] = _mm256_unpacklo_epi64(t[h + 1], t[h + 3]); /* word 2 | 6 */
        u[h + 3] = _mm256_unpackhi_epi64(t[h + 1], t[h + 3]); /* word 3 | 7 */
    }
    for (int j = 0; j < 4; j++) {
        out[j] = _mm256_permute2x128_si256(u[j], u[j + 4], 0x20);
        out[j + 4] = _mm256_permute2x128_si256(u[j], u[j + 4], 0x31);
    }
}

/* RFC 1321, 3.4: one 64-byte block of each of the eight lanes. */
static inline AVX2_FN void compress(__m256i state[4], const uint8_t *const block[LANES])
{
    __m256i X[16];
    const __m256i ones = _mm256_set1_epi32(-1);
    transpose(block, 0, X);
    transpose(block, 8, X + 8);
    __m256i a = state[0], b = state[1], c = state[2], d = state[3];

    STEP(F, a, b, c, d, 0, 7, 0);    STEP(F, d, a, b, c, 1, 12, 1);
    STEP(F, c, d, a, b, 2, 17, 2);   STEP(F, b, c, d, a, 3, 22, 3);
    STEP(F, a, b, c, d, 4, 7, 4);    STEP(F, d, a, b, c, 5, 12, 5);
    STEP(F, c, d, a, b, 6, 17, 6);   STEP(F, b, c, d, a, 7, 22, 7);
    STEP(F, a, b, c, d, 8, 7, 8);    STEP(F, d, a, b, c, 9, 12, 9);
    STEP(F, c, d, a, b, 10, 17, 10); STEP(F, b, c, d, a, 11, 22, 11);
    STEP(F, a, b, c, d, 12, 7, 12);  STEP(F, d, a, b, c, 13, 12, 13);
    STEP(F, c, d, a, b, 14, 17, 14); STEP(F, b, c, d, a, 15, 22, 15);

    STEP(G, a, b, c, d, 1, 5, 16);   STEP(G, d, a, b, c, 6, 9, 17);
    STEP(G, c, d, a, b, 11, 14, 18); STEP(G, b, c, d, a, 0, 20, 19);
    STEP(G, a, b, c, d, 5, 5, 20);   STEP(G, d, a, b, c, 10, 9, 21);
    STEP(G, c, d, a, b, 15, 14, 22); STEP(G, b, c, d, a, 4, 20, 23);
    STEP(G, a, b, c, d, 9, 5, 24);   STEP(G, d, a, b, c, 14, 9, 25);
    STEP(G, c, d, a, b, 3, 14, 26);  STEP(G, b, c, d, a, 8, 20, 27);
    STEP(G, a, b, c, d, 13, 5, 28);  STEP(G, d, a, b, c, 2, 9, 29);
    STEP(G, c, d, a, b, 7, 14, 30);  STEP(G, b, c, d, a, 12, 20, 31);

    STEP(H, a, b, c, d, 5, 4, 32);   STEP(H, d, a, b, c, 8, 11, 33);
    STEP(H, c, d, a, b, 11, 16, 34); STEP(H, b, c, d, a, 14, 23, 35);
    STEP(H, a, b, c, d, 1, 4, 36);   STEP(H, d, a, b, c, 4, 11, 37);
    STEP(H, c, d, a, b, 7, 16, 38);  STEP(H, b, c, d, a, 10, 23, 39);
    STEP(H, a, b, c, d, 13, 4, 40);  STEP(H, d, a, b, c, 0, 11, 41);
    STEP(H, c, d, a, b, 3, 16, 42);  STEP(H, b, c, d, a, 6, 23, 43);
    STEP(H, a, b, c, d, 9, 4, 44);   STEP(H, d, a, b, c, 12, 11, 45);
    STEP(H, c, d, a, b, 15, 16, 46); STEP(H, b, c, d, a, 2, 23, 47);

    STEP(I, a, b, c, d, 0, 6, 48);   STEP(I, d, a, b, c, 7, 10, 49);
    STEP(I, c, d, a, b, 14, 15, 50); STEP(I, b, c, d, a, 5, 21, 51);
    STEP(I, a, b, c, d, 12, 6, 52);  STEP(I, d, a, b, c, 3, 10, 53);
    STEP(I, c, d, a, b, 10, 15, 54); STEP(I, b, c, d, a, 1, 21, 55);
    STEP(I, a, b, c, d, 8, 6, 56);   STEP(I, d, a, b, c, 15, 10, 57);
    STEP(I, c, d, a, b, 6, 15, 58);  STEP(I, b, c, d, a, 13, 21, 59);
    STEP(I, a, b, c, d, 4, 6, 60);   STEP(I, d, a, b, c, 11, 10, 61);
    STEP(I, c, d, a, b, 2, 15, 62);  STEP(I, b, c, d, a, 9, 21, 63);

    state[0] = _mm256_add_epi32(state[0], a);
    state[1] = _mm256_add_epi32(state[1], b);
    state[2] = _mm256_add_epi32(state[2], c);
    state[3] = _mm256_add_epi32(state[3], d);
}

/* One lane's message: its whole blocks straight from the buffer, then its last one or two
   blocks (the rest of the data, 0x80, zeros, the length in bits) from `tail`. */
typedef struct {
    const uint8_t *block; /* the lane's next block */
    size_t blocks;        /* blocks left in this part (the buffer's, then the tail's) */
    size_t tail_blocks;   /* 1 or 2 */
    Py_ssize_t span;      /* which span (index into starts/sizes), -1: the lane is idle */
    int in_tail;
    uint8_t tail[128];
} Lane;

static const uint8_t idle_block[64]; /* what an idle lane hashes, for nothing */

static void lane_start(Lane *lane, const uint8_t *data, size_t size, Py_ssize_t span)
{
    size_t whole = size / 64, rest = size % 64;
    uint64_t bits = (uint64_t)size * 8;
    lane->span = span;
    lane->tail_blocks = rest < 56 ? 1 : 2;
    memset(lane->tail, 0, sizeof lane->tail);
    memcpy(lane->tail, data + whole * 64, rest);
    lane->tail[rest] = 0x80;
    for (int i = 0; i < 8; i++) /* little-endian, RFC 1321 3.2 */
        lane->tail[lane->tail_blocks * 64 - 8 + i] = (uint8_t)(bits >> (8 * i));
    lane->in_tail = whole == 0;
    lane->block = whole ? data : lane->tail;
    lane->blocks = whole ? whole : lane->tail_blocks;
}

/* Hash the spans data[order[i]] (sizes[order[i]] bytes) into out + 16 * order[i], eight lanes
   at a time. `order` hands the longest spans out first, so the lanes finish near together.
   Needs no GIL. */
static AVX2_FN void hash_spans(const uint8_t *const *data, const Py_ssize_t *sizes,
                               const Py_ssize_t *order, Py_ssize_t n, uint8_t *out)
{
    Lane lanes[LANES];
    uint32_t words[4][LANES] __attribute__((aligned(32)));
    const uint8_t *block[LANES];
    Py_ssize_t next = 0;
    int active = 0;
    for (int l = 0; l < LANES; l++) {
        words[0][l] = IV_A; words[1][l] = IV_B; words[2][l] = IV_C; words[3][l] = IV_D;
        if (next < n) {
            Py_ssize_t s = order[next++];
            lane_start(&lanes[l], data[s], (size_t)sizes[s], s);
            active++;
        } else {
            lanes[l].span = -1;
            lanes[l].block = idle_block;
            lanes[l].blocks = SIZE_MAX;
        }
    }
    while (active) {
        size_t run = SIZE_MAX; /* blocks every busy lane has before one of them changes */
        for (int l = 0; l < LANES; l++) {
            block[l] = lanes[l].block;
            if (lanes[l].span >= 0 && lanes[l].blocks < run)
                run = lanes[l].blocks;
        }
        __m256i state[4];
        for (int w = 0; w < 4; w++)
            state[w] = _mm256_load_si256((const __m256i *)words[w]);
        for (size_t k = 0; k < run; k++) {
            compress(state, block);
            for (int l = 0; l < LANES; l++)
                if (lanes[l].span >= 0)
                    block[l] += 64;
        }
        for (int w = 0; w < 4; w++)
            _mm256_store_si256((__m256i *)words[w], state[w]);
        for (int l = 0; l < LANES; l++) {
            Lane *lane = &lanes[l];
            if (lane->span < 0)
                continue;
            lane->block = block[l];
            lane->blocks -= run;
            if (lane->blocks)
                continue;
            if (!lane->in_tail) {
                lane->in_tail = 1;
                lane->block = lane->tail;
                lane->blocks = lane->tail_blocks;
                continue;
            }
            for (int w = 0; w < 4; w++) /* the digest: A, B, C, D, each little-endian */
                memcpy(out + 16 * lane->span + 4 * w, &words[w][l], 4);
            words[0][l] = IV_A; words[1][l] = IV_B; words[2][l] = IV_C; words[3][l] = IV_D;
            if (next < n) {
                Py_ssize_t s = order[next++];
                lane_start(lane, data[s], (size_t)sizes[s], s);
            } else {
                lane->span = -1;
                lane->block = idle_block;
                lane->blocks = SIZE_MAX;
                active--;
            }
        }
    }
}

#endif /* HAVE_AVX2_BUILD */

/* The integers of a sequence, each ≥ 0, into a new array (PyMem); NULL with an error set. */
static Py_ssize_t *read_sizes(PyObject *sequence, const char *what, Py_ssize_t *count)
{
    PyObject *fast = PySequence_Fast(sequence, "starts and sizes must be sequences of int");
    if (fast == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    Py_ssize_t *values = PyMem_Malloc(sizeof(Py_ssize_t) * (n ? n : 1));
    if (values == NULL) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t value = PyNumber_AsSsize_t(PySequence_Fast_GET_ITEM(fast, i), PyExc_ValueError);
        if (value == -1 && PyErr_Occurred()) /* TypeError; ValueError for one too large */
            goto fail;
        if (value < 0) {
            PyErr_Format(PyExc_ValueError, "%s[%zd] is negative", what, i);
            goto fail;
        }
        values[i] = value;
    }
    Py_DECREF(fast);
    *count = n;
    return values;
fail:
    Py_DECREF(fast);
    PyMem_Free(values);
    return NULL;
}

/* order[0..n) sorted by sizes[order[i]], largest first, equal sizes kept in their order: a
   bottom-up merge sort through `spare` (n more). */
static void longest_first(Py_ssize_t *order, Py_ssize_t *spare, const Py_ssize_t *sizes,
                          Py_ssize_t n)
{
    for (Py_ssize_t width = 1; width < n; width *= 2) {
        for (Py_ssize_t lo = 0; lo < n; lo += 2 * width) {
            Py_ssize_t mid = lo + width < n ? lo + width : n;
            Py_ssize_t hi = lo + 2 * width < n ? lo + 2 * width : n;
            Py_ssize_t i = lo, j = mid, k = lo;
            while (i < mid && j < hi)
                spare[k++] = sizes[order[j]] > sizes[order[i]] ? order[j++] : order[i++];
            while (i < mid)
                spare[k++] = order[i++];
            while (j < hi)
                spare[k++] = order[j++];
        }
        memcpy(order, spare, sizeof(Py_ssize_t) * (size_t)n);
    }
}

PyDoc_STRVAR(md5_spans_doc,
"md5_spans(buffer, starts, sizes, pieces=None) -> bytes\n\n"
"The MD5 digests of buffer[starts[i] : starts[i] + sizes[i]] for each i, 16 bytes each,\n"
"concatenated in order. With `pieces`, `buffer` is a sequence of buffers and span i is in\n"
"buffer[pieces[i]]. ValueError for mismatched lengths, a negative number, a span past the\n"
"end or a piece that is not there; RuntimeError where the CPU has no AVX2 (see AVX2).\n"
"Releases the GIL while it hashes.");

/* The buffers: `buffer` itself, or (with pieces) each of its items; NULL with an error set.
   On success *count views to release with release_views. */
static Py_buffer *get_views(PyObject *buffer, int several, Py_ssize_t *count)
{
    PyObject *fast = several ? PySequence_Fast(buffer, "with pieces, buffer must be a sequence")
                             : PyTuple_Pack(1, buffer);
    if (fast == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast), got = 0;
    Py_buffer *views = PyMem_Calloc(n ? (size_t)n : 1, sizeof(Py_buffer));
    if (views == NULL)
        PyErr_NoMemory();
    else
        for (; got < n; got++)
            if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(fast, got), &views[got],
                                   PyBUF_SIMPLE) < 0)
                break;
    Py_DECREF(fast);
    if (views != NULL && got < n) {
        while (got > 0)
            PyBuffer_Release(&views[--got]);
        PyMem_Free(views);
        return NULL;
    }
    *count = n;
    return views;
}

static PyObject *md5_spans(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    int several = nargs == 4 && args[3] != Py_None;
    if (nargs != 3 && nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "md5_spans(buffer, starts, sizes, pieces=None)");
        return NULL;
    }
    if (!cpu_avx2) {
        PyErr_SetString(PyExc_RuntimeError, "md5_spans needs AVX2, which this CPU lacks");
        return NULL;
    }
    Py_ssize_t n_views = 0, n = 0, n_sizes = 0, n_pieces = 0;
    Py_buffer *views = get_views(args[0], several, &n_views);
    if (views == NULL)
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t *order = NULL, *pieces = NULL;
    const uint8_t **data = NULL;
    Py_ssize_t *starts = read_sizes(args[1], "starts", &n);
    Py_ssize_t *sizes = starts ? read_sizes(args[2], "sizes", &n_sizes) : NULL;
    if (sizes == NULL || (several && (pieces = read_sizes(args[3], "pieces", &n_pieces)) == NULL))
        goto done;
    if (n != n_sizes || (several && n != n_pieces)) {
        PyErr_Format(PyExc_ValueError, "%zd starts but %zd sizes%s", n, n_sizes,
                     several && n != n_pieces ? " or another number of pieces" : "");
        goto done;
    }
    data = PyMem_Malloc(sizeof(*data) * (n ? (size_t)n : 1));
    order = PyMem_Malloc(sizeof(Py_ssize_t) * (2 * (size_t)n + 1)); /* and the sort's spare */
    result = PyBytes_FromStringAndSize(NULL, 16 * n);
    if (data == NULL || order == NULL || result == NULL) {
        Py_CLEAR(result);
        if (!PyErr_Occurred())
            PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t piece = several ? pieces[i] : 0;
        if (piece >= n_views) {
            PyErr_Format(PyExc_ValueError, "span %zd is in piece %zd of %zd", i, piece, n_views);
            Py_CLEAR(result);
            goto done;
        }
        Py_ssize_t len = views[piece].len;
        if (starts[i] > len || sizes[i] > len - starts[i]) {
            PyErr_Format(PyExc_ValueError, "span %zd (%zd + %zd bytes) is past the end (%zd)",
                         i, starts[i], sizes[i], len);
            Py_CLEAR(result);
            goto done;
        }
        data[i] = (const uint8_t *)views[piece].buf + starts[i];
        order[i] = i;
    }
#if HAVE_AVX2_BUILD
    {
        uint8_t *out = (uint8_t *)PyBytes_AS_STRING(result);
        Py_BEGIN_ALLOW_THREADS
        longest_first(order, order + n, sizes, n);
        hash_spans(data, sizes, order, n, out);
        Py_END_ALLOW_THREADS
    }
#endif
done:
    PyMem_Free(data);
    PyMem_Free(order);
    PyMem_Free(starts);
    PyMem_Free(sizes);
    PyMem_Free(pieces);
    for (Py_ssize_t i = 0; i < n_views; i++)
        PyBuffer_Release(&views[i]);
    PyMem_Free(views);
    return result;
}

static PyMethodDef methods[] = {
    {"md5_spans", (PyCFunction)(void (*)(void))md5_spans, METH_FASTCALL, md5_spans_doc},
    {NULL, NULL, 0, NULL},
};

static int exec_module(PyObject *module)
{
#if HAVE_AVX2_BUILD
    __builtin_cpu_init();
    cpu_avx2 = __builtin_cpu_supports("avx2") ? 1 : 0;
#endif
    return PyModule_AddObjectRef(module, "AVX2", cpu_avx2 ? Py_True : Py_False);
}

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, exec_module},
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "xnatdrop._md5lanes",
    .m_doc = "MD5 digests of the spans of one buffer, eight at a time in AVX2 lanes "
             "(see xnatdrop.md5lanes).",
    .m_size = 0,
    .m_methods = methods,
    .m_slots = slots,
};

PyMODINIT_FUNC PyInit__md5lanes(void)
{
    return PyModuleDef_Init(&module_def);
}
