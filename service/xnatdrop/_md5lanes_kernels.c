/* The MD5 steps of xnatdrop._md5lanes in SIMD lanes: AVX2's eight and AVX-512's sixteen.

   Each lane of a register hashes its own message (see _md5lanes.c); a kernel runs `run` blocks
   of every lane. The instruction sets are asked of the compiler per function (target
   attribute); _md5lanes.c calls a kernel only where the CPU has its instructions. */
#include "_md5lanes.h"

#if HAVE_AVX2_BUILD
#include <immintrin.h>
#define AVX2_FN __attribute__((target("avx2")))
#define AVX512_FN __attribute__((target("avx512f")))

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

/* -- AVX2: eight lanes ------------------------------------------------------------------- */

/* The four auxiliary functions, as AVX2 evaluates them cheaply. */
#define F8(b, c, d) _mm256_xor_si256(d, _mm256_and_si256(b, _mm256_xor_si256(c, d)))
#define G8(b, c, d) _mm256_xor_si256(c, _mm256_and_si256(d, _mm256_xor_si256(b, c)))
#define H8(b, c, d) _mm256_xor_si256(_mm256_xor_si256(b, c), d)
#define I8(b, c, d) _mm256_xor_si256(c, _mm256_or_si256(b, _mm256_xor_si256(d, ones)))
#define ROTL8(x, s) _mm256_or_si256(_mm256_slli_epi32(x, s), _mm256_srli_epi32(x, 32 - (s)))
/* a = b + ((a + FN(b,c,d) + X[k] + T[i]) <<< s) */
#define STEP8(FN, a, b, c, d, k, s, i)                                                         \
    a = _mm256_add_epi32(                                                                      \
        b, ROTL8(_mm256_add_epi32(_mm256_add_epi32(a, FN##8(b, c, d)),                         \
                                  _mm256_add_epi32(X[k], _mm256_set1_epi32((int)T[i]))),       \
                 s));

/* Words w..w+7 of each lane's block, transposed: out[j] holds word w+j of lanes 0..7. */
static inline AVX2_FN void transpose8(const uint8_t *const block[], int w, __m256i *out)
{
    __m256i r[8], t[8], u[8];
    for (int l = 0; l < 8; l++)
        r[l] = _mm256_loadu_si256((const __m256i *)(block[l] + 4 * w));
    for (int l = 0; l < 8; l += 2) {
        t[l] = _mm256_unpacklo_epi32(r[l], r[l + 1]);     /* l[0] l+1[0] l[1] l+1[1] | [4] [5] */
        t[l + 1] = _mm256_unpackhi_epi32(r[l], r[l + 1]); /* [2] [3] | [6] [7] */
    }
    for (int h = 0; h < 8; h += 4) { /* lanes h..h+3 */
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

/* `run` 64-byte blocks of each of the eight lanes; a busy lane's block pointer moves on. */
AVX2_FN void md5lanes_run8(uint32_t words[4][MAX_LANES], const uint8_t *block[], const int busy[],
                         size_t run)
{
    const __m256i ones = _mm256_set1_epi32(-1);
    __m256i state[4];
    for (int w = 0; w < 4; w++)
        state[w] = _mm256_loadu_si256((const __m256i *)words[w]);
    for (size_t k = 0; k < run; k++) {
        __m256i X[16];
        transpose8(block, 0, X);
        transpose8(block, 8, X + 8);
        __m256i a = state[0], b = state[1], c = state[2], d = state[3];
        MD5_STEPS(STEP8)
        state[0] = _mm256_add_epi32(state[0], a);
        state[1] = _mm256_add_epi32(state[1], b);
        state[2] = _mm256_add_epi32(state[2], c);
        state[3] = _mm256_add_epi32(state[3], d);
        for (int l = 0; l < 8; l++)
            block[l] += busy[l] ? 64 : 0;
    }
    for (int w = 0; w < 4; w++)
        _mm256_storeu_si256((__m256i *)words[w], state[w]);
}

/* -- AVX-512: sixteen lanes -------------------------------------------------------------- */

/* The auxiliary functions as one ternary-logic instruction each (the immediate is the truth
   table of (b, c, d)), and a rotate instruction: a step's chain is four instructions, not six,
   and each advances sixteen digests. */
#define F16(b, c, d) _mm512_ternarylogic_epi32(b, c, d, 0xCA) /* b ? c : d */
#define G16(b, c, d) _mm512_ternarylogic_epi32(b, c, d, 0xE4) /* d ? b : c */
#define H16(b, c, d) _mm512_ternarylogic_epi32(b, c, d, 0x96) /* b ^ c ^ d */
#define I16(b, c, d) _mm512_ternarylogic_epi32(b, c, d, 0x39) /* c ^ (b | ~d) */
#define STEP16(FN, a, b, c, d, k, s, i)                                                        \
    a = _mm512_add_epi32(                                                                      \
        b, _mm512_rol_epi32(_mm512_add_epi32(_mm512_add_epi32(a, FN##16(b, c, d)),             \
                                             _mm512_add_epi32(X[k], _mm512_set1_epi32((int)T[i]))), \
                            s));

/* The 16 words of each lane's block, transposed: out[w] holds word w of lanes 0..15. Within
   each 128-bit chunk the unpacks transpose 4 x 4 (u[4g + k], chunk j: word 4j + k of lanes
   4g..4g+3); two rounds of 128-bit shuffles then gather chunk j of the four groups. */
static inline AVX512_FN void transpose16(const uint8_t *const block[], __m512i *out)
{
    __m512i r[16], t[16], u[16];
    for (int l = 0; l < 16; l++)
        r[l] = _mm512_loadu_si512((const void *)block[l]);
    for (int l = 0; l < 16; l += 2) {
        t[l] = _mm512_unpacklo_epi32(r[l], r[l + 1]);
        t[l + 1] = _mm512_unpackhi_epi32(r[l], r[l + 1]);
    }
    for (int h = 0; h < 16; h += 4) {
        u[h] = _mm512_unpacklo_epi64(t[h], t[h + 2]);
        u[h + 1] = _mm512_unpackhi_epi64(t[h], t[h + 2]);
        u[h + 2] = _mm512_unpacklo_epi64(t[h + 1], t[h + 3]);
        u[h + 3] = _mm512_unpackhi_epi64(t[h + 1], t[h + 3]);
    }
    for (int k = 0; k < 4; k++) {
        /* chunks 0 and 2 (0x88) or 1 and 3 (0xDD) of groups 0, 1 and of groups 2, 3 */
        __m512i p = _mm512_shuffle_i32x4(u[k], u[4 + k], 0x88);
        __m512i q = _mm512_shuffle_i32x4(u[k], u[4 + k], 0xDD);
        __m512i r2 = _mm512_shuffle_i32x4(u[8 + k], u[12 + k], 0x88);
        __m512i s2 = _mm512_shuffle_i32x4(u[8 + k], u[12 + k], 0xDD);
        out[k] = _mm512_shuffle_i32x4(p, r2, 0x88);      /* chunk 0 of each group */
        out[4 + k] = _mm512_shuffle_i32x4(q, s2, 0x88);  /* chunk 1 */
        out[8 + k] = _mm512_shuffle_i32x4(p, r2, 0xDD);  /* chunk 2 */
        out[12 + k] = _mm512_shuffle_i32x4(q, s2, 0xDD); /* chunk 3 */
    }
}

/* md5lanes_run8 for sixteen lanes. */
AVX512_FN void md5lanes_run16(uint32_t words[4][MAX_LANES], const uint8_t *block[], const int busy[],
                            size_t run)
{
    __m512i state[4];
    for (int w = 0; w < 4; w++)
        state[w] = _mm512_loadu_si512((const void *)words[w]);
    for (size_t k = 0; k < run; k++) {
        __m512i X[16];
        transpose16(block, X);
        __m512i a = state[0], b = state[1], c = state[2], d = state[3];
        MD5_STEPS(STEP16)
        state[0] = _mm512_add_epi32(state[0], a);
        state[1] = _mm512_add_epi32(state[1], b);
        state[2] = _mm512_add_epi32(state[2], c);
        state[3] = _mm512_add_epi32(state[3], d);
        for (int l = 0; l < 16; l++)
            block[l] += busy[l] ? 64 : 0;
    }
    for (int w = 0; w < 4; w++)
        _mm512_storeu_si512((void *)words[w], state[w]);
}

#endif /* HAVE_AVX2_BUILD */
