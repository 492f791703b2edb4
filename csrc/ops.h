/* Per-thread parts of the layer ops (see ops.c); each processes its share of rows for thread ith of nth. */
#ifndef LLAMETTE_OPS_H
#define LLAMETTE_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "common.h"
#include "threads.h"

/* the pieces, for fused callers: one row's 1/rms, then y[i] = x[i] * scale * w[i] for i in [i0, i1) */
float lm_rms_scale(const float *x, int64_t dim, float eps);
void lm_rms_apply(const float *x, const float *w, float *y, float scale, int64_t i0, int64_t i1);
/* cos/sin of every (token, pair): cs (n_tok, n_dims); then rotate rows [r0, r1) of x (n_tok, row_len) */
void lm_rope_cache_part(const int32_t *pos, int64_t n_tok, int64_t n_dims, float base, float freq_scale,
                        const float *freq_factors, float *cs, int ith, int nth);
void lm_rope_rows(float *x, int64_t row_len, int64_t n_tok, int64_t head_dim, int64_t n_dims, const float *cs,
                  int64_t r0, int64_t r1);
/* silu(g) * u for columns [c0, c1) of rows x n */
void lm_swiglu_cols(const float *g, const float *u, float *y, int64_t rows, int64_t n, int64_t c0, int64_t c1);
void lm_swiglu_part(const float *g, const float *u, float *y, int64_t rows, int64_t n, int ith, int nth);
void lm_add_part(float *x, const float *y, int64_t n, int ith, int nth);
void lm_kv_store_part(const float *k, const float *v, int64_t n_tok, int64_t n_kv_heads, int64_t head_dim,
                      lm_half *k_cache, lm_half *v_cache, int64_t capacity, int64_t pos0, int ith, int nth);
/* rows [r0, r1) of k / v (n_tok, row_len) into the caches */
void lm_store_k_rows(const float *k, int64_t n_tok, int64_t row_len, int64_t head_dim, lm_half *k_cache,
                     int64_t capacity, int64_t pos0, int64_t r0, int64_t r1);
void lm_store_v_rows(const float *v, int64_t n_tok, int64_t row_len, int64_t head_dim, lm_half *v_cache,
                     int64_t capacity, int64_t pos0, int64_t r0, int64_t r1);
size_t lm_attention_scratch_floats(int64_t n_keys, int64_t head_dim);
void lm_attention_part(const float *q, int64_t n_tok, int64_t n_heads, int64_t n_kv_heads, int64_t head_dim,
                       const lm_half *k_cache, const lm_half *v_cache, int64_t capacity, int64_t pos0, float scale,
                       float *out, float *scratch, int ith, int nth);
/* One query token against its cache for KV heads [hk0, hk1) and all their query heads at once (at most 16 per
 * KV head): each key and value row is converted from half floats once for the heads that share it. Plain float
 * arithmetic (not ggml's): the server's batched decode in its own layout. scratch: lm_attend_shared_scratch_floats. */
size_t lm_attend_shared_scratch_floats(int64_t n_keys, int64_t n_heads, int64_t head_dim);
void lm_attend_shared(const float *q, int64_t n_heads, int64_t n_kv_heads, int64_t head_dim, const lm_half *k_cache,
                      const lm_half *v_cache, int64_t capacity, int64_t pos, float scale, float *out, float *scratch,
                      int64_t hk0, int64_t hk1);
/* jobs [j0, j1), job = token * n_heads + head */
void lm_attention_jobs(const float *q, int64_t n_tok, int64_t n_heads, int64_t n_kv_heads, int64_t head_dim,
                       const lm_half *k_cache, const lm_half *v_cache, int64_t capacity, int64_t pos0, float scale,
                       float *out, float *scratch, int64_t j0, int64_t j1);

#endif
