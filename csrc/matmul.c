/* Matrix products over GGUF weights: activations quantized once per column (as ggml pairs them with the
 * weight type), then every (row, column) dot product, rows split across the pool's threads. */
#include <stdlib.h>

#include "api.h"
#include "common.h"
#include "dot.h"
#include "forward.h"
#include "kquant.h"
#include "mm.h"
#include "mm8.h"

int64_t lm_act_row_bytes(int wtype, int64_t k) {
    int bytes;
    const int qk = lm_block_size(lm_act_type(wtype), &bytes);
    return qk ? k / qk * bytes : -1;
}

int lm_quantize_act(int wtype, const float *x, void *y, int64_t k) {
    switch (lm_act_type(wtype)) {
        case T_Q8_0: lm_quantize_q8_0(x, y, k); return 0;
        case T_Q8_1: lm_quantize_q8_1(x, y, k); return 0;
        case T_Q8_K: lm_quantize_q8_K(x, y, k); return 0;
        case T_F32: memcpy(y, x, (size_t)k * 4); return 0;
        case T_F16: for (int64_t i = 0; i < k; i++) ((lm_half *)y)[i] = lm_f2h(x[i]); return 0;
        case T_BF16: for (int64_t i = 0; i < k; i++) ((uint16_t *)y)[i] = lm_f2bf(x[i]); return 0;
        default: return -1;
    }
}

float lm_vec_dot(int wtype, int64_t k, const void *w, const void *act) {
    if (lm_is_kquant(wtype)) return lm_kquant_vec_dot(wtype, k, w, act);
    lm_dot_fn dot = lm_dot_kernel(wtype);
    return dot ? dot((int)k, w, act) : NAN;
}

typedef struct {
    lm_pool *pool;
    lm_weight w;
    const float *x;
    uint8_t *act;
    int64_t n_cols, act_row_bytes;
    float *y;
} matmul_task;

static void matmul_run(void *p, int ith, int nth) {
    matmul_task *t = p;
    long c0, c1, g0, g1;
    lm_split(t->n_cols, ith, nth, &c0, &c1);
    for (long c = c0; c < c1; c++) lm_quantize_act((int)t->w.type, t->x + c * t->w.cols, t->act + c * t->act_row_bytes, t->w.cols);
    lm_barrier(t->pool);
    const int64_t align = lm_mm_row_align(&t->w);
    lm_split(t->w.rows / align, ith, nth, &g0, &g1);
    const lm_mm_args args = {&t->w, t->act, t->act_row_bytes, t->n_cols, t->y, t->w.rows, NULL};
    lm_mm_rows(&args, g0 * align, g1 * align);
}

int lm_matmul(lm_pool *pool, int wtype, int64_t flags, const void *w, int64_t rows, int64_t k, const float *x,
              int64_t n_cols, float *y) {
    int block_bytes;
    const int qk = lm_block_size(wtype, &block_bytes);
    if (!qk || !(lm_dot_kernel(wtype) || lm_is_kquant(wtype)) || k % qk || rows <= 0 || n_cols <= 0) return -1;
    if ((flags & LM_REPACKED) && rows % 8) return -1;
    if ((flags & LM_INTERLEAVED) && !((flags & LM_REPACKED) && lm_can_interleave(wtype))) return -1;
    if ((flags & LM_PACK16) && (flags != LM_PACK16 || !lm_can_pack16(wtype) || rows % 16)) return -1;
    matmul_task t = {pool, {w, wtype, rows, k, k / qk * block_bytes, flags}, x, NULL, n_cols, lm_act_row_bytes(wtype, k), y};
    t.act = malloc((size_t)(t.act_row_bytes * n_cols));
    if (!t.act) return -2;
    lm_pool_run(pool, matmul_run, &t);
    free(t.act);
    return 0;
}
