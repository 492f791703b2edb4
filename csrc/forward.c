/* The fused Llama forward pass: one pool task runs every layer for a batch of tokens, the threads meeting
 * at a barrier between ops. Same graph and arithmetic as llama.cpp's llama model (llama-model.cpp,
 * build_llama) on the CPU backend without flash attention; Python describes the model in lm_model. */
#include "forward.h"

#include <stdlib.h>

#include "dot.h"
#include "flash_attn.h"
#include "mm.h"
#include "ops.h"

/* bytes of one quantized activation row for weight w (k = its row length) */
static int64_t act_bytes(const lm_weight *w) { return lm_act_row_bytes(w->type, w->cols); }

/* elements per block of the activation format weight type wtype pairs with */
static int64_t act_block(int wtype) { return lm_block_size(lm_act_type(wtype), NULL); }

static int64_t gcd64(int64_t a, int64_t b) { return b ? gcd64(b, a % b) : a; }
static int64_t lcm64(int64_t a, int64_t b) { return a / gcd64(a, b) * b; }

/* quantize columns [c0, c1) (whole blocks) of rows x (n x k) into act rows of row_bytes */
static void quantize_cols(int wtype, const float *x, int64_t n, int64_t k, uint8_t *act, int64_t row_bytes,
                          int64_t c0, int64_t c1) {
    if (c1 <= c0) return;
    int block_bytes;
    const int qk = lm_block_size(lm_act_type(wtype), &block_bytes);
    for (int64_t r = 0; r < n; r++) lm_quantize_act(wtype, x + r * k + c0, act + r * row_bytes + c0 / qk * block_bytes, c1 - c0);
}

/* The activation formats one normalised input feeds (q/k/v or gate/up weights may pair differently). */
typedef struct {
    int n;
    const lm_weight *w[3];
    uint8_t *act[3];
} act_set;

static void act_set_add(act_set *s, const lm_weight *w, uint8_t **next, int64_t rows) {
    for (int i = 0; i < s->n; i++) {
        if (lm_act_type(s->w[i]->type) == lm_act_type(w->type)) return;
    }
    s->w[s->n] = w;
    s->act[s->n++] = *next;
    *next += rows * act_bytes(w);
}

static uint8_t *act_for(const act_set *s, const lm_weight *w) {
    for (int i = 0; i < s->n; i++) {
        if (lm_act_type(s->w[i]->type) == lm_act_type(w->type)) return s->act[i];
    }
    return NULL;
}

/* RMS norm of rows x (n x dim) times w into h, quantized into every format of s. Threads take whole rows, or
 * for fewer rows than threads, blocks of each row (every thread computes the row's scale itself). */
static void norm_quant_part(const float *x, const float *w, float *h, int64_t n, int64_t dim, float eps,
                            const act_set *s, int ith, int nth) {
    if (n >= nth) {
        long r0, r1;
        lm_split(n, ith, nth, &r0, &r1);
        for (long r = r0; r < r1; r++) {
            lm_rms_apply(x + r * dim, w, h + r * dim, lm_rms_scale(x + r * dim, dim, eps), 0, dim);
            for (int i = 0; i < s->n; i++) {
                lm_quantize_act((int)s->w[i]->type, h + r * dim, s->act[i] + r * act_bytes(s->w[i]), dim);
            }
        }
        return;
    }
    int64_t unit = 1;
    for (int i = 0; i < s->n; i++) unit = lcm64(unit, act_block((int)s->w[i]->type));
    long b0, b1;
    lm_split(dim / unit, ith, nth, &b0, &b1);
    for (int64_t r = 0; r < n; r++) {
        lm_rms_apply(x + r * dim, w, h + r * dim, lm_rms_scale(x + r * dim, dim, eps), b0 * unit, b1 * unit);
    }
    for (int i = 0; i < s->n; i++) {
        quantize_cols((int)s->w[i]->type, h, n, dim, s->act[i], act_bytes(s->w[i]), b0 * unit, b1 * unit);
    }
}

/* this thread's rows of w: whole groups of `unit` rows, unit a multiple of the kernel's row group */
static void own_rows(const lm_weight *w, int64_t unit, int ith, int nth, int64_t *r0, int64_t *r1) {
    long g0, g1;
    lm_split(w->rows / unit, ith, nth, &g0, &g1);
    *r0 = g0 * unit;
    *r1 = g1 * unit;
}

/* y (n x rows) = act . W^T + bias over rows [r0, r1) */
static void matmul_rows(const lm_weight *w, const float *bias, const uint8_t *act, int64_t n, float *y, int64_t r0,
                        int64_t r1) {
    const lm_mm_args args = {w, act, act_bytes(w), n, y, w->rows, bias};
    lm_mm_rows(&args, r0, r1);
}

/* rows [r0, r1) for n columns computed one column at a time, in chunks of rows small enough to stay in cache:
 * the weights are read from memory once for all columns, and each column gets exactly the single-column
 * (decode) arithmetic, so a sequence decoded in a batch gives the bits it gives alone */
static void matmul_cols(const lm_weight *w, const float *bias, const uint8_t *act, int64_t n, float *y, int64_t r0,
                        int64_t r1) {
    /* ~256 KiB of weight rows per chunk: stays in L2 while every column passes over it, and is large enough
     * that the kernels' per-call activation setup is small next to the rows' work */
    const int64_t align = lm_mm_row_align(w), want = (256 << 10) / (w->row_bytes > 0 ? w->row_bytes : 1);
    const int64_t chunk = want > align ? want / align * align : align;
    for (int64_t rc = r0; rc < r1; rc += chunk) {
        const int64_t re = rc + chunk < r1 ? rc + chunk : r1;
        for (int64_t c = 0; c < n; c++) {
            const lm_mm_args args = {w, act + c * act_bytes(w), act_bytes(w), 1, y + c * w->rows, w->rows, bias};
            lm_mm_rows(&args, rc, re);
        }
    }
}

/* A decode step of several sequences (the server's continuous batching): each sequence must get the bits it
 * gets decoded alone. The batch kernels of the legacy 4/5/8-bit types and IQ4_NL compute every column with
 * ggml_vec_dot's arithmetic, as the single-column kernels do (tested), so those run as one batch. The float
 * types' and K-quants' batch kernels round differently from their single-column ones: those weights go column
 * by column through the single-column kernel (still reading the weights from memory once). */
static void matmul_seqs(const lm_weight *w, const float *bias, const uint8_t *act, int64_t n, float *y, int64_t r0,
                        int64_t r1) {
    if (w->flags & LM_PACK16) { /* the server layout: one arithmetic for any column count */
        matmul_rows(w, bias, act, n, y, r0, r1);
        return;
    }
    const int vec_batch = w->type == T_Q8_0 || w->type == T_Q4_0 || w->type == T_Q4_1 || w->type == T_Q5_0 ||
                          w->type == T_Q5_1 || w->type == T_IQ4_NL;
    if (vec_batch && n >= 2) matmul_rows(w, bias, act, n, y, r0, r1); /* (IQ4_NL's single column differs) */
    else matmul_cols(w, bias, act, n, y, r0, r1);
}

/* row unit for w such that a thread's rows also cover whole `extra`-sized groups, or 0 if rows don't split so */
static int64_t fused_unit(const lm_weight *w, int64_t extra) {
    const int64_t unit = lcm64(lm_mm_row_align(w), extra);
    return w->rows % unit == 0 ? unit : 0;
}

typedef struct {
    const lm_model *m;
    const lm_kv *kv;
    const lm_kv *const *kvs; /* multi-sequence decode: token i is one token of the sequence in kvs[i] */
    lm_pool *pool;
    const int32_t *tokens;
    int32_t *pos;
    int64_t n_tok, pos0, n_out;
    int residual; /* keep every row through the last layer and stop there (lm_forward_residual) */
    float *logits;
    /* workspace */
    float *x, *h, *q, *k, *v, *att, *tmp, *gate, *up, *attn_scratch, *attn_shared, *rope_cs;
    uint8_t *act;
    int64_t attn_scratch_floats;
} fwd_task;

static void store_k(const fwd_task *t, int64_t il, int64_t r0, int64_t r1) {
    const int64_t kv_dim = t->m->n_kv_heads * t->m->head_dim;
    if (!t->kvs) {
        lm_store_k_rows(t->k, t->n_tok, kv_dim, t->m->head_dim, t->kv->k[il], t->kv->capacity, t->pos0, r0, r1);
        return;
    }
    for (int64_t i = 0; i < t->n_tok; i++) {
        const lm_kv *kv = t->kvs[i];
        lm_store_k_rows(t->k + i * kv_dim, 1, kv_dim, t->m->head_dim, kv->k[il], kv->capacity, t->pos[i], r0, r1);
    }
}

static void store_v(const fwd_task *t, int64_t il, int64_t r0, int64_t r1) {
    const int64_t kv_dim = t->m->n_kv_heads * t->m->head_dim;
    if (!t->kvs) {
        lm_store_v_rows(t->v, t->n_tok, kv_dim, t->m->head_dim, t->kv->v[il], t->kv->capacity, t->pos0, r0, r1);
        return;
    }
    for (int64_t i = 0; i < t->n_tok; i++) {
        const lm_kv *kv = t->kvs[i];
        lm_store_v_rows(t->v + i * kv_dim, 1, kv_dim, t->m->head_dim, kv->v[il], kv->capacity, t->pos[i], r0, r1);
    }
}

/* multi-sequence attention: one query token per sequence, through the single-token code path (flash: all
 * threads on one token at a time, as in a lone decode; plain: (token, head) jobs split over the threads) */
static void seqs_attention(fwd_task *t, int64_t il, float *scratch, int ith, int nth) {
    const lm_model *m = t->m;
    const int64_t hd = m->head_dim, q_dim = m->n_heads * hd, n = t->n_tok;
    if (m->flash_attn) {
        for (int64_t i = 0; i < n; i++) {
            const lm_kv *kv = t->kvs[i];
            lm_flash_attn_part(t->pool, t->q + i * q_dim, 1, m->n_heads, m->n_kv_heads, hd, kv->k[il], kv->v[il],
                               kv->capacity, t->pos[i], m->attn_scale, t->att + i * q_dim, scratch, t->attn_shared,
                               ith, nth);
            lm_barrier(t->pool); /* the shared partials are reused by the next token */
        }
        return;
    }
    if (m->batch_layout && m->n_heads / m->n_kv_heads <= 16) { /* jobs: (token, KV head) */
        long u0, u1;
        lm_split(n * m->n_kv_heads, ith, nth, &u0, &u1);
        for (long u = u0; u < u1; u++) {
            const int64_t i = u / m->n_kv_heads, hk = u % m->n_kv_heads;
            const lm_kv *kv = t->kvs[i];
            lm_attend_shared(t->q + i * q_dim, m->n_heads, m->n_kv_heads, hd, kv->k[il], kv->v[il], kv->capacity,
                             t->pos[i], m->attn_scale, t->att + i * q_dim, scratch, hk, hk + 1);
        }
        return;
    }
    long j0, j1;
    lm_split(n * m->n_heads, ith, nth, &j0, &j1);
    for (int64_t i = j0 / m->n_heads; i < n && i * m->n_heads < j1; i++) {
        const int64_t a = j0 > i * m->n_heads ? j0 - i * m->n_heads : 0;
        const int64_t b = j1 < (i + 1) * m->n_heads ? j1 - i * m->n_heads : m->n_heads;
        const lm_kv *kv = t->kvs[i];
        lm_attention_jobs(t->q + i * q_dim, 1, m->n_heads, m->n_kv_heads, hd, kv->k[il], kv->v[il], kv->capacity,
                          t->pos[i], m->attn_scale, t->att + i * q_dim, scratch, a, b);
    }
}

/* The layer as 7 steps between barriers: norm+quantize | q,k,v products + rope + cache store | attention +
 * quantize | output product + residual | norm+quantize | gate,up products + swiglu + quantize | down product +
 * residual. Each thread's rows of a product are whole groups of what its epilogue needs (rope pairs,
 * activation blocks), so no op waits for another thread's rows. */
static void forward_run(void *p, int ith, int nth) {
    fwd_task *t = p;
    const lm_model *m = t->m;
    lm_pool *pool = t->pool;
    const int64_t n = t->n_tok, dim = m->dim, hd = m->head_dim;
    const int64_t q_dim = m->n_heads * hd, kv_dim = m->n_kv_heads * hd;
    void (*const mm)(const lm_weight *, const float *, const uint8_t *, int64_t, float *, int64_t, int64_t) =
        t->kvs ? matmul_seqs : matmul_rows;

    { /* token embeddings, and the rope angles of every position */
        long r0, r1;
        lm_split(n, ith, nth, &r0, &r1);
        for (long r = r0; r < r1; r++) {
            lm_dequantize_row(m->token_embd.type, (const uint8_t *)m->token_embd.data + t->tokens[r] * m->token_embd.row_bytes,
                              t->x + r * dim, dim);
        }
        lm_rope_cache_part(t->pos, n, m->rope_dims, m->rope_base, m->rope_freq_scale, m->rope_freqs, t->rope_cs, ith,
                           nth);
    }
    lm_barrier(pool);

    for (int64_t il = 0; il < m->n_layers; il++) {
        const lm_layer *L = &m->layers[il];
        const int last = il == m->n_layers - 1;
        /* 1: attention norm, quantized for q, k and v */
        act_set qkv = {0};
        uint8_t *next = t->act;
        act_set_add(&qkv, &L->wq, &next, n);
        act_set_add(&qkv, &L->wk, &next, n);
        act_set_add(&qkv, &L->wv, &next, n);
        norm_quant_part(t->x, L->attn_norm, t->h, n, dim, m->rms_eps, &qkv, ith, nth);
        lm_barrier(pool);
        /* 2: q, k, v; rope on q and k; k and v into the cache */
        {
            int64_t r0, r1;
            const int64_t uq = fused_unit(&L->wq, 2), uk = fused_unit(&L->wk, 2), uv = lm_mm_row_align(&L->wv);
            const int split = uq && uk; /* else: rope after a barrier */
            own_rows(&L->wq, split ? uq : lm_mm_row_align(&L->wq), ith, nth, &r0, &r1);
            mm(&L->wq, L->bq, act_for(&qkv, &L->wq), n, t->q, r0, r1);
            if (split) lm_rope_rows(t->q, q_dim, n, hd, m->rope_dims, t->rope_cs, r0, r1);
            own_rows(&L->wk, split ? uk : lm_mm_row_align(&L->wk), ith, nth, &r0, &r1);
            mm(&L->wk, L->bk, act_for(&qkv, &L->wk), n, t->k, r0, r1);
            if (split) {
                lm_rope_rows(t->k, kv_dim, n, hd, m->rope_dims, t->rope_cs, r0, r1);
                store_k(t, il, r0, r1);
            }
            own_rows(&L->wv, uv, ith, nth, &r0, &r1);
            mm(&L->wv, L->bv, act_for(&qkv, &L->wv), n, t->v, r0, r1);
            store_v(t, il, r0, r1);
            if (!split) {
                lm_barrier(pool);
                long a0, a1;
                lm_split(q_dim / 2, ith, nth, &a0, &a1);
                lm_rope_rows(t->q, q_dim, n, hd, m->rope_dims, t->rope_cs, 2 * a0, 2 * a1);
                lm_split(kv_dim / 2, ith, nth, &a0, &a1);
                lm_rope_rows(t->k, kv_dim, n, hd, m->rope_dims, t->rope_cs, 2 * a0, 2 * a1);
                store_k(t, il, 2 * a0, 2 * a1);
            }
        }
        lm_barrier(pool);
        /* 3: attention, each thread quantizing the heads it did (groups of heads that fill whole blocks) */
        {
            const int64_t qk = act_block((int)L->wo.type);
            const int64_t group = qk % hd == 0 ? qk / hd : (hd % qk == 0 ? 1 : 0);
            float *scratch = t->attn_scratch + ith * t->attn_scratch_floats;
            if (t->kvs) { /* each token against its own sequence, exactly as that sequence decoded alone */
                seqs_attention(t, il, scratch, ith, nth);
                lm_barrier(pool);
                long b0, b1;
                lm_split(q_dim / qk, ith, nth, &b0, &b1);
                quantize_cols((int)L->wo.type, t->att, n, q_dim, t->act, act_bytes(&L->wo), b0 * qk, b1 * qk);
            } else if (m->flash_attn) { /* every thread takes part (its split-KV path meets at a barrier inside) */
                lm_flash_attn_part(pool, t->q, n, m->n_heads, m->n_kv_heads, hd, t->kv->k[il], t->kv->v[il],
                                   t->kv->capacity, t->pos0, m->attn_scale, t->att, scratch, t->attn_shared, ith, nth);
                lm_barrier(pool);
                long b0, b1;
                lm_split(q_dim / qk, ith, nth, &b0, &b1);
                quantize_cols((int)L->wo.type, t->att, n, q_dim, t->act, act_bytes(&L->wo), b0 * qk, b1 * qk);
            } else if (group && m->n_heads % group == 0) {
                long u0, u1;
                lm_split(n * (m->n_heads / group), ith, nth, &u0, &u1);
                lm_attention_jobs(t->q, n, m->n_heads, m->n_kv_heads, hd, t->kv->k[il], t->kv->v[il], t->kv->capacity,
                                  t->pos0, m->attn_scale, t->att, scratch, u0 * group, u1 * group);
                for (long u = u0; u < u1; u++) { /* unit u: token u / units_per_token, heads from (u % ..) * group */
                    const int64_t per = m->n_heads / group, tok = u / per, c0 = (u % per) * group * hd;
                    quantize_cols((int)L->wo.type, t->att + tok * q_dim, 1, q_dim, t->act + tok * act_bytes(&L->wo),
                                  act_bytes(&L->wo), c0, c0 + group * hd);
                }
            } else {
                lm_attention_part(t->q, n, m->n_heads, m->n_kv_heads, hd, t->kv->k[il], t->kv->v[il],
                                  t->kv->capacity, t->pos0, m->attn_scale, t->att, scratch, ith, nth);
                lm_barrier(pool);
                long b0, b1;
                lm_split(q_dim / qk, ith, nth, &b0, &b1);
                quantize_cols((int)L->wo.type, t->att, n, q_dim, t->act, act_bytes(&L->wo), b0 * qk, b1 * qk);
            }
        }
        lm_barrier(pool);
        /* 4: output projection (every token: the kernel choice depends on the column count, as in llama.cpp),
         * then the residual for the rows that go on (the last layer keeps only those whose logits are wanted,
         * llama.cpp's inp_out_ids) */
        const int64_t rows = last && !t->residual ? t->n_out : n, skip = n - rows;
        float *x = t->x + skip * dim;
        {
            int64_t r0, r1;
            own_rows(&L->wo, lm_mm_row_align(&L->wo), ith, nth, &r0, &r1);
            mm(&L->wo, L->bo, t->act, n, t->tmp, r0, r1);
            for (int64_t tok = 0; tok < rows; tok++) {
                float *xr = x + tok * dim;
                const float *yr = t->tmp + (skip + tok) * dim;
                for (int64_t r = r0; r < r1; r++) xr[r] += yr[r];
            }
        }
        lm_barrier(pool);
        if (rows == 0) continue; /* no logits wanted from this batch: its K/V are in the cache, nothing else */
        /* 5: feed-forward norm, quantized for gate and up */
        act_set gu = {0};
        next = t->act;
        act_set_add(&gu, &L->gate, &next, rows);
        act_set_add(&gu, &L->up, &next, rows);
        uint8_t *act_down = next;
        norm_quant_part(x, L->ffn_norm, t->h, rows, dim, m->rms_eps, &gu, ith, nth);
        lm_barrier(pool);
        /* 6: gate and up over the same rows, swiglu, quantized for down */
        {
            const int64_t qk = act_block((int)L->down.type);
            int64_t unit = lcm64(fused_unit(&L->gate, qk), fused_unit(&L->up, qk));
            if (unit && m->ffn_dim % unit) unit = 0;
            int64_t r0, r1;
            own_rows(&L->gate, unit ? unit : lm_mm_row_align(&L->gate), ith, nth, &r0, &r1);
            mm(&L->gate, L->bgate, act_for(&gu, &L->gate), rows, t->gate, r0, r1);
            if (!unit) own_rows(&L->up, lm_mm_row_align(&L->up), ith, nth, &r0, &r1);
            mm(&L->up, L->bup, act_for(&gu, &L->up), rows, t->up, r0, r1);
            if (unit) {
                lm_swiglu_cols(t->gate, t->up, t->gate, rows, m->ffn_dim, r0, r1);
                quantize_cols((int)L->down.type, t->gate, rows, m->ffn_dim, act_down, act_bytes(&L->down), r0, r1);
            } else {
                lm_barrier(pool);
                long b0, b1;
                lm_split(m->ffn_dim / qk, ith, nth, &b0, &b1);
                lm_swiglu_cols(t->gate, t->up, t->gate, rows, m->ffn_dim, b0 * qk, b1 * qk);
                quantize_cols((int)L->down.type, t->gate, rows, m->ffn_dim, act_down, act_bytes(&L->down), b0 * qk,
                              b1 * qk);
            }
        }
        lm_barrier(pool);
        /* 7: down projection and the residual */
        {
            int64_t r0, r1;
            own_rows(&L->down, lm_mm_row_align(&L->down), ith, nth, &r0, &r1);
            mm(&L->down, L->bdown, act_down, rows, t->tmp, r0, r1);
            for (int64_t tok = 0; tok < rows; tok++) {
                for (int64_t r = r0; r < r1; r++) x[tok * dim + r] += t->tmp[tok * dim + r];
            }
        }
        lm_barrier(pool);
    }
    /* output norm and logits for the last n_out rows */
    if (t->n_out == 0 || t->residual) return;
    act_set out = {0};
    uint8_t *next = t->act;
    act_set_add(&out, &m->output, &next, t->n_out);
    norm_quant_part(t->x + (n - t->n_out) * dim, m->output_norm, t->h, t->n_out, dim, m->rms_eps, &out, ith, nth);
    lm_barrier(pool);
    int64_t r0, r1;
    own_rows(&m->output, lm_mm_row_align(&m->output), ith, nth, &r0, &r1);
    mm(&m->output, NULL, t->act, t->n_out, t->logits, r0, r1);
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

/* per-thread attention scratch (floats) for whichever attention the model uses */
static int64_t attn_scratch_floats(const lm_model *m, const lm_kv *kv, int64_t n_tok) {
    int64_t plain = (int64_t)lm_attention_scratch_floats(kv->capacity, m->head_dim);
    const int64_t shared = (int64_t)lm_attend_shared_scratch_floats(kv->capacity, m->n_heads, m->head_dim);
    if (m->batch_layout && shared > plain) plain = shared;
    const int64_t flash = m->flash_attn ? (int64_t)lm_flash_attn_scratch_floats(kv->capacity, m->head_dim, n_tok) : 0;
    return ((plain > flash ? plain : flash) + 15) & ~(int64_t)15; /* a multiple of 64 bytes per thread */
}

size_t lm_forward_workspace_bytes(const lm_model *m, const lm_kv *kv, int64_t n_tok, int n_threads) {
    const int64_t q_dim = m->n_heads * m->head_dim, kv_dim = m->n_kv_heads * m->head_dim;
    const int64_t widest = m->dim > q_dim ? m->dim : q_dim;
    const int64_t shared = m->flash_attn ? (int64_t)lm_flash_attn_shared_floats(m->n_heads, m->head_dim, n_threads) : 0;
    const int64_t floats = n_tok * (2 * m->dim + 2 * q_dim + 2 * kv_dim + widest + 2 * m->ffn_dim + m->rope_dims) +
                           (int64_t)n_threads * attn_scratch_floats(m, kv, n_tok) + shared + n_tok + 16;
    return (size_t)floats * 4 + (size_t)(3 * n_tok * max_act_bytes(m)) + 64;
}

static int forward_impl(lm_pool *pool, const lm_model *m, const lm_kv *kv, const lm_kv *const *kvs,
                        const int32_t *tokens, int64_t n_tok, int64_t pos0, const int32_t *positions, int64_t n_out,
                        int residual, float *logits, void *workspace, size_t workspace_bytes);

int lm_forward(lm_pool *pool, const lm_model *m, const lm_kv *kv, const int32_t *tokens, int64_t n_tok, int64_t pos0,
               int64_t n_out, float *logits, void *workspace, size_t workspace_bytes) {
    if (n_tok < 1 || n_out < 0 || n_out > n_tok || pos0 < 0 || pos0 + n_tok > kv->capacity) return -1;
    if (m->batch_layout && n_tok == 1 && n_out == 1) { /* a lone decode step is a batch of one (same bits) */
        const lm_kv *kvs[1] = {kv};
        const int32_t pos[1] = {(int32_t)pos0};
        return forward_impl(pool, m, kv, kvs, tokens, 1, 0, pos, 1, 0, logits, workspace, workspace_bytes);
    }
    return forward_impl(pool, m, kv, NULL, tokens, n_tok, pos0, NULL, n_out, 0, logits, workspace, workspace_bytes);
}

int lm_forward_residual(lm_pool *pool, const lm_model *m, const lm_kv *kv, const int32_t *tokens, int64_t n_tok,
                        int64_t pos0, void *workspace, size_t workspace_bytes) {
    if (n_tok < 1 || pos0 < 0 || pos0 + n_tok > kv->capacity) return -1;
    return forward_impl(pool, m, kv, NULL, tokens, n_tok, pos0, NULL, 0, 1, NULL, workspace, workspace_bytes);
}

int lm_forward_seqs(lm_pool *pool, const lm_model *m, const lm_kv *const *kvs, const lm_kv *largest,
                    const int32_t *tokens, const int32_t *positions, int64_t n_seq, float *logits, void *workspace,
                    size_t workspace_bytes) {
    if (n_seq < 1) return -1;
    for (int64_t i = 0; i < n_seq; i++) {
        if (positions[i] < 0 || positions[i] >= kvs[i]->capacity || kvs[i]->capacity > largest->capacity) return -1;
    }
    return forward_impl(pool, m, largest, kvs, tokens, n_seq, 0, positions, n_seq, 0, logits, workspace,
                        workspace_bytes);
}

static int forward_impl(lm_pool *pool, const lm_model *m, const lm_kv *kv, const lm_kv *const *kvs,
                        const int32_t *tokens, int64_t n_tok, int64_t pos0, const int32_t *positions, int64_t n_out,
                        int residual, float *logits, void *workspace, size_t workspace_bytes) {
    const int nth = lm_pool_size(pool);
    if (workspace_bytes < lm_forward_workspace_bytes(m, kv, n_tok, nth)) return -2;
    const int64_t q_dim = m->n_heads * m->head_dim, kv_dim = m->n_kv_heads * m->head_dim;
    const int64_t widest = m->dim > q_dim ? m->dim : q_dim;
    fwd_task t = {.m = m, .kv = kv, .kvs = kvs, .pool = pool, .tokens = tokens, .n_tok = n_tok, .pos0 = pos0,
                  .n_out = n_out, .residual = residual, .logits = logits};
    float *f = workspace;
    t.x = f, f += n_tok * m->dim;
    t.h = f, f += n_tok * m->dim; /* ends holding the output-normed rows: NativeLlama.forward(hidden=True) reads them */
    t.q = f, f += n_tok * q_dim;
    t.att = f, f += n_tok * q_dim;
    t.k = f, f += n_tok * kv_dim;
    t.v = f, f += n_tok * kv_dim;
    t.tmp = f, f += n_tok * widest;
    t.gate = f, f += n_tok * m->ffn_dim;
    t.up = f, f += n_tok * m->ffn_dim;
    f = (float *)(((uintptr_t)f + 63) & ~(uintptr_t)63);
    t.attn_scratch_floats = attn_scratch_floats(m, kv, n_tok);
    t.attn_scratch = f, f += nth * t.attn_scratch_floats;
    t.attn_shared = f, f += m->flash_attn ? lm_flash_attn_shared_floats(m->n_heads, m->head_dim, nth) : 0;
    t.rope_cs = f, f += n_tok * m->rope_dims;
    t.pos = (int32_t *)f, f += n_tok;
    t.act = (uint8_t *)f;
    for (int64_t i = 0; i < n_tok; i++) t.pos[i] = positions ? positions[i] : (int32_t)(pos0 + i);
    lm_pool_run(pool, forward_run, &t);
    return 0;
}
