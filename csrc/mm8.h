/* AVX-512 VNNI kernels for the 32-element block formats, 8 weight rows at a time (see mm8.c). */
#ifndef LLAMETTE_MM8_H
#define LLAMETTE_MM8_H

#include "mm.h"

/* computes rows r0.. in groups of 8 while it can; returns how many rows it did (0: not for this type/CPU).
 * streams: each group takes one row from each of 8 equal parts of the range (8 forward streams the hardware
 * prefetchers follow, for single columns) instead of 8 adjacent rows (batches). */
int lm_mm8(const lm_mm_args *a, int64_t r0, int64_t r1, int streams);

#endif
