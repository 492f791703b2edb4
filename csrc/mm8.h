/* AVX-512 VNNI kernels for the 32-element block formats, 8 weight rows at a time (see mm8.c). */
#ifndef LLAMETTE_MM8_H
#define LLAMETTE_MM8_H

#include "mm.h"

/* computes rows r0.. in groups of 8 while it can; returns how many rows it did (0: not for this type/CPU).
 * streams: each group takes one row from each of 8 equal parts of the range (8 forward streams the hardware
 * prefetchers follow, for single columns) instead of 8 adjacent rows (batches). */
int lm_mm8(const lm_mm_args *a, int64_t r0, int64_t r1, int streams);

/* Interleaving, as llama.cpp's CPU_REPACK does for Q4_0 / IQ4_NL: per 8 rows and block, the 8 half-float
 * scales, then rows 0-3's 16 code bytes, then rows 4-7's (144 bytes). 1 if this build's kernels read that
 * layout for weights of this type; lm_interleave converts rows (rows % 8 == 0) of GGUF blocks into it. */
int lm_can_interleave(int type);
int lm_interleave(int type, const void *src, void *dst, int64_t rows, int64_t cols);

#endif
