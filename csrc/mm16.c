/* Server layout: Q4_1 and Q8_0 weights copied into groups of 16 rows, so one AVX-512 VNNI instruction
 * computes 4-element integer dot products for 16 rows at once and each block's products reduce to one exact
 * int32 per row, without horizontal sums. A block then costs one multiply-add per row and column (ggml's
 * reference arithmetic: sum over blocks of (dw * dy) * isum [+ mw * sy]) instead of ggml_vec_dot's 8 partial
 * lanes, which makes decoding several sequences at once about twice as cheap per sequence.
 *
 * Every (row, column) goes through the same operations whatever the column count or the rows around it, so
 * a sequence gets the same bits alone or batched, in a prompt or in a decode step (the server's guarantee).
 * The numbers differ from ggml_vec_dot's in rounding only (the block sums are exact integers either way).
 *
 * Group layout (per 16 rows g and block b, groups in (g, b) order):
 *   Q4_1: d[16] m[16] (halves), then 4 x 16 dwords: dword j of row i's 16 nibble bytes at [j][i]   (320 bytes)
 *   Q8_0: d[16] (halves), then 8 x 16 dwords: bytes 4j..4j+3 of row i's qs, each + 128, at [j][i] (544 bytes) */
#include "common.h"
#include "mm.h"
#include "simd.h"
#include <stdlib.h>
#include <string.h>

#if LM_AVX512 && defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define LM_MM16 1
#endif

enum { Q41_GROUP = 320, Q80_GROUP = 544 };

int lm_can_pack16(int type) {
#if LM_MM16
    return type == T_Q4_1 || type == T_Q8_0;
#else
    (void)type;
    return 0;
#endif
}

int64_t lm_pack16_bytes(int type, int64_t rows, int64_t cols) {
    const int64_t groups = rows / 16 * (cols / QK);
    return type == T_Q4_1 ? groups * Q41_GROUP : type == T_Q8_0 ? groups * Q80_GROUP : -1;
}

int lm_pack16(int type, const void *src, void *dst, int64_t rows, int64_t cols) {
    if (!lm_can_pack16(type) || rows % 16 || cols % QK) return -1;
    const int64_t nb = cols / QK;
    uint8_t *out = dst;
    for (int64_t g = 0; g < rows / 16; g++) {
        for (int64_t b = 0; b < nb; b++) {
            if (type == T_Q4_1) {
                for (int i = 0; i < 16; i++) {
                    const block_q4_1 *x = (const block_q4_1 *)src + (16 * g + i) * nb + b;
                    memcpy(out + 2 * i, &x->d, 2);
                    memcpy(out + 32 + 2 * i, &x->m, 2);
                    for (int j = 0; j < 4; j++) memcpy(out + 64 + 64 * j + 4 * i, x->qs + 4 * j, 4);
                }
                out += Q41_GROUP;
            } else {
                for (int i = 0; i < 16; i++) {
                    const block_q8_0 *x = (const block_q8_0 *)src + (16 * g + i) * nb + b;
                    memcpy(out + 2 * i, &x->d, 2);
                    for (int j = 0; j < 8; j++)
                        for (int e = 0; e < 4; e++) out[32 + 64 * j + 4 * i + e] = (uint8_t)(x->qs[4 * j + e] + 128);
                }
                out += Q80_GROUP;
            }
        }
    }
    return 0;
}

#if LM_MM16
#define NC 8 /* columns per pass over a group of rows (accumulators kept in registers) */
#ifndef PREFETCH
#define PREFETCH 16 /* groups ahead (~5-9 KiB): measured 1.8x faster at 8 columns than the hardware prefetcher alone */
#endif

static inline __m512i bcast32(const void *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}

/* per column and block, the activation scale and (q8_1) its d * sum, as floats: read by every row group */
static float *act_scales(const lm_mm_args *a, int64_t nb, int with_sum) {
    float *f = malloc((size_t)(a->n * nb * (with_sum ? 2 : 1)) * sizeof(float));
    if (!f) abort();
    for (int64_t c = 0; c < a->n; c++)
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *act = a->act + c * a->act_row_bytes;
            if (with_sum) {
                const block_q8_1 *y = (const block_q8_1 *)act + b;
                f[2 * (c * nb + b)] = lm_h2f(y->d), f[2 * (c * nb + b) + 1] = lm_h2f(y->s);
            } else {
                f[c * nb + b] = lm_h2f(((const block_q8_0 *)act + b)->d);
            }
        }
    return f;
}

static void mm16_q4_1(const lm_mm_args *a, int64_t r0, int64_t r1) {
    const int64_t nb = a->w->cols / QK;
    const __m512i low4 = _mm512_set1_epi8(0x0F);
    float *ds = act_scales(a, nb, 1);
    for (int64_t g = r0 / 16; g < r1 / 16; g++) {
        const uint8_t *grp = (const uint8_t *)a->w->data + g * nb * Q41_GROUP;
        for (int64_t c0 = 0; c0 < a->n; c0 += NC) {
            const int nc = (int)(a->n - c0 < NC ? a->n - c0 : NC);
            __m512 acc[NC];
            for (int c = 0; c < NC; c++) acc[c] = _mm512_setzero_ps();
            for (int64_t b = 0; b < nb; b++) {
                const uint8_t *p = grp + b * Q41_GROUP;
                for (int l = 0; l < Q41_GROUP; l += 64) _mm_prefetch((const char *)p + PREFETCH * Q41_GROUP + l, _MM_HINT_T0);
                const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
                const __m512 mw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p + 32)));
                __m512i lo[4], hi[4];
                for (int j = 0; j < 4; j++) {
                    const __m512i q = _mm512_loadu_si512(p + 64 + 64 * j);
                    lo[j] = _mm512_and_si512(q, low4);
                    hi[j] = _mm512_and_si512(_mm512_srli_epi16(q, 4), low4);
                }
                for (int c = 0; c < nc; c++) {
                    const block_q8_1 *y = (const block_q8_1 *)(a->act + (c0 + c) * a->act_row_bytes) + b;
                    const float *sc = ds + 2 * ((c0 + c) * nb + b);
                    /* two integer chains (exact: the sum is the same), for more instruction overlap */
                    __m512i s0 = _mm512_setzero_si512(), s1 = _mm512_setzero_si512();
                    for (int j = 0; j < 4; j++) s0 = _mm512_dpbusd_epi32(s0, lo[j], bcast32(y->qs + 4 * j));
                    for (int j = 0; j < 4; j++) s1 = _mm512_dpbusd_epi32(s1, hi[j], bcast32(y->qs + 16 + 4 * j));
                    const __m512 dd = _mm512_mul_ps(dw, _mm512_set1_ps(sc[0]));
                    acc[c] = _mm512_fmadd_ps(dd, _mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1)), acc[c]);
                    acc[c] = _mm512_fmadd_ps(mw, _mm512_set1_ps(sc[1]), acc[c]);
                }
            }
            for (int c = 0; c < nc; c++) _mm512_storeu_ps(a->y + (c0 + c) * a->y_stride + 16 * g, acc[c]);
        }
    }
    free(ds);
}

static void mm16_q8_0(const lm_mm_args *a, int64_t r0, int64_t r1) {
    const int64_t nb = a->w->cols / QK;
    /* sum of each activation block's quants: the weights carry +128, taken out again as 128 * sum(y) */
    int32_t *ysum = malloc((size_t)(a->n * nb) * sizeof(int32_t));
    float *dy = act_scales(a, nb, 0);
    if (!ysum) abort();
    for (int64_t c = 0; c < a->n; c++)
        for (int64_t b = 0; b < nb; b++) {
            const block_q8_0 *y = (const block_q8_0 *)(a->act + c * a->act_row_bytes) + b;
            int32_t s = 0;
            for (int e = 0; e < QK; e++) s += y->qs[e];
            ysum[c * nb + b] = 128 * s;
        }
    for (int64_t g = r0 / 16; g < r1 / 16; g++) {
        const uint8_t *grp = (const uint8_t *)a->w->data + g * nb * Q80_GROUP;
        for (int64_t c0 = 0; c0 < a->n; c0 += NC) {
            const int nc = (int)(a->n - c0 < NC ? a->n - c0 : NC);
            __m512 acc[NC];
            for (int c = 0; c < NC; c++) acc[c] = _mm512_setzero_ps();
            for (int64_t b = 0; b < nb; b++) {
                const uint8_t *p = grp + b * Q80_GROUP;
                for (int l = 0; l < Q80_GROUP; l += 64) _mm_prefetch((const char *)p + PREFETCH * Q80_GROUP + l, _MM_HINT_T0);
                const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
                __m512i q[8];
                for (int j = 0; j < 8; j++) q[j] = _mm512_loadu_si512(p + 32 + 64 * j);
                for (int c = 0; c < nc; c++) {
                    const block_q8_0 *y = (const block_q8_0 *)(a->act + (c0 + c) * a->act_row_bytes) + b;
                    __m512i s0 = _mm512_set1_epi32(-ysum[(c0 + c) * nb + b]), s1 = _mm512_setzero_si512();
                    for (int j = 0; j < 4; j++) s0 = _mm512_dpbusd_epi32(s0, q[j], bcast32(y->qs + 4 * j));
                    for (int j = 4; j < 8; j++) s1 = _mm512_dpbusd_epi32(s1, q[j], bcast32(y->qs + 4 * j));
                    const __m512 dd = _mm512_mul_ps(dw, _mm512_set1_ps(dy[(c0 + c) * nb + b]));
                    acc[c] = _mm512_fmadd_ps(dd, _mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1)), acc[c]);
                }
            }
            for (int c = 0; c < nc; c++) _mm512_storeu_ps(a->y + (c0 + c) * a->y_stride + 16 * g, acc[c]);
        }
    }
    free(ysum);
    free(dy);
}

void lm_mm16(const lm_mm_args *a, int64_t r0, int64_t r1) {
    if (a->w->type == T_Q4_1) mm16_q4_1(a, r0, r1);
    else mm16_q8_0(a, r0, r1);
}
#else
void lm_mm16(const lm_mm_args *a, int64_t r0, int64_t r1) { (void)a, (void)r0, (void)r1; abort(); }
#endif
