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

/* one instantiation per type, so the compiler specialises the inlined loops */
static void rows_q2_K(const lm_mm_args *a, int64_t r0, int64_t r1) { rows_of(T_Q2_K, a, r0, r1); }
static void rows_q3_K(const lm_mm_args *a, int64_t r0, int64_t r1) { rows_of(T_Q3_K, a, r0, r1); }
static void rows_q4_K(const lm_mm_args *a, int64_t r0, int64_t r1) { rows_of(T_Q4_K, a, r0, r1); }
static void rows_q5_K(const lm_mm_args *a, int64_t r0, int64_t r1) { rows_of(T_Q5_K, a, r0, r1); }
static void rows_q6_K(const lm_mm_args *a, int64_t r0, int64_t r1) { rows_of(T_Q6_K, a, r0, r1); }
static void rows_iq4_xs(const lm_mm_args *a, int64_t r0, int64_t r1) { rows_of(T_IQ4_XS, a, r0, r1); }

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
