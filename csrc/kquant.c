/* Matrix products for the super-block formats (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS x q8_K activations),
 * bit-exact with llama.cpp (commit 0c1e570) on an AVX-512 x86 CPU. llama.cpp picks one of four arithmetics
 * per product, and so do we:
 *  - VEC: ggml_vec_dot_*_q8_K (arch/x86/quants.c, AVX2) when a product has fewer than 8 columns: 8 float
 *    lanes per output, lane k collecting elements 4k..4k+3 of every 32, each type folding mins its own way;
 *  - TILED: ggml-cpu/tiled's VNNI microkernel for 8+ columns of weights that were not repacked: per
 *    super-block r = S*d - dmin*M (one fused step), then out = fmaf(r, dy, out);
 *  - GEMV8 / GEMM8: the repacked 8x8 kernels (arch/x86/repack.cpp) for Q4_K and Q2_K when rows % 8 == 0:
 *    fmaf(S, d*dy) and fmaf(M, dmin*dy) into two accumulators, per super-block for the last n % 4 columns
 *    (gemv) and per 64 (Q4_K) or 128 (Q2_K) elements for the others (gemm); out = acc - accm.
 * S is a block's integer sum of scale x (weight . activation) per 16-element sub-block and M its integer
 * sum of min x activation-sum: exact in every variant, so only the float steps above need care.
 * Each weight row is unpacked once into one byte per element plus per-16 scales/mins, then every column is
 * dotted against it (AVX-512 VNNI where built, else plain C giving the same bits). */
#include "kquant.h"

#include <stdlib.h>
#include <string.h>

#include "simd.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__) && defined(__AVX512VL__) && LM_AVX2
#define KQ_VNNI 1
#endif

enum { KQ_VEC, KQ_TILED, KQ_GEMV8, KQ_GEMM8 };

int lm_is_kquant(int wtype) {
    switch (wtype) {
        case T_Q2_K: case T_Q3_K: case T_Q4_K: case T_Q5_K: case T_Q6_K: case T_IQ4_XS: return 1;
        default: return 0;
    }
}

/* -- unpacking: one unsigned byte per element (the signed value + quad_bias, or for Q6_K + 32), a scale
 * and a min per 16 elements, the block's d and dmin as floats ------------------------------------------ */

typedef struct {
    uint8_t *qb;     /* nb * 256 */
    int32_t *sc, *mn; /* nb * 16 */
    float *d, *dmin; /* nb */
} kq_row;

static inline int quad_bias(int type) { return type == T_Q3_K ? 4 : type == T_IQ4_XS ? 128 : 0; }
static inline int has_min(int type) { return type == T_Q2_K || type == T_Q4_K || type == T_Q5_K; }

static void unpack_q2_K(const block_q2_K *x, int64_t nb, const kq_row *r) {
    for (int64_t i = 0; i < nb; i++) {
        uint8_t *q = r->qb + i * QK_K;
        for (int c = 0; c < 2; c++)
            for (int shift = 0; shift < 8; shift += 2)
                for (int l = 0; l < 32; l++) q[128 * c + 16 * shift + l] = (x[i].qs[32 * c + l] >> shift) & 3;
        for (int j = 0; j < 16; j++) {
            r->sc[16 * i + j] = x[i].scales[j] & 0xF;
            r->mn[16 * i + j] = x[i].scales[j] >> 4;
        }
        r->d[i] = lm_h2f(x[i].d);
        r->dmin[i] = lm_h2f(x[i].dmin);
    }
}

static void unpack_q3_K(const block_q3_K *x, int64_t nb, const kq_row *r) {
    for (int64_t i = 0; i < nb; i++) {
        uint8_t *q = r->qb + i * QK_K;
        for (int c = 0; c < 2; c++)
            for (int shift = 0; shift < 4; shift++)
                for (int l = 0; l < 32; l++) /* low 2 bits, + 4 when the hmask bit is set: value + 4 */
                    q[128 * c + 32 * shift + l] = (uint8_t)(((x[i].qs[32 * c + l] >> (2 * shift)) & 3) |
                                                            (((x[i].hmask[l] >> (4 * c + shift)) & 1) << 2));
        for (int j = 0; j < 16; j++) {
            const int lo = (j < 8 ? x[i].scales[j] : x[i].scales[j - 8] >> 4) & 0x0F;
            const int hi = (x[i].scales[8 + j % 4] >> (2 * (j / 4))) & 3;
            r->sc[16 * i + j] = (lo | (hi << 4)) - 32;
        }
        r->d[i] = lm_h2f(x[i].d);
    }
}

static void scales_k4(const uint8_t *packed, int32_t *sc, int32_t *mn) {
    for (int j = 0; j < 8; j++) {
        uint8_t s, m;
        scale_min_k4(j, packed, &s, &m);
        sc[2 * j] = sc[2 * j + 1] = s;
        mn[2 * j] = mn[2 * j + 1] = m;
    }
}

static void unpack_q4_K(const block_q4_K *x, int64_t nb, const kq_row *r) {
    for (int64_t i = 0; i < nb; i++) {
        uint8_t *q = r->qb + i * QK_K;
        for (int j = 0; j < 4; j++)
            for (int l = 0; l < 32; l++) {
                q[64 * j + l] = x[i].qs[32 * j + l] & 0xF;
                q[64 * j + 32 + l] = x[i].qs[32 * j + l] >> 4;
            }
        scales_k4(x[i].scales, r->sc + 16 * i, r->mn + 16 * i);
        r->d[i] = lm_h2f(x[i].d);
        r->dmin[i] = lm_h2f(x[i].dmin);
    }
}

static void unpack_q5_K(const block_q5_K *x, int64_t nb, const kq_row *r) {
    for (int64_t i = 0; i < nb; i++) {
        uint8_t *q = r->qb + i * QK_K;
        for (int j = 0; j < 4; j++)
            for (int l = 0; l < 32; l++) {
                q[64 * j + l] = (uint8_t)((x[i].qs[32 * j + l] & 0xF) | (((x[i].qh[l] >> (2 * j)) & 1) << 4));
                q[64 * j + 32 + l] = (uint8_t)((x[i].qs[32 * j + l] >> 4) | (((x[i].qh[l] >> (2 * j + 1)) & 1) << 4));
            }
        scales_k4(x[i].scales, r->sc + 16 * i, r->mn + 16 * i);
        r->d[i] = lm_h2f(x[i].d);
        r->dmin[i] = lm_h2f(x[i].dmin);
    }
}

static void unpack_q6_K(const block_q6_K *x, int64_t nb, const kq_row *r) {
    for (int64_t i = 0; i < nb; i++) {
        uint8_t *q = r->qb + i * QK_K;
        for (int c = 0; c < 2; c++) { /* 6-bit values 0..63; the -32 is applied through the activation sums */
            const uint8_t *ql = x[i].ql + 64 * c, *qh = x[i].qh + 32 * c;
            for (int l = 0; l < 32; l++) {
                q[128 * c + l] = (uint8_t)((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4));
                q[128 * c + 32 + l] = (uint8_t)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4));
                q[128 * c + 64 + l] = (uint8_t)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4));
                q[128 * c + 96 + l] = (uint8_t)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4));
            }
        }
        for (int j = 0; j < 16; j++) r->sc[16 * i + j] = x[i].scales[j];
        r->d[i] = lm_h2f(x[i].d);
    }
}

static void unpack_iq4_xs(const block_iq4_xs *x, int64_t nb, const kq_row *r) {
    uint8_t biased[16]; /* the non-linear values + 128 */
    for (int j = 0; j < 16; j++) biased[j] = (uint8_t)(lm_iq4nl_values[j] + 128);
    for (int64_t i = 0; i < nb; i++) {
        uint8_t *q = r->qb + i * QK_K;
        for (int ib = 0; ib < 8; ib++) {
            const int ls = ((x[i].scales_l[ib / 2] >> 4 * (ib % 2)) & 0xF) | (((x[i].scales_h >> 2 * ib) & 3) << 4);
            r->sc[16 * i + 2 * ib] = r->sc[16 * i + 2 * ib + 1] = ls - 32;
            for (int j = 0; j < 16; j++) {
                q[32 * ib + j] = biased[x[i].qs[16 * ib + j] & 0xF];
                q[32 * ib + 16 + j] = biased[x[i].qs[16 * ib + j] >> 4];
            }
        }
        r->d[i] = lm_h2f(x[i].d);
    }
}

static void unpack_row(int type, const void *w, int64_t nb, const kq_row *r) {
    switch (type) {
        case T_Q2_K: unpack_q2_K(w, nb, r); break;
        case T_Q3_K: unpack_q3_K(w, nb, r); break;
        case T_Q4_K: unpack_q4_K(w, nb, r); break;
        case T_Q5_K: unpack_q5_K(w, nb, r); break;
        case T_Q6_K: unpack_q6_K(w, nb, r); break;
        default: unpack_iq4_xs(w, nb, r); break;
    }
}

/* -- the integer part of one super-block against one activation block ---------------------------------
 * V[q] = scale(q / 4) * sum over the quad q (4 elements) of (weight - quad_bias) * activation, for the 64
 * quads of the block. From it: lanes[k] = sum over the 8 groups of 32 of V[8g + k] (ggml's AVX2 lanes),
 * and S over any range of quads. */

typedef struct {
    int32_t lanes[8];
    int32_t s64[4]; /* S of each 64 elements */
} kq_ints;

static inline __attribute__((always_inline)) void block_ints(int type, const uint8_t *qb, const int32_t *sc,
                                                             const block_q8_K *y, kq_ints *out) {
    const int bias = quad_bias(type);
#if KQ_VNNI
    __m512i total = _mm512_setzero_si512();
    const __m512i spread = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    for (int p = 0; p < 4; p++) {
        const __m512i a = _mm512_loadu_si512(y->qs + 64 * p);
        __m512i d = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_loadu_si512(qb + 64 * p), a);
        if (bias) d = _mm512_sub_epi32(d, _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8((char)bias), a));
        /* quads 16p + l take the scale of sub-block 4p + l / 4 */
        const __m512i s = _mm512_permutexvar_epi32(spread, _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)(sc + 4 * p))));
        const __m512i v = _mm512_mullo_epi32(d, s);
        out->s64[p] = _mm512_reduce_add_epi32(v);
        total = _mm512_add_epi32(total, v);
    }
    _mm256_storeu_si256((__m256i *)out->lanes,
                        _mm256_add_epi32(_mm512_castsi512_si256(total), _mm512_extracti64x4_epi64(total, 1)));
#else
    for (int k = 0; k < 8; k++) out->lanes[k] = 0;
    for (int p = 0; p < 4; p++) out->s64[p] = 0;
    for (int q = 0; q < 64; q++) {
        int sum = 0;
        for (int e = 4 * q; e < 4 * q + 4; e++) sum += (qb[e] - bias) * y->qs[e];
        const int v = sc[q / 4] * sum;
        out->lanes[q % 8] += v;
        out->s64[q / 16] += v;
    }
#endif
}

/* sum over sub-blocks j0..j1-1 of w[j] * bsums[j] */
static inline int32_t bsum_dot(const int32_t *w, const int16_t *bsums, int j0, int j1) {
    int32_t s = 0;
    for (int j = j0; j < j1; j++) s += w[j] * bsums[j];
    return s;
}

/* -- one output in each arithmetic ------------------------------------------------------------------- */

static inline __attribute__((always_inline)) float out_vec(int type, const kq_row *w, int64_t nb,
                                                           const block_q8_K *y) {
    float acc[8] = {0}, acc_m[4] = {0}, summs = 0.0f;
    kq_ints v;
    for (int64_t i = 0; i < nb; i++) {
        const int32_t *sc = w->sc + 16 * i, *mn = w->mn + 16 * i;
        block_ints(type, w->qb + i * QK_K, sc, y + i, &v);
        const float d = y[i].d * w->d[i];
        if (type == T_Q2_K) { /* mins of sub-blocks 2k, 2k+1 folded into lane k first */
            const float dmin = -y[i].d * w->dmin[i];
            for (int k = 0; k < 8; k++) acc[k] = fmaf(dmin, (float)bsum_dot(mn, y[i].bsums, 2 * k, 2 * k + 2), acc[k]);
        } else if (type == T_Q4_K) { /* four min accumulators, one per 64 elements */
            const float dmin = -y[i].d * w->dmin[i];
            for (int k = 0; k < 4; k++) acc_m[k] = fmaf(dmin, (float)bsum_dot(mn, y[i].bsums, 4 * k, 4 * k + 4), acc_m[k]);
        } else if (type == T_Q5_K) {
            const float dmin = -y[i].d * w->dmin[i];
            summs = fmaf(dmin, (float)bsum_dot(mn, y[i].bsums, 0, 16), summs);
        } else if (type == T_Q6_K) { /* values 0..63: take 32 * sum(activations) per lane pair back out */
            for (int k = 0; k < 8; k++) v.lanes[k] -= 32 * bsum_dot(sc, y[i].bsums, 2 * k, 2 * k + 2);
        }
        for (int k = 0; k < 8; k++) acc[k] = fmaf(d, (float)v.lanes[k], acc[k]);
    }
    float r = lm_hsum8(acc);
    if (type == T_Q4_K) r += (acc_m[0] + acc_m[2]) + (acc_m[1] + acc_m[3]);
    if (type == T_Q5_K) r += summs;
    return r;
}

static inline __attribute__((always_inline)) float out_tiled(int type, const kq_row *w, int64_t nb,
                                                             const block_q8_K *y) {
    float acc = 0.0f;
    kq_ints v;
    for (int64_t i = 0; i < nb; i++) {
        const int32_t *sc = w->sc + 16 * i;
        block_ints(type, w->qb + i * QK_K, sc, y + i, &v);
        int32_t s = v.s64[0] + v.s64[1] + v.s64[2] + v.s64[3];
        if (type == T_Q6_K) s -= 32 * bsum_dot(sc, y[i].bsums, 0, 16);
        float r = (float)s * w->d[i];
        if (has_min(type)) r = fmaf(-w->dmin[i], (float)bsum_dot(w->mn + 16 * i, y[i].bsums, 0, 16), r);
        acc = fmaf(r, y[i].d, acc); /* written as add(acc, mul(r, dy)); GCC contracts it */
    }
    return acc;
}

/* the repacked kernels; chunk = elements per float step (256 for gemv, 64 / 128 for gemm) */
static inline __attribute__((always_inline)) float out_x8(int type, const kq_row *w, int64_t nb,
                                                          const block_q8_K *y, int chunk) {
    float acc = 0.0f, accm = 0.0f;
    kq_ints v;
    const int per = chunk / 64, sub = chunk / 16;
    for (int64_t i = 0; i < nb; i++) {
        block_ints(type, w->qb + i * QK_K, w->sc + 16 * i, y + i, &v);
        const float dd = w->d[i] * y[i].d, dm = w->dmin[i] * y[i].d;
        for (int c = 0; c < 4 / per; c++) {
            int32_t s = 0;
            for (int p = c * per; p < (c + 1) * per; p++) s += v.s64[p];
            acc = fmaf((float)s, dd, acc);
            accm = fmaf((float)bsum_dot(w->mn + 16 * i, y[i].bsums, c * sub, (c + 1) * sub), dm, accm);
        }
    }
    return acc - accm;
}

/* -- products -------------------------------------------------------------------------------------- */

static inline int mode_for(const lm_weight *w, int64_t n, int64_t c) {
    if ((w->flags & LM_REPACKED) && (w->type == T_Q4_K || w->type == T_Q2_K)) return c < n - n % 4 ? KQ_GEMM8 : KQ_GEMV8;
    return n >= 8 ? KQ_TILED : KQ_VEC;
}

static inline __attribute__((always_inline)) void rows_of(int type, const lm_mm_args *a, int64_t r0, int64_t r1) {
    const lm_weight *w = a->w;
    const int64_t nb = w->cols / QK_K;
    _Alignas(64) uint8_t qb[nb * QK_K];
    int32_t sc[nb * 16], mn[nb * 16];
    float d[nb], dmin[nb];
    const kq_row row = {qb, sc, mn, d, dmin};
    if (!has_min(type)) memset(mn, 0, sizeof(mn));
    const int gemm_chunk = type == T_Q4_K ? 64 : 128;
    for (int64_t r = r0; r < r1; r++) {
        unpack_row(type, (const uint8_t *)w->data + r * w->row_bytes, nb, &row);
        for (int64_t c = 0; c < a->n; c++) {
            const block_q8_K *y = (const block_q8_K *)(a->act + c * a->act_row_bytes);
            float out;
            switch (mode_for(w, a->n, c)) {
                case KQ_VEC: out = out_vec(type, &row, nb, y); break;
                case KQ_TILED: out = out_tiled(type, &row, nb, y); break;
                case KQ_GEMV8: out = out_x8(type, &row, nb, y, QK_K); break;
                default: out = out_x8(type, &row, nb, y, gemm_chunk); break;
            }
            a->y[c * a->y_stride + r] = out;
        }
    }
}

/* -- batches (VNNI): 4 rows at a time, each column's activations read once for the 4 ------------------
 * The values are unpacked to bytes and multiplied by pairs (maddubs: |sum| <= 2 * 63 * 128 fits int16),
 * then by the sub-block scale (madd); IQ4_XS's biased values (up to 241) take dpbusd and a 32-bit multiply.
 * The bias of Q3_K, Q6_K and IQ4_XS comes out through the activation sums: bias * scale . bsums.
 * The integer sums are the same as block_ints'; the float steps per output are those of out_tiled / out_x8,
 * done for the 4 rows side by side (lane = row). */
#if KQ_VNNI
#define RB 4

typedef struct {
    _Alignas(64) uint8_t q[RB][QK_K];
    _Alignas(64) uint8_t sc[RB][256]; /* scale per element pair (int16 x 128), or per quad (int32 x 64, IQ4_XS) */
    _Alignas(64) int16_t fold[RB][16]; /* bias * scale per sub-block of 16 */
    _Alignas(64) int16_t mn[RB][16];
    float d[RB], dmin[RB];
} kq_blk4;

/* rows r0 .. r0 + RB - 1 (the last repeated when fewer remain) into nb blocks of kq_blk4 */
static void unpack_rows4(int type, const lm_weight *w, int64_t r0, int nr, int64_t nb, const kq_row *tmp, kq_blk4 *out) {
    const int bias = type == T_Q6_K ? 32 : quad_bias(type);
    for (int r = 0; r < RB; r++) {
        unpack_row(type, (const uint8_t *)w->data + (r0 + (r < nr ? r : nr - 1)) * w->row_bytes, nb, tmp);
        for (int64_t i = 0; i < nb; i++) {
            kq_blk4 *o = out + i;
            memcpy(o->q[r], tmp->qb + i * QK_K, QK_K);
            const int32_t *sc = tmp->sc + 16 * i;
            if (type == T_IQ4_XS) {
                int32_t *s32 = (int32_t *)o->sc[r];
                for (int j = 0; j < 64; j++) s32[j] = sc[j / 4];
            } else {
                int16_t *s16 = (int16_t *)o->sc[r];
                for (int j = 0; j < 128; j++) s16[j] = (int16_t)sc[j / 8];
            }
            for (int j = 0; j < 16; j++) {
                o->fold[r][j] = (int16_t)(bias * sc[j]);
                o->mn[r][j] = has_min(type) ? (int16_t)tmp->mn[16 * i + j] : 0;
            }
            o->d[r] = tmp->d[i];
            o->dmin[r] = has_min(type) ? tmp->dmin[i] : 0.0f;
        }
    }
}

/* four 16-lane vectors -> lane 4i + v: the sum of chunk i (4 lanes) of vector v */
static inline __m512i kq_reduce4(__m512i a, __m512i b, __m512i c, __m512i d) {
    const __m512i ab = _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
    const __m512i cd = _mm512_add_epi32(_mm512_unpacklo_epi32(c, d), _mm512_unpackhi_epi32(c, d));
    return _mm512_add_epi32(_mm512_unpacklo_epi64(ab, cd), _mm512_unpackhi_epi64(ab, cd));
}

/* the full sums of four vectors, lane v */
static inline __m128i kq_sum4(__m512i a, __m512i b, __m512i c, __m512i d) {
    __m512i x = kq_reduce4(a, b, c, d);
    x = _mm512_add_epi32(x, _mm512_shuffle_i32x4(x, x, 0x4E));
    x = _mm512_add_epi32(x, _mm512_shuffle_i32x4(x, x, 0xB1));
    return _mm512_castsi512_si128(x);
}

/* per row (lane): sum over sub-blocks of coef[row][j] * bsums[j], 16 int16 each */
static inline __m128i kq_bsum_dot4(const int16_t (*coef)[16], __m512i bs2) {
    const __m512i a = _mm512_madd_epi16(bs2, _mm512_load_si512(coef[0])); /* rows 0, 1: 8 lanes each */
    const __m512i b = _mm512_madd_epi16(bs2, _mm512_load_si512(coef[2])); /* rows 2, 3 */
    __m512i s = _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
    s = _mm512_add_epi32(s, _mm512_shuffle_epi32(s, 0x4E));      /* chunk k: [a_k, b_k, ...] */
    s = _mm512_add_epi32(s, _mm512_shuffle_i32x4(s, s, 0xB1));   /* chunk 0: rows 0, 2; chunk 2: rows 1, 3 */
    return _mm512_castsi512_si128(_mm512_permutexvar_epi32(_mm512_setr_epi32(0, 8, 1, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), s));
}

/* per row (lane 4 * row + chunk) the sums over chunks of 64 (per = 1) or 128 (per = 2) elements */
static inline __m512i kq_chunk_mins(const int16_t (*mn)[16], __m512i bs2, int per) {
    const __m512i a = _mm512_madd_epi16(bs2, _mm512_load_si512(mn[0])), b = _mm512_madd_epi16(bs2, _mm512_load_si512(mn[2]));
    /* lane m of a row: sub-blocks 2m, 2m+1; chunk p of 64 = lanes 2p, 2p+1; of 128 = lanes 4p .. 4p+3 */
    __m512i ta = _mm512_add_epi32(a, _mm512_shuffle_epi32(a, 0xB1)), tb = _mm512_add_epi32(b, _mm512_shuffle_epi32(b, 0xB1));
    if (per == 1)
        return _mm512_permutex2var_epi32(ta, _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30), tb);
    ta = _mm512_add_epi32(ta, _mm512_shuffle_epi32(ta, 0x4E)), tb = _mm512_add_epi32(tb, _mm512_shuffle_epi32(tb, 0x4E));
    return _mm512_permutex2var_epi32(ta, _mm512_setr_epi32(0, 4, 0, 0, 8, 12, 0, 0, 16, 20, 0, 0, 24, 28, 0, 0), tb);
}

enum { KB_TILED, KB_GEMV8, KB_GEMM8 };

static inline __attribute__((always_inline)) void batch_rows4(int type, const lm_mm_args *a, const kq_blk4 *blk,
                                                              int64_t nb, int64_t r0, int nr) {
    const int fold = type == T_Q3_K || type == T_Q6_K || type == T_IQ4_XS;
    const int repacked = (a->w->flags & LM_REPACKED) && (type == T_Q4_K || type == T_Q2_K);
    const int per = type == T_Q4_K ? 1 : 2; /* gemm chunk: 64 or 128 elements */
    for (int64_t c = 0; c < a->n; c++) {
        const int mode = !repacked ? KB_TILED : c < a->n - a->n % 4 ? KB_GEMM8 : KB_GEMV8;
        const block_q8_K *y = (const block_q8_K *)(a->act + c * a->act_row_bytes);
        __m128 acc = _mm_setzero_ps(), accm = _mm_setzero_ps();
        for (int64_t i = 0; i < nb; i++) {
            const kq_blk4 *b = blk + i;
            __m512i v[RB][4];
            for (int p = 0; p < 4; p++) {
                const __m512i yp = _mm512_loadu_si512(y[i].qs + 64 * p);
                for (int r = 0; r < RB; r++) {
                    const __m512i q = _mm512_load_si512(b->q[r] + 64 * p), sc = _mm512_load_si512(b->sc[r] + 64 * p);
                    v[r][p] = type == T_IQ4_XS ? _mm512_mullo_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), q, yp), sc)
                                               : _mm512_madd_epi16(_mm512_maddubs_epi16(q, yp), sc);
                }
            }
            const __m512i bs2 = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)y[i].bsums));
            const __m128 d4 = _mm_load_ps(b->d), dy = _mm_set1_ps(y[i].d);
            if (mode == KB_GEMM8) {
                /* lane 4 * row + chunk: S per chunk (Q2_K: chunks of 128 as pairs of 64) */
                __m512i t[RB];
                for (int r = 0; r < RB; r++) {
                    const __m512i z = _mm512_setzero_si512();
                    t[r] = per == 1 ? kq_reduce4(v[r][0], v[r][1], v[r][2], v[r][3])
                                    : kq_reduce4(_mm512_add_epi32(v[r][0], v[r][1]), _mm512_add_epi32(v[r][2], v[r][3]), z, z);
                }
                /* t[r] lane 4k + p: chunk k of v[r][p]; sum the chunks k, row r into 128-bit chunk r */
                const __m512i ab = _mm512_add_epi32(_mm512_shuffle_i32x4(t[0], t[1], 0x44), _mm512_shuffle_i32x4(t[0], t[1], 0xEE));
                const __m512i cd = _mm512_add_epi32(_mm512_shuffle_i32x4(t[2], t[3], 0x44), _mm512_shuffle_i32x4(t[2], t[3], 0xEE));
                const __m512i s = _mm512_add_epi32(_mm512_shuffle_i32x4(ab, cd, 0x88), _mm512_shuffle_i32x4(ab, cd, 0xDD));
                const __m512 sf = _mm512_cvtepi32_ps(s), mf = _mm512_cvtepi32_ps(kq_chunk_mins(b->mn, bs2, per));
                const __m128 dd = _mm_mul_ps(d4, dy), dm = _mm_mul_ps(_mm_load_ps(b->dmin), dy);
                for (int p = 0; p < 4 / per; p++) {
                    const __m512i pick = _mm512_setr_epi32(p, 4 + p, 8 + p, 12 + p, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
                    acc = _mm_fmadd_ps(_mm512_castps512_ps128(_mm512_permutexvar_ps(pick, sf)), dd, acc);
                    accm = _mm_fmadd_ps(_mm512_castps512_ps128(_mm512_permutexvar_ps(pick, mf)), dm, accm);
                }
                continue;
            }
            __m512i tot[RB];
            for (int r = 0; r < RB; r++)
                tot[r] = _mm512_add_epi32(_mm512_add_epi32(v[r][0], v[r][1]), _mm512_add_epi32(v[r][2], v[r][3]));
            __m128i s4 = kq_sum4(tot[0], tot[1], tot[2], tot[3]);
            if (fold) s4 = _mm_sub_epi32(s4, kq_bsum_dot4(b->fold, bs2));
            if (mode == KB_GEMV8) {
                acc = _mm_fmadd_ps(_mm_cvtepi32_ps(s4), _mm_mul_ps(d4, dy), acc);
                accm = _mm_fmadd_ps(_mm_cvtepi32_ps(kq_bsum_dot4(b->mn, bs2)), _mm_mul_ps(_mm_load_ps(b->dmin), dy), accm);
            } else { /* out_tiled: r = S*d - dmin*M, acc += r * dy */
                __m128 rr = _mm_mul_ps(_mm_cvtepi32_ps(s4), d4);
                if (has_min(type))
                    rr = _mm_fmadd_ps(_mm_xor_ps(_mm_load_ps(b->dmin), _mm_set1_ps(-0.0f)), _mm_cvtepi32_ps(kq_bsum_dot4(b->mn, bs2)), rr);
                acc = _mm_fmadd_ps(rr, dy, acc);
            }
        }
        float out[4];
        _mm_storeu_ps(out, mode == KB_TILED ? acc : _mm_sub_ps(acc, accm));
        for (int r = 0; r < nr; r++) a->y[c * a->y_stride + r0 + r] = out[r];
    }
}

/* 1 when done: batches of enough columns, with memory for the unpacked rows */
static inline __attribute__((always_inline)) int batch_of(int type, const lm_mm_args *a, int64_t r0, int64_t r1) {
    const lm_weight *w = a->w;
    const int repacked = (w->flags & LM_REPACKED) && (type == T_Q4_K || type == T_Q2_K);
    if (a->n < (repacked ? 4 : 8)) return 0; /* fewer: ggml_vec_dot's arithmetic (or gemv for all columns) */
    const int64_t nb = w->cols / QK_K;
    kq_blk4 *blk = aligned_alloc(64, (size_t)nb * sizeof(kq_blk4));
    uint8_t *scratch = malloc((size_t)nb * (QK_K + 16 * 2 * sizeof(int32_t) + 2 * sizeof(float)));
    if (!blk || !scratch) {
        free(blk), free(scratch);
        return 0;
    }
    int32_t *sc = (int32_t *)(scratch + nb * QK_K), *mn = sc + nb * 16;
    float *d = (float *)(mn + nb * 16), *dmin = d + nb;
    const kq_row tmp = {scratch, sc, mn, d, dmin};
    if (!has_min(type)) memset(mn, 0, (size_t)nb * 16 * sizeof(int32_t));
    for (int64_t r = r0; r < r1; r += RB) {
        const int nr = (int)(r1 - r < RB ? r1 - r : RB);
        unpack_rows4(type, w, r, nr, nb, &tmp, blk);
        batch_rows4(type, a, blk, nb, r, nr);
    }
    free(blk), free(scratch);
    return 1;
}
#endif

/* one instantiation per type, so the compiler specialises the inlined loops */
#if KQ_VNNI
#define KQ_ROWS(name, T)                                                     \
    static void rows_##name(const lm_mm_args *a, int64_t r0, int64_t r1) { \
        if (!batch_of(T, a, r0, r1)) rows_of(T, a, r0, r1);                  \
    }
#else
#define KQ_ROWS(name, T) \
    static void rows_##name(const lm_mm_args *a, int64_t r0, int64_t r1) { rows_of(T, a, r0, r1); }
#endif
KQ_ROWS(q2_K, T_Q2_K)
KQ_ROWS(q3_K, T_Q3_K)
KQ_ROWS(q4_K, T_Q4_K)
KQ_ROWS(q5_K, T_Q5_K)
KQ_ROWS(q6_K, T_Q6_K)
KQ_ROWS(iq4_xs, T_IQ4_XS)

void lm_mm_kquant(const lm_mm_args *a, int64_t r0, int64_t r1) {
    switch (a->w->type) {
        case T_Q2_K: rows_q2_K(a, r0, r1); break;
        case T_Q3_K: rows_q3_K(a, r0, r1); break;
        case T_Q4_K: rows_q4_K(a, r0, r1); break;
        case T_Q5_K: rows_q5_K(a, r0, r1); break;
        case T_Q6_K: rows_q6_K(a, r0, r1); break;
        case T_IQ4_XS: rows_iq4_xs(a, r0, r1); break;
        default: break;
    }
}

float lm_kquant_vec_dot(int wtype, int64_t k, const void *w, const void *act) {
    const lm_weight weight = {w, wtype, 1, k, 0, 0};
    float y = NAN;
    const lm_mm_args args = {&weight, act, 0, 1, &y, 1, NULL};
    if (lm_is_kquant(wtype) && k % QK_K == 0) lm_mm_kquant(&args, 0, 1);
    return y;
}
