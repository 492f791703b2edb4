/* lm_matmul on deterministic pseudo-random blocks for every type, several shapes, 1 and 2 threads, plain
 * and repacked: one line per product with a hash of the output bits (check_arm.sh diffs the builds) */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
void *lm_pool_create(int n);
int lm_matmul(void *pool, int wtype, int64_t flags, const void *w, int64_t rows, int64_t k, const float *x, int64_t n, float *y);
static uint64_t s = 88172645463325252ull;
static uint32_t rnd(void) { s ^= s << 13; s ^= s >> 7; s ^= s << 17; return (uint32_t)s; }
static uint16_t small_half(void) { return (uint16_t)(0x2000 + rnd() % 0x1000) | (rnd() & 1 ? 0x8000 : 0); }
typedef struct { int t, qk, bb, off[2], noff; } tinfo;
static const tinfo T[] = {{2, 32, 18, {0}, 1}, {3, 32, 20, {0, 2}, 2}, {6, 32, 22, {0}, 1}, {7, 32, 24, {0, 2}, 2},
    {8, 32, 34, {0}, 1}, {10, 256, 84, {80, 82}, 2}, {11, 256, 110, {108}, 1}, {12, 256, 144, {0, 2}, 2},
    {13, 256, 176, {0, 2}, 2}, {14, 256, 210, {208}, 1}, {20, 32, 18, {0}, 1}, {23, 256, 136, {0}, 1},
    {1, 1, 2, {0}, 1}, {0, 1, 4, {0}, 0}, {30, 1, 2, {0}, 0}};
int main(void) {
    void *pools[2] = {lm_pool_create(1), lm_pool_create(2)};
    const int shapes[][3] = {{16, 512, 1}, {13, 512, 3}, {24, 768, 8}, {40, 1024, 9}, {8, 256, 17}, {64, 512, 5}};
    for (size_t ti = 0; ti < sizeof(T) / sizeof(T[0]); ti++)
        for (size_t si = 0; si < 6; si++)
            for (int rep = 0; rep < 2; rep++) {
                const tinfo *ty = &T[ti];
                const int rows = shapes[si][0], k = shapes[si][1], n = shapes[si][2];
                if (rep && !((ty->t == 2 || ty->t == 20 || ty->t == 12 || ty->t == 10) && rows % 8 == 0)) continue;
                const int nb = k / ty->qk;
                const size_t rb = (size_t)nb * ty->bb;
                uint8_t *w = malloc(rows * rb);
                for (size_t i = 0; i < rows * rb; i++) w[i] = (uint8_t)rnd();
                for (int r = 0; r < rows; r++)
                    for (int b = 0; b < nb; b++) {
                        uint8_t *blk = w + r * rb + (size_t)b * ty->bb;
                        if (ty->t == 0) { float f = (float)((int)(rnd() % 2001) - 1000) / 7919.0f; memcpy(blk, &f, 4); }
                        else if (ty->t == 30) { uint16_t h = (uint16_t)(0x3C00 + rnd() % 0x200) | (rnd() & 1 ? 0x8000 : 0); memcpy(blk, &h, 2); }
                        else for (int o = 0; o < ty->noff; o++) { uint16_t h = small_half(); if (o == 1) h &= 0x7FFF; memcpy(blk + ty->off[o], &h, 2); }
                    }
                float *x = malloc(sizeof(float) * n * k), *y = malloc(sizeof(float) * n * rows);
                for (int i = 0; i < n * k; i++) x[i] = ((int)(rnd() % 20001) - 10000) / 3000.0f;
                for (int p = 0; p < 2; p++) {
                    memset(y, 0xFF, sizeof(float) * n * rows);
                    int rc = lm_matmul(pools[p], ty->t, rep, w, rows, k, x, n, y);
                    uint64_t h = 1469598103934665603ull;
                    for (int i = 0; i < n * rows; i++) { uint32_t u; memcpy(&u, &y[i], 4); h = (h ^ u) * 1099511628211ull; }
                    printf("type %2d rows %2d k %4d n %2d rep %d threads %d rc %d y0 %.6g hash %016llx\n", ty->t, rows, k, n, rep, p + 1, rc, y[0], (unsigned long long)h);
                }
                free(w), free(x), free(y);
            }
    return 0;
}
