/* The model description the fused forward runs on. Python fills these structs (ctypes mirrors them in
 * src/llamette/kernels/cpu.py): weights are pointers into the memory-mapped GGUF file, caches into numpy. */
#ifndef LLAMETTE_FORWARD_H
#define LLAMETTE_FORWARD_H

#include <stddef.h>
#include <stdint.h>

#include "api.h"
#include "common.h"

/* lm_weight.flags: llama.cpp repacks this weight into 8-row interleaved blocks (Q4_0, IQ4_NL, Q4_K, Q2_K with
 * rows % 8 == 0 on AVX2 machines), whose kernels accumulate differently from the plain vec_dot ones */
#define LM_REPACKED 1
/* lm_weight.flags: the data itself is interleaved in 8-row blocks (lm_interleave), not the GGUF row layout */
#define LM_INTERLEAVED 2
/* data is in mm16.c's 16-row server layout (Q4_1, Q8_0; rows % 16 == 0): every product through lm_mm16 */
#define LM_PACK16 4

typedef struct {
    const void *data; /* rows x row_bytes, GGUF block layout */
    int64_t type, rows, cols, row_bytes, flags;
} lm_weight;

typedef struct {
    const float *attn_norm, *ffn_norm; /* (dim,) */
    lm_weight wq, wk, wv, wo, gate, up, down;
    const float *bq, *bk, *bv, *bo, *bgate, *bup, *bdown; /* optional biases, NULL when absent */
} lm_layer;

typedef struct {
    int64_t n_layers, dim, n_heads, n_kv_heads, head_dim, ffn_dim, n_vocab, rope_dims;
    float rms_eps, rope_base, rope_freq_scale, attn_scale;
    const float *rope_freqs;  /* (rope_dims / 2,) or NULL */
    const float *output_norm; /* (dim,) */
    lm_weight token_embd, output;
    lm_layer *layers;
    int64_t flash_attn; /* 1: llama.cpp's flash-attention arithmetic (flash_attn.c), 0: its default path */
    int64_t batch_layout; /* the server's layout: lm_forward_seqs attends with lm_attend_shared (not llama.cpp's) */
} lm_model;

/* one sequence's KV cache, per layer */
typedef struct {
    int64_t capacity; /* positions allocated */
    lm_half **k;      /* [layer] -> (n_kv_heads, capacity, head_dim) */
    lm_half **v;      /* [layer] -> (n_kv_heads, head_dim, capacity): transposed, as llama.cpp stores V */
} lm_kv;

size_t lm_forward_workspace_bytes(const lm_model *m, const lm_kv *kv, int64_t n_tok, int n_threads);

/* Run n_tok tokens at positions pos0.. (their K/V go into kv); logits (n_out x n_vocab) of the last n_out
 * tokens (0: none, the batch only fills the cache). Returns 0, -1 for bad arguments, -2 for a workspace that is too small. */
/* One decode step for n_seq sequences at once: token i goes at positions[i] of the cache kvs[i] and its logits
 * to row i. Weights are read from memory once for all; each row has the bits lm_forward gives that sequence
 * decoded alone.
 * largest: a cache at least as large as any of kvs (sizes the workspace, as lm_forward_workspace_bytes). */
int lm_forward_seqs(lm_pool *pool, const lm_model *m, const lm_kv *const *kvs, const lm_kv *largest,
                    const int32_t *tokens, const int32_t *positions, int64_t n_seq, float *logits, void *workspace,
                    size_t workspace_bytes);
int lm_forward(lm_pool *pool, const lm_model *m, const lm_kv *kv, const int32_t *tokens, int64_t n_tok, int64_t pos0,
               int64_t n_out, float *logits, void *workspace, size_t workspace_bytes);
/* As lm_forward, but no logits: every token's residual stream after the model's last layer (before the output
 * norm) is left in the first n_tok x dim floats of the workspace. The CPU part of a -ngl split hands it on. */
int lm_forward_residual(lm_pool *pool, const lm_model *m, const lm_kv *kv, const int32_t *tokens, int64_t n_tok,
                        int64_t pos0, void *workspace, size_t workspace_bytes);

#endif
