/* The float ops of a Llama layer, each as a per-thread part (ith of nth) so the fused forward can run them
 * between barriers. Arithmetic follows ggml-cpu as built on AVX-512 x86 (ops.cpp, vec.cpp, llamafile
 * sgemm) operation for operation, including its exp approximation, so results match llama.cpp's. */
#include "ops.h"

#include <stdlib.h>

#include "common.h"
#include "simd.h"

/* -- SiLU: ggml_v_silu, AVX-512 variant, one lane at a time (lm_expf in simd.h) ------------------- */

static inline float v_silu(float x) { return x / (1.0f + lm_expf(0.0f - x)); }

/* -- RMS norm (ggml_compute_forward_rms_norm_f32, fused with the weight) ----------------------------- */

float lm_rms_scale(const float *x, int64_t dim, float eps) {
    double sum = 0.0;
    for (int64_t i = 0; i < dim; i++) sum += (double)(x[i] * x[i]);
    const float mean = (float)(sum / (double)dim);
    return 1.0f / sqrtf(mean + eps);
}

void lm_rms_apply(const float *x, const float *w, float *y, float scale, int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; i++) y[i] = x[i] * scale * w[i]; /* ggml: rms_norm, then mul by the weight */
}

/* -- RoPE on adjacent pairs (ggml "normal" mode, ggml_rope_cache_init + rotate_pairs) ---------------- */

void lm_rope_cache_part(const int32_t *pos, int64_t n_tok, int64_t n_dims, float base, float freq_scale,
                        const float *freq_factors, float *cs, int ith, int nth) {
    const float theta_scale = powf(base, -2.0f / (float)n_dims);
    long t0, t1;
    lm_split(n_tok, ith, nth, &t0, &t1);
    for (long t = t0; t < t1; t++) {
        float theta = (float)pos[t];
        for (int64_t i0 = 0; i0 < n_dims; i0 += 2) {
            const float ff = freq_factors ? freq_factors[i0 / 2] : 1.0f;
            const float th = freq_scale * (theta / ff);
            cs[t * n_dims + i0] = cosf(th);
            cs[t * n_dims + i0 + 1] = sinf(th);
            theta *= theta_scale;
        }
    }
}

void lm_rope_rows(float *x, int64_t row_len, int64_t n_tok, int64_t head_dim, int64_t n_dims, const float *cs,
                  int64_t r0, int64_t r1) {
    for (int64_t t = 0; t < n_tok; t++) {
        float *xt = x + t * row_len;
        const float *c = cs + t * n_dims;
        for (int64_t r = r0 & ~(int64_t)1; r < r1; r += 2) {
            const int64_t d = r % head_dim;
            if (d >= n_dims) continue;
            const float x0 = xt[r], x1 = xt[r + 1];
            xt[r] = fmaf(x0, c[d], -(x1 * c[d + 1]));
            xt[r + 1] = fmaf(x0, c[d + 1], x1 * c[d]);
        }
    }
}

/* -- elementwise --------------------------------------------------------------------------------------- */

void lm_swiglu_cols(const float *g, const float *u, float *y, int64_t rows, int64_t n, int64_t c0, int64_t c1) {
    const int64_t n_vec = n & ~(int64_t)15; /* full 16-wide chunks of a row use ggml's exp, the tail libm's */
    for (int64_t r = 0; r < rows; r++) {
        const float *gr = g + r * n, *ur = u + r * n;
        float *yr = y + r * n;
        int64_t i = c0;
#if LM_AVX512
        for (; i + 16 <= c1 && i + 16 <= n_vec && (i & 15) == 0; i += 16) {
            const __m512 x = _mm512_loadu_ps(gr + i);
            const __m512 e = lm_expf16(_mm512_sub_ps(_mm512_setzero_ps(), x));
            const __m512 silu = _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
            _mm512_storeu_ps(yr + i, _mm512_mul_ps(silu, _mm512_loadu_ps(ur + i)));
        }
#endif
        for (; i < c1 && i < n_vec; i++) yr[i] = v_silu(gr[i]) * ur[i];
        for (; i < c1; i++) yr[i] = gr[i] / (1.0f + expf(-gr[i])) * ur[i];
    }
}

void lm_swiglu_part(const float *g, const float *u, float *y, int64_t rows, int64_t n, int ith, int nth) {
    long r0, r1;
    lm_split(rows, ith, nth, &r0, &r1);
    if (r1 > r0) lm_swiglu_cols(g + r0 * n, u + r0 * n, y + r0 * n, r1 - r0, n, 0, n);
}

void lm_add_part(float *x, const float *y, int64_t n, int ith, int nth) {
    long i0, i1;
    lm_split(n, ith, nth, &i0, &i1);
    for (long i = i0; i < i1; i++) x[i] += y[i];
}

/* -- KV cache: K as (kv_head, position, head_dim), V transposed as (kv_head, head_dim, position), half -- */

void lm_kv_store_part(const float *k, const float *v, int64_t n_tok, int64_t n_kv_heads, int64_t head_dim,
                      lm_half *k_cache, lm_half *v_cache, int64_t capacity, int64_t pos0, int ith, int nth) {
    long h0, h1;
    lm_split(n_kv_heads, ith, nth, &h0, &h1);
    for (long h = h0; h < h1; h++) {
        for (int64_t t = 0; t < n_tok; t++) {
            const float *kt = k + (t * n_kv_heads + h) * head_dim, *vt = v + (t * n_kv_heads + h) * head_dim;
            lm_half *kd = k_cache + (h * capacity + pos0 + t) * head_dim;
            for (int64_t d = 0; d < head_dim; d++) {
                kd[d] = lm_f2h(kt[d]);
                v_cache[(h * head_dim + d) * capacity + pos0 + t] = lm_f2h(vt[d]);
            }
        }
    }
}

void lm_store_k_rows(const float *k, int64_t n_tok, int64_t row_len, int64_t head_dim, lm_half *k_cache,
                     int64_t capacity, int64_t pos0, int64_t r0, int64_t r1) {
    for (int64_t t = 0; t < n_tok; t++)
        for (int64_t r = r0; r < r1; r++) {
            k_cache[((r / head_dim) * capacity + pos0 + t) * head_dim + r % head_dim] = lm_f2h(k[t * row_len + r]);
        }
}

void lm_store_v_rows(const float *v, int64_t n_tok, int64_t row_len, int64_t head_dim, lm_half *v_cache,
                     int64_t capacity, int64_t pos0, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) {
        lm_half *dst = v_cache + ((r / head_dim) * head_dim + r % head_dim) * capacity + pos0;
        for (int64_t t = 0; t < n_tok; t++) dst[t] = lm_f2h(v[t * row_len + r]);
    }
}

/* -- attention ---------------------------------------------------------------------------------------- */

/* Half-float dot products the way ggml's mul_mat computes them. One column (decode) goes through
 * ggml_vec_dot_f16: 4 x 16 lanes over 64-element steps, the tail past the last full step added in
 * double. n_zeros_to: the length ggml's operand really has, padded with zero products (llama.cpp pads the
 * KV cache to a multiple of 256), so elements up to it follow the lane pattern, not the tail. */
static float dot_f16_vec(const lm_half *a, const lm_half *b, int64_t n, int64_t n_zeros_to) {
#if LM_AVX512
    {
        const int64_t np = (n_zeros_to > n ? n_zeros_to : n) & ~(int64_t)63;
        const int64_t n_lanes = n < np ? n : np;
        __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
        for (int64_t e = 0; e < n_lanes; e += 16) {
            const int64_t left = n_lanes - e;
            const __mmask16 m = left >= 16 ? 0xFFFF : (__mmask16)((1u << left) - 1); /* zero past the end */
            const __m512 x = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, a + e));
            const __m512 y = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, b + e));
            acc[(e & 63) >> 4] = _mm512_fmadd_ps(x, y, acc[(e & 63) >> 4]);
        }
        acc[0] = _mm512_add_ps(acc[0], acc[2]);
        acc[1] = _mm512_add_ps(acc[1], acc[3]);
        acc[0] = _mm512_add_ps(acc[0], acc[1]);
        double sum = _mm512_reduce_add_ps(acc[0]);
        for (int64_t e = n_lanes; e < n; e++) sum += (double)(lm_h2f(a[e]) * lm_h2f(b[e]));
        return (float)sum;
    }
#endif
    float acc[4][16] = {{0}};
    const int64_t np = (n_zeros_to > n ? n_zeros_to : n) & ~(int64_t)63;
    const int64_t n_lanes = n < np ? n : np;
    for (int64_t e = 0; e < n_lanes; e++) {
        acc[(e & 63) >> 4][e & 15] = fmaf(lm_h2f(a[e]), lm_h2f(b[e]), acc[(e & 63) >> 4][e & 15]);
    }
    for (int l = 0; l < 16; l++) {
        acc[0][l] += acc[2][l];
        acc[1][l] += acc[3][l];
    }
    for (int l = 0; l < 16; l++) acc[0][l] += acc[1][l];
    double sum = lm_hsum16(acc[0]);
    for (int64_t e = n_lanes; e < n; e++) sum += (double)(lm_h2f(a[e]) * lm_h2f(b[e]));
    return (float)sum;
}

static float dot_f16_blas(const lm_half *a, const lm_half *b, int64_t n) {
#if LM_AVX512
    {
        __m512 acc = _mm512_setzero_ps();
        for (int64_t e = 0; e < n; e += 16) {
            const int64_t left = n - e;
            const __mmask16 m = left >= 16 ? 0xFFFF : (__mmask16)((1u << left) - 1);
            acc = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, a + e)),
                                  _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, b + e)), acc);
        }
        return _mm512_reduce_add_ps(acc);
    }
#endif
    float acc[16] = {0};
    for (int64_t i = 0; i < n; i++) acc[i % 16] = fmaf(lm_h2f(a[i]), lm_h2f(b[i]), acc[i % 16]);
    return lm_hsum16(acc);
}

/* per thread: scores (n_pad floats), probabilities (n_pad halves), the query (head_dim halves) */
size_t lm_attention_scratch_floats(int64_t n_keys, int64_t head_dim) {
    const int64_t n_pad = (n_keys + 63) & ~(int64_t)63;
    return (size_t)(n_pad + n_pad / 2 + head_dim / 2 + 16);
}

void lm_attention_part(const float *q, int64_t n_tok, int64_t n_heads, int64_t n_kv_heads, int64_t head_dim,
                       const lm_half *k_cache, const lm_half *v_cache, int64_t capacity, int64_t pos0, float scale,
                       float *out, float *scratch, int ith, int nth) {
    long j0, j1;
    lm_split(n_tok * n_heads, ith, nth, &j0, &j1);
    lm_attention_jobs(q, n_tok, n_heads, n_kv_heads, head_dim, k_cache, v_cache, capacity, pos0, scale, out, scratch,
                      j0, j1);
}

void lm_attention_jobs(const float *q, int64_t n_tok, int64_t n_heads, int64_t n_kv_heads, int64_t head_dim,
                       const lm_half *k_cache, const lm_half *v_cache, int64_t capacity, int64_t pos0, float scale,
                       float *out, float *scratch, int64_t j0, int64_t j1) {
    /* keys 0 .. pos0 + n_tok - 1; padded to 64 with masked (zero-probability) entries, as llama.cpp pads */
    const int64_t n_keys = pos0 + n_tok, n_pad = (n_keys + 63) & ~(int64_t)63;
    const int64_t n_pad256 = (n_keys + 255) & ~(int64_t)255;
    const int64_t rep = n_heads / n_kv_heads;
    /* tinyBLAS takes prompt batches (2+ columns) when rows % 4 == 0 and k % 16 == 0 (llamafile_sgemm) */
    const int blas_kq = n_tok > 1 && head_dim % 16 == 0;
    const int blas_kqv = n_tok > 1 && head_dim % 4 == 0;
    float *w = scratch;
    lm_half *p16 = (lm_half *)(scratch + n_pad);
    lm_half *q16 = (lm_half *)(scratch + n_pad + n_pad / 2 + 8);
    for (int64_t job = j0; job < j1; job++) {
        const int64_t t = job / n_heads, h = job % n_heads, hk = h / rep;
        const int64_t visible = pos0 + t + 1; /* causal: keys at positions <= the query's */
        for (int64_t d = 0; d < head_dim; d++) q16[d] = lm_f2h(q[(t * n_heads + h) * head_dim + d]);
        const lm_half *kh = k_cache + hk * capacity * head_dim;
        float max = -INFINITY;
        for (int64_t l = 0; l < visible; l++) {
            const float s = blas_kq ? dot_f16_blas(kh + l * head_dim, q16, head_dim)
                                    : dot_f16_vec(kh + l * head_dim, q16, head_dim, head_dim);
            w[l] = s * scale;
            max = w[l] > max ? w[l] : max; /* fmaxf, as ggml's loop, without the library call */
        }
        /* ggml_vec_soft_max_f32: exp in 16-wide chunks, each chunk's sum added in double */
        double sum = 0.0;
        for (int64_t l0 = 0; l0 < n_pad; l0 += 16) {
#if LM_AVX512
            const int64_t left = visible - l0;
            const __mmask16 m = left >= 16 ? 0xFFFF : left <= 0 ? 0 : (__mmask16)((1u << left) - 1);
            const __m512 val = _mm512_maskz_mov_ps(m, lm_expf16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, w + l0), _mm512_set1_ps(max))));
            _mm512_storeu_ps(w + l0, val);
            sum += (double)_mm512_reduce_add_ps(val);
#else
            float chunk[16];
            for (int l = 0; l < 16; l++) {
                chunk[l] = l0 + l < visible ? lm_expf(w[l0 + l] - max) : 0.0f;
                w[l0 + l] = chunk[l];
            }
            sum += (double)lm_hsum16(chunk);
#endif
        }
        const float inv = (float)(1.0 / sum);
#if LM_AVX512
        for (int64_t l = 0; l < n_pad; l += 16) {
            _mm256_storeu_si256((__m256i *)(p16 + l), _mm512_cvtps_ph(_mm512_mul_ps(_mm512_loadu_ps(w + l), _mm512_set1_ps(inv)), 0));
        }
#else
        for (int64_t l = 0; l < n_pad; l++) p16[l] = lm_f2h(w[l] * inv);
#endif
        const lm_half *vh = v_cache + hk * head_dim * capacity;
        float *o = out + (t * n_heads + h) * head_dim;
        for (int64_t d = 0; d < head_dim; d++) {
            o[d] = blas_kqv ? dot_f16_blas(vh + d * capacity, p16, visible)
                            : dot_f16_vec(vh + d * capacity, p16, visible, n_pad256);
        }
    }
}

#ifndef VPF
#define VPF 8 /* V rows (dimensions) fetched ahead (4 to 24 measure alike) */
#endif
#ifndef KPF
#define KPF 16 /* keys fetched ahead */
#endif

size_t lm_attend_shared_scratch_floats(int64_t n_keys, int64_t n_heads, int64_t head_dim) {
    return (size_t)(((n_keys + 15) & ~(int64_t)15) * n_heads + n_heads * head_dim + 16 * head_dim + 64);
}

#if LM_AVX512
/* lane j of the result = the sum of a[j]'s 16 lanes (a 16 x 16 transpose folded into the additions) */
static inline __m512 sum16x16(const __m512 a[16]) {
    __m512 v[4];
    for (int g = 0; g < 4; g++) {
        const __m512 *x = a + 4 * g;
        const __m512 s01 = _mm512_add_ps(_mm512_unpacklo_ps(x[0], x[1]), _mm512_unpackhi_ps(x[0], x[1]));
        const __m512 s23 = _mm512_add_ps(_mm512_unpacklo_ps(x[2], x[3]), _mm512_unpackhi_ps(x[2], x[3]));
        v[g] = _mm512_add_ps(_mm512_shuffle_ps(s01, s23, 0x44), _mm512_shuffle_ps(s01, s23, 0xEE));
    }
    const __m512 x01 = _mm512_add_ps(_mm512_shuffle_f32x4(v[0], v[1], 0x88), _mm512_shuffle_f32x4(v[0], v[1], 0xDD));
    const __m512 x23 = _mm512_add_ps(_mm512_shuffle_f32x4(v[2], v[3], 0x88), _mm512_shuffle_f32x4(v[2], v[3], 0xDD));
    return _mm512_add_ps(_mm512_shuffle_f32x4(x01, x23, 0x88), _mm512_shuffle_f32x4(x01, x23, 0xDD));
}
#endif

void lm_attend_shared(const float *q, int64_t n_heads, int64_t n_kv_heads, int64_t head_dim, const lm_half *k_cache,
                      const lm_half *v_cache, int64_t capacity, int64_t pos, float scale, float *out, float *scratch,
                      int64_t hk0, int64_t hk1) {
    const int64_t rep = n_heads / n_kv_heads, n_keys = pos + 1, n16 = (n_keys + 15) & ~(int64_t)15;
    float *w = scratch;               /* (rep, n16) scores, then probabilities */
    float *qf = scratch + rep * n16;  /* (rep, head_dim) the queries, rounded to half as the cache is */
    float *kf = qf + rep * head_dim;  /* (16, head_dim) a block of keys as floats */
    for (int64_t hk = hk0; hk < hk1; hk++) {
        const lm_half *kh = k_cache + hk * capacity * head_dim, *vh = v_cache + hk * head_dim * capacity;
        for (int64_t r = 0; r < rep; r++)
            for (int64_t d = 0; d < head_dim; d++) qf[r * head_dim + d] = lm_h2f(lm_f2h(q[(hk * rep + r) * head_dim + d]));
        /* scores: each key row converted once for the rep heads that read it; 16 keys reduced together */
#if LM_AVX512
        if (head_dim % 16 == 0) {
            for (int64_t d = 0; d < VPF && d < head_dim; d++) /* the first V rows, for after the scores */
                for (int64_t l = 0; l < n_keys; l += 32) _mm_prefetch((const char *)(vh + d * capacity + l), _MM_HINT_T1);
            for (int64_t l0 = 0; l0 < n_keys; l0 += 16) {
                const int64_t nk = n_keys - l0 < 16 ? n_keys - l0 : 16;
                for (int64_t j = 16; j < 16 + KPF && l0 + j < n_keys; j++) /* keys ahead */
                    for (int64_t d = 0; d < head_dim; d += 32)
                        _mm_prefetch((const char *)(kh + (l0 + j) * head_dim + d), _MM_HINT_T0);
                for (int64_t j = 0; j < nk; j++)
                    for (int64_t d = 0; d < head_dim; d += 16)
                        _mm512_storeu_ps(kf + j * head_dim + d, _mm512_cvtph_ps(_mm256_loadu_si256(
                                                                    (const __m256i *)(kh + (l0 + j) * head_dim + d))));
                for (int64_t r = 0; r < rep; r++) {
                    __m512 acc[16];
                    for (int j = 0; j < 16; j++) acc[j] = _mm512_setzero_ps();
                    for (int64_t j = 0; j < nk; j++)
                        for (int64_t d = 0; d < head_dim; d += 16)
                            acc[j] = _mm512_fmadd_ps(_mm512_loadu_ps(kf + j * head_dim + d),
                                                     _mm512_loadu_ps(qf + r * head_dim + d), acc[j]);
                    _mm512_storeu_ps(w + r * n16 + l0, _mm512_mul_ps(sum16x16(acc), _mm512_set1_ps(scale)));
                }
            }
        } else
#endif
        for (int64_t l = 0; l < n_keys; l++) {
            float s[16] = {0};
            for (int64_t r = 0; r < rep && r < 16; r++) {
                float acc = 0.0f;
#if LM_AVX512
                __m512 v = _mm512_setzero_ps();
                int64_t d = 0;
                for (; d + 16 <= head_dim; d += 16) {
                    const __m512 k16 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(kh + l * head_dim + d)));
                    v = _mm512_fmadd_ps(k16, _mm512_loadu_ps(qf + r * head_dim + d), v);
                }
                acc = _mm512_reduce_add_ps(v);
                for (; d < head_dim; d++) acc += lm_h2f(kh[l * head_dim + d]) * qf[r * head_dim + d];
#else
                for (int64_t d = 0; d < head_dim; d++) acc += lm_h2f(kh[l * head_dim + d]) * qf[r * head_dim + d];
#endif
                s[r] = acc;
            }
            for (int64_t r = 0; r < rep; r++) w[r * n16 + l] = s[r] * scale;
        }
        for (int64_t r = 0; r < rep; r++) {
            float *wr = w + r * n16, max = -INFINITY;
            for (int64_t l = 0; l < n_keys; l++) max = wr[l] > max ? wr[l] : max;
#if LM_AVX512
            __m512 sum16 = _mm512_setzero_ps();
            for (int64_t l = 0; l < n16; l += 16) {
                const int64_t left = n_keys - l;
                const __mmask16 m = left >= 16 ? 0xFFFF : (__mmask16)((1u << left) - 1);
                const __m512 e = _mm512_maskz_mov_ps(m, lm_expf16(_mm512_sub_ps(_mm512_loadu_ps(wr + l), _mm512_set1_ps(max))));
                _mm512_storeu_ps(wr + l, e);
                sum16 = _mm512_add_ps(sum16, e);
            }
            const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum16));
            for (int64_t l = 0; l < n16; l += 16) _mm512_storeu_ps(wr + l, _mm512_mul_ps(_mm512_loadu_ps(wr + l), inv));
#else
            float sum = 0.0f;
            for (int64_t l = 0; l < n_keys; l++) sum += (wr[l] = lm_expf(wr[l] - max));
            const float inv = 1.0f / sum;
            for (int64_t l = 0; l < n_keys; l++) wr[l] *= inv;
            for (int64_t l = n_keys; l < n16; l++) wr[l] = 0.0f;
#endif
        }
        /* values: each row of V (one dimension, every key) once for the rep heads; the rows are capacity apart,
         * too far for the hardware prefetcher, so the rows a few dimensions ahead are fetched meanwhile */
        for (int64_t d = 0; d < head_dim; d++) {
            const lm_half *vd = vh + d * capacity;
#if LM_AVX512
            if (d + VPF < head_dim)
                for (int64_t l = 0; l < n_keys; l += 32) _mm_prefetch((const char *)(vd + VPF * capacity + l), _MM_HINT_T0);
            __m512 acc[16];
            for (int64_t r = 0; r < rep && r < 16; r++) acc[r] = _mm512_setzero_ps();
            for (int64_t l = 0; l < n16; l += 16) {
                const int64_t left = n_keys - l;
                const __mmask16 m = left >= 16 ? 0xFFFF : (__mmask16)((1u << left) - 1);
                const __m512 v16 = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, vd + l));
                for (int64_t r = 0; r < rep && r < 16; r++)
                    acc[r] = _mm512_fmadd_ps(v16, _mm512_loadu_ps(w + r * n16 + l), acc[r]);
            }
            for (int64_t r = 0; r < rep && r < 16; r++) out[(hk * rep + r) * head_dim + d] = _mm512_reduce_add_ps(acc[r]);
#else
            for (int64_t r = 0; r < rep; r++) {
                float acc = 0.0f;
                for (int64_t l = 0; l < n_keys; l++) acc += lm_h2f(vd[l]) * w[r * n16 + l];
                out[(hk * rep + r) * head_dim + d] = acc;
            }
#endif
        }
    }
}
