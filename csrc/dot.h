/* Per-type dot product kernels (weight row . quantized activation row), ggml-exact. */
#ifndef LLAMETTE_DOT_H
#define LLAMETTE_DOT_H

#include <stdint.h>

typedef float (*lm_dot_fn)(int n, const void *w, const void *act);

lm_dot_fn lm_dot_kernel(int wtype); /* NULL for unsupported types and for the K-quants (kquant.h) */
/* the kernel llama.cpp's mul_mat would use for this shape (tinyBLAS for batches, vec_dot otherwise) */
lm_dot_fn lm_dot_kernel_for(int wtype, int64_t flags, int64_t rows, int64_t k, int64_t n_cols);

#endif
