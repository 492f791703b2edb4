/* Row dequantization for every supported type (embedding lookup, float paths) and activation
 * quantization to q8_0 / q8_1 / q8_K, both with exactly ggml's arithmetic (ggml-quants.c and the x86
 * quantize_row_q8_* in ggml-cpu), so results match llama.cpp bit for bit. */
#include "api.h"
#include "common.h"
#include "simd.h"

const int8_t lm_iq4nl_values[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

/* -- dequantization (unfused float ops: ggml-base is built without FMA contraction) ---------------- */

static void deq_q4_0(const block_q4_0 *x, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += QK) {
        const float d = lm_h2f(x[i].d);
        for (int j = 0; j < QK / 2; j++) {
            y[j] = (float)((x[i].qs[j] & 0x0F) - 8) * d;
            y[j + QK / 2] = (float)((x[i].qs[j] >> 4) - 8) * d;
        }
    }
}

static void deq_q4_1(const block_q4_1 *x, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += QK) {
        const float d = lm_h2f(x[i].d), m = lm_h2f(x[i].m);
        for (int j = 0; j < QK / 2; j++) {
            y[j] = (float)(x[i].qs[j] & 0x0F) * d + m;
            y[j + QK / 2] = (float)(x[i].qs[j] >> 4) * d + m;
        }
    }
}

static void deq_q5_0(const block_q5_0 *x, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += QK) {
        const float d = lm_h2f(x[i].d);
        uint32_t qh;
        memcpy(&qh, x[i].qh, 4);
        for (int j = 0; j < QK / 2; j++) {
            const int x0 = ((x[i].qs[j] & 0x0F) | (((qh >> j) & 1) << 4)) - 16;
            const int x1 = ((x[i].qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - 16;
            y[j] = (float)x0 * d;
            y[j + QK / 2] = (float)x1 * d;
        }
    }
}

static void deq_q5_1(const block_q5_1 *x, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += QK) {
        const float d = lm_h2f(x[i].d), m = lm_h2f(x[i].m);
        uint32_t qh;
        memcpy(&qh, x[i].qh, 4);
        for (int j = 0; j < QK / 2; j++) {
            const int x0 = (x[i].qs[j] & 0x0F) | (((qh >> j) & 1) << 4);
            const int x1 = (x[i].qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
            y[j] = (float)x0 * d + m;
            y[j + QK / 2] = (float)x1 * d + m;
        }
    }
}

static void deq_q8_0(const block_q8_0 *x, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += QK) {
        const float d = lm_h2f(x[i].d);
        for (int j = 0; j < QK; j++) y[j] = (float)x[i].qs[j] * d;
    }
}

static void deq_q2_K(const block_q2_K *x, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        const float d = lm_h2f(x[i].d), dmin = lm_h2f(x[i].dmin);
        const uint8_t *q = x[i].qs;
        int is = 0;
        for (int n = 0; n < QK_K; n += 128) {
            for (int shift = 0; shift < 8; shift += 2) {
                for (int half = 0; half < 2; half++) {
                    const uint8_t sc = x[i].scales[is++];
                    const float dl = d * (float)(sc & 0xF), ml = dmin * (float)(sc >> 4);
                    for (int l = 0; l < 16; l++) *y++ = dl * (float)((q[l + 16 * half] >> shift) & 3) - ml;
                }
            }
            q += 32;
        }
    }
}

/* 16 six-bit scales of Q3_K, each minus 32 */
static void q3_K_scales(const uint8_t *s, int8_t out[16]) {
    for (int j = 0; j < 16; j++) {
        const int lo = (j < 8 ? s[j] : s[j - 8] >> 4) & 0x0F;
        const int hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        out[j] = (int8_t)((lo | (hi << 4)) - 32);
    }
}

static void deq_q3_K(const block_q3_K *x, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        const float d = lm_h2f(x[i].d);
        int8_t sc[16];
        q3_K_scales(x[i].scales, sc);
        const uint8_t *q = x[i].qs;
        uint8_t m = 1;
        int is = 0;
        for (int n = 0; n < QK_K; n += 128) {
            for (int shift = 0; shift < 8; shift += 2) {
                for (int half = 0; half < 2; half++) {
                    const float dl = d * (float)sc[is++];
                    for (int l = 0; l < 16; l++) {
                        const int ql = (q[l + 16 * half] >> shift) & 3;
                        const int qv = ql - ((x[i].hmask[l + 16 * half] & m) ? 0 : 4);
                        *y++ = dl * (float)qv;
                    }
                }
                m <<= 1;
            }
            q += 32;
        }
    }
}

static void deq_q4_K(const block_q4_K *x, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        const float d = lm_h2f(x[i].d), dmin = lm_h2f(x[i].dmin);
        const uint8_t *q = x[i].qs;
        for (int j = 0; j < 8; j += 2, q += 32) {
            uint8_t sc, m;
            scale_min_k4(j, x[i].scales, &sc, &m);
            const float d1 = d * (float)sc, m1 = dmin * (float)m;
            scale_min_k4(j + 1, x[i].scales, &sc, &m);
            const float d2 = d * (float)sc, m2 = dmin * (float)m;
            for (int l = 0; l < 32; l++) *y++ = d1 * (float)(q[l] & 0xF) - m1;
            for (int l = 0; l < 32; l++) *y++ = d2 * (float)(q[l] >> 4) - m2;
        }
    }
}

static void deq_q5_K(const block_q5_K *x, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        const float d = lm_h2f(x[i].d), dmin = lm_h2f(x[i].dmin);
        const uint8_t *ql = x[i].qs, *qh = x[i].qh;
        uint8_t u1 = 1, u2 = 2;
        for (int j = 0; j < 8; j += 2, ql += 32, u1 <<= 2, u2 <<= 2) {
            uint8_t sc, m;
            scale_min_k4(j, x[i].scales, &sc, &m);
            const float d1 = d * (float)sc, m1 = dmin * (float)m;
            scale_min_k4(j + 1, x[i].scales, &sc, &m);
            const float d2 = d * (float)sc, m2 = dmin * (float)m;
            for (int l = 0; l < 32; l++) *y++ = d1 * (float)((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
            for (int l = 0; l < 32; l++) *y++ = d2 * (float)((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
        }
    }
}

static void deq_q6_K(const block_q6_K *x, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        const float d = lm_h2f(x[i].d);
        const uint8_t *ql = x[i].ql, *qh = x[i].qh;
        const int8_t *sc = x[i].scales;
        for (int n = 0; n < QK_K; n += 128, y += 128, ql += 64, qh += 32, sc += 8) {
            for (int l = 0; l < 32; l++) {
                const int is = l / 16;
                const int q1 = (int8_t)((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int q2 = (int8_t)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int q3 = (int8_t)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int q4 = (int8_t)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l + 0] = d * (float)sc[is + 0] * (float)q1;
                y[l + 32] = d * (float)sc[is + 2] * (float)q2;
                y[l + 64] = d * (float)sc[is + 4] * (float)q3;
                y[l + 96] = d * (float)sc[is + 6] * (float)q4;
            }
        }
    }
}

static void deq_iq4_nl(const block_iq4_nl *x, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += QK) {
        const float d = lm_h2f(x[i].d);
        for (int j = 0; j < QK / 2; j++) {
            y[j] = d * (float)lm_iq4nl_values[x[i].qs[j] & 0xF];
            y[j + QK / 2] = d * (float)lm_iq4nl_values[x[i].qs[j] >> 4];
        }
    }
}

static void deq_iq4_xs(const block_iq4_xs *x, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        const float d = lm_h2f(x[i].d);
        const uint8_t *qs = x[i].qs;
        for (int ib = 0; ib < QK_K / 32; ib++, qs += 16, y += 32) {
            const int ls = ((x[i].scales_l[ib / 2] >> 4 * (ib % 2)) & 0xF) | (((x[i].scales_h >> 2 * ib) & 3) << 4);
            const float dl = d * (float)(ls - 32);
            for (int j = 0; j < 16; j++) {
                y[j] = dl * (float)lm_iq4nl_values[qs[j] & 0xF];
                y[j + 16] = dl * (float)lm_iq4nl_values[qs[j] >> 4];
            }
        }
    }
}

int lm_block_size(int type, int *block_bytes) {
    int elems, bytes;
    switch (type) {
        case T_F32: elems = 1, bytes = 4; break;
        case T_F16: case T_BF16: elems = 1, bytes = 2; break;
        case T_Q4_0: elems = QK, bytes = sizeof(block_q4_0); break;
        case T_Q4_1: elems = QK, bytes = sizeof(block_q4_1); break;
        case T_Q5_0: elems = QK, bytes = sizeof(block_q5_0); break;
        case T_Q5_1: elems = QK, bytes = sizeof(block_q5_1); break;
        case T_Q8_0: elems = QK, bytes = sizeof(block_q8_0); break;
        case T_Q8_1: elems = QK, bytes = sizeof(block_q8_1); break;
        case T_Q2_K: elems = QK_K, bytes = sizeof(block_q2_K); break;
        case T_Q3_K: elems = QK_K, bytes = sizeof(block_q3_K); break;
        case T_Q4_K: elems = QK_K, bytes = sizeof(block_q4_K); break;
        case T_Q5_K: elems = QK_K, bytes = sizeof(block_q5_K); break;
        case T_Q6_K: elems = QK_K, bytes = sizeof(block_q6_K); break;
        case T_Q8_K: elems = QK_K, bytes = sizeof(block_q8_K); break;
        case T_IQ4_NL: elems = QK, bytes = sizeof(block_iq4_nl); break;
        case T_IQ4_XS: elems = QK_K, bytes = sizeof(block_iq4_xs); break;
        default: return 0;
    }
    if (block_bytes) *block_bytes = bytes;
    return elems;
}

int lm_dequantize_row(int type, const void *src, float *dst, int64_t n) {
    const int qk = lm_block_size(type, NULL);
    if (qk == 0 || n % qk) return -1;
    const int64_t nb = n / qk;
    switch (type) {
        case T_F32: memcpy(dst, src, (size_t)n * 4); break;
        case T_F16: for (int64_t i = 0; i < n; i++) dst[i] = lm_h2f(((const lm_half *)src)[i]); break;
        case T_BF16: for (int64_t i = 0; i < n; i++) dst[i] = lm_bf2f(((const uint16_t *)src)[i]); break;
        case T_Q4_0: deq_q4_0(src, dst, nb); break;
        case T_Q4_1: deq_q4_1(src, dst, nb); break;
        case T_Q5_0: deq_q5_0(src, dst, nb); break;
        case T_Q5_1: deq_q5_1(src, dst, nb); break;
        case T_Q8_0: deq_q8_0(src, dst, nb); break;
        case T_Q2_K: deq_q2_K(src, dst, nb); break;
        case T_Q3_K: deq_q3_K(src, dst, nb); break;
        case T_Q4_K: deq_q4_K(src, dst, nb); break;
        case T_Q5_K: deq_q5_K(src, dst, nb); break;
        case T_Q6_K: deq_q6_K(src, dst, nb); break;
        case T_IQ4_NL: deq_iq4_nl(src, dst, nb); break;
        case T_IQ4_XS: deq_iq4_xs(src, dst, nb); break;
        default: return -1;
    }
    return 0;
}

/* -- activation quantization --------------------------------------------------------------------- */

/* ggml's x86 quantize_row_q8_0/q8_1: scale 127/amax, round half to even, d = amax/127 stored as half.
 * Returns sum(q) and the unrounded d, for q8_1's s = d * sum(q). */
static inline int q8_block(const float *x, int8_t *q, lm_half *d_out, float *d_f32) {
#if LM_AVX512
    /* the same numbers as the loop below: max is exact in any order, x * id is one rounding either way, and
     * the conversion rounds to nearest even as nearbyintf does in the default mode */
    {
        const __m512 x0 = _mm512_loadu_ps(x), x1 = _mm512_loadu_ps(x + 16);
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(x0), _mm512_abs_ps(x1)));
        const float d = amax / 127.f;
        const float id = amax != 0.0f ? 127.f / amax : 0.0f;
        *d_out = lm_f2h(d);
        *d_f32 = d;
        const __m512 vid = _mm512_set1_ps(id);
        const __m512i q0 = _mm512_cvt_roundps_epi32(_mm512_mul_ps(x0, vid), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        const __m512i q1 = _mm512_cvt_roundps_epi32(_mm512_mul_ps(x1, vid), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm_storeu_si128((__m128i *)q, _mm512_cvtsepi32_epi8(q0));
        _mm_storeu_si128((__m128i *)(q + 16), _mm512_cvtsepi32_epi8(q1));
        return _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
    }
#endif
    float amax = 0.0f;
    for (int j = 0; j < QK; j++) amax = fmaxf(amax, fabsf(x[j]));
    const float d = amax / 127.f;
    const float id = amax != 0.0f ? 127.f / amax : 0.0f;
    *d_out = lm_f2h(d);
    *d_f32 = d;
    int sum = 0;
    for (int j = 0; j < QK; j++) {
        q[j] = (int8_t)nearbyintf(x[j] * id);
        sum += q[j];
    }
    return sum;
}

void lm_quantize_q8_0(const float *x, void *vy, int64_t n) {
    block_q8_0 *y = vy;
    float d;
    for (int64_t i = 0; i < n / QK; i++) q8_block(x + i * QK, y[i].qs, &y[i].d, &d);
}

void lm_quantize_q8_1(const float *x, void *vy, int64_t n) {
    block_q8_1 *y = vy;
    for (int64_t i = 0; i < n / QK; i++) {
        float d;
        const int sum = q8_block(x + i * QK, y[i].qs, &y[i].d, &d);
        y[i].s = lm_f2h(d * (float)sum);
    }
}

/* quantize_row_q8_K_ref: the first element of largest magnitude maps to -127 */
void lm_quantize_q8_K(const float *x, void *vy, int64_t n) {
    block_q8_K *y = vy;
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        float max = 0, amax = 0;
        for (int j = 0; j < QK_K; j++) {
            const float ax = fabsf(x[j]);
            if (ax > amax) {
                amax = ax;
                max = x[j];
            }
        }
        if (amax == 0.0f) {
            memset(&y[i], 0, sizeof(y[i]));
            continue;
        }
        const float iscale = -127.f / max;
        for (int j = 0; j < QK_K; j++) {
            const int v = (int)nearbyintf(iscale * x[j]);
            y[i].qs[j] = (int8_t)(v < 127 ? v : 127);
        }
        for (int j = 0; j < QK_K / 16; j++) {
            int sum = 0;
            for (int k = 0; k < 16; k++) sum += y[i].qs[j * 16 + k];
            y[i].bsums[j] = (int16_t)sum;
        }
        y[i].d = 1 / iscale;
    }
}
