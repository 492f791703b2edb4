/* llama.cpp's flash attention (ggml_compute_forward_flash_attn_ext_f16, ggml-cpu/ops.cpp), bit for bit, on
 * llamette's KV cache layout. See flash_attn.c for which of ggml's three paths runs when. */
#ifndef LLAMETTE_FLASH_ATTN_H
#define LLAMETTE_FLASH_ATTN_H

#include <stddef.h>
#include <stdint.h>

#include "common.h"
#include "threads.h"

/* The number of KV cells llama.cpp's graph attends over for a sequence of n_keys positions stored from cell 0:
 * llama_kv_cache::get_n_kv pads used cells to 256 (and its cache size is a multiple of 256). Only the
 * single-query split-KV path depends on it: it picks that path (n_kv >= 512) and sets the chunk bounds. */
static inline int64_t lm_flash_attn_n_kv(int64_t n_keys) { return (n_keys + 255) & ~(int64_t)255; }

/* Floats of per-thread scratch lm_flash_attn_part needs (each thread its own block). */
size_t lm_flash_attn_scratch_floats(int64_t n_keys, int64_t head_dim, int64_t n_tok);

/* Floats of the buffer shared by all threads (the split-KV partials: n_heads x nth x (2 + head_dim)). */
size_t lm_flash_attn_shared_floats(int64_t n_heads, int64_t head_dim, int nth);

/* Thread ith of nth's part of causal attention for n_tok queries at positions pos0 .. pos0+n_tok-1 over the
 * keys 0 .. pos0+n_tok-1, as llama.cpp computes it with flash attention on nth threads.
 *   q        (n_tok, n_heads, head_dim) f32, after RoPE
 *   k_cache  (n_kv_heads, capacity, head_dim) f16
 *   v_cache  (n_kv_heads, head_dim, capacity) f16 (transposed, as lm_kv_store_part writes it)
 *   out      (n_tok, n_heads, head_dim) f32
 *   scratch  this thread's lm_flash_attn_scratch_floats(...) floats
 *   shared   lm_flash_attn_shared_floats(n_heads, head_dim, nth) floats, the same pointer on every thread
 * Every thread of the pool must call it (with n_tok == 1 and >= 512 padded keys it meets the others at an
 * lm_barrier); out is complete once all have returned (the caller's next barrier). The single-query
 * split-KV result depends on nth: pass llama.cpp's thread count to reproduce its numbers. */
void lm_flash_attn_part(lm_pool *pool, const float *q, int64_t n_tok, int64_t n_heads, int64_t n_kv_heads,
                        int64_t head_dim, const lm_half *k_cache, const lm_half *v_cache, int64_t capacity,
                        int64_t pos0, float scale, float *out, float *scratch, float *shared, int ith, int nth);

/* Test entry point: runs lm_attention_part (flash = 0) or lm_flash_attn_part (flash = 1) on a pool of
 * n_threads threads with scratch it allocates. Returns 0, or -1 on bad arguments, -2 if allocation fails. */
int lm_attention_test(int flash, int n_threads, const float *q, int64_t n_tok, int64_t n_heads, int64_t n_kv_heads,
                      int64_t head_dim, const lm_half *k_cache, const lm_half *v_cache, int64_t capacity,
                      int64_t pos0, float scale, float *out);

#endif
