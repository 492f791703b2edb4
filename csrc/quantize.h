/* Weight quantization: float32 rows to GGUF block formats, bit-exact with llama.cpp's `llama-quantize`
 * without an importance matrix (see quantize.c). Type ids are ggml's. */
#ifndef LLAMETTE_QUANTIZE_H
#define LLAMETTE_QUANTIZE_H

#include <stdint.h>

/* nrows rows of n_per_row floats into nrows rows of blocks, packed back to back.
 * 0, or -1 for an unsupported type or an n_per_row that is not a whole number of blocks. */
int lm_quantize_rows(int type, const float *src, void *dst, int64_t nrows, int64_t n_per_row);

/* the same, rows split over the threads of pool (an lm_pool *, or NULL for the calling thread only);
 * rows are independent, so the bytes do not depend on the thread count */
int lm_quantize_rows_mt(void *pool, int type, const float *src, void *dst, int64_t nrows, int64_t n_per_row);

#endif
