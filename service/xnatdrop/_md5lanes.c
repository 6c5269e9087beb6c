/* xnatdrop._md5lanes: the MD5 digests of many files, sixteen or eight at a time (`Engine`).

   Why: MD5 was 43 % of the upload's CPU (issue 13). OpenSSL's MD5, behind hashlib, hashes one
   message at a time, and each of its 64 steps waits for the one before: one core runs it at
   about 0.57 GB/s, mostly waiting. The files of an upload are independent messages: here each
   32-bit lane of a register hashes one of them (sixteen in AVX-512's, eight in AVX2's), so one
   instruction stream advances sixteen or eight digests (the multi-buffer technique of Intel
   ISA-L's md5_mb and minio/md5-simd). A lane whose message ends takes the next one; its last
   one or two blocks (the padding and the length) are built in the lane's own 128 bytes.

   This file hands the messages to the lanes (`md5lanes_hash`) and is the module;
   _md5lanes_engine.c is the `Engine` type, which keeps the lanes between calls, and
   _md5lanes_kernels.c holds RFC 1321's steps for each instruction set. Only the CPython API;
   the instruction sets are asked of the compiler per function (target attribute), and of the
   CPU at import: `AVX2` is False where the CPU lacks it, and an Engine cannot be made
   (xnatdrop.md5lanes uses hashlib instead); `LANES` says how many messages the lanes hash at
   once (16, 8, or 0). */

#include "_md5lanes.h"

static int cpu_avx2 = 0, cpu_avx512 = 0;

#if HAVE_AVX2_BUILD

static const uint8_t idle_block[64]; /* what an idle lane hashes, for nothing */

/* The lane's next part: the whole blocks of its message's next segment that has any, else
   its tail. */
static void lane_next(Lane *lane, const uint8_t *const *data, const Py_ssize_t *sizes)
{
    while (lane->seg < lane->seg_end) {
        Py_ssize_t g = lane->seg++;
        if ((size_t)sizes[g] >= 64) {
            lane->block = data[g];
            lane->blocks = (size_t)sizes[g] / 64;
            return;
        }
    }
    lane->in_tail = 1;
    lane->block = lane->tail;
    lane->blocks = lane->tail_blocks;
}

/* Lane l takes message `span`: segments [begin, end) of data and sizes. */
static void lane_start(Lanes *lanes, int l, const uint8_t *const *data, const Py_ssize_t *sizes,
                       Py_ssize_t begin, Py_ssize_t end, Py_ssize_t span)
{
    Lane *lane = &lanes->lane[l];
    size_t size = 0, last = (size_t)sizes[end - 1], rest = last % 64;
    for (Py_ssize_t g = begin; g < end; g++)
        size += (size_t)sizes[g];
    uint64_t bits = (uint64_t)size * 8;
    lanes->words[0][l] = IV_A; lanes->words[1][l] = IV_B;
    lanes->words[2][l] = IV_C; lanes->words[3][l] = IV_D;
    lane->span = span;
    lane->tail_blocks = rest < 56 ? 1 : 2;
    memset(lane->tail, 0, sizeof lane->tail);
    memcpy(lane->tail, data[end - 1] + (last - rest), rest);
    lane->tail[rest] = 0x80;
    for (int i = 0; i < 8; i++) /* little-endian, RFC 1321 3.2 */
        lane->tail[lane->tail_blocks * 64 - 8 + i] = (uint8_t)(bits >> (8 * i));
    lane->seg = begin;
    lane->seg_end = end;
    lane->in_tail = 0;
    lane_next(lane, data, sizes);
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

/* Hash the messages from i = *next on, each into out + 16 * i, in the lanes' SIMD lanes: a
   lane whose message ends takes the next. Message i is the segments first[i] to first[i + 1]
   of data and sizes (every one but its last whole 64-byte blocks): a file read in pieces.
   With `drain`, until every message in the lanes is done; without, only while every lane has
   a message, so that a lane never idles for want of one: the lanes keep their partly hashed
   messages for the next call. *next moves on past the messages taken; returns the lanes
   still busy. Needs no GIL. */
int md5lanes_hash(Lanes *lanes, const uint8_t *const *data, const Py_ssize_t *sizes,
                  const Py_ssize_t *first, Py_ssize_t n, Py_ssize_t *next, uint8_t *out,
                  int drain)
{
    int width = lanes->width, active = 0;
#if HAVE_AVX2_BUILD
    const uint8_t *block[MAX_LANES];
    int busy[MAX_LANES];
    for (int l = 0; l < width; l++) {
        if (lanes->lane[l].span < 0 && *next < n) {
            Py_ssize_t s = (*next)++;
            lane_start(lanes, l, data, sizes, first[s], first[s + 1], s);
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
                lane_next(lane, data, sizes);
                continue;
            }
            for (int w = 0; w < 4; w++) /* the digest: A, B, C, D, each little-endian */
                memcpy(out + 16 * lane->span + 4 * w, &lanes->words[w][l], 4);
            if (*next < n) {
                Py_ssize_t s = (*next)++;
                lane_start(lanes, l, data, sizes, first[s], first[s + 1], s);
            } else {
                lane_idle(lane);
                active--;
            }
        }
    }
#else
    (void)data; (void)sizes; (void)first; (void)n; (void)next; (void)out; (void)drain;
    (void)width;
#endif
    return active;
}

int md5lanes_width(void)
{
    return cpu_avx512 ? 16 : cpu_avx2 ? 8 : 0;
}

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
    .m_doc = "MD5 digests of many files, sixteen or eight at a time in SIMD lanes "
             "(see xnatdrop.md5lanes).",
    .m_size = 0,
    .m_slots = slots,
};

PyMODINIT_FUNC PyInit__md5lanes(void)
{
    return PyModuleDef_Init(&module_def);
}
