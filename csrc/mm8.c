/* AVX-512 VNNI kernels for the 32-element block formats, 8 weight rows at a time.
 *
 * A zmm holds one half-block (16 elements) of 4 rows, so vpdpbusd yields, per row, the integer lane sums
 * of 4 consecutive elements that ggml's kernels use; every (row, lane) then takes the same fmaf sequence
 * as the scalar emulation in dot.c, and the final sums follow hsum_float_8's order. Signed weights are
 * biased to unsigned (+8, +16, +128) and the bias times the activation sum subtracted: exact integers.
 * Columns share each unpacked weight block. */
#include "mm8.h"

#include <stdlib.h>

#include "simd.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__) && defined(__AVX512VL__) && LM_AVX2

#define NCOL 4


typedef enum { K_Q4_0, K_Q4_1, K_Q5_0, K_Q5_1, K_Q8_0, K_IQ4_NL } kind;

typedef struct {
    __m512i w[4]; /* rows 0-3 elements 0..15, rows 0-3 16..31, rows 4-7 0..15, rows 4-7 16..31 */
    __m256 d, m;  /* per row: block scale, block min (q4_1/q5_1) */
} block8;

static inline __m512i load4x16(const uint8_t *p0, const uint8_t *p1, const uint8_t *p2, const uint8_t *p3) {
    __m512i z = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)p0));
    z = _mm512_inserti32x4(z, _mm_loadu_si128((const __m128i *)p1), 1);
    z = _mm512_inserti32x4(z, _mm_loadu_si128((const __m128i *)p2), 2);
    return _mm512_inserti32x4(z, _mm_loadu_si128((const __m128i *)p3), 3);
}

/* bit e of the 32-bit qh word of each of 4 rows -> 0x10 in byte (row * 16 + e), for e in half * 16.. */
static inline __m512i high_bits(const uint8_t *const qh[4], int half) {
    uint64_t mask = 0;
    for (int i = 0; i < 4; i++) {
        uint32_t v;
        memcpy(&v, qh[i], 4);
        mask |= (uint64_t)((v >> (16 * half)) & 0xFFFF) << (16 * i);
    }
    return _mm512_maskz_mov_epi8(mask, _mm512_set1_epi8(0x10));
}

/* one interleaved block of 8 rows (lm_interleave's layout): two loads of codes, one of scales, in order */
static inline __attribute__((always_inline)) void load_block8_interleaved(kind k, const uint8_t *g, block8 *o) {
    const __m512i low4 = _mm512_set1_epi8(0x0F);
    o->d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)g));
    for (int h = 0; h < 2; h++) {
        const __m512i raw = _mm512_loadu_si512(g + 16 + 64 * h);
        __m512i lo = _mm512_and_si512(raw, low4), hi = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low4);
        if (k == K_IQ4_NL) {
            const __m512i lut = _mm512_broadcast_i32x4(_mm_xor_si128(
                _mm_loadu_si128((const __m128i *)lm_iq4nl_values), _mm_set1_epi8((char)0x80)));
            lo = _mm512_shuffle_epi8(lut, lo);
            hi = _mm512_shuffle_epi8(lut, hi);
        }
        o->w[2 * h] = lo;
        o->w[2 * h + 1] = hi;
    }
}

static inline __attribute__((always_inline)) void load_block8(kind k, const uint8_t *const rows[8], int64_t b, block8 *o) {
    uint16_t dh[8], mh[8] = {0};
    const __m512i low4 = _mm512_set1_epi8(0x0F);
    for (int g = 0; g < 2; g++) { /* rows 4g .. 4g+3 */
        const uint8_t *const *r = rows + 4 * g;
        __m512i lo, hi;
        if (k == K_Q8_0) {
            const block_q8_0 *x[4] = {(const block_q8_0 *)r[0] + b, (const block_q8_0 *)r[1] + b,
                                      (const block_q8_0 *)r[2] + b, (const block_q8_0 *)r[3] + b};
            lo = load4x16((const uint8_t *)x[0]->qs, (const uint8_t *)x[1]->qs, (const uint8_t *)x[2]->qs,
                          (const uint8_t *)x[3]->qs);
            hi = load4x16((const uint8_t *)x[0]->qs + 16, (const uint8_t *)x[1]->qs + 16, (const uint8_t *)x[2]->qs + 16,
                          (const uint8_t *)x[3]->qs + 16);
            lo = _mm512_xor_si512(lo, _mm512_set1_epi8((char)0x80)); /* + 128 */
            hi = _mm512_xor_si512(hi, _mm512_set1_epi8((char)0x80));
            for (int i = 0; i < 4; i++) dh[4 * g + i] = x[i]->d;
        } else {
            const uint8_t *qs[4], *qh[4] = {0};
            for (int i = 0; i < 4; i++) {
                switch (k) {
                    case K_Q4_0: qs[i] = ((const block_q4_0 *)r[i] + b)->qs, dh[4 * g + i] = ((const block_q4_0 *)r[i] + b)->d; break;
                    case K_IQ4_NL: qs[i] = ((const block_iq4_nl *)r[i] + b)->qs, dh[4 * g + i] = ((const block_iq4_nl *)r[i] + b)->d; break;
                    case K_Q4_1: {
                        const block_q4_1 *x = (const block_q4_1 *)r[i] + b;
                        qs[i] = x->qs, dh[4 * g + i] = x->d, mh[4 * g + i] = x->m;
                    } break;
                    case K_Q5_0: {
                        const block_q5_0 *x = (const block_q5_0 *)r[i] + b;
                        qs[i] = x->qs, qh[i] = x->qh, dh[4 * g + i] = x->d;
                    } break;
                    default: {
                        const block_q5_1 *x = (const block_q5_1 *)r[i] + b;
                        qs[i] = x->qs, qh[i] = x->qh, dh[4 * g + i] = x->d, mh[4 * g + i] = x->m;
                    } break;
                }
            }
            const __m512i raw = load4x16(qs[0], qs[1], qs[2], qs[3]);
            lo = _mm512_and_si512(raw, low4);
            hi = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low4);
            if (k == K_Q5_0 || k == K_Q5_1) {
                lo = _mm512_or_si512(lo, high_bits(qh, 0));
                hi = _mm512_or_si512(hi, high_bits(qh, 1));
            } else if (k == K_IQ4_NL) { /* codebook values, signed: + 128 */
                const __m512i lut = _mm512_broadcast_i32x4(_mm_xor_si128(
                    _mm_loadu_si128((const __m128i *)lm_iq4nl_values), _mm_set1_epi8((char)0x80)));
                lo = _mm512_shuffle_epi8(lut, lo);
                hi = _mm512_shuffle_epi8(lut, hi);
            }
        }
        o->w[2 * g] = lo;
        o->w[2 * g + 1] = hi;
    }
    /* built in registers: eight 2-byte stores read back as one vector would stall store forwarding */
    o->d = _mm256_cvtph_ps(_mm_setr_epi16((short)dh[0], (short)dh[1], (short)dh[2], (short)dh[3], (short)dh[4],
                                          (short)dh[5], (short)dh[6], (short)dh[7]));
    if (k == K_Q4_1 || k == K_Q5_1) {
        o->m = _mm256_cvtph_ps(_mm_setr_epi16((short)mh[0], (short)mh[1], (short)mh[2], (short)mh[3], (short)mh[4],
                                              (short)mh[5], (short)mh[6], (short)mh[7]));
    }
}

/* weight bias (as unsigned bytes) per kind: subtract bias * sum(activation) per lane */
static inline int bias_of(kind k) {
    switch (k) {
        case K_Q4_0: return 8;
        case K_Q5_0: return 16;
        case K_Q8_0: case K_IQ4_NL: return 128;
        default: return 0;
    }
}

#define GATHER8 _mm512_setr_epi32(0, 4, 8, 12, 2, 6, 10, 14, 0, 0, 0, 0, 0, 0, 0, 0)

static const int32_t SPREAD[2][16] = {{0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3},
                                      {4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7}};

/* bias * (the sum of elements 4j..4j+3) of every activation block, lanes j = 0..7: computed once per call
 * instead of once per 8 rows */
static int32_t *bias_terms(kind k, const lm_mm_args *a, int64_t nb) {
    const int bias = bias_of(k);
    if (!bias) return NULL;
    /* per (column, block): 8 lane terms, then (at n * nb * 8 + c * nb + b) the block's total */
    int32_t *corr = malloc((size_t)(a->n * nb * 9) * sizeof(int32_t));
    if (!corr) return NULL;
    int32_t *total = corr + a->n * nb * 8;
    for (int64_t c = 0; c < a->n; c++) {
        const block_q8_0 *y = (const block_q8_0 *)(a->act + c * a->act_row_bytes);
        for (int64_t b = 0; b < nb; b++) {
            int32_t sum = 0;
            for (int j = 0; j < 8; j++) {
                const int8_t *q = y[b].qs + 4 * j;
                corr[(c * nb + b) * 8 + j] = bias * (q[0] + q[1] + q[2] + q[3]);
                sum += corr[(c * nb + b) * 8 + j];
            }
            total[c * nb + b] = sum;
        }
    }
    return corr;
}

/* prefetch (into L2) this block's share of the next 8-row group, so each group streams in while the previous
 * one computes: small matrices are otherwise latency-bound, starting cold after every barrier */
static inline void prefetch_next(const uint8_t *next, int64_t chunk, int64_t b) {
    if (!next) return;
    for (int64_t off = b * chunk; off < (b + 1) * chunk; off += 64) _mm_prefetch((const char *)next + off, _MM_HINT_T1);
}

/* vec_dot semantics: per (row, lane) accumulators, hsum8 at the end */
static inline __attribute__((always_inline)) void run_vec(kind k, const lm_mm_args *a, const int64_t ri[8],
                                                           const int32_t *corr, const uint8_t *next) {
    const lm_weight *w = a->w;
    const int64_t nb = w->cols / QK;
    const uint8_t *rows[8];
    for (int i = 0; i < 8; i++) rows[i] = (const uint8_t *)w->data + ri[i] * w->row_bytes;
    const __m512i spread0 = _mm512_loadu_si512(SPREAD[0]), spread1 = _mm512_loadu_si512(SPREAD[1]);
    const int bias = bias_of(k), has_min = k == K_Q4_1 || k == K_Q5_1;
    for (int64_t c0 = 0; c0 < a->n; c0 += NCOL) {
        const int nc = (int)(a->n - c0 < NCOL ? a->n - c0 : NCOL);
        __m512 acc[NCOL][4];
        __m256 summs[NCOL];
        for (int c = 0; c < nc; c++) {
            for (int j = 0; j < 4; j++) acc[c][j] = _mm512_setzero_ps();
            summs[c] = _mm256_setzero_ps();
        }
        for (int64_t b = 0; b < nb; b++) {
            block8 blk;
            load_block8(k, rows, b, &blk);
            if (c0 == 0) prefetch_next(next, 8 * w->row_bytes / nb, b);
            for (int c = 0; c < nc; c++) {
                const uint8_t *act = a->act + (c0 + c) * a->act_row_bytes;
                const int8_t *ys;
                float dy, sy = 0;
                if (has_min) {
                    const block_q8_1 *y = (const block_q8_1 *)act + b;
                    ys = y->qs, dy = lm_h2f(y->d), sy = lm_h2f(y->s);
                } else {
                    const block_q8_0 *y = (const block_q8_0 *)act + b;
                    ys = y->qs, dy = lm_h2f(y->d);
                }
                const __m512i ylo = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)ys));
                const __m512i yhi = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(ys + 16)));
                __m512i l[4] = {_mm512_dpbusd_epi32(_mm512_setzero_si512(), blk.w[0], ylo),
                                _mm512_dpbusd_epi32(_mm512_setzero_si512(), blk.w[1], yhi),
                                _mm512_dpbusd_epi32(_mm512_setzero_si512(), blk.w[2], ylo),
                                _mm512_dpbusd_epi32(_mm512_setzero_si512(), blk.w[3], yhi)};
                if (bias) {
                    const int32_t *cb = corr + ((c0 + c) * nb + b) * 8;
                    const __m512i clo = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)cb));
                    const __m512i chi = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(cb + 4)));
                    l[0] = _mm512_sub_epi32(l[0], clo), l[1] = _mm512_sub_epi32(l[1], chi);
                    l[2] = _mm512_sub_epi32(l[2], clo), l[3] = _mm512_sub_epi32(l[3], chi);
                }
                const __m256 dd = _mm256_mul_ps(blk.d, _mm256_set1_ps(dy)); /* dw * dy, per row */
                const __m512 dd512 = _mm512_castps256_ps512(dd);
                const __m512 d03 = _mm512_permutexvar_ps(spread0, dd512), d47 = _mm512_permutexvar_ps(spread1, dd512);
                acc[c][0] = _mm512_fmadd_ps(d03, _mm512_cvtepi32_ps(l[0]), acc[c][0]);
                acc[c][1] = _mm512_fmadd_ps(d03, _mm512_cvtepi32_ps(l[1]), acc[c][1]);
                acc[c][2] = _mm512_fmadd_ps(d47, _mm512_cvtepi32_ps(l[2]), acc[c][2]);
                acc[c][3] = _mm512_fmadd_ps(d47, _mm512_cvtepi32_ps(l[3]), acc[c][3]);
                if (has_min) summs[c] = _mm256_fmadd_ps(blk.m, _mm256_set1_ps(sy), summs[c]);
            }
        }
        for (int c = 0; c < nc; c++) {
            float out[8], mins[8];
            _mm256_storeu_ps(mins, summs[c]);
            for (int g = 0; g < 2; g++) {
                /* hsum_float_8 per row: (l0+l4 + l2+l6) + (l1+l5 + l3+l7) */
                const __m512 s = _mm512_add_ps(acc[c][2 * g + 1], acc[c][2 * g]);
                const __m512 t = _mm512_add_ps(s, _mm512_permute_ps(s, 0x4E));
                const __m512 u = _mm512_add_ps(t, _mm512_permute_ps(t, 0xB1));
                float lanes[16];
                _mm512_storeu_ps(lanes, u);
                for (int i = 0; i < 4; i++) out[4 * g + i] = lanes[4 * i];
            }
            float *y = a->y + (c0 + c) * a->y_stride;
            for (int i = 0; i < 8; i++) y[ri[i]] = has_min ? out[i] + mins[i] : out[i];
        }
    }
}

/* column groups of 4 per pass over a weight block (2 and 3 measure alike; 1 is a few % slower) */
#define CG 2

/* per 4-column group and block: the 4 columns' activation scales, and bias * sum(y) (ints), side by side so
 * one broadcast gives the 16 lanes (row i, column c) at 4i + c their values */
typedef struct {
    float *dy;
    int32_t *tot;
} col4_terms;

static int col4_prepare(kind k, const lm_mm_args *a, int64_t nb, col4_terms *t) {
    const int64_t ng = (a->n + 3) / 4;
    t->dy = malloc((size_t)(ng * nb * 4) * (sizeof(float) + sizeof(int32_t)));
    if (!t->dy) return -1;
    t->tot = (int32_t *)(t->dy + ng * nb * 4);
    const int bias = bias_of(k);
    for (int64_t c = 0; c < ng * 4; c++) {
        const block_q8_0 *y = (const block_q8_0 *)(a->act + (c < a->n ? c : a->n - 1) * a->act_row_bytes);
        for (int64_t b = 0; b < nb; b++) {
            int32_t sum = 0;
            for (int e = 0; e < QK; e++) sum += y[b].qs[e];
            t->dy[((c / 4) * nb + b) * 4 + c % 4] = lm_h2f(y[b].d);
            t->tot[((c / 4) * nb + b) * 4 + c % 4] = bias * sum;
        }
    }
    return 0;
}

/* four 16-lane vectors of 4-lane partial sums (chunk i of each) -> lane 4i + v: the sum of chunk i of vector v */
static inline __m512i reduce4(__m512i a, __m512i b, __m512i c, __m512i d) {
    const __m512i ab = _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
    const __m512i cd = _mm512_add_epi32(_mm512_unpacklo_epi32(c, d), _mm512_unpackhi_epi32(c, d));
    return _mm512_add_epi32(_mm512_unpacklo_epi64(ab, cd), _mm512_unpackhi_epi64(ab, cd));
}

/* llama.cpp's repacked 8x8 semantics (Q4_0, IQ4_NL): one accumulator per output, fmaf(block dot, dw*dy).
 * Four columns at a time: their integer dots are reduced together, lane 4i + c for (row i, column c). */
static inline __attribute__((always_inline)) void run_x8(kind k, const lm_mm_args *a, const int64_t ri[8],
                                                          const col4_terms *t, const uint8_t *next) {
    const lm_weight *w = a->w;
    const int64_t nb = w->cols / QK;
    const uint8_t *rows[8];
    for (int i = 0; i < 8; i++) rows[i] = (const uint8_t *)w->data + ri[i] * w->row_bytes;
    /* interleaved: rows ri[0] .. ri[0] + 7 are one group of nb 144-byte blocks */
    const uint8_t *group = (const uint8_t *)w->data + (ri[0] / 8) * nb * 144;
    const int interleaved = (w->flags & LM_INTERLEAVED) != 0;
    const int bias = bias_of(k);
    const __m512i spread0 = _mm512_loadu_si512(SPREAD[0]), spread1 = _mm512_loadu_si512(SPREAD[1]);
    for (int64_t c0 = 0; c0 < a->n; c0 += 4 * CG) {
        /* CG groups of 4 columns share each unpacked weight block; missing columns repeat the first */
        const block_q8_0 *yc[CG][4];
        const float *dy4[CG];
        const int32_t *tot4[CG];
        __m512 acc03[CG], acc47[CG];
        for (int q = 0; q < CG; q++) {
            const int64_t cq = c0 + 4 * q < a->n ? c0 + 4 * q : c0;
            for (int c = 0; c < 4; c++) yc[q][c] = (const block_q8_0 *)(a->act + (cq + c < a->n ? cq + c : c0) * a->act_row_bytes);
            dy4[q] = t->dy + (cq / 4) * nb * 4;
            tot4[q] = t->tot + (cq / 4) * nb * 4;
            acc03[q] = acc47[q] = _mm512_setzero_ps();
        }
        for (int64_t b = 0; b < nb; b++) {
            block8 blk;
            if (interleaved) {
                load_block8_interleaved(k, group + b * 144, &blk);
            } else {
                load_block8(k, rows, b, &blk);
                if (c0 == 0) prefetch_next(next, 8 * w->row_bytes / nb, b);
            }
            const __m512 dw = _mm512_castps256_ps512(blk.d);
            const __m512 dw03 = _mm512_permutexvar_ps(spread0, dw), dw47 = _mm512_permutexvar_ps(spread1, dw);
            for (int q = 0; q < CG; q++) {
                __m512i s03[4], s47[4];
                for (int c = 0; c < 4; c++) {
                    const __m512i ylo = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)yc[q][c][b].qs));
                    const __m512i yhi = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(yc[q][c][b].qs + 16)));
                    s03[c] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), blk.w[0], ylo), blk.w[1], yhi);
                    s47[c] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), blk.w[2], ylo), blk.w[3], yhi);
                }
                __m512i r03 = reduce4(s03[0], s03[1], s03[2], s03[3]), r47 = reduce4(s47[0], s47[1], s47[2], s47[3]);
                if (bias) {
                    const __m512i tot = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(tot4[q] + 4 * b)));
                    r03 = _mm512_sub_epi32(r03, tot), r47 = _mm512_sub_epi32(r47, tot);
                }
                const __m512 dy = _mm512_broadcast_f32x4(_mm_loadu_ps(dy4[q] + 4 * b));
                acc03[q] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(r03), _mm512_mul_ps(dw03, dy), acc03[q]);
                acc47[q] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(r47), _mm512_mul_ps(dw47, dy), acc47[q]);
            }
        }
        for (int q = 0; q < CG; q++) {
            float out[32];
            _mm512_storeu_ps(out, acc03[q]);
            _mm512_storeu_ps(out + 16, acc47[q]);
            for (int c = 0; c < 4 && c0 + 4 * q + c < a->n; c++)
                for (int i = 0; i < 8; i++)
                    a->y[(c0 + 4 * q + c) * a->y_stride + ri[i]] = out[(i / 4) * 16 + 4 * (i % 4) + c];
        }
    }
}

/* interleaved weights, few columns: GS groups of 8 rows from GS separate parts of the range side by side, so
 * GS forward streams keep enough memory requests in flight (one stream alone leaves bandwidth unused) */
#define GS 4
static inline __attribute__((always_inline)) void run_x8i(kind k, const lm_mm_args *a, const int64_t g[GS], int ng,
                                                           const int32_t *corr) {
    const lm_weight *w = a->w;
    const int64_t nb = w->cols / QK;
    const int bias = bias_of(k);
    const uint8_t *group[GS];
    for (int i = 0; i < GS; i++) group[i] = (const uint8_t *)w->data + g[i < ng ? i : 0] * nb * 144;
    for (int64_t c = 0; c < a->n; c++) {
        __m256 acc[GS];
        for (int i = 0; i < GS; i++) acc[i] = _mm256_setzero_ps();
        const block_q8_0 *yc = (const block_q8_0 *)(a->act + c * a->act_row_bytes);
        for (int64_t b = 0; b < nb; b++) {
            const block_q8_0 *y = yc + b;
            const __m512i ylo = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)y->qs));
            const __m512i yhi = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(y->qs + 16)));
            const __m256 dy = _mm256_set1_ps(lm_h2f(y->d));
            int32_t total = 0;
            if (bias) {
                total = corr ? corr[a->n * nb * 8 + c * nb + b]
                             : lm_hsum_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8((char)bias),
                                                                 _mm256_loadu_si256((const __m256i *)y->qs)));
            }
            for (int i = 0; i < GS; i++) {
                block8 blk;
                load_block8_interleaved(k, group[i] + b * 144, &blk);
                const __m512i s03 = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), blk.w[0], ylo), blk.w[1], yhi);
                const __m512i s47 = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), blk.w[2], ylo), blk.w[3], yhi);
                const __m512i h03 = _mm512_add_epi32(s03, _mm512_shuffle_epi32(s03, 0x4E));
                const __m512i h47 = _mm512_add_epi32(s47, _mm512_shuffle_epi32(s47, 0x4E));
                const __m512i mix = _mm512_mask_blend_epi32(0xCCCC, h03, h47);
                const __m512i sum = _mm512_add_epi32(mix, _mm512_shuffle_epi32(mix, 0xB1));
                __m256i dots = _mm512_castsi512_si256(_mm512_permutexvar_epi32(GATHER8, sum));
                if (bias) dots = _mm256_sub_epi32(dots, _mm256_set1_epi32(total));
                acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dots), _mm256_mul_ps(blk.d, dy), acc[i]);
            }
        }
        for (int i = 0; i < ng; i++) _mm256_storeu_ps(a->y + c * a->y_stride + 8 * g[i], acc[i]);
    }
}

/* one instantiation per kind, so the compiler specialises the inlined loops */
#define VEC_KERNEL(name, K)                                                                             \
    static void vec_##name(const lm_mm_args *a, const int64_t *r, const int32_t *c, const uint8_t *n) { \
        run_vec(K, a, r, c, n);                                                                         \
    }
VEC_KERNEL(q4_0, K_Q4_0)
VEC_KERNEL(q4_1, K_Q4_1)
VEC_KERNEL(q5_0, K_Q5_0)
VEC_KERNEL(q5_1, K_Q5_1)
VEC_KERNEL(q8_0, K_Q8_0)
VEC_KERNEL(iq4_nl, K_IQ4_NL)
static void x8_q4_0(const lm_mm_args *a, const int64_t *r, const col4_terms *t, const uint8_t *n) { run_x8(K_Q4_0, a, r, t, n); }
static void x8_iq4_nl(const lm_mm_args *a, const int64_t *r, const col4_terms *t, const uint8_t *n) { run_x8(K_IQ4_NL, a, r, t, n); }
static void x8i_q4_0(const lm_mm_args *a, const int64_t *g, int ng, const int32_t *c) { run_x8i(K_Q4_0, a, g, ng, c); }
static void x8i_iq4_nl(const lm_mm_args *a, const int64_t *g, int ng, const int32_t *c) { run_x8i(K_IQ4_NL, a, g, ng, c); }

/* interleaved weights by GS streams of whole groups, one column at a time */
static int64_t mm8_streams_interleaved(kind k, const lm_mm_args *a, int64_t r0, int64_t r1) {
    int32_t *corr = bias_terms(k, a, a->w->cols / QK); /* NULL (out of memory): computed in the loop */
    const int64_t groups = (r1 - r0) / 8, part = (groups + GS - 1) / GS;
    for (int64_t j = 0; j < part; j++) {
        int64_t g[GS];
        int ng = 0;
        for (int i = 0; i < GS; i++)
            if (i * part + j < groups) g[ng++] = r0 / 8 + i * part + j;
        (k == K_Q4_0 ? x8i_q4_0 : x8i_iq4_nl)(a, g, ng, corr);
    }
    free(corr);
    return groups * 8;
}

int lm_mm8(const lm_mm_args *a, int64_t r0, int64_t r1, int streams) {
    kind k;
    switch (a->w->type) {
        case T_Q4_0: k = K_Q4_0; break;
        case T_Q4_1: k = K_Q4_1; break;
        case T_Q5_0: k = K_Q5_0; break;
        case T_Q5_1: k = K_Q5_1; break;
        case T_Q8_0: k = K_Q8_0; break;
        case T_IQ4_NL: k = K_IQ4_NL; break;
        default: return 0;
    }
    if (r1 - r0 < 8) return 0;
    const int64_t groups = (r1 - r0) / 8, nb = a->w->cols / QK;
    const int repacked = (a->w->flags & LM_REPACKED) && (k == K_Q4_0 || k == K_IQ4_NL);
    const int interleaved = (a->w->flags & LM_INTERLEAVED) != 0;
    int64_t ri[8];
    if (repacked) {
        if (interleaved && a->n < NCOL) return (int)mm8_streams_interleaved(k, a, r0, r1);
        col4_terms t;
        if (col4_prepare(k, a, nb, &t)) /* out of memory: one column at a time needs none */
            return interleaved ? (int)mm8_streams_interleaved(k, a, r0, r1) : 0;
        for (int64_t g = 0; g < groups; g++) { /* adjacent rows; the next group prefetched unless interleaved */
            for (int i = 0; i < 8; i++) ri[i] = r0 + 8 * g + i;
            const uint8_t *next = g + 1 < groups ? (const uint8_t *)a->w->data + (r0 + 8 * g + 8) * a->w->row_bytes : NULL;
            (k == K_Q4_0 ? x8_q4_0 : x8_iq4_nl)(a, ri, &t, next);
        }
        free(t.dy);
        return (int)(groups * 8);
    }
    /* one IQ4_NL column: ggml_vec_dot splits even and odd blocks (dot.c); batches use tinyBLAS's plain order */
    if (k == K_IQ4_NL && a->n < 2) return 0;
    typedef void (*runner)(const lm_mm_args *, const int64_t *, const int32_t *, const uint8_t *);
    const runner vec[] = {vec_q4_0, vec_q4_1, vec_q5_0, vec_q5_1, vec_q8_0, vec_iq4_nl};
    int32_t *corr = bias_terms(k, a, nb);
    if (bias_of(k) && !corr) return 0; /* out of memory: the per-row kernels take over */
    if (streams) { /* row i of group g is r0 + i * groups + g: 8 forward streams through 8 parts of the range */
        for (int64_t g = 0; g < groups; g++) {
            for (int i = 0; i < 8; i++) ri[i] = r0 + i * groups + g;
            vec[k](a, ri, corr, NULL);
        }
    } else { /* adjacent rows, the next group prefetched while this one computes */
        for (int64_t g = 0; g < groups; g++) {
            for (int i = 0; i < 8; i++) ri[i] = r0 + 8 * g + i;
            const uint8_t *next = g + 1 < groups ? (const uint8_t *)a->w->data + (r0 + 8 * g + 8) * a->w->row_bytes : NULL;
            vec[k](a, ri, corr, next);
        }
    }
    free(corr);
    return (int)(groups * 8);
}

int lm_can_interleave(int type) { return type == T_Q4_0 || type == T_IQ4_NL; }

#else
int lm_can_interleave(int type) {
    (void)type;
    return 0;
}

int lm_mm8(const lm_mm_args *a, int64_t r0, int64_t r1, int streams) {
    (void)a, (void)r0, (void)r1;
    return 0;
}
#endif

int lm_interleave(int type, const void *src, void *dst, int64_t rows, int64_t cols) {
    if (!lm_can_interleave(type) || rows % 8 || cols % QK) return -1;
    const int64_t nb = cols / QK;
    const block_q4_0 *in = src; /* IQ4_NL has the same block layout */
    uint8_t *out = dst;
    for (int64_t g = 0; g < rows / 8; g++)
        for (int64_t b = 0; b < nb; b++, out += 144)
            for (int i = 0; i < 8; i++) {
                const block_q4_0 *x = in + (8 * g + i) * nb + b;
                memcpy(out + 2 * i, &x->d, 2);
                memcpy(out + 16 + 16 * i, x->qs, 16);
            }
    return 0;
}
