/* Matrix products over GGUF weights: activations quantized once per column (as ggml pairs them with the
 * weight type), then every (row, column) dot product, rows split across the pool's threads. */
#include <stdlib.h>

#include "api.h"
#include "common.h"
#include "dot.h"

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
    lm_dot_fn dot = lm_dot_kernel(wtype);
    return dot ? dot((int)k, w, act) : NAN;
}

typedef struct {
    lm_pool *pool;
    lm_dot_fn dot;
    int wtype;
    const uint8_t *w;
    int64_t rows, k, n_cols, w_row_bytes, act_row_bytes;
    const float *x;
    uint8_t *act;
    float *y;
} matmul_task;

static void matmul_run(void *p, int ith, int nth) {
    matmul_task *t = p;
    long c0, c1, r0, r1;
    lm_split(t->n_cols, ith, nth, &c0, &c1);
    for (long c = c0; c < c1; c++) lm_quantize_act(t->wtype, t->x + c * t->k, t->act + c * t->act_row_bytes, t->k);
    lm_barrier(t->pool);
    lm_split(t->rows, ith, nth, &r0, &r1);
    for (long r = r0; r < r1; r++) {
        const uint8_t *wr = t->w + r * t->w_row_bytes;
        for (long c = 0; c < t->n_cols; c++) {
            t->y[c * t->rows + r] = t->dot((int)t->k, wr, t->act + c * t->act_row_bytes);
        }
    }
}

int lm_matmul(lm_pool *pool, int wtype, const void *w, int64_t rows, int64_t k, const float *x, int64_t n_cols,
              float *y) {
    int block_bytes;
    const int qk = lm_block_size(wtype, &block_bytes);
    lm_dot_fn dot = lm_dot_kernel_for(wtype, 0, rows, k, n_cols);
    if (!qk || !dot || k % qk) return -1;
    matmul_task t = {pool, dot, wtype, w, rows, k, n_cols, k / qk * block_bytes, lm_act_row_bytes(wtype, k), x,
                     NULL, y};
    t.act = malloc((size_t)(t.act_row_bytes * n_cols));
    if (!t.act) return -2;
    lm_pool_run(pool, matmul_run, &t);
    free(t.act);
    return 0;
}
