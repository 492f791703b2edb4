/* Dot products of one weight row with one quantized activation row, in exactly the arithmetic of
 * llama.cpp's x86 kernels (ggml-cpu/arch/x86/quants.c, AVX2 paths, as built on an AVX-512 machine).
 *
 * Written as scalar code that keeps ggml's 8 float lanes: lane j of a 32-element block holds the
 * integer sum of elements 4j..4j+3; blocks are folded into the lanes with fmaf in block order; the lanes
 * are reduced with lm_hsum8. Same operations in the same order give the same bits on any machine. */
#include "dot.h"

#include "common.h"

/* lane j = sum of a[e] * b[e] for e in 4j .. 4j+3 (exact in int) */
static inline void lane_sums(const int8_t *a, const int8_t *b, int32_t lanes[8]) {
    for (int j = 0; j < 8; j++) {
        lanes[j] = a[4 * j] * b[4 * j] + a[4 * j + 1] * b[4 * j + 1] + a[4 * j + 2] * b[4 * j + 2] +
                   a[4 * j + 3] * b[4 * j + 3];
    }
}

static inline void fold(float acc[8], float d, const int32_t lanes[8]) {
    for (int j = 0; j < 8; j++) acc[j] = fmaf(d, (float)lanes[j], acc[j]);
}

/* unpack 32 four-bit values: low nibbles are elements 0..15, high nibbles 16..31 */
static inline void nibbles32(const uint8_t *qs, int8_t *out, int offset) {
    for (int j = 0; j < 16; j++) {
        out[j] = (int8_t)((qs[j] & 0x0F) - offset);
        out[j + 16] = (int8_t)((qs[j] >> 4) - offset);
    }
}

static float dot_q4_0(int n, const void *vx, const void *vy) {
    const block_q4_0 *x = vx;
    const block_q8_0 *y = vy;
    float acc[8] = {0};
    int8_t q[32];
    int32_t lanes[8];
    for (int b = 0; b < n / QK; b++) {
        nibbles32(x[b].qs, q, 8);
        lane_sums(q, y[b].qs, lanes);
        fold(acc, lm_h2f(x[b].d) * lm_h2f(y[b].d), lanes);
    }
    return lm_hsum8(acc);
}

static float dot_q4_1(int n, const void *vx, const void *vy) {
    const block_q4_1 *x = vx;
    const block_q8_1 *y = vy;
    float acc[8] = {0}, summs = 0.0f;
    int8_t q[32];
    int32_t lanes[8];
    for (int b = 0; b < n / QK; b++) {
        summs = fmaf(lm_h2f(x[b].m), lm_h2f(y[b].s), summs); /* ggml's compiled code fuses this */
        nibbles32(x[b].qs, q, 0);
        lane_sums(q, y[b].qs, lanes);
        fold(acc, lm_h2f(x[b].d) * lm_h2f(y[b].d), lanes);
    }
    return lm_hsum8(acc) + summs;
}

/* 5-bit values: nibble | bit j of qh as bit 4 */
static inline void fives32(const uint8_t *qs, const uint8_t *qh4, int8_t *out, int offset) {
    uint32_t qh;
    memcpy(&qh, qh4, 4);
    for (int j = 0; j < 16; j++) {
        out[j] = (int8_t)(((qs[j] & 0x0F) | (((qh >> j) & 1) << 4)) - offset);
        out[j + 16] = (int8_t)(((qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - offset);
    }
}

static float dot_q5_0(int n, const void *vx, const void *vy) {
    const block_q5_0 *x = vx;
    const block_q8_0 *y = vy;
    float acc[8] = {0};
    int8_t q[32];
    int32_t lanes[8];
    for (int b = 0; b < n / QK; b++) {
        fives32(x[b].qs, x[b].qh, q, 16);
        lane_sums(q, y[b].qs, lanes);
        fold(acc, lm_h2f(x[b].d) * lm_h2f(y[b].d), lanes);
    }
    return lm_hsum8(acc);
}

static float dot_q5_1(int n, const void *vx, const void *vy) {
    const block_q5_1 *x = vx;
    const block_q8_1 *y = vy;
    float acc[8] = {0}, summs = 0.0f;
    int8_t q[32];
    int32_t lanes[8];
    for (int b = 0; b < n / QK; b++) {
        summs = fmaf(lm_h2f(x[b].m), lm_h2f(y[b].s), summs);
        fives32(x[b].qs, x[b].qh, q, 0);
        lane_sums(q, y[b].qs, lanes);
        fold(acc, lm_h2f(x[b].d) * lm_h2f(y[b].d), lanes);
    }
    return lm_hsum8(acc) + summs;
}

static float dot_q8_0(int n, const void *vx, const void *vy) {
    const block_q8_0 *x = vx;
    const block_q8_0 *y = vy;
    float acc[8] = {0};
    int32_t lanes[8];
    for (int b = 0; b < n / QK; b++) {
        lane_sums(x[b].qs, y[b].qs, lanes);
        fold(acc, lm_h2f(x[b].d) * lm_h2f(y[b].d), lanes);
    }
    return lm_hsum8(acc);
}

/* even blocks and odd blocks go to two accumulators, added lane-wise before the final sum; an odd
 * last block is added after it (ggml_vec_dot_iq4_nl_q8_0) */
static float dot_iq4_nl(int n, const void *vx, const void *vy) {
    const block_iq4_nl *x = vx;
    const block_q8_0 *y = vy;
    const int nb = n / QK;
    float acc1[8] = {0}, acc2[8] = {0};
    int8_t q[32];
    int32_t lanes[8];
    int b = 0;
    for (; b + 1 < nb; b += 2) {
        for (int k = 0; k < 2; k++) {
            for (int j = 0; j < 16; j++) {
                q[j] = lm_iq4nl_values[x[b + k].qs[j] & 0xF];
                q[j + 16] = lm_iq4nl_values[x[b + k].qs[j] >> 4];
            }
            lane_sums(q, y[b + k].qs, lanes);
            fold(k ? acc2 : acc1, lm_h2f(y[b + k].d) * lm_h2f(x[b + k].d), lanes);
        }
    }
    for (int j = 0; j < 8; j++) acc1[j] += acc2[j];
    float sumf = lm_hsum8(acc1);
    for (; b < nb; b++) {
        int sum = 0;
        for (int j = 0; j < 16; j++) {
            sum += y[b].qs[j] * lm_iq4nl_values[x[b].qs[j] & 0xF];
            sum += y[b].qs[j + 16] * lm_iq4nl_values[x[b].qs[j] >> 4];
        }
        sumf = fmaf(lm_h2f(y[b].d) * lm_h2f(x[b].d), (float)sum, sumf);
    }
    return sumf;
}

/* F32 and F16 weights go through llamafile's tinyBLAS in llama.cpp: 16 float lanes, element k in lane
 * k % 16, folded with fmaf in k order, then reduced like _mm512_reduce_add_ps. F16 activations are
 * rounded to half first (lm_quantize_act), exactly as ggml converts them. */
static float dot_f32(int n, const void *vw, const void *vx) {
    const float *w = vw, *x = vx;
    float acc[16] = {0};
    for (int k = 0; k < n; k++) acc[k % 16] = fmaf(w[k], x[k], acc[k % 16]);
    return lm_hsum16(acc);
}

static float dot_f16(int n, const void *vw, const void *vx) {
    const lm_half *w = vw, *x = vx;
    float acc[16] = {0};
    for (int k = 0; k < n; k++) acc[k % 16] = fmaf(lm_h2f(w[k]), lm_h2f(x[k]), acc[k % 16]);
    return lm_hsum16(acc);
}

/* One column goes through ggml_vec_dot_f32/_f16 instead: 4 x 16 lanes over 64-element steps, added
 * pairwise (0+2, 1+3, then 0+1), reduced; the tail past the last full step follows (f32: fused into a
 * float sum, f16: summed in double). */
static float dot_f32_vec(int n, const void *vw, const void *vx) {
    const float *w = vw, *x = vx;
    float acc[4][16] = {{0}};
    const int np = n & ~63;
    for (int e = 0; e < np; e++) acc[(e & 63) >> 4][e & 15] = fmaf(w[e], x[e], acc[(e & 63) >> 4][e & 15]);
    for (int l = 0; l < 16; l++) {
        acc[0][l] += acc[2][l];
        acc[1][l] += acc[3][l];
    }
    for (int l = 0; l < 16; l++) acc[0][l] += acc[1][l];
    float sum = lm_hsum16(acc[0]);
    for (int e = np; e < n; e++) sum = fmaf(w[e], x[e], sum);
    return sum;
}

static float dot_f16_vec(int n, const void *vw, const void *vx) {
    const lm_half *w = vw, *x = vx;
    float acc[4][16] = {{0}};
    const int np = n & ~63;
    for (int e = 0; e < np; e++) {
        acc[(e & 63) >> 4][e & 15] = fmaf(lm_h2f(w[e]), lm_h2f(x[e]), acc[(e & 63) >> 4][e & 15]);
    }
    for (int l = 0; l < 16; l++) {
        acc[0][l] += acc[2][l];
        acc[1][l] += acc[3][l];
    }
    for (int l = 0; l < 16; l++) acc[0][l] += acc[1][l];
    double sum = lm_hsum16(acc[0]);
    for (int e = np; e < n; e++) sum += (double)(lm_h2f(w[e]) * lm_h2f(x[e]));
    return (float)sum;
}

/* ggml_vec_dot_bf16 with AVX512-BF16: two accumulators for alternating 32-element halves of each 64, each
 * reduced and added in double; the tail in double */
static float dot_bf16_vec(int n, const void *vw, const void *vx) {
    const uint16_t *w = vw, *x = vx;
    float c[2][16] = {{0}};
    int i = 0;
    for (; i + 64 <= n; i += 64) {
        for (int half = 0; half < 2; half++) {
            for (int l = 0; l < 16; l++) {
                const int e = i + 32 * half + 2 * l;
                c[half][l] = fmaf(lm_bf2f(w[e + 1]), lm_bf2f(x[e + 1]), c[half][l]);
                c[half][l] = fmaf(lm_bf2f(w[e]), lm_bf2f(x[e]), c[half][l]);
            }
        }
    }
    double sum = 0;
    sum += (double)lm_hsum16(c[0]);
    sum += (double)lm_hsum16(c[1]);
    for (; i < n; i++) sum += (double)(lm_bf2f(w[i]) * lm_bf2f(x[i]));
    return (float)sum;
}

/* BF16: tinyBLAS with AVX512-BF16 (vdpbf16ps): lane i takes elements 2i and 2i+1 of each 32, the odd one
 * first, each product added with one rounding */
static float dot_bf16(int n, const void *vw, const void *vx) {
    const uint16_t *w = vw, *x = vx;
    float acc[16] = {0};
    for (int k = 0; k < n; k += 32) {
        for (int i = 0; i < 16; i++) {
            const int e = k + 2 * i;
            acc[i] = fmaf(lm_bf2f(w[e + 1]), lm_bf2f(x[e + 1]), acc[i]);
            acc[i] = fmaf(lm_bf2f(w[e]), lm_bf2f(x[e]), acc[i]);
        }
    }
    return lm_hsum16(acc);
}

/* IQ4_NL batches go through tinyBLAS_Q0: one accumulator, blocks in order */
static float dot_iq4_nl_blas(int n, const void *vx, const void *vy) {
    const block_iq4_nl *x = vx;
    const block_q8_0 *y = vy;
    float acc[8] = {0};
    int8_t q[32];
    int32_t lanes[8];
    for (int b = 0; b < n / QK; b++) {
        for (int j = 0; j < 16; j++) {
            q[j] = lm_iq4nl_values[x[b].qs[j] & 0xF];
            q[j + 16] = lm_iq4nl_values[x[b].qs[j] >> 4];
        }
        lane_sums(q, y[b].qs, lanes);
        fold(acc, lm_h2f(x[b].d) * lm_h2f(y[b].d), lanes);
    }
    return lm_hsum8(acc);
}

/* Q4_0 in llama.cpp's repacked 8x8 layout: one accumulator, fmaf(block dot, dw * dx) per block */
static float dot_q4_0_x8(int n, const void *vx, const void *vy) {
    const block_q4_0 *x = vx;
    const block_q8_0 *y = vy;
    float acc = 0.0f;
    for (int b = 0; b < n / QK; b++) {
        int sum = 0;
        for (int j = 0; j < 16; j++) {
            sum += ((x[b].qs[j] & 0x0F) - 8) * y[b].qs[j] + ((x[b].qs[j] >> 4) - 8) * y[b].qs[j + 16];
        }
        acc = fmaf((float)sum, lm_h2f(x[b].d) * lm_h2f(y[b].d), acc);
    }
    return acc;
}

/* IQ4_NL in the repacked 8x8 layout: the same, with the non-linear values */
static float dot_iq4_nl_x8(int n, const void *vx, const void *vy) {
    const block_iq4_nl *x = vx;
    const block_q8_0 *y = vy;
    float acc = 0.0f;
    for (int b = 0; b < n / QK; b++) {
        int sum = 0;
        for (int j = 0; j < 16; j++) {
            sum += lm_iq4nl_values[x[b].qs[j] & 0x0F] * y[b].qs[j] + lm_iq4nl_values[x[b].qs[j] >> 4] * y[b].qs[j + 16];
        }
        acc = fmaf((float)sum, lm_h2f(x[b].d) * lm_h2f(y[b].d), acc);
    }
    return acc;
}

lm_dot_fn lm_dot_kernel_for(int wtype, int64_t flags, int64_t rows, int64_t k, int64_t n_cols) {
    if (flags & 1) { /* LM_REPACKED */
        switch (wtype) {
            case T_Q4_0: return dot_q4_0_x8;
            case T_IQ4_NL: return dot_iq4_nl_x8;
            default: break;
        }
    }
    /* llamafile_sgemm takes 2+ columns when rows % 4 == 0 and k is a multiple of its vector width */
    const int blas = n_cols >= 2 && rows % 4 == 0;
    switch (wtype) {
        case T_F32: return blas && k % 16 == 0 ? dot_f32 : dot_f32_vec;
        case T_F16: return blas && k % 16 == 0 ? dot_f16 : dot_f16_vec;
        case T_BF16: return blas && k % 32 == 0 ? dot_bf16 : dot_bf16_vec;
        case T_IQ4_NL: return n_cols >= 2 ? dot_iq4_nl_blas : dot_iq4_nl;
        default: return lm_dot_kernel(wtype);
    }
}

/* K-quants and IQ4_XS: kquant.c */
lm_dot_fn lm_dot_kernel(int wtype) {
    switch (wtype) {
        case T_Q4_0: return dot_q4_0;
        case T_Q4_1: return dot_q4_1;
        case T_Q5_0: return dot_q5_0;
        case T_Q5_1: return dot_q5_1;
        case T_Q8_0: return dot_q8_0;
        case T_IQ4_NL: return dot_iq4_nl;
        case T_F32: return dot_f32;
        case T_F16: return dot_f16;
        case T_BF16: return dot_bf16;
        default: return NULL;
    }
}

int lm_act_type(int wtype) {
    switch (wtype) {
        case T_Q4_0: case T_Q5_0: case T_Q8_0: case T_IQ4_NL: return T_Q8_0;
        case T_Q4_1: case T_Q5_1: return T_Q8_1;
        case T_Q2_K: case T_Q3_K: case T_Q4_K: case T_Q5_K: case T_Q6_K: case T_IQ4_XS: return T_Q8_K;
        case T_F16: return T_F16;
        case T_BF16: return T_BF16;
        case T_F32: return T_F32;
        default: return -1;
    }
}
