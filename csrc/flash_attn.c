/* Flash attention as llama.cpp's CPU backend computes it (ggml-cpu/ops.cpp, ggml_compute_forward_flash_attn_ext_f16
 * and the helpers it calls), operation for operation, for f16 K/V, llama.cpp's f16 causal mask, and no ALiBi,
 * softcap or sinks, on the AVX-512 build (GGML_F32_EPR = GGML_F16_EPR = 16, no AVX512-FP16). ggml runs one of:
 *   (a) tiled (ggml_compute_forward_flash_attn_ext_tiled) when n_tok >= GGML_FA_TILE_Q = 64: Q in f32, K and V
 *       tiles of GGML_FA_TILE_KV = 64 keys converted to f32, scores and P.V by simd_gemm (one fma chain per
 *       element), online softmax per tile (ggml_vec_soft_max_f32: ggml_v_expf, chunk sums added in double);
 *   (b) one chunk (ggml_compute_forward_flash_attn_ext_f16_one_chunk) otherwise: Q rounded to f16, one key at a
 *       time (ggml_vec_dot_f16), online softmax with libm expf, V summed in an f16 accumulator
 *       (ggml_vec_mad_f16, ggml_vec_scale_f16);
 *   (c) split KV when n_tok == 1 and the padded key count n_kv >= 512: thread i runs (b) over key chunk i of nth,
 *       then ggml_flash_attn_ext_reduce_partials merges the chunks, so the result depends on nth.
 * In (a) and (b) every (query, head) row is independent of the others, so rows are grouped differently from
 * ggml: blocks of up to 64 rows that share a KV head, converting each K/V tile once for a whole GQA group. */
#include "flash_attn.h"

#include <stdlib.h>

#include "ops.h"
#include "simd.h"

#define FA_TILE 64 /* GGML_FA_TILE_Q = GGML_FA_TILE_KV = 64 */

typedef struct {
    const float *q;
    const lm_half *k, *v;
    float *out;
    int64_t n_tok, n_heads, n_kv_heads, D, rep, cap, pos0;
    float scale;
} fa_args;

/* -- scalar helpers --------------------------------------------------------------------------------------- */

/* ops.cpp is built with GCC's default -ffp-contract=fast: the one-chunk path's S = S*ms + vs runs as one fma
 * (checked against the llama-cpp-python build; the unfused form differs) */
static inline float fa_s_update(float S, float ms, float vs) { return fmaf(S, ms, vs); }

/* ggml_vec_dot_f16(D, K row, Q as f16): 4 x 16 lanes over 64-element steps, (a0+a2) + (a1+a3), then
 * _mm512_reduce_add_ps into a double; elements past the last full step added in double. qf holds the f16
 * query as floats. */
static inline float fa_dot_f16(const lm_half *k, const float *qf, int64_t D) {
    const int64_t np = D & ~(int64_t)63;
    double sum;
#if LM_AVX512
    {
        __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps(), acc2 = _mm512_setzero_ps(),
               acc3 = _mm512_setzero_ps();
        for (int64_t e = 0; e < np; e += 64) {
            acc0 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(k + e))), _mm512_loadu_ps(qf + e), acc0);
            acc1 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(k + e + 16))), _mm512_loadu_ps(qf + e + 16), acc1);
            acc2 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(k + e + 32))), _mm512_loadu_ps(qf + e + 32), acc2);
            acc3 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(k + e + 48))), _mm512_loadu_ps(qf + e + 48), acc3);
        }
        acc0 = _mm512_add_ps(acc0, acc2);
        acc1 = _mm512_add_ps(acc1, acc3);
        sum = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
    }
#else
    {
        float acc[4][16] = {{0}};
        for (int64_t e = 0; e < np; e++) acc[(e & 63) >> 4][e & 15] = fmaf(lm_h2f(k[e]), qf[e], acc[(e & 63) >> 4][e & 15]);
        for (int l = 0; l < 16; l++) {
            acc[0][l] += acc[2][l];
            acc[1][l] += acc[3][l];
        }
        for (int l = 0; l < 16; l++) acc[0][l] += acc[1][l];
        sum = lm_hsum16(acc[0]);
    }
#endif
    for (int64_t e = np; e < D; e++) sum += (double)(lm_h2f(k[e]) * qf[e]);
    return (float)sum;
}

/* ggml_vec_scale_f16 (for a key that raised the maximum, ms != 1) then ggml_vec_mad_f16, for n consecutive keys:
 * per element y = f16(y * ms), y = f16(fma(x, vs, y)); ggml's 64-wide vector body and its leftover loop (where
 * GCC contracts y + x*v) give the same per element, so any split of d does. x: the V rows in f32. */
#if LM_AVX512
/* R rows at once (the same keys and V rows, their own weights), nv vectors of d from d0: R independent f16
 * chains, so the conversion latency of one row's chain overlaps the others' */
static inline __attribute__((always_inline)) void fa_acc_chunk(lm_half *const *y, const float *vt,
                                                               const float (*ms)[FA_TILE],
                                                               const float (*vs)[FA_TILE], const int R, int64_t n,
                                                               int64_t D, int64_t d0, const int nv) {
    __mmask16 m[8];
    __m512 acc[4][8];
    for (int j = 0; j < nv; j++) {
        const int64_t left = D - d0 - 16 * j;
        m[j] = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
        for (int r = 0; r < R; r++) acc[r][j] = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m[j], y[r] + d0 + 16 * j));
    }
    for (int64_t k = 0; k < n; k++) {
        __m512 vv[4];
        for (int r = 0; r < R; r++) {
            if (ms[r][k] != 1.0f) {
                const __m512 sv = _mm512_set1_ps(ms[r][k]);
                for (int j = 0; j < nv; j++) acc[r][j] = _mm512_cvtph_ps(_mm512_cvtps_ph(_mm512_mul_ps(acc[r][j], sv), 0));
            }
            vv[r] = _mm512_set1_ps(vs[r][k]);
        }
        for (int j = 0; j < nv; j++) {
            const __m512 x = _mm512_maskz_loadu_ps(m[j], vt + k * D + d0 + 16 * j);
            for (int r = 0; r < R; r++) acc[r][j] = _mm512_cvtph_ps(_mm512_cvtps_ph(_mm512_fmadd_ps(x, vv[r], acc[r][j]), 0));
        }
    }
    for (int j = 0; j < nv; j++)
        for (int r = 0; r < R; r++) _mm256_mask_storeu_epi16(y[r] + d0 + 16 * j, m[j], _mm512_cvtps_ph(acc[r][j], 0));
}
#endif

/* R (1..4) rows' accumulators y[r] over n keys with weights ms[r][k], vs[r][k] */
static void fa_accumulate(lm_half *const *y, const float *vt, const float (*ms)[FA_TILE], const float (*vs)[FA_TILE],
                          int R, int64_t n, int64_t D) {
#if LM_AVX512
    for (int64_t d0 = 0; d0 < D; d0 += 128) { /* up to 8 vectors per row stay in registers */
        const int64_t left = (D - d0 + 15) / 16, nv = left >= 8 ? 8 : left;
        if (nv == 4 && R == 4) {
            fa_acc_chunk(y, vt, ms, vs, 4, n, D, d0, 4);
        } else if (nv == 4 && R == 3) {
            fa_acc_chunk(y, vt, ms, vs, 3, n, D, d0, 4);
        } else if (nv == 4 && R == 2) {
            fa_acc_chunk(y, vt, ms, vs, 2, n, D, d0, 4);
        } else if (nv == 8 && R == 3) {
            fa_acc_chunk(y, vt, ms, vs, 3, n, D, d0, 8);
        } else if (nv == 8 && R == 2) {
            fa_acc_chunk(y, vt, ms, vs, 2, n, D, d0, 8);
        } else {
            for (int r = 0; r < R; r++) {
                switch (nv) {
                case 1: fa_acc_chunk(y + r, vt, ms + r, vs + r, 1, n, D, d0, 1); break;
                case 2: fa_acc_chunk(y + r, vt, ms + r, vs + r, 1, n, D, d0, 2); break;
                case 3: fa_acc_chunk(y + r, vt, ms + r, vs + r, 1, n, D, d0, 3); break;
                case 4: fa_acc_chunk(y + r, vt, ms + r, vs + r, 1, n, D, d0, 4); break;
                case 5: fa_acc_chunk(y + r, vt, ms + r, vs + r, 1, n, D, d0, 5); break;
                case 6: fa_acc_chunk(y + r, vt, ms + r, vs + r, 1, n, D, d0, 6); break;
                case 7: fa_acc_chunk(y + r, vt, ms + r, vs + r, 1, n, D, d0, 7); break;
                default: fa_acc_chunk(y + r, vt, ms + r, vs + r, 1, n, D, d0, 8); break;
                }
            }
        }
    }
#else
    for (int r = 0; r < R; r++) {
        for (int64_t d = 0; d < D; d++) {
            float yv = lm_h2f(y[r][d]);
            for (int64_t k = 0; k < n; k++) {
                if (ms[r][k] != 1.0f) yv = lm_h2f(lm_f2h(yv * ms[r][k]));
                yv = lm_h2f(lm_f2h(fmaf(vt[k * D + d], vs[r][k], yv)));
            }
            y[r][d] = lm_f2h(yv);
        }
    }
#endif
}

/* ggml_vec_scale_f32 (a plain product per element) */
static inline void fa_scale_f32(float *y, float v, int64_t D) {
    int64_t i = 0;
#if LM_AVX512
    for (; i + 16 <= D; i += 16) _mm512_storeu_ps(y + i, _mm512_mul_ps(_mm512_loadu_ps(y + i), _mm512_set1_ps(v)));
#endif
    for (; i < D; i++) y[i] *= v;
}

/* dst[c * dst_stride + r] = f32(src[r * src_stride + c]) for r < rows, c < cols: the K and V tiles change
 * orientation on the way to f32 (exact conversions, so only speed depends on how) */
static void fa_tr_h2f(const lm_half *src, int64_t src_stride, int64_t rows, int64_t cols, float *dst,
                      int64_t dst_stride) {
#if LM_AVX512
    for (int64_t r0 = 0; r0 < rows; r0 += 16) {
        const int64_t nrow = rows - r0 < 16 ? rows - r0 : 16;
        const __mmask16 rmask = nrow == 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << nrow) - 1);
        for (int64_t c0 = 0; c0 < cols; c0 += 16) {
            const int64_t ncol = cols - c0 < 16 ? cols - c0 : 16;
            const __mmask16 cmask = ncol == 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << ncol) - 1);
            __m512 r[16], t[16];
            for (int i = 0; i < 16; i++) {
                r[i] = i < nrow ? _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(cmask, src + (r0 + i) * src_stride + c0))
                                : _mm512_setzero_ps();
            }
            for (int i = 0; i < 16; i += 2) {
                t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
                t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
            }
            for (int i = 0; i < 16; i += 4) {
                r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
                r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
                r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
                r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
            }
            for (int i = 0; i < 4; i++) {
                t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
                t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xDD);
                t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
                t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xDD);
            }
            for (int i = 0; i < 8; i++) {
                r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
                r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xDD);
            }
            for (int c = 0; c < ncol; c++) _mm512_mask_storeu_ps(dst + (c0 + c) * dst_stride + r0, rmask, r[c]);
        }
    }
#else
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) dst[c * dst_stride + r] = lm_h2f(src[r * src_stride + c]);
#endif
}

/* -- (b) one chunk: rows [r0, r1) of KV head hk over keys [k_lo, k_hi) ---------------------------------------- */

/* ggml_compute_forward_flash_attn_ext_f16_one_chunk for f16 V. Keys are visited in order per row; V is read
 * through a transposed tile of 64 keys (our cache stores V as (head_dim, position)). Writes the normalised
 * output, or with partials the unnormalised (M, S, VKQ) of chunk ith of nth, as the split-KV path does. */
static void fa_one_chunk(const fa_args *a, int64_t hk, int64_t r0, int64_t r1, int64_t k_lo, int64_t k_hi,
                         float *partials, int ith, int nth, float *scr) {
    const int64_t D = a->D, rep = a->rep, nr = r1 - r0;
    float *qf = scr;                              /* FA_TILE x D: queries rounded to f16, as floats */
    float *vt = qf + FA_TILE * D;                 /* FA_TILE keys x D: the V tile in f32, key-major */
    float *M = vt + FA_TILE * D, *S = M + FA_TILE;
    lm_half *vkq = (lm_half *)(S + FA_TILE);      /* FA_TILE x D f16 accumulators (VKQ16) */
    int64_t lim[FA_TILE], kmax = k_lo;
    for (int64_t i = 0; i < nr; i++) {
        const int64_t r = r0 + i, t = r / rep, h = hk * rep + r % rep;
        const float *qr = a->q + (t * a->n_heads + h) * D;
        for (int64_t d = 0; d < D; d++) qf[i * D + d] = lm_h2f(lm_f2h(qr[d])); /* q_to_vec_dot: f32 -> f16 */
        memset(vkq + i * D, 0, (size_t)D * sizeof(lm_half));
        M[i] = -INFINITY;
        S[i] = 0.0f;
        const int64_t vis = a->pos0 + t + 1; /* the mask keeps keys at positions <= the query's */
        lim[i] = vis < k_hi ? vis : k_hi;
        if (lim[i] > kmax) kmax = lim[i];
    }
    const lm_half *kh = a->k + hk * a->cap * D, *vh = a->v + hk * D * a->cap;
    for (int64_t ic = k_lo; ic < kmax; ic += FA_TILE) {
        const int64_t nk = kmax - ic < FA_TILE ? kmax - ic : FA_TILE;
        fa_tr_h2f(vh + ic, a->cap, D, nk, vt, D);
        for (int64_t i0 = 0; i0 < nr;) {
            /* up to 4 consecutive rows that see the same keys of this tile (the heads of one token) */
            const int64_t kend = lim[i0] < ic + nk ? lim[i0] : ic + nk, n = kend - ic;
            int R = 1;
            while (R < 4 && i0 + R < nr && lim[i0 + R] == lim[i0]) R++;
            float ms[4][FA_TILE], vs[4][FA_TILE];
            lm_half *acc[4];
            for (int r = 0; r < R; r++) {
                const int64_t i = i0 + r;
                float Mi = M[i], Si = S[i];
                acc[r] = vkq + i * D;
                /* the scalar recurrence (M, S and each key's weights) needs only the scores, so it runs first
                 * and the accumulators' f16 chains after it, without libm calls in between */
                for (int64_t kk = 0; kk < n; kk++) vs[r][kk] = fa_dot_f16(kh + (ic + kk) * D, qf + i * D, D) * a->scale;
                for (int64_t kk = 0; kk < n; kk++) {
                    const float s = vs[r][kk], Mold = Mi;
                    ms[r][kk] = 1.0f;
                    if (s > Mi) { /* new maximum: the accumulator is rescaled, this key's weight is 1 */
                        Mi = s;
                        ms[r][kk] = expf(Mold - Mi);
                        vs[r][kk] = 1.0f;
                    } else {
                        vs[r][kk] = expf(s - Mi);
                    }
                    Si = fa_s_update(Si, ms[r][kk], vs[r][kk]);
                }
                M[i] = Mi;
                S[i] = Si;
            }
            if (n > 0) fa_accumulate(acc, vt, (const float(*)[FA_TILE])ms, (const float(*)[FA_TILE])vs, R, n, D);
            i0 += R;
        }
    }
    for (int64_t i = 0; i < nr; i++) {
        const int64_t r = r0 + i, t = r / rep, h = hk * rep + r % rep;
        if (partials) { /* [M, S, VKQ] of head h, chunk ith (ggml's partial layout [head][chunk][2 + D]) */
            float *p = partials + (h * nth + ith) * (2 + D);
            p[0] = M[i];
            p[1] = S[i];
            for (int64_t d = 0; d < D; d++) p[2 + d] = lm_h2f(vkq[i * D + d]);
        } else {
            float *o = a->out + (t * a->n_heads + h) * D;
            for (int64_t d = 0; d < D; d++) o[d] = lm_h2f(vkq[i * D + d]);
            fa_scale_f32(o, S[i] == 0.0f ? 0.0f : 1.0f / S[i], D);
        }
    }
}

/* -- (a) tiled --------------------------------------------------------------------------------------------- */

/* KQ rows (n of them, 1 or 4) = q_r . K tile, as simd_gemm's ukernel: per element an fma chain over d from 0,
 * K tile transposed (kt[d][key]), then ggml_vec_scale_f32 by scale */
static inline __attribute__((always_inline)) void fa_kq_rows(const float *const *qr, int n, const float *kt,
                                                             int64_t D, float scale, float *kq) {
#if LM_AVX512
    __m512 c[4][4];
    for (int i = 0; i < n; i++)
        for (int j = 0; j < 4; j++) c[i][j] = _mm512_setzero_ps();
    for (int64_t d = 0; d < D; d++) {
        __m512 b[4];
        for (int j = 0; j < 4; j++) b[j] = _mm512_loadu_ps(kt + d * FA_TILE + 16 * j);
        for (int i = 0; i < n; i++) {
            const __m512 p = _mm512_set1_ps(qr[i][d]);
            for (int j = 0; j < 4; j++) c[i][j] = _mm512_fmadd_ps(b[j], p, c[i][j]);
        }
    }
    for (int i = 0; i < n; i++)
        for (int j = 0; j < 4; j++) _mm512_storeu_ps(kq + i * FA_TILE + 16 * j, _mm512_mul_ps(c[i][j], _mm512_set1_ps(scale)));
#else
    for (int i = 0; i < n; i++) {
        for (int kk = 0; kk < FA_TILE; kk++) {
            float acc = 0.0f;
            for (int64_t d = 0; d < D; d++) acc = fmaf(kt[d * FA_TILE + kk], qr[i][d], acc);
            kq[i * FA_TILE + kk] = acc * scale;
        }
    }
#endif
}

/* VKQ rows += P rows . V tile (v32[key][d]), as simd_gemm: per element an fma chain over the 64 keys */
static inline __attribute__((always_inline)) void fa_pv_rows(const float *kq, int n, const float *v32, int64_t D,
                                                             float *const *vkq) {
#if LM_AVX512
    for (int64_t d0 = 0; d0 < D; d0 += 64) {
        __mmask16 m[4];
        for (int j = 0; j < 4; j++) {
            const int64_t left = D - d0 - 16 * j;
            m[j] = left >= 16 ? (__mmask16)0xFFFF : left <= 0 ? (__mmask16)0 : (__mmask16)((1u << left) - 1);
        }
        __m512 c[4][4];
        for (int i = 0; i < n; i++)
            for (int j = 0; j < 4; j++) c[i][j] = _mm512_maskz_loadu_ps(m[j], vkq[i] + d0 + 16 * j);
        for (int kk = 0; kk < FA_TILE; kk++) {
            __m512 b[4];
            for (int j = 0; j < 4; j++) b[j] = _mm512_maskz_loadu_ps(m[j], v32 + kk * D + d0 + 16 * j);
            for (int i = 0; i < n; i++) {
                const __m512 p = _mm512_set1_ps(kq[i * FA_TILE + kk]);
                for (int j = 0; j < 4; j++) c[i][j] = _mm512_fmadd_ps(b[j], p, c[i][j]);
            }
        }
        for (int i = 0; i < n; i++)
            for (int j = 0; j < 4; j++) _mm512_mask_storeu_ps(vkq[i] + d0 + 16 * j, m[j], c[i][j]);
    }
#else
    for (int i = 0; i < n; i++) {
        for (int64_t d = 0; d < D; d++) {
            float acc = vkq[i][d];
            for (int kk = 0; kk < FA_TILE; kk++) acc = fmaf(v32[kk * D + d], kq[i * FA_TILE + kk], acc);
            vkq[i][d] = acc;
        }
    }
#endif
}

/* the online-softmax step of the tiled path for one row: returns 0 if the row has no key in this tile
 * (ggml then zeroes its P row), else turns kq into exp(kq - M) and updates M, S and the accumulator */
static int fa_tile_softmax(float *kq, float *M, float *S, float *vkq, int64_t D) {
    /* ggml_vec_max_f32 (in any order: the maximum is exact, and the sign of a zero maximum changes no result) */
#if LM_AVX512
    const float tmax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(_mm512_loadu_ps(kq), _mm512_loadu_ps(kq + 16)),
                                                          _mm512_max_ps(_mm512_loadu_ps(kq + 32), _mm512_loadu_ps(kq + 48))));
#else
    float tmax = -INFINITY;
    for (int kk = 0; kk < FA_TILE; kk++) tmax = tmax > kq[kk] ? tmax : kq[kk];
#endif
    if (tmax == -INFINITY) return 0;
    const float Mold = *M, Mnew = fmaxf(Mold, tmax);
    if (Mnew > Mold) {
        const float ms = expf(Mold - Mnew);
        fa_scale_f32(vkq, ms, D);
        *S *= ms;
    }
    *M = Mnew;
    /* ggml_vec_soft_max_f32: 16-wide ggml_v_expf, each chunk's lane sum added in double; S += that double */
    double sum = 0.0;
    for (int c = 0; c < FA_TILE; c += 16) {
#if LM_AVX512
        const __m512 val = lm_expf16(_mm512_sub_ps(_mm512_loadu_ps(kq + c), _mm512_set1_ps(Mnew)));
        _mm512_storeu_ps(kq + c, val);
        sum += (double)_mm512_reduce_add_ps(val);
#else
        for (int l = 0; l < 16; l++) kq[c + l] = lm_expf(kq[c + l] - Mnew);
        sum += (double)lm_hsum16(kq + c);
#endif
    }
    *S = (float)((double)*S + sum);
    return 1;
}

/* ggml_compute_forward_flash_attn_ext_tiled for rows [r0, r1) of KV head hk (at most 64) */
static void fa_tiled(const fa_args *a, int64_t hk, int64_t r0, int64_t r1, float *scr) {
    const int64_t D = a->D, rep = a->rep, nr = r1 - r0;
    float *kt = scr;              /* D x 64: the K tile in f32, transposed */
    float *v32 = kt + D * FA_TILE; /* 64 x D: the V tile in f32 */
    float *kq = v32 + FA_TILE * D; /* rows x 64: scores, then probabilities */
    float *vkq = kq + FA_TILE * FA_TILE;
    float *M = vkq + FA_TILE * D, *S = M + FA_TILE;
    const float *qr[FA_TILE];
    float *acc[FA_TILE];
    int64_t vis[FA_TILE], kmax = 0;
    for (int64_t i = 0; i < nr; i++) {
        const int64_t r = r0 + i, t = r / rep, h = hk * rep + r % rep;
        qr[i] = a->q + (t * a->n_heads + h) * D;
        acc[i] = vkq + i * D;
        memset(acc[i], 0, (size_t)D * sizeof(float));
        M[i] = -INFINITY;
        S[i] = 0.0f;
        vis[i] = a->pos0 + t + 1;
        if (vis[i] > kmax) kmax = vis[i];
    }
    const lm_half *kh = a->k + hk * a->cap * D, *vh = a->v + hk * D * a->cap;
    /* ggml skips a KV tile when the mask hides all of it from its q tile and adds zero products for a row that
     * sees none of a processed one, so visiting the tiles this block sees gives the same values (only the sign
     * of an exactly zero accumulator lane, possible after exp underflow, could differ; it compares equal) */
    for (int64_t ic = 0; ic < kmax; ic += FA_TILE) {
        const int64_t nk = kmax - ic < FA_TILE ? kmax - ic : FA_TILE;
        fa_tr_h2f(kh + ic * D, D, nk, D, kt, FA_TILE);
        fa_tr_h2f(vh + ic, a->cap, D, nk, v32, D);
        if (nk < FA_TILE) { /* keys past the last one: zero (finite) K and V; the mask makes them -inf */
            for (int64_t d = 0; d < D; d++) memset(kt + d * FA_TILE + nk, 0, (size_t)(FA_TILE - nk) * sizeof(float));
            memset(v32 + nk * D, 0, (size_t)((FA_TILE - nk) * D) * sizeof(float));
        }
        int64_t i = 0;
        for (; i + 4 <= nr; i += 4) {
            if (vis[i] <= ic && vis[i + 3] <= ic && vis[i + 1] <= ic && vis[i + 2] <= ic) {
                for (int64_t kk = 0; kk < 4 * FA_TILE; kk++) kq[i * FA_TILE + kk] = -INFINITY;
            } else {
                fa_kq_rows(qr + i, 4, kt, D, a->scale, kq + i * FA_TILE);
            }
        }
        for (; i < nr; i++) fa_kq_rows(qr + i, 1, kt, D, a->scale, kq + i * FA_TILE);
        for (i = 0; i < nr; i++) {
            float *row = kq + i * FA_TILE;
            const int64_t seen = vis[i] - ic; /* keys of this tile the row may attend to */
            for (int64_t kk = seen < 0 ? 0 : seen; kk < FA_TILE; kk++) row[kk] = -INFINITY;
            if (!fa_tile_softmax(row, M + i, S + i, acc[i], D)) memset(row, 0, FA_TILE * sizeof(float));
        }
        for (i = 0; i + 4 <= nr; i += 4) fa_pv_rows(kq + i * FA_TILE, 4, v32, D, acc + i);
        for (; i < nr; i++) fa_pv_rows(kq + i * FA_TILE, 1, v32, D, acc + i);
    }
    for (int64_t i = 0; i < nr; i++) {
        const int64_t r = r0 + i, t = r / rep, h = hk * rep + r % rep;
        fa_scale_f32(acc[i], S[i] == 0.0f ? 0.0f : 1.0f / S[i], D);
        memcpy(a->out + (t * a->n_heads + h) * D, acc[i], (size_t)D * sizeof(float));
    }
}

/* -- (c) the split-KV merge --------------------------------------------------------------------------------- */

/* the merge's VKQ*scale_old + VKQ_chunk*scale_new, as GCC contracts it: the first product fused (checked against
 * the llama-cpp-python build; unfused or the other product fused differ) */
static inline float fa_merge(float a, float sa, float b, float sb) { return fmaf(a, sa, b * sb); }

/* ggml_flash_attn_ext_reduce_partials: head h's chunks merged in order, then normalised */
static void fa_reduce(const fa_args *a, const float *partials, int64_t n_kv, int64_t chunk, int64_t h, int nth,
                      float *vkq) {
    const int64_t D = a->D;
    float Mf = -INFINITY, Sf = 0.0f;
    memset(vkq, 0, (size_t)D * sizeof(float));
    for (int c = 0; c < nth; c++) {
        if ((int64_t)c * chunk >= n_kv) continue;
        const float *p = partials + (h * nth + c) * (2 + D);
        if (p[1] == 0.0f) continue;
        const float Mn = fmaxf(Mf, p[0]);
        const float so = expf(Mf - Mn), sn = expf(p[0] - Mn);
        for (int64_t d = 0; d < D; d++) vkq[d] = fa_merge(vkq[d], so, p[2 + d], sn);
        Sf = fa_merge(Sf, so, p[1], sn);
        Mf = Mn;
    }
    if (Sf != 0.0f) fa_scale_f32(vkq, 1.0f / Sf, D);
    memcpy(a->out + h * D, vkq, (size_t)D * sizeof(float));
}

/* -- entry points ------------------------------------------------------------------------------------------ */

size_t lm_flash_attn_scratch_floats(int64_t n_keys, int64_t head_dim, int64_t n_tok) {
    (void)n_keys;
    (void)n_tok;
    /* the tiled path's K, V, P and accumulator tiles (the largest) plus 64-byte alignment */
    return (size_t)(FA_TILE * (3 * head_dim + FA_TILE + 2) + 16);
}

size_t lm_flash_attn_shared_floats(int64_t n_heads, int64_t head_dim, int nth) {
    return (size_t)(n_heads * (int64_t)(nth < 1 ? 1 : nth) * (2 + head_dim));
}

void lm_flash_attn_part(lm_pool *pool, const float *q, int64_t n_tok, int64_t n_heads, int64_t n_kv_heads,
                        int64_t head_dim, const lm_half *k_cache, const lm_half *v_cache, int64_t capacity,
                        int64_t pos0, float scale, float *out, float *scratch, float *shared, int ith, int nth) {
    const fa_args a = {q, k_cache, v_cache, out, n_tok, n_heads, n_kv_heads, head_dim, n_heads / n_kv_heads,
                       capacity, pos0, scale};
    float *scr = (float *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
    const int64_t n_keys = pos0 + n_tok, n_kv = lm_flash_attn_n_kv(n_keys);

    if (n_tok == 1 && n_kv >= 512) { /* (c): ggml_compute_forward_flash_attn_ext_f16, use_split_kv_path */
        const int64_t chunk = (n_kv + nth - 1) / nth, c0 = (int64_t)ith * chunk;
        const int64_t c1 = c0 + chunk < n_kv ? c0 + chunk : n_kv;
        if (c0 < n_kv) {
            for (int64_t hk = 0; hk < n_kv_heads; hk++) fa_one_chunk(&a, hk, 0, a.rep, c0, c1, shared, ith, nth, scr);
        } else {
            for (int64_t h = 0; h < n_heads; h++) {
                shared[(h * nth + ith) * (2 + head_dim)] = -INFINITY;
                shared[(h * nth + ith) * (2 + head_dim) + 1] = 0.0f;
            }
        }
        lm_barrier(pool);
        for (int64_t h = ith; h < n_heads; h += nth) fa_reduce(&a, shared, n_kv, chunk, h, nth, scr);
        return;
    }

    /* (a) / (b): each KV head's n_tok * rep rows (token-major, heads of the group within) in blocks of at most
     * 64 rows; blocks dealt round-robin in order of their causal extent, so threads get similar work */
    const int64_t rows_hk = n_tok * a.rep;
    const int tiled = n_tok >= FA_TILE;
    int64_t per_hk = (rows_hk + FA_TILE - 1) / FA_TILE;
    if (!tiled) { /* few rows (decode): smaller blocks so every thread gets some */
        const int64_t want = (2 * (int64_t)nth + n_kv_heads - 1) / n_kv_heads;
        if (per_hk < want) per_hk = want < rows_hk ? want : rows_hk;
    }
    const int64_t rows_blk = (rows_hk + per_hk - 1) / per_hk;
    for (int64_t b = ith; b < per_hk * n_kv_heads; b += nth) {
        const int64_t hk = b % n_kv_heads, r0 = (b / n_kv_heads) * rows_blk;
        const int64_t r1 = r0 + rows_blk < rows_hk ? r0 + rows_blk : rows_hk;
        if (r0 >= r1) continue;
        if (tiled) {
            fa_tiled(&a, hk, r0, r1, scr);
        } else {
            fa_one_chunk(&a, hk, r0, r1, 0, n_kv, NULL, 0, 1, scr);
        }
    }
}

/* -- test entry point -------------------------------------------------------------------------------------- */

typedef struct {
    int flash;
    lm_pool *pool;
    const float *q;
    int64_t n_tok, n_heads, n_kv_heads, head_dim, capacity, pos0;
    const lm_half *k, *v;
    float scale;
    float *out, *scratch, *shared;
    size_t scratch_floats;
} attn_test_task;

static void attn_test_run(void *p, int ith, int nth) {
    attn_test_task *t = p;
    float *scr = t->scratch + (size_t)ith * t->scratch_floats;
    if (t->flash) {
        lm_flash_attn_part(t->pool, t->q, t->n_tok, t->n_heads, t->n_kv_heads, t->head_dim, t->k, t->v, t->capacity,
                           t->pos0, t->scale, t->out, scr, t->shared, ith, nth);
    } else {
        lm_attention_part(t->q, t->n_tok, t->n_heads, t->n_kv_heads, t->head_dim, t->k, t->v, t->capacity, t->pos0,
                          t->scale, t->out, scr, ith, nth);
    }
}

int lm_attention_test(int flash, int n_threads, const float *q, int64_t n_tok, int64_t n_heads, int64_t n_kv_heads,
                      int64_t head_dim, const lm_half *k_cache, const lm_half *v_cache, int64_t capacity,
                      int64_t pos0, float scale, float *out) {
    if (!q || !k_cache || !v_cache || !out || n_threads < 1 || n_threads > 256 || n_tok < 1 || n_heads < 1 ||
        n_kv_heads < 1 || n_heads % n_kv_heads != 0 || head_dim < 1 || head_dim > 4096 || pos0 < 0 ||
        pos0 + n_tok > capacity) {
        return -1;
    }
    lm_pool *pool = lm_pool_create(n_threads);
    if (!pool) return -2;
    const int nth = lm_pool_size(pool);
    attn_test_task t = {flash ? 1 : 0, pool, q, n_tok, n_heads, n_kv_heads, head_dim, capacity, pos0, k_cache,
                        v_cache, scale, out, NULL, NULL, 0};
    t.scratch_floats = flash ? lm_flash_attn_scratch_floats(pos0 + n_tok, head_dim, n_tok)
                             : lm_attention_scratch_floats(pos0 + n_tok, head_dim);
    t.scratch = malloc(t.scratch_floats * (size_t)nth * sizeof(float));
    t.shared = malloc(lm_flash_attn_shared_floats(n_heads, head_dim, nth) * sizeof(float));
    int rc = 0;
    if (!t.scratch || !t.shared) {
        rc = -2;
    } else {
        lm_pool_run(pool, attn_test_run, &t);
    }
    free(t.scratch);
    free(t.shared);
    lm_pool_free(pool);
    return rc;
}
