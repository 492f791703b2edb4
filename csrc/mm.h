/* Matrix-product kernels over a range of weight rows (see mm.c). */
#ifndef LLAMETTE_MM_H
#define LLAMETTE_MM_H

#include <stdint.h>

#include "forward.h"

typedef struct {
    const lm_weight *w;
    const uint8_t *act; /* n activation rows in the weight type's pairing format */
    int64_t act_row_bytes, n;
    float *y; /* y[c * y_stride + r] */
    int64_t y_stride;
    const float *bias; /* added after the product, or NULL */
} lm_mm_args;

void lm_mm_rows(const lm_mm_args *a, int64_t r0, int64_t r1);
/* mm16.c: the 16-row server layout (LM_PACK16) */
int lm_can_pack16(int type);
int64_t lm_pack16_bytes(int type, int64_t rows, int64_t cols);
int lm_pack16(int type, const void *src, void *dst, int64_t rows, int64_t cols);
void lm_mm16(const lm_mm_args *a, int64_t r0, int64_t r1);
/* rows a thread's share must be a multiple of (8 for llama.cpp's repacked layouts) */
int64_t lm_mm_row_align(const lm_weight *w);

#endif
