/* Matrix-product kernels: y[c][r] = W[r] . act[c] for a range of rows and every column, per weight type.
 *
 * Each SIMD kernel computes exactly what the scalar dot kernel of its type computes (dot.c), only faster:
 * several columns share one load and unpack of a weight block; the repacked-layout kernels handle 8 rows
 * at once like llama.cpp's 8x8 kernels. Types without a SIMD kernel use the scalar dot per element. */
#include "mm.h"

#include "dot.h"
#include "kquant.h"
#include "mm8.h"
#include "simd.h"

static void lm_mm_rest(const lm_mm_args *a, int64_t r0, int64_t r1);

static void mm_generic(const lm_mm_args *a, int64_t r0, int64_t r1) {
    const lm_weight *w = a->w;
    const lm_dot_fn dot = lm_dot_kernel_for(w->type, w->flags, w->rows, w->cols, a->n);
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *wr = (const uint8_t *)w->data + r * w->row_bytes;
        for (int64_t c = 0; c < a->n; c++) a->y[c * a->y_stride + r] = dot((int)w->cols, wr, a->act + c * a->act_row_bytes);
    }
}

#if LM_AVX2

#define COLS 4 /* columns sharing one unpacked weight block */

/* Q4_1 x q8_1, ggml_vec_dot_q4_1_q8_1: 8 lanes per output, fmaf per block, hsum8 + fused min term */
static void mm_q4_1(const lm_mm_args *a, int64_t r0, int64_t r1) {
    const lm_weight *w = a->w;
    const int64_t nb = w->cols / QK;
    for (int64_t r = r0; r < r1; r++) {
        const block_q4_1 *x = (const block_q4_1 *)((const uint8_t *)w->data + r * w->row_bytes);
        for (int64_t c0 = 0; c0 < a->n; c0 += COLS) {
            const int nc = (int)(a->n - c0 < COLS ? a->n - c0 : COLS);
            __m256 acc[COLS];
            float summs[COLS];
            const block_q8_1 *y[COLS];
            for (int c = 0; c < nc; c++) {
                acc[c] = _mm256_setzero_ps();
                summs[c] = 0.0f;
                y[c] = (const block_q8_1 *)(a->act + (c0 + c) * a->act_row_bytes);
            }
            for (int64_t b = 0; b < nb; b++) {
                const __m256i q = lm_nibbles32(x[b].qs);
                const float dw = lm_h2f(x[b].d), mw = lm_h2f(x[b].m);
                for (int c = 0; c < nc; c++) {
                    summs[c] = fmaf(mw, lm_h2f(y[c][b].s), summs[c]);
                    const __m256i lanes = lm_dot_us8(q, _mm256_loadu_si256((const __m256i *)y[c][b].qs));
                    acc[c] = _mm256_fmadd_ps(_mm256_set1_ps(dw * lm_h2f(y[c][b].d)), _mm256_cvtepi32_ps(lanes), acc[c]);
                }
            }
            for (int c = 0; c < nc; c++) a->y[(c0 + c) * a->y_stride + r] = lm_hsum8_v(acc[c]) + summs[c];
        }
    }
}

/* Q8_0 x q8_0, ggml_vec_dot_q8_0_q8_0 */
static void mm_q8_0(const lm_mm_args *a, int64_t r0, int64_t r1) {
    const lm_weight *w = a->w;
    const int64_t nb = w->cols / QK;
    for (int64_t r = r0; r < r1; r++) {
        const block_q8_0 *x = (const block_q8_0 *)((const uint8_t *)w->data + r * w->row_bytes);
        for (int64_t c0 = 0; c0 < a->n; c0 += COLS) {
            const int nc = (int)(a->n - c0 < COLS ? a->n - c0 : COLS);
            __m256 acc[COLS];
            const block_q8_0 *y[COLS];
            for (int c = 0; c < nc; c++) {
                acc[c] = _mm256_setzero_ps();
                y[c] = (const block_q8_0 *)(a->act + (c0 + c) * a->act_row_bytes);
            }
            for (int64_t b = 0; b < nb; b++) {
                const __m256i q = _mm256_loadu_si256((const __m256i *)x[b].qs);
                const float dw = lm_h2f(x[b].d);
                for (int c = 0; c < nc; c++) {
                    const __m256i lanes = lm_dot_ss8(q, _mm256_loadu_si256((const __m256i *)y[c][b].qs));
                    acc[c] = _mm256_fmadd_ps(_mm256_set1_ps(dw * lm_h2f(y[c][b].d)), _mm256_cvtepi32_ps(lanes), acc[c]);
                }
            }
            for (int c = 0; c < nc; c++) a->y[(c0 + c) * a->y_stride + r] = lm_hsum8_v(acc[c]);
        }
    }
}

/* Q4_0 x q8_0, ggml_vec_dot_q4_0_q8_0: nibbles - 8, computed as q.x - 8 * sum(x) (exact integers) */
static void mm_q4_0_vec(const lm_mm_args *a, int64_t r0, int64_t r1) {
    const lm_weight *w = a->w;
    const int64_t nb = w->cols / QK;
    const __m256i eight = _mm256_set1_epi8(8);
    for (int64_t r = r0; r < r1; r++) {
        const block_q4_0 *x = (const block_q4_0 *)((const uint8_t *)w->data + r * w->row_bytes);
        for (int64_t c0 = 0; c0 < a->n; c0 += COLS) {
            const int nc = (int)(a->n - c0 < COLS ? a->n - c0 : COLS);
            __m256 acc[COLS];
            const block_q8_0 *y[COLS];
            for (int c = 0; c < nc; c++) {
                acc[c] = _mm256_setzero_ps();
                y[c] = (const block_q8_0 *)(a->act + (c0 + c) * a->act_row_bytes);
            }
            for (int64_t b = 0; b < nb; b++) {
                const __m256i q = lm_nibbles32(x[b].qs);
                const float dw = lm_h2f(x[b].d);
                for (int c = 0; c < nc; c++) {
                    const __m256i v = _mm256_loadu_si256((const __m256i *)y[c][b].qs);
                    const __m256i lanes = _mm256_sub_epi32(lm_dot_us8(q, v), lm_dot_us8(eight, v));
                    acc[c] = _mm256_fmadd_ps(_mm256_set1_ps(dw * lm_h2f(y[c][b].d)), _mm256_cvtepi32_ps(lanes), acc[c]);
                }
            }
            for (int c = 0; c < nc; c++) a->y[(c0 + c) * a->y_stride + r] = lm_hsum8_v(acc[c]);
        }
    }
}

/* sums of the 8 lanes of each of 8 vectors: [sum(v0), ..., sum(v7)] (exact integers) */
static inline __m256i reduce8x8(const __m256i v[8]) {
    const __m256i h01 = _mm256_hadd_epi32(v[0], v[1]), h23 = _mm256_hadd_epi32(v[2], v[3]);
    const __m256i h45 = _mm256_hadd_epi32(v[4], v[5]), h67 = _mm256_hadd_epi32(v[6], v[7]);
    const __m256i h0123 = _mm256_hadd_epi32(h01, h23), h4567 = _mm256_hadd_epi32(h45, h67);
    return _mm256_add_epi32(_mm256_permute2x128_si256(h0123, h4567, 0x20),
                            _mm256_permute2x128_si256(h0123, h4567, 0x31));
}

/* Q4_0 in llama.cpp's repacked 8x8 layout (ggml_gemv/gemm_q4_0_8x8_q8_0): one float accumulator per output,
 * fmaf(block dot, dw * dx) per block. Rows go 8 at a time (llama.cpp repacks only when rows % 8 == 0). */
static void mm_q4_0_x8(const lm_mm_args *a, int64_t r0, int64_t r1) {
    const lm_weight *w = a->w;
    const int64_t nb = w->cols / QK;
    const __m256i eight = _mm256_set1_epi8(8);
    for (int64_t rg = r0; rg < r1; rg += 8) {
        const block_q4_0 *x[8];
        for (int i = 0; i < 8; i++) x[i] = (const block_q4_0 *)((const uint8_t *)w->data + (rg + i) * w->row_bytes);
        for (int64_t c0 = 0; c0 < a->n; c0 += COLS) {
            const int nc = (int)(a->n - c0 < COLS ? a->n - c0 : COLS);
            __m256 acc[COLS];
            const block_q8_0 *y[COLS];
            for (int c = 0; c < nc; c++) {
                acc[c] = _mm256_setzero_ps();
                y[c] = (const block_q8_0 *)(a->act + (c0 + c) * a->act_row_bytes);
            }
            for (int64_t b = 0; b < nb; b++) {
                __m256i q[8];
                float dw[8];
                for (int i = 0; i < 8; i++) {
                    q[i] = lm_nibbles32(x[i][b].qs);
                    dw[i] = lm_h2f(x[i][b].d);
                }
                const __m256 dwv = _mm256_loadu_ps(dw);
                for (int c = 0; c < nc; c++) {
                    const __m256i v = _mm256_loadu_si256((const __m256i *)y[c][b].qs);
                    __m256i lanes[8];
                    for (int i = 0; i < 8; i++) lanes[i] = lm_dot_us8(q[i], v);
                    /* sum((q - 8) x) = sum(q x) - sum(8 x) */
                    const __m256i off = _mm256_set1_epi32(lm_hsum_epi32(lm_dot_us8(eight, v)));
                    const __m256i dots = _mm256_sub_epi32(reduce8x8(lanes), off);
                    const __m256 d = _mm256_mul_ps(dwv, _mm256_set1_ps(lm_h2f(y[c][b].d)));
                    acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dots), d, acc[c]);
                }
            }
            for (int c = 0; c < nc; c++) {
                float out[8];
                _mm256_storeu_ps(out, acc[c]);
                for (int i = 0; i < 8; i++) a->y[(c0 + c) * a->y_stride + rg + i] = out[i];
            }
        }
    }
}
#endif

void lm_mm_rows(const lm_mm_args *a, int64_t r0, int64_t r1) {
    if (r1 <= r0) return;
    const int64_t start = r0;
    if (lm_is_kquant((int)a->w->type)) {
        lm_mm_kquant(a, r0, r1);
    } else {
        r0 += lm_mm8(a, r0, r1);
        if (r0 < r1) lm_mm_rest(a, r0, r1);
    }
    if (a->bias)
        for (int64_t c = 0; c < a->n; c++)
            for (int64_t r = start; r < r1; r++) a->y[c * a->y_stride + r] += a->bias[r];
}

/* rows the 8-row kernels did not take: per-row SIMD kernels or the scalar dot */
static void lm_mm_rest(const lm_mm_args *a, int64_t r0, int64_t r1) {
#if LM_AVX2
    switch (a->w->type) {
        case T_Q4_1: mm_q4_1(a, r0, r1); break;
        case T_Q8_0: mm_q8_0(a, r0, r1); break;
        case T_Q4_0:
            if (a->w->flags & LM_REPACKED) mm_q4_0_x8(a, r0, r1);
            else mm_q4_0_vec(a, r0, r1);
            break;
        default: mm_generic(a, r0, r1);
    }
#else
    mm_generic(a, r0, r1);
#endif
}

/* threads take whole groups of 8 rows when the row count allows (the 8-row kernels, llama.cpp's repacks) */
int64_t lm_mm_row_align(const lm_weight *w) { return w->rows % 8 == 0 ? 8 : 1; }
