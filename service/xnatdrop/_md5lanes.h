/* What the MD5 lanes' files share (xnatdrop._md5lanes): the step table, the lane counts and
   the kernels that _md5lanes_kernels.c defines and _md5lanes.c calls. */
#ifndef XNATDROP_MD5LANES_H
#define XNATDROP_MD5LANES_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define HAVE_AVX2_BUILD 1
#else
#define HAVE_AVX2_BUILD 0
#endif

#define MAX_LANES 16
#define IV_A 0x67452301u
#define IV_B 0xefcdab89u
#define IV_C 0x98badcfeu
#define IV_D 0x10325476u

/* RFC 1321, 3.4: the 64 steps, as (function, a, b, c, d, message word, shift, step); each
   instruction set's kernel (_md5lanes_kernels.c) expands them with its own STEP. */
#define MD5_STEPS(S)                                                                           \
    S(F, a, b, c, d, 0, 7, 0)    S(F, d, a, b, c, 1, 12, 1)   S(F, c, d, a, b, 2, 17, 2)       \
    S(F, b, c, d, a, 3, 22, 3)   S(F, a, b, c, d, 4, 7, 4)    S(F, d, a, b, c, 5, 12, 5)       \
    S(F, c, d, a, b, 6, 17, 6)   S(F, b, c, d, a, 7, 22, 7)   S(F, a, b, c, d, 8, 7, 8)        \
    S(F, d, a, b, c, 9, 12, 9)   S(F, c, d, a, b, 10, 17, 10) S(F, b, c, d, a, 11, 22, 11)     \
    S(F, a, b, c, d, 12, 7, 12)  S(F, d, a, b, c, 13, 12, 13) S(F, c, d, a, b, 14, 17, 14)     \
    S(F, b, c, d, a, 15, 22, 15)                                                               \
    S(G, a, b, c, d, 1, 5, 16)   S(G, d, a, b, c, 6, 9, 17)   S(G, c, d, a, b, 11, 14, 18)     \
    S(G, b, c, d, a, 0, 20, 19)  S(G, a, b, c, d, 5, 5, 20)   S(G, d, a, b, c, 10, 9, 21)      \
    S(G, c, d, a, b, 15, 14, 22) S(G, b, c, d, a, 4, 20, 23)  S(G, a, b, c, d, 9, 5, 24)       \
    S(G, d, a, b, c, 14, 9, 25)  S(G, c, d, a, b, 3, 14, 26)  S(G, b, c, d, a, 8, 20, 27)      \
    S(G, a, b, c, d, 13, 5, 28)  S(G, d, a, b, c, 2, 9, 29)   S(G, c, d, a, b, 7, 14, 30)      \
    S(G, b, c, d, a, 12, 20, 31)                                                               \
    S(H, a, b, c, d, 5, 4, 32)   S(H, d, a, b, c, 8, 11, 33)  S(H, c, d, a, b, 11, 16, 34)     \
    S(H, b, c, d, a, 14, 23, 35) S(H, a, b, c, d, 1, 4, 36)   S(H, d, a, b, c, 4, 11, 37)      \
    S(H, c, d, a, b, 7, 16, 38)  S(H, b, c, d, a, 10, 23, 39) S(H, a, b, c, d, 13, 4, 40)      \
    S(H, d, a, b, c, 0, 11, 41)  S(H, c, d, a, b, 3, 16, 42)  S(H, b, c, d, a, 6, 23, 43)      \
    S(H, a, b, c, d, 9, 4, 44)   S(H, d, a, b, c, 12, 11, 45) S(H, c, d, a, b, 15, 16, 46)     \
    S(H, b, c, d, a, 2, 23, 47)                                                                \
    S(I, a, b, c, d, 0, 6, 48)   S(I, d, a, b, c, 7, 10, 49)  S(I, c, d, a, b, 14, 15, 50)     \
    S(I, b, c, d, a, 5, 21, 51)  S(I, a, b, c, d, 12, 6, 52)  S(I, d, a, b, c, 3, 10, 53)      \
    S(I, c, d, a, b, 10, 15, 54) S(I, b, c, d, a, 1, 21, 55)  S(I, a, b, c, d, 8, 6, 56)       \
    S(I, d, a, b, c, 15, 10, 57) S(I, c, d, a, b, 6, 15, 58)  S(I, b, c, d, a, 13, 21, 59)     \
    S(I, a, b, c, d, 4, 6, 60)   S(I, d, a, b, c, 11, 10, 61) S(I, c, d, a, b, 2, 15, 62)      \
    S(I, b, c, d, a, 9, 21, 63)

/* `run` 64-byte blocks of each lane (8 or 16) from block[l], into the lanes' state words;
   the block pointer of each busy lane moves on by the blocks hashed. */
typedef void (*RunFn)(uint32_t words[4][MAX_LANES], const uint8_t *block[], const int busy[],
                      size_t run);

/* One lane's message: the whole blocks of each of its segments (buffers) straight from the
   caller's, then its last one or two blocks (the rest of the data, 0x80, zeros, the length in
   bits) from `tail`. Every segment but the last is whole blocks. */
typedef struct {
    const uint8_t *block; /* the lane's next block */
    size_t blocks;        /* blocks left in this part (a segment's, then the tail's) */
    size_t tail_blocks;   /* 1 or 2 */
    Py_ssize_t span;      /* which message (the caller's index), -1: the lane is idle */
    Py_ssize_t seg, seg_end; /* its segments not yet begun (the caller's indexes) */
    int in_tail;
    uint8_t tail[128];
} Lane;

/* The lanes and their state words, kept by the caller (an Engine) between calls of
   md5lanes_hash, with the messages partly hashed in them; md5lanes_reset empties them. */
typedef struct {
    Lane lane[MAX_LANES];
    uint32_t words[4][MAX_LANES];
    int width; /* 16 or 8 */
    RunFn run_blocks;
} Lanes;

void md5lanes_reset(Lanes *lanes, int width);
int md5lanes_hash(Lanes *lanes, const uint8_t *const *data, const Py_ssize_t *sizes,
                  const Py_ssize_t *first, Py_ssize_t n, Py_ssize_t *next, uint8_t *out,
                  int drain);
int md5lanes_width(void); /* 16 with AVX-512, 8 with AVX2, 0 without */
extern PyTypeObject md5lanes_EngineType;

#if HAVE_AVX2_BUILD
void md5lanes_run8(uint32_t words[4][MAX_LANES], const uint8_t *block[], const int busy[],
                   size_t run);
void md5lanes_run16(uint32_t words[4][MAX_LANES], const uint8_t *block[], const int busy[],
                    size_t run);
#endif

#endif
