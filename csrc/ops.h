/* Per-thread parts of the layer ops (see ops.c); each processes its share of rows for thread ith of nth. */
#ifndef LLAMETTE_OPS_H
#define LLAMETTE_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "common.h"
#include "threads.h"

void lm_rms_norm_part(const float *x, const float *w, float *y, int64_t rows, int64_t dim, float eps, int ith,
                      int nth);
void lm_rope_part(float *x, const int32_t *pos, int64_t n_tok, int64_t n_heads, int64_t head_dim, int64_t n_dims,
                  float base, float freq_scale, const float *freq_factors, int ith, int nth);
void lm_swiglu_part(const float *g, const float *u, float *y, int64_t rows, int64_t n, int ith, int nth);
void lm_add_part(float *x, const float *y, int64_t n, int ith, int nth);
void lm_kv_store_part(const float *k, const float *v, int64_t n_tok, int64_t n_kv_heads, int64_t head_dim,
                      lm_half *k_cache, lm_half *v_cache, int64_t capacity, int64_t pos0, int ith, int nth);
size_t lm_attention_scratch_floats(int64_t n_keys, int64_t head_dim);
void lm_attention_part(const float *q, int64_t n_tok, int64_t n_heads, int64_t n_kv_heads, int64_t head_dim,
                       const lm_half *k_cache, const lm_half *v_cache, int64_t capacity, int64_t pos0, float scale,
                       float *out, float *scratch, int ith, int nth);

#endif
