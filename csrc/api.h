/* llamette's native library: the flat C ABI that src/llamette/kernels/cpu.py binds with ctypes.
 * No Python.h: arguments are validated in Python before they get here. Type ids are ggml's. */
#ifndef LLAMETTE_API_H
#define LLAMETTE_API_H

#include <stddef.h>
#include <stdint.h>

#include "threads.h"

#define LM_ABI_VERSION 6

int lm_abi_version(void);
const char *lm_build_info(void);

/* formats: elements per block (0 if unsupported) and bytes per block */
int lm_block_size(int type, int *block_bytes);
int lm_dequantize_row(int type, const void *src, float *dst, int64_t n);

/* activations as ggml pairs them with a weight type: q8_0, q8_1, q8_K, f16, bf16 or f32 */
int lm_act_type(int wtype);
int64_t lm_act_row_bytes(int wtype, int64_t k);
int lm_quantize_act(int wtype, const float *x, void *y, int64_t k);
void lm_quantize_q8_0(const float *x, void *y, int64_t n);
void lm_quantize_q8_1(const float *x, void *y, int64_t n);
void lm_quantize_q8_K(const float *x, void *y, int64_t n);
float lm_vec_dot(int wtype, int64_t k, const void *w, const void *act);

/* y (n_cols x rows) = x (n_cols x k) . W^T, W (rows x k) in its GGUF block layout; flags as lm_weight.flags
 * (LM_REPACKED: compute as llama.cpp does for its 8-row repacked layout; needs rows % 8 == 0) */
int lm_matmul(lm_pool *pool, int wtype, int64_t flags, const void *w, int64_t rows, int64_t k, const float *x,
              int64_t n_cols, float *y);

#endif
