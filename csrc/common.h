/* Internal helpers shared by the kernels: ggml's block layouts, half-float conversion, the
 * horizontal-sum orders ggml's x86 kernels use. No Python here; see api.h for the exported ABI. */
#ifndef LLAMETTE_COMMON_H
#define LLAMETTE_COMMON_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__F16C__) || defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#define QK 32    /* elements per legacy block */
#define QK_K 256 /* elements per K-quant super-block */

typedef uint16_t lm_half;

/* ggml block layouts (ggml-common.h); element order is documented in src/llamette/quant/. */
typedef struct { lm_half d; uint8_t qs[QK / 2]; } block_q4_0;
typedef struct { lm_half d, m; uint8_t qs[QK / 2]; } block_q4_1;
typedef struct { lm_half d; uint8_t qh[4]; uint8_t qs[QK / 2]; } block_q5_0;
typedef struct { lm_half d, m; uint8_t qh[4]; uint8_t qs[QK / 2]; } block_q5_1;
typedef struct { lm_half d; int8_t qs[QK]; } block_q8_0;
typedef struct { lm_half d, s; int8_t qs[QK]; } block_q8_1; /* s = d * sum(qs), rounded to half */
typedef struct { uint8_t scales[QK_K / 16]; uint8_t qs[QK_K / 4]; lm_half d, dmin; } block_q2_K;
typedef struct { uint8_t hmask[QK_K / 8]; uint8_t qs[QK_K / 4]; uint8_t scales[12]; lm_half d; } block_q3_K;
typedef struct { lm_half d, dmin; uint8_t scales[12]; uint8_t qs[QK_K / 2]; } block_q4_K;
typedef struct { lm_half d, dmin; uint8_t scales[12]; uint8_t qh[QK_K / 8]; uint8_t qs[QK_K / 2]; } block_q5_K;
typedef struct { uint8_t ql[QK_K / 2]; uint8_t qh[QK_K / 4]; int8_t scales[QK_K / 16]; lm_half d; } block_q6_K;
typedef struct { float d; int8_t qs[QK_K]; int16_t bsums[QK_K / 16]; } block_q8_K;
typedef struct { lm_half d; uint8_t qs[QK / 2]; } block_iq4_nl;
typedef struct { lm_half d; uint16_t scales_h; uint8_t scales_l[QK_K / 64]; uint8_t qs[QK_K / 2]; } block_iq4_xs;

_Static_assert(sizeof(block_q4_0) == 18, "block_q4_0");
_Static_assert(sizeof(block_q4_1) == 20, "block_q4_1");
_Static_assert(sizeof(block_q5_0) == 22, "block_q5_0");
_Static_assert(sizeof(block_q5_1) == 24, "block_q5_1");
_Static_assert(sizeof(block_q8_0) == 34, "block_q8_0");
_Static_assert(sizeof(block_q8_1) == 36, "block_q8_1");
_Static_assert(sizeof(block_q2_K) == 84, "block_q2_K");
_Static_assert(sizeof(block_q3_K) == 110, "block_q3_K");
_Static_assert(sizeof(block_q4_K) == 144, "block_q4_K");
_Static_assert(sizeof(block_q5_K) == 176, "block_q5_K");
_Static_assert(sizeof(block_q6_K) == 210, "block_q6_K");
_Static_assert(sizeof(block_q8_K) == 292, "block_q8_K");
_Static_assert(sizeof(block_iq4_nl) == 18, "block_iq4_nl");
_Static_assert(sizeof(block_iq4_xs) == 136, "block_iq4_xs");

/* ggml's tensor type ids (ggml.h) */
enum {
    T_F32 = 0, T_F16 = 1, T_Q4_0 = 2, T_Q4_1 = 3, T_Q5_0 = 6, T_Q5_1 = 7, T_Q8_0 = 8, T_Q8_1 = 9,
    T_Q2_K = 10, T_Q3_K = 11, T_Q4_K = 12, T_Q5_K = 13, T_Q6_K = 14, T_Q8_K = 15, T_IQ4_NL = 20,
    T_IQ4_XS = 23, T_BF16 = 30,
};

extern const int8_t lm_iq4nl_values[16];

/* -- half floats: IEEE binary16 and bfloat16, round to nearest even (as F16C / ggml) -------------- */

static inline float lm_h2f(lm_half h) {
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000 | (man << 13);
    } else if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) { man <<= 1; exp--; }
            bits = sign | (exp << 23) | ((man & 0x3ff) << 13);
        }
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
#endif
}

static inline lm_half lm_f2h(float f) {
#if defined(__F16C__)
    return _cvtss_sh(f, 0);
#else
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000;
    const uint32_t ax = x & 0x7fffffff;
    if (ax > 0x7f800000) return (lm_half)(sign | 0x7e00 | ((ax >> 13) & 0x3ff)); /* NaN stays NaN */
    if (ax >= 0x477ff000) return (lm_half)(sign | 0x7c00);                        /* overflow to inf */
    if (ax < 0x38800000) {                                                         /* subnormal or zero */
        if (ax < 0x33000000) return (lm_half)sign;
        const uint32_t e = ax >> 23, m = (ax & 0x7fffff) | 0x800000;
        const uint32_t shift = 126 - e; /* 14..24 */
        uint32_t r = m >> shift;
        const uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1))) r++;
        return (lm_half)(sign | r);
    }
    uint32_t r = ((ax - 0x38000000) >> 13);
    const uint32_t rem = ax & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (r & 1))) r++;
    return (lm_half)(sign | r);
#endif
}

static inline float lm_bf2f(uint16_t h) {
    const uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline uint16_t lm_f2bf(float f) { /* ggml_compute_fp32_to_bf16 */
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffff) > 0x7f800000) return (uint16_t)((x >> 16) | 64); /* quiet NaN */
    return (uint16_t)((x + (0x7fff + ((x >> 16) & 1))) >> 16);
}

/* -- horizontal sums in the exact order of ggml's x86 helpers ------------------------------------ */

/* hsum_float_8 (ggml-cpu x86): (a0+a4 + a2+a6) + (a1+a5 + a3+a7) */
static inline float lm_hsum8(const float a[8]) {
    const float r0 = a[4] + a[0], r1 = a[5] + a[1], r2 = a[6] + a[2], r3 = a[7] + a[3];
    return (r0 + r2) + (r1 + r3);
}

/* GCC's _mm512_reduce_add_ps: halves of 8, then of 4, then (t0+t2) + (t1+t3) */
static inline float lm_hsum16(const float a[16]) {
    float t[8];
    for (int i = 0; i < 8; i++) t[i] = a[i + 8] + a[i];
    const float u0 = t[4] + t[0], u1 = t[5] + t[1], u2 = t[6] + t[2], u3 = t[7] + t[3];
    return (u0 + u2) + (u1 + u3);
}

/* ggml get_scale_min_k4: 6-bit scale and min of sub-block j of a Q4_K / Q5_K block */
static inline void scale_min_k4(int j, const uint8_t *q, uint8_t *d, uint8_t *m) {
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

static inline int lm_min(int a, int b) { return a < b ? a : b; }

#endif
