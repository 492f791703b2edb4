/* Matrix-product kernels: y[c][r] = W[r] . act[c] for a range of rows and every column, per weight type.
 *
 * Each SIMD kernel computes exactly what the scalar dot kernel of its type computes (dot.c), only faster.
 * Few columns (decode) go row by row, so each thread streams its rows' bytes in order, which the hardware
 * prefetchers follow (8 rows read side by side, as mm8.c does, confuse them and leave a single token
 * latency-bound); several columns share each unpacked weight block. Batches of columns go to mm8.c's 8-row
 * kernels, where reuse matters more than streaming. K-quants have their own file (kquant.c). */
#include "mm.h"

#include <stdlib.h>

#include "dot.h"
#include "kquant.h"
#include "mm8.h"
#include "simd.h"

/* columns from which the 8-row kernels beat the per-row ones */
#define MM8_MIN_COLS 4

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

typedef enum { R_Q4_0, R_Q4_1, R_Q5_0, R_Q5_1, R_Q8_0, R_IQ4_NL } row_kind;

static inline int has_min(row_kind k) { return k == R_Q4_1 || k == R_Q5_1; }
static inline int is_signed(row_kind k) { return k == R_Q8_0 || k == R_IQ4_NL; }
/* unsigned nibble formats: value = q - bias */
static inline int bias_of(row_kind k) { return k == R_Q4_0 ? 8 : k == R_Q5_0 ? 16 : 0; }
static inline int64_t block_bytes(row_kind k) {
    switch (k) {
        case R_Q4_0: case R_IQ4_NL: return 18;
        case R_Q4_1: return 20;
        case R_Q5_0: return 22;
        case R_Q5_1: return 24;
        default: return 34;
    }
}

/* 32 codes of one block, element order: unsigned (nibble formats, before the bias) or signed values */
static inline __attribute__((always_inline)) __m256i codes(row_kind k, const uint8_t *blk, float *d, float *m) {
    switch (k) {
        case R_Q8_0: *d = lm_h2f(((const block_q8_0 *)blk)->d); return _mm256_loadu_si256((const __m256i *)(blk + 2));
        case R_Q4_0: *d = lm_h2f(((const block_q4_0 *)blk)->d); return lm_nibbles32(blk + 2);
        case R_IQ4_NL: {
            *d = lm_h2f(((const block_iq4_nl *)blk)->d);
            const __m256i lut = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)lm_iq4nl_values));
            return _mm256_shuffle_epi8(lut, lm_nibbles32(blk + 2));
        }
        case R_Q4_1: {
            const block_q4_1 *x = (const block_q4_1 *)blk;
            *d = lm_h2f(x->d), *m = lm_h2f(x->m);
            return lm_nibbles32(x->qs);
        }
        default: { /* Q5_0, Q5_1: nibble | bit e of qh as bit 4 */
            const uint8_t *qh = k == R_Q5_0 ? ((const block_q5_0 *)blk)->qh : ((const block_q5_1 *)blk)->qh;
            const uint8_t *qs = k == R_Q5_0 ? ((const block_q5_0 *)blk)->qs : ((const block_q5_1 *)blk)->qs;
            if (k == R_Q5_0) *d = lm_h2f(((const block_q5_0 *)blk)->d);
            else *d = lm_h2f(((const block_q5_1 *)blk)->d), *m = lm_h2f(((const block_q5_1 *)blk)->m);
            uint32_t bits;
            memcpy(&bits, qh, 4);
            /* byte e gets bit e of bits: spread each byte of bits over 8 bytes, test one bit each */
            const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits),
                _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
            const __m256i sel = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
            const __m256i hi = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, sel), sel), _mm256_set1_epi8(0x10));
            return _mm256_or_si256(lm_nibbles32(qs), hi);
        }
    }
}

/* lanes j = sum over elements 4j..4j+3 of value * activation (exact integers) */
static inline __attribute__((always_inline)) __m256i lanes_of(row_kind k, __m256i q, __m256i y) {
    if (is_signed(k)) return lm_dot_ss8(q, y);
    __m256i l = lm_dot_us8(q, y);
    if (bias_of(k)) l = _mm256_sub_epi32(l, lm_dot_us8(_mm256_set1_epi8((char)bias_of(k)), y));
    return l;
}

/* activation block b of column c: its codes and scale (and for q8_1 its stored sum s) */
static inline __attribute__((always_inline)) const int8_t *act_block(row_kind k, const lm_mm_args *a, int64_t c,
                                                                     int64_t b, float *dy, float *sy) {
    const uint8_t *act = a->act + c * a->act_row_bytes;
    if (has_min(k)) {
        const block_q8_1 *y = (const block_q8_1 *)act + b;
        *dy = lm_h2f(y->d), *sy = lm_h2f(y->s);
        return y->qs;
    }
    const block_q8_0 *y = (const block_q8_0 *)act + b;
    *dy = lm_h2f(y->d);
    return y->qs;
}

/* ggml_vec_dot semantics: 8 float lanes per output folded with fmaf per block, hsum_float_8, then the min
 * term (q4_1 / q5_1: fmaf(m, s) per block, which ggml's compiled code fuses). RR rows go side by side: each
 * output is one serial chain of fmaf, so independent rows keep the core busy. */
#define RR 4 /* rows side by side: measured best for every kind on AVX-512 EPYC (2 and 8 are slower) */
static inline int rows_together(row_kind k) { (void)k; return RR; }
static inline __attribute__((always_inline)) void rows_vec(row_kind k, const lm_mm_args *a, int64_t r0, int64_t r1) {
    const lm_weight *w = a->w;
    const int rr = rows_together(k);
    const int64_t nb = w->cols / QK, bb = block_bytes(k);
    /* the rows side by side come from rr equal parts of the range: each is then one forward stream in its own
     * pages, which the prefetchers follow (adjacent rows read in lockstep would interleave within pages) */
    const int64_t part = (r1 - r0 + rr - 1) / rr;
    for (int64_t j = 0; j < part; j++) {
        int64_t rows_at[RR];
        int nr = 0;
        for (int i = 0; i < rr; i++)
            if (r0 + i * part + j < r1) rows_at[nr++] = r0 + i * part + j;
        const uint8_t *row[RR];
        for (int i = 0; i < rr; i++) row[i] = (const uint8_t *)w->data + rows_at[i < nr ? i : 0] * w->row_bytes;
        const int cols = COLS / rr > 0 ? COLS / rr : 1;
        for (int64_t c0 = 0; c0 < a->n; c0 += cols) {
            const int nc = (int)(a->n - c0 < cols ? a->n - c0 : cols);
            __m256 acc[RR][COLS];
            float summs[RR][COLS];
            for (int i = 0; i < rr; i++)
                for (int c = 0; c < nc; c++) acc[i][c] = _mm256_setzero_ps(), summs[i][c] = 0.0f;
            for (int64_t b = 0; b < nb; b++) {
                float dw[RR], mw[RR] = {0};
                __m256i q[RR];
                for (int i = 0; i < rr; i++) q[i] = codes(k, row[i] + b * bb, &dw[i], &mw[i]);
                for (int c = 0; c < nc; c++) {
                    float dy, sy = 0.0f;
                    const int8_t *ys = act_block(k, a, c0 + c, b, &dy, &sy);
                    const __m256i y = _mm256_loadu_si256((const __m256i *)ys);
                    for (int i = 0; i < rr; i++) {
                        if (has_min(k)) summs[i][c] = fmaf(mw[i], sy, summs[i][c]);
                        acc[i][c] = _mm256_fmadd_ps(_mm256_set1_ps(dw[i] * dy), _mm256_cvtepi32_ps(lanes_of(k, q[i], y)), acc[i][c]);
                    }
                }
            }
            for (int i = 0; i < nr; i++)
                for (int c = 0; c < nc; c++) a->y[(c0 + c) * a->y_stride + rows_at[i]] = lm_hsum8_v(acc[i][c]) + summs[i][c];
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

/* llama.cpp's repacked 8x8 semantics (Q4_0, IQ4_NL): one accumulator per output, acc = fmaf(block dot,
 * dw * dy, acc) in block order. Block dots are reduced 8 blocks at a time; the fmaf chain stays in order. */
static inline __attribute__((always_inline)) void rows_x8(row_kind k, const lm_mm_args *a, int64_t r0, int64_t r1) {
    const lm_weight *w = a->w;
    const int64_t nb = w->cols / QK, bb = block_bytes(k);
    /* one row at a time: the out-of-order core overlaps a row's chain with the next blocks' integer work
     * (side-by-side rows, as rows_vec does, measured twice as slow here) */
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = (const uint8_t *)w->data + r * w->row_bytes;
        for (int64_t c = 0; c < a->n; c++) {
            float acc = 0.0f;
            int64_t b = 0;
            for (; b + 8 <= nb; b += 8) {
                __m256i l[8];
                float dw[8], dd[8], s[8];
                for (int i = 0; i < 8; i++) {
                    float dy, sy, mw;
                    const __m256i q = codes(k, row + (b + i) * bb, &dw[i], &mw);
                    const int8_t *ys = act_block(k, a, c, b + i, &dy, &sy);
                    l[i] = lanes_of(k, q, _mm256_loadu_si256((const __m256i *)ys));
                    dd[i] = dw[i] * dy;
                }
                _mm256_storeu_ps(s, _mm256_cvtepi32_ps(reduce8x8(l)));
                for (int i = 0; i < 8; i++) acc = fmaf(s[i], dd[i], acc);
            }
            for (; b < nb; b++) {
                float dw, dy, sy, mw;
                const __m256i q = codes(k, row + b * bb, &dw, &mw);
                const int8_t *ys = act_block(k, a, c, b, &dy, &sy);
                acc = fmaf((float)lm_hsum_epi32(lanes_of(k, q, _mm256_loadu_si256((const __m256i *)ys))), dw * dy, acc);
            }
            a->y[c * a->y_stride + r] = acc;
        }
    }
}

#define ROW_KERNELS(name, K)                                                                                 \
    static void vec_##name(const lm_mm_args *a, int64_t r0, int64_t r1) { rows_vec(K, a, r0, r1); }
ROW_KERNELS(q4_0, R_Q4_0)
ROW_KERNELS(q4_1, R_Q4_1)
ROW_KERNELS(q5_0, R_Q5_0)
ROW_KERNELS(q5_1, R_Q5_1)
ROW_KERNELS(q8_0, R_Q8_0)
static void x8_q4_0(const lm_mm_args *a, int64_t r0, int64_t r1) { rows_x8(R_Q4_0, a, r0, r1); }
static void x8_iq4_nl(const lm_mm_args *a, int64_t r0, int64_t r1) { rows_x8(R_IQ4_NL, a, r0, r1); }

/* the per-row kernel for this weight and column count, or NULL (the scalar dot takes it) */
static void (*row_kernel(const lm_mm_args *a))(const lm_mm_args *, int64_t, int64_t) {
    const int repacked = (a->w->flags & LM_REPACKED) != 0;
    switch (a->w->type) {
        case T_Q4_0: return repacked ? x8_q4_0 : vec_q4_0;
        case T_Q4_1: return vec_q4_1;
        case T_Q5_0: return vec_q5_0;
        case T_Q5_1: return vec_q5_1;
        case T_Q8_0: return vec_q8_0;
        case T_IQ4_NL: return repacked ? x8_iq4_nl : NULL; /* one unrepacked column splits even/odd blocks */
        default: return NULL;
    }
}
#endif

void lm_mm_rows(const lm_mm_args *a, int64_t r0, int64_t r1) {
    if (r1 <= r0) return;
    const int64_t start = r0;
    if (a->w->flags & LM_PACK16) {
        lm_mm16(a, r0, r1);
    } else if (lm_is_kquant((int)a->w->type)) {
        lm_mm_kquant(a, r0, r1);
    } else {
        /* few columns: 8 rows side by side from 8 streams suits the 4-bit formats (their per-block work is
         * spread over 8 rows at once); Q8_0 streams faster through the per-row kernel (measured) */
        if (a->n >= MM8_MIN_COLS || (a->w->flags & LM_INTERLEAVED)) r0 += lm_mm8(a, r0, r1, 0);
        else if (a->w->type != T_Q8_0) r0 += lm_mm8(a, r0, r1, 1);
        if (r0 < r1) {
#if LM_AVX2
            void (*kernel)(const lm_mm_args *, int64_t, int64_t) = row_kernel(a);
            if (kernel) kernel(a, r0, r1);
            else mm_generic(a, r0, r1);
#else
            mm_generic(a, r0, r1);
#endif
        }
    }
    if (a->bias)
        for (int64_t c = 0; c < a->n; c++)
            for (int64_t r = start; r < r1; r++) a->y[c * a->y_stride + r] += a->bias[r];
}

/* threads take whole groups of 8 rows when the row count allows (the 8-row kernels, llama.cpp's repacks) */
int64_t lm_mm_row_align(const lm_weight *w) { return w->flags & LM_PACK16 ? 16 : w->rows % 8 == 0 ? 8 : 1; }
