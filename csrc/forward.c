/* The fused Llama forward pass: one pool task runs every layer for a batch of tokens, the threads meeting
 * at a barrier between ops. Same graph and arithmetic as llama.cpp's llama model (llama-model.cpp,
 * build_llama) on the CPU backend without flash attention; Python describes the model in lm_model. */
#include "forward.h"

#include <stdlib.h>

#include "dot.h"
#include "mm.h"
#include "ops.h"

/* bytes of one quantized activation row for weight w (k = its row length) */
static int64_t act_bytes(const lm_weight *w) { return lm_act_row_bytes(w->type, w->cols); }

/* quantize rows x (n x k) into act for weight type wtype; threads split rows, or the blocks of one row */
static void quantize_part(int wtype, const float *x, int64_t n, int64_t k, uint8_t *act, int64_t row_bytes,
                          int ith, int nth) {
    if (n >= nth) {
        long r0, r1;
        lm_split(n, ith, nth, &r0, &r1);
        for (long r = r0; r < r1; r++) lm_quantize_act(wtype, x + r * k, act + r * row_bytes, k);
        return;
    }
    int block_bytes;
    const int qk = lm_block_size(lm_act_type(wtype), &block_bytes);
    for (int64_t r = 0; r < n; r++) {
        long b0, b1;
        lm_split(k / qk, ith, nth, &b0, &b1);
        if (b1 > b0) lm_quantize_act(wtype, x + r * k + b0 * qk, act + r * row_bytes + b0 * block_bytes, (b1 - b0) * qk);
    }
}

/* y (n x rows) = act . W^T + bias for this thread's rows (a multiple of the kernel's row group) */
static void matmul_part(const lm_weight *w, const float *bias, const uint8_t *act, int64_t n, float *y, int ith,
                        int nth) {
    const int64_t align = lm_mm_row_align(w), groups = w->rows / align;
    long g0, g1;
    lm_split(groups, ith, nth, &g0, &g1);
    const lm_mm_args args = {w, act, act_bytes(w), n, y, w->rows, bias};
    lm_mm_rows(&args, g0 * align, g1 * align);
}

typedef struct {
    const lm_model *m;
    const lm_kv *kv;
    lm_pool *pool;
    const int32_t *tokens;
    int32_t *pos;
    int64_t n_tok, pos0, n_out;
    float *logits;
    /* workspace */
    float *x, *h, *q, *k, *v, *att, *tmp, *gate, *up, *attn_scratch;
    uint8_t *act;
    int64_t attn_scratch_floats;
} fwd_task;

static void forward_run(void *p, int ith, int nth) {
    fwd_task *t = p;
    const lm_model *m = t->m;
    lm_pool *pool = t->pool;
    const int64_t n = t->n_tok, dim = m->dim, hd = m->head_dim;
    const int64_t q_dim = m->n_heads * hd;

    { /* token embeddings */
        long r0, r1;
        lm_split(n, ith, nth, &r0, &r1);
        for (long r = r0; r < r1; r++) {
            lm_dequantize_row(m->token_embd.type, (const uint8_t *)m->token_embd.data + t->tokens[r] * m->token_embd.row_bytes,
                              t->x + r * dim, dim);
        }
    }
    lm_barrier(pool);

    for (int64_t il = 0; il < m->n_layers; il++) {
        const lm_layer *L = &m->layers[il];
        const int last = il == m->n_layers - 1;
        lm_rms_norm_part(t->x, L->attn_norm, t->h, n, dim, m->rms_eps, ith, nth);
        lm_barrier(pool);
        /* q, k, v: the activation is quantized once per format and shared when the weights pair alike */
        quantize_part(L->wq.type, t->h, n, dim, t->act, act_bytes(&L->wq), ith, nth);
        const int same_k = lm_act_type(L->wk.type) == lm_act_type(L->wq.type);
        const int same_v = lm_act_type(L->wv.type) == lm_act_type(L->wq.type);
        uint8_t *act_k = same_k ? t->act : t->act + n * act_bytes(&L->wq);
        uint8_t *act_v = same_v ? t->act : act_k + n * act_bytes(&L->wk);
        if (!same_k) quantize_part(L->wk.type, t->h, n, dim, act_k, act_bytes(&L->wk), ith, nth);
        if (!same_v) quantize_part(L->wv.type, t->h, n, dim, act_v, act_bytes(&L->wv), ith, nth);
        lm_barrier(pool);
        matmul_part(&L->wq, L->bq, t->act, n, t->q, ith, nth);
        matmul_part(&L->wk, L->bk, act_k, n, t->k, ith, nth);
        matmul_part(&L->wv, L->bv, act_v, n, t->v, ith, nth);
        lm_barrier(pool);
        lm_rope_part(t->q, t->pos, n, m->n_heads, hd, m->rope_dims, m->rope_base, m->rope_freq_scale, m->rope_freqs,
                     ith, nth);
        lm_rope_part(t->k, t->pos, n, m->n_kv_heads, hd, m->rope_dims, m->rope_base, m->rope_freq_scale,
                     m->rope_freqs, ith, nth);
        lm_barrier(pool);
        lm_kv_store_part(t->k, t->v, n, m->n_kv_heads, hd, t->kv->k[il], t->kv->v[il], t->kv->capacity, t->pos0, ith,
                         nth);
        lm_barrier(pool);
        lm_attention_part(t->q, n, m->n_heads, m->n_kv_heads, hd, t->kv->k[il], t->kv->v[il], t->kv->capacity, t->pos0,
                          m->attn_scale, t->att, t->attn_scratch + ith * t->attn_scratch_floats, ith, nth);
        lm_barrier(pool);
        quantize_part(L->wo.type, t->att, n, q_dim, t->act, act_bytes(&L->wo), ith, nth);
        lm_barrier(pool);
        matmul_part(&L->wo, L->bo, t->act, n, t->tmp, ith, nth);
        lm_barrier(pool);
        /* after the attention output, the last layer only carries on with the rows whose logits are wanted
         * (llama.cpp's inp_out_ids) */
        const int64_t rows = last ? t->n_out : n, skip = n - rows;
        float *x = t->x + skip * dim;
        lm_add_part(x, t->tmp + skip * dim, rows * dim, ith, nth);
        lm_barrier(pool);
        lm_rms_norm_part(x, L->ffn_norm, t->h, rows, dim, m->rms_eps, ith, nth);
        lm_barrier(pool);
        quantize_part(L->gate.type, t->h, rows, dim, t->act, act_bytes(&L->gate), ith, nth);
        const int same_up = lm_act_type(L->up.type) == lm_act_type(L->gate.type);
        uint8_t *act_up = same_up ? t->act : t->act + rows * act_bytes(&L->gate);
        if (!same_up) quantize_part(L->up.type, t->h, rows, dim, act_up, act_bytes(&L->up), ith, nth);
        lm_barrier(pool);
        matmul_part(&L->gate, L->bgate, t->act, rows, t->gate, ith, nth);
        matmul_part(&L->up, L->bup, act_up, rows, t->up, ith, nth);
        lm_barrier(pool);
        lm_swiglu_part(t->gate, t->up, t->gate, rows, m->ffn_dim, ith, nth);
        lm_barrier(pool);
        quantize_part(L->down.type, t->gate, rows, m->ffn_dim, t->act, act_bytes(&L->down), ith, nth);
        lm_barrier(pool);
        matmul_part(&L->down, L->bdown, t->act, rows, t->tmp, ith, nth);
        lm_barrier(pool);
        lm_add_part(x, t->tmp, rows * dim, ith, nth);
        lm_barrier(pool);
    }
    /* output norm and logits for the last n_out rows */
    const float *xo = t->x + (n - t->n_out) * dim;
    lm_rms_norm_part(xo, m->output_norm, t->h, t->n_out, dim, m->rms_eps, ith, nth);
    lm_barrier(pool);
    quantize_part(m->output.type, t->h, t->n_out, dim, t->act, act_bytes(&m->output), ith, nth);
    lm_barrier(pool);
    matmul_part(&m->output, NULL, t->act, t->n_out, t->logits, ith, nth);
}

static int64_t max_act_bytes(const lm_model *m) {
    int64_t best = act_bytes(&m->output);
    for (int64_t il = 0; il < m->n_layers; il++) {
        const lm_layer *L = &m->layers[il];
        const lm_weight *ws[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->gate, &L->up, &L->down};
        for (int i = 0; i < 7; i++) best = act_bytes(ws[i]) > best ? act_bytes(ws[i]) : best;
    }
    return best;
}

size_t lm_forward_workspace_bytes(const lm_model *m, const lm_kv *kv, int64_t n_tok, int n_threads) {
    const int64_t q_dim = m->n_heads * m->head_dim, kv_dim = m->n_kv_heads * m->head_dim;
    const int64_t widest = m->dim > q_dim ? m->dim : q_dim;
    const int64_t floats = n_tok * (2 * m->dim + 2 * q_dim + 2 * kv_dim + widest + 2 * m->ffn_dim) +
                           (int64_t)n_threads * lm_attention_scratch_floats(kv->capacity, m->head_dim) + n_tok;
    return (size_t)floats * 4 + (size_t)(3 * n_tok * max_act_bytes(m)) + 64;
}

int lm_forward(lm_pool *pool, const lm_model *m, const lm_kv *kv, const int32_t *tokens, int64_t n_tok, int64_t pos0,
               int64_t n_out, float *logits, void *workspace, size_t workspace_bytes) {
    const int nth = lm_pool_size(pool);
    if (n_tok < 1 || n_out < 1 || n_out > n_tok || pos0 < 0 || pos0 + n_tok > kv->capacity) return -1;
    if (workspace_bytes < lm_forward_workspace_bytes(m, kv, n_tok, nth)) return -2;
    const int64_t q_dim = m->n_heads * m->head_dim, kv_dim = m->n_kv_heads * m->head_dim;
    const int64_t widest = m->dim > q_dim ? m->dim : q_dim;
    fwd_task t = {.m = m, .kv = kv, .pool = pool, .tokens = tokens, .n_tok = n_tok, .pos0 = pos0, .n_out = n_out, .logits = logits};
    float *f = workspace;
    t.x = f, f += n_tok * m->dim;
    t.h = f, f += n_tok * m->dim;
    t.q = f, f += n_tok * q_dim;
    t.att = f, f += n_tok * q_dim;
    t.k = f, f += n_tok * kv_dim;
    t.v = f, f += n_tok * kv_dim;
    t.tmp = f, f += n_tok * widest;
    t.gate = f, f += n_tok * m->ffn_dim;
    t.up = f, f += n_tok * m->ffn_dim;
    t.attn_scratch_floats = lm_attention_scratch_floats(kv->capacity, m->head_dim);
    t.attn_scratch = f, f += nth * t.attn_scratch_floats;
    t.pos = (int32_t *)f, f += n_tok;
    t.act = (uint8_t *)f;
    for (int64_t i = 0; i < n_tok; i++) t.pos[i] = (int32_t)(pos0 + i);
    lm_pool_run(pool, forward_run, &t);
    return 0;
}
