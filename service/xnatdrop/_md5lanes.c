/* xnatdrop._md5lanes: the MD5 digests of many spans of one buffer, sixteen or eight at a time.

   Why: MD5 was 43 % of the upload's CPU (issue 13). OpenSSL's MD5, behind hashlib, hashes one
   message at a time, and each of its 64 steps waits for the one before: one core runs it at
   about 0.57 GB/s, mostly waiting. A run of the upload zip (`packread.read_run`) holds some
   twenty files in one buffer, independent messages: here each 32-bit lane of a register
   hashes one of them (sixteen in AVX-512's, eight in AVX2's), so one instruction stream
   advances sixteen or eight digests (the multi-buffer technique of Intel ISA-L's md5_mb and
   minio/md5-simd). A lane whose message ends takes the next one; its last one or two blocks
   (the padding and the length) are built in the lane's own 128 bytes.

   This file hands the messages to the lanes and is the module; _md5lanes_kernels.c holds RFC
   1321's steps for each instruction set. Only the CPython API; the instruction sets are asked
   of the compiler per function (target attribute), and of the CPU at import: `AVX2` is False
   where the CPU lacks it, and md5_spans then raises (xnatdrop.md5lanes uses hashlib instead);
   `LANES` says how many messages a call hashes at once (16, 8, or 0). */

#include "_md5lanes.h"

static int cpu_avx2 = 0, cpu_avx512 = 0;

#if HAVE_AVX2_BUILD

static const uint8_t idle_block[64]; /* what an idle lane hashes, for nothing */

static void lane_start(Lanes *lanes, int l, const uint8_t *data, size_t size, Py_ssize_t span)
{
    Lane *lane = &lanes->lane[l];
    size_t whole = size / 64, rest = size % 64;
    uint64_t bits = (uint64_t)size * 8;
    lanes->words[0][l] = IV_A; lanes->words[1][l] = IV_B;
    lanes->words[2][l] = IV_C; lanes->words[3][l] = IV_D;
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

static void lane_idle(Lane *lane)
{
    lane->span = -1;
    lane->block = idle_block;
    lane->blocks = SIZE_MAX;
}

#endif /* HAVE_AVX2_BUILD */

void md5lanes_reset(Lanes *lanes, int width)
{
    lanes->width = width;
#if HAVE_AVX2_BUILD
    lanes->run_blocks = width == 16 ? md5lanes_run16 : md5lanes_run8;
    for (int l = 0; l < MAX_LANES; l++)
        lane_idle(&lanes->lane[l]);
#else
    lanes->run_blocks = NULL;
#endif
}

/* Hash the spans data[order[i]] (sizes[order[i]] bytes) from i = *next on, each into
   out + 16 * order[i], in the lanes' SIMD lanes: a lane whose message ends takes the next.
   With `drain`, until every message in the lanes is done; without, only while every lane has
   a message, so that a lane never idles for want of one: the lanes keep their partly hashed
   messages for the next call (an Engine's). *next moves on past the spans taken; returns the
   lanes still busy. Needs no GIL. */
int md5lanes_hash(Lanes *lanes, const uint8_t *const *data, const Py_ssize_t *sizes,
                  const Py_ssize_t *order, Py_ssize_t n, Py_ssize_t *next, uint8_t *out,
                  int drain)
{
    int width = lanes->width, active = 0;
#if HAVE_AVX2_BUILD
    const uint8_t *block[MAX_LANES];
    int busy[MAX_LANES];
    for (int l = 0; l < width; l++) {
        if (lanes->lane[l].span < 0 && *next < n) {
            Py_ssize_t s = order[(*next)++];
            lane_start(lanes, l, data[s], (size_t)sizes[s], s);
        }
        active += lanes->lane[l].span >= 0;
    }
    while (active && (drain || active == width)) {
        size_t run = SIZE_MAX; /* blocks every busy lane has before one of them changes */
        for (int l = 0; l < width; l++) {
            block[l] = lanes->lane[l].block;
            busy[l] = lanes->lane[l].span >= 0;
            if (busy[l] && lanes->lane[l].blocks < run)
                run = lanes->lane[l].blocks;
        }
        lanes->run_blocks(lanes->words, block, busy, run);
        for (int l = 0; l < width; l++) {
            Lane *lane = &lanes->lane[l];
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
                memcpy(out + 16 * lane->span + 4 * w, &lanes->words[w][l], 4);
            if (*next < n) {
                Py_ssize_t s = order[(*next)++];
                lane_start(lanes, l, data[s], (size_t)sizes[s], s);
            } else {
                lane_idle(lane);
                active--;
            }
        }
    }
#else
    (void)data; (void)sizes; (void)order; (void)n; (void)next; (void)out; (void)drain;
    (void)width;
#endif
    return active;
}

int md5lanes_width(void)
{
    return cpu_avx512 ? 16 : cpu_avx2 ? 8 : 0;
}



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
"Sixteen at a time where the CPU has AVX-512, eight with AVX2 (see LANES).\n"
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

/* md5_spans in `width` lanes: 16 (AVX-512) or 8 (AVX2). */
static PyObject *spans_in_lanes(PyObject *const *args, Py_ssize_t nargs, int width)
{
    int several = nargs == 4 && args[3] != Py_None;
    if (nargs != 3 && nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "md5_spans(buffer, starts, sizes, pieces=None)");
        return NULL;
    }
    if (!cpu_avx2 || (width == 16 && !cpu_avx512)) {
        PyErr_SetString(PyExc_RuntimeError, width == 16
                                                ? "16 lanes need AVX-512, which this CPU lacks"
                                                : "md5_spans needs AVX2, which this CPU lacks");
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
        Lanes lanes;
        Py_ssize_t next = 0;
        longest_first(order, order + n, sizes, n);
        md5lanes_reset(&lanes, width);
        md5lanes_hash(&lanes, data, sizes, order, n, &next, out, 1);
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

static PyObject *md5_spans(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    return spans_in_lanes(args, nargs, cpu_avx512 ? 16 : 8);
}

static PyObject *md5_spans8(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    return spans_in_lanes(args, nargs, 8);
}

static PyMethodDef methods[] = {
    {"md5_spans", (PyCFunction)(void (*)(void))md5_spans, METH_FASTCALL, md5_spans_doc},
    {"md5_spans8", (PyCFunction)(void (*)(void))md5_spans8, METH_FASTCALL,
     "md5_spans in AVX2's eight lanes even where the CPU has AVX-512 (to test and measure)."},
    {NULL, NULL, 0, NULL},
};

static int exec_module(PyObject *module)
{
#if HAVE_AVX2_BUILD
    __builtin_cpu_init();
    cpu_avx2 = __builtin_cpu_supports("avx2") ? 1 : 0;
    cpu_avx512 = cpu_avx2 && __builtin_cpu_supports("avx512f") ? 1 : 0;
#endif
    if (PyModule_AddObjectRef(module, "AVX2", cpu_avx2 ? Py_True : Py_False) < 0)
        return -1;
    if (PyModule_AddType(module, &md5lanes_EngineType) < 0)
        return -1;
    return PyModule_AddIntConstant(module, "LANES", md5lanes_width());
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
