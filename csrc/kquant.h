/* Matrix products for the 256-element super-block formats (Q2_K..Q6_K, IQ4_XS), see kquant.c. */
#ifndef LLAMETTE_KQUANT_H
#define LLAMETTE_KQUANT_H

#include "mm.h"

/* 1 when this is a K-quant/IQ4_XS weight (lm_mm_kquant computes it) */
int lm_is_kquant(int wtype);
/* y for rows [r0, r1) and every column, in the arithmetic llama.cpp picks for this shape */
void lm_mm_kquant(const lm_mm_args *a, int64_t r0, int64_t r1);
/* one dot product in llama.cpp's single-column (ggml_vec_dot) arithmetic, for tests */
float lm_kquant_vec_dot(int wtype, int64_t k, const void *w, const void *act);

#endif
