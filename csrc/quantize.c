/* Weight quantization (float32 rows -> GGUF blocks) exactly as llama.cpp's `llama-quantize` does it without an
 * importance matrix: ggml_quantize_chunk -> quantize_<type>(..., quant_weights = NULL), i.e. the
 * quantize_row_*_ref functions of ggml-quants.c, except IQ4_NL / IQ4_XS whose quantize_iq4_* search 7 scales
 * either side (ntry = 7) where their *_ref would not.
 *
 * Bit-exactness rests on every float expression keeping ggml's shape (operand order, int -> float
 * conversions, float vs. half values) and on the arithmetic being unfused: ggml-quants.c lives in ggml-base,
 * which llama.cpp builds for the baseline ISA (no FMA, so nothing for -ffp-contract=fast to contract); this
 * file is built with -ffp-contract=off (setup.py) to match. Reordering or fusing anything here changes bits. */
#include "quantize.h"

#include <float.h>
#include <stdbool.h>

#include "api.h"
#include "common.h"

#define GROUP_MAX_EPS 1e-15f
#define QMIN(a, b) ((a) < (b) ? (a) : (b)) /* ggml's MIN / MAX: the ternary, not fminf (NaN and -0 order) */
#define QMAX(a, b) ((a) > (b) ? (a) : (b))

/* GGML_FP32_TO_FP16 (ggml_compute_fp32_to_fp16): round to nearest even like F16C, but NaN becomes 0x7e00
 * with its sign, which lm_f2h does not do */
static inline lm_half fp32_to_fp16(float f) {
    const float scale_to_inf = 0x1.0p+112f, scale_to_zero = 0x1.0p-110f;
    float base = (fabsf(f) * scale_to_inf) * scale_to_zero;
    uint32_t w;
    memcpy(&w, &f, 4);
    const uint32_t shl1_w = w + w, sign = w & 0x80000000u;
    uint32_t bias = shl1_w & 0xFF000000u;
    if (bias < 0x71000000u) bias = 0x71000000u;
    const uint32_t bias_bits = (bias >> 1) + 0x07800000u;
    float bias_f;
    memcpy(&bias_f, &bias_bits, 4);
    base = bias_f + base;
    uint32_t bits;
    memcpy(&bits, &base, 4);
    const uint32_t nonsign = ((bits >> 13) & 0x00007C00u) + (bits & 0x00000FFFu);
    return (lm_half)((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}

/* round to nearest (ties to even) via the 1.5 * 2^23 trick; |fval| <= 2^22 in every use below */
static inline int nearest_int(float fval) {
    const float val = fval + 12582912.f;
    int i;
    memcpy(&i, &val, sizeof(int));
    return (i & 0x007fffff) - 0x00400000;
}

/* index of the table value nearest x (the lower one on ties), val ascending */
static inline int best_index_int8(int n, const int8_t *val, float x) {
    if (x <= val[0]) return 0;
    if (x >= val[n - 1]) return n - 1;
    int ml = 0, mu = n - 1;
    while (mu - ml > 1) {
        const int mav = (ml + mu) / 2;
        if (x < val[mav]) mu = mav;
        else ml = mav;
    }
    return x - val[mu - 1] < val[mu] - x ? mu - 1 : mu;
}

/* -- legacy 32-element blocks ------------------------------------------------------------------------ */

static void q4_0_row(const float *x, block_q4_0 *y, int64_t k) {
    const int qk = QK;
    const int64_t nb = k / qk;
    for (int64_t i = 0; i < nb; i++) {
        float amax = 0.0f, max = 0.0f; /* the first element of largest magnitude, with its sign */
        for (int j = 0; j < qk; j++) {
            const float v = x[i * qk + j];
            if (amax < fabsf(v)) {
                amax = fabsf(v);
                max = v;
            }
        }
        const float d = max / -8;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = fp32_to_fp16(d);
        for (int j = 0; j < qk / 2; ++j) {
            const float x0 = x[i * qk + 0 + j] * id;
            const float x1 = x[i * qk + qk / 2 + j] * id;
            const uint8_t xi0 = QMIN(15, (int8_t)(x0 + 8.5f));
            const uint8_t xi1 = QMIN(15, (int8_t)(x1 + 8.5f));
            y[i].qs[j] = xi0;
            y[i].qs[j] |= xi1 << 4;
        }
    }
}

static void q4_1_row(const float *x, block_q4_1 *y, int64_t k) {
    const int qk = QK;
    const int64_t nb = k / qk;
    for (int64_t i = 0; i < nb; i++) {
        float min = FLT_MAX, max = -FLT_MAX;
        for (int j = 0; j < qk; j++) {
            const float v = x[i * qk + j];
            if (v < min) min = v;
            if (v > max) max = v;
        }
        const float d = (max - min) / ((1 << 4) - 1);
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = fp32_to_fp16(d);
        y[i].m = fp32_to_fp16(min);
        for (int j = 0; j < qk / 2; ++j) {
            const float x0 = (x[i * qk + 0 + j] - min) * id;
            const float x1 = (x[i * qk + qk / 2 + j] - min) * id;
            const uint8_t xi0 = QMIN(15, (int8_t)(x0 + 0.5f));
            const uint8_t xi1 = QMIN(15, (int8_t)(x1 + 0.5f));
            y[i].qs[j] = xi0;
            y[i].qs[j] |= xi1 << 4;
        }
    }
}

static void q5_0_row(const float *x, block_q5_0 *y, int64_t k) {
    const int qk = QK;
    const int64_t nb = k / qk;
    for (int64_t i = 0; i < nb; i++) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < qk; j++) {
            const float v = x[i * qk + j];
            if (amax < fabsf(v)) {
                amax = fabsf(v);
                max = v;
            }
        }
        const float d = max / -16;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = fp32_to_fp16(d);
        uint32_t qh = 0;
        for (int j = 0; j < qk / 2; ++j) {
            const float x0 = x[i * qk + 0 + j] * id;
            const float x1 = x[i * qk + qk / 2 + j] * id;
            const uint8_t xi0 = QMIN(31, (int8_t)(x0 + 16.5f));
            const uint8_t xi1 = QMIN(31, (int8_t)(x1 + 16.5f));
            y[i].qs[j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
            qh |= ((xi0 & 0x10u) >> 4) << (j + 0); /* the fifth bits, element j at bit j */
            qh |= ((xi1 & 0x10u) >> 4) << (j + qk / 2);
        }
        memcpy(&y[i].qh, &qh, sizeof(qh));
    }
}

static void q5_1_row(const float *x, block_q5_1 *y, int64_t k) {
    const int qk = QK;
    const int64_t nb = k / qk;
    for (int64_t i = 0; i < nb; i++) {
        float min = FLT_MAX, max = -FLT_MAX;
        for (int j = 0; j < qk; j++) {
            const float v = x[i * qk + j];
            if (v < min) min = v;
            if (v > max) max = v;
        }
        const float d = (max - min) / ((1 << 5) - 1);
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = fp32_to_fp16(d);
        y[i].m = fp32_to_fp16(min);
        uint32_t qh = 0;
        for (int j = 0; j < qk / 2; ++j) {
            const float x0 = (x[i * qk + 0 + j] - min) * id;
            const float x1 = (x[i * qk + qk / 2 + j] - min) * id;
            const uint8_t xi0 = (uint8_t)(x0 + 0.5f);
            const uint8_t xi1 = (uint8_t)(x1 + 0.5f);
            y[i].qs[j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
            qh |= ((xi0 & 0x10u) >> 4) << (j + 0);
            qh |= ((xi1 & 0x10u) >> 4) << (j + qk / 2);
        }
        memcpy(&y[i].qh, &qh, sizeof(y[i].qh));
    }
}

/* quantize_row_q8_0_ref: roundf (half away from zero), not the activation path's round-half-even */
static void q8_0_row(const float *x, block_q8_0 *y, int64_t k) {
    const int64_t nb = k / QK;
    for (int64_t i = 0; i < nb; i++) {
        float amax = 0.0f;
        for (int j = 0; j < QK; j++) {
            const float v = x[i * QK + j];
            amax = QMAX(amax, fabsf(v));
        }
        const float d = amax / ((1 << 7) - 1);
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = fp32_to_fp16(d);
        for (int j = 0; j < QK; ++j) {
            const float x0 = x[i * QK + j] * id;
            y[i].qs[j] = (int8_t)roundf(x0);
        }
    }
}

/* -- K-quant helpers (ggml-quants.c, with quant weights NULL) --------------------------------------- */

/* signed levels in [-nmax, nmax) for a symmetric scale, searched around -nmax / max (Q6_K: rmse_type 1,
 * weights x^2); L gets level + nmax */
static float make_qx_quants(int n, int nmax, const float *x, int8_t *L, int rmse_type) {
    float max = 0, amax = 0;
    for (int i = 0; i < n; ++i) {
        const float ax = fabsf(x[i]);
        if (ax > amax) {
            amax = ax;
            max = x[i];
        }
    }
    if (amax < GROUP_MAX_EPS) { /* all zero */
        for (int i = 0; i < n; ++i) L[i] = 0;
        return 0.f;
    }
    float iscale = -nmax / max;
    if (rmse_type == 0) {
        for (int i = 0; i < n; ++i) {
            const int l = nearest_int(iscale * x[i]);
            L[i] = nmax + QMAX(-nmax, QMIN(nmax - 1, l));
        }
        return 1 / iscale;
    }
    bool return_early = false;
    if (rmse_type < 0) {
        rmse_type = -rmse_type;
        return_early = true;
    }
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; ++i) {
        int l = nearest_int(iscale * x[i]);
        l = QMAX(-nmax, QMIN(nmax - 1, l));
        L[i] = l + nmax;
        const float w = rmse_type == 1 ? x[i] * x[i]
                        : rmse_type == 2 ? 1
                        : rmse_type == 3 ? fabsf(x[i])
                                         : sqrtf(fabsf(x[i]));
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    float scale = suml2 ? sumlx / suml2 : 0.0f;
    if (return_early) return suml2 > 0 ? 0.5f * (scale + 1 / iscale) : 1 / iscale;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; ++is) {
        if (is == 0) continue;
        iscale = -(nmax + 0.1f * is) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; ++i) {
            int l = nearest_int(iscale * x[i]);
            l = QMAX(-nmax, QMIN(nmax - 1, l));
            const float w = rmse_type == 1 ? x[i] * x[i]
                            : rmse_type == 2 ? 1
                            : rmse_type == 3 ? fabsf(x[i])
                                             : sqrtf(fabsf(x[i]));
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; ++i) {
                const int l = nearest_int(iscale * x[i]);
                L[i] = nmax + QMAX(-nmax, QMIN(nmax - 1, l));
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/* Q3_K's sub-block scale: signed levels, then up to 5 passes moving single levels while that lowers the
 * x^2-weighted error; L gets level + nmax */
static float make_q3_quants(int n, int nmax, const float *x, int8_t *L, bool do_rmse) {
    float max = 0, amax = 0;
    for (int i = 0; i < n; ++i) {
        const float ax = fabsf(x[i]);
        if (ax > amax) {
            amax = ax;
            max = x[i];
        }
    }
    if (amax < GROUP_MAX_EPS) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        return 0.f;
    }
    const float iscale = -nmax / max;
    if (do_rmse) {
        float sumlx = 0, suml2 = 0;
        for (int i = 0; i < n; ++i) {
            int l = nearest_int(iscale * x[i]);
            l = QMAX(-nmax, QMIN(nmax - 1, l));
            L[i] = l;
            const float w = x[i] * x[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        for (int itry = 0; itry < 5; ++itry) {
            int n_changed = 0;
            for (int i = 0; i < n; ++i) {
                const float w = x[i] * x[i];
                float slx = sumlx - w * x[i] * L[i];
                if (slx > 0) {
                    float sl2 = suml2 - w * L[i] * L[i];
                    int new_l = nearest_int(x[i] * sl2 / slx);
                    new_l = QMAX(-nmax, QMIN(nmax - 1, new_l));
                    if (new_l != L[i]) {
                        slx += w * x[i] * new_l;
                        sl2 += w * new_l * new_l;
                        if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
                            L[i] = new_l;
                            sumlx = slx;
                            suml2 = sl2;
                            ++n_changed;
                        }
                    }
                }
            }
            if (!n_changed) break;
        }
        for (int i = 0; i < n; ++i) L[i] += nmax;
        return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
    }
    for (int i = 0; i < n; ++i) {
        int l = nearest_int(iscale * x[i]);
        l = QMAX(-nmax, QMIN(nmax - 1, l));
        L[i] = l + nmax;
    }
    return 1 / iscale;
}

/* scale and min (levels 0..nmax) minimising the weighted error over nstep + 1 trial scales */
static float make_qkx2_quants(int n, int nmax, const float *x, const float *weights, uint8_t *L, float *the_min,
                              uint8_t *Laux, float rmin, float rdelta, int nstep, bool use_mad) {
    float min = x[0], max = x[0];
    float sum_w = weights[0];
    float sum_x = sum_w * x[0];
    for (int i = 1; i < n; ++i) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        const float w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if (min > 0) min = 0;
    if (max == min) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        *the_min = -min;
        return 0.f;
    }
    float iscale = nmax / (max - min);
    float scale = 1 / iscale;
    float best_error = 0;
    for (int i = 0; i < n; ++i) {
        const int l = nearest_int(iscale * (x[i] - min));
        L[i] = QMAX(0, QMIN(nmax, l));
        float diff = scale * L[i] + min - x[i];
        diff = use_mad ? fabsf(diff) : diff * diff;
        const float w = weights[i];
        best_error += w * diff;
    }
    if (nstep < 1) {
        *the_min = -min;
        return scale;
    }
    for (int is = 0; is <= nstep; ++is) {
        iscale = (rmin + rdelta * is + nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; ++i) {
            int l = nearest_int(iscale * (x[i] - min));
            l = QMAX(0, QMIN(nmax, l));
            Laux[i] = l;
            const float w = weights[i];
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        const float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            float cur_error = 0;
            for (int i = 0; i < n; ++i) {
                float diff = this_scale * Laux[i] + this_min - x[i];
                diff = use_mad ? fabsf(diff) : diff * diff;
                const float w = weights[i];
                cur_error += w * diff;
            }
            if (cur_error < best_error) {
                for (int i = 0; i < n; ++i) L[i] = Laux[i];
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    return scale;
}

/* -- K-quants ---------------------------------------------------------------------------------------- */

static void q2_K_row(const float *x, block_q2_K *y, int64_t k) {
    const int64_t nb = k / QK_K;
    uint8_t L[QK_K], Laux[16];
    float weights[16], mins[QK_K / 16], scales[QK_K / 16];
    const float q4scale = 15.f;
    for (int64_t i = 0; i < nb; i++) {
        float max_scale = 0, max_min = 0; /* scales are positive: the min is subtracted */
        for (int j = 0; j < QK_K / 16; ++j) {
            for (int l = 0; l < 16; ++l) weights[l] = fabsf(x[16 * j + l]);
            scales[j] = make_qkx2_quants(16, 3, x + 16 * j, weights, L + 16 * j, &mins[j], Laux, -0.5f, 0.1f, 15, true);
            const float scale = scales[j];
            if (scale > max_scale) max_scale = scale;
            const float min = mins[j];
            if (min > max_min) max_min = min;
        }
        if (max_scale > 0) {
            const float iscale = q4scale / max_scale;
            for (int j = 0; j < QK_K / 16; ++j) {
                const int l = nearest_int(iscale * scales[j]);
                y[i].scales[j] = l;
            }
            y[i].d = fp32_to_fp16(max_scale / q4scale);
        } else {
            for (int j = 0; j < QK_K / 16; ++j) y[i].scales[j] = 0;
            y[i].d = fp32_to_fp16(0.f);
        }
        if (max_min > 0) {
            const float iscale = q4scale / max_min;
            for (int j = 0; j < QK_K / 16; ++j) {
                const int l = nearest_int(iscale * mins[j]);
                y[i].scales[j] |= (l << 4);
            }
            y[i].dmin = fp32_to_fp16(max_min / q4scale);
        } else {
            y[i].dmin = fp32_to_fp16(0.f);
        }
        /* requantize against the rounded (half, 4-bit) scales that dequantization will use */
        for (int j = 0; j < QK_K / 16; ++j) {
            const float d = lm_h2f(y[i].d) * (y[i].scales[j] & 0xF);
            if (!d) continue;
            const float dm = lm_h2f(y[i].dmin) * (y[i].scales[j] >> 4);
            for (int ii = 0; ii < 16; ++ii) {
                int l = nearest_int((x[16 * j + ii] + dm) / d);
                l = QMAX(0, QMIN(3, l));
                L[16 * j + ii] = l;
            }
        }
        for (int j = 0; j < QK_K; j += 128) {
            for (int l = 0; l < 32; ++l) {
                y[i].qs[j / 4 + l] = L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6);
            }
        }
        x += QK_K;
    }
}

static void q3_K_row(const float *x, block_q3_K *y, int64_t k) {
    const int64_t nb = k / QK_K;
    int8_t L[QK_K];
    float scales[QK_K / 16];
    for (int64_t i = 0; i < nb; i++) {
        float max_scale = 0, amax = 0;
        for (int j = 0; j < QK_K / 16; ++j) {
            scales[j] = make_q3_quants(16, 4, x + 16 * j, L + 16 * j, true);
            const float scale = fabsf(scales[j]);
            if (scale > amax) {
                amax = scale;
                max_scale = scales[j];
            }
        }
        memset(y[i].scales, 0, 12);
        if (max_scale) {
            const float iscale = -32.f / max_scale;
            for (int j = 0; j < QK_K / 16; ++j) {
                int8_t l = nearest_int(iscale * scales[j]);
                l = QMAX(-32, QMIN(31, l)) + 32;
                if (j < 8) y[i].scales[j] = l & 0xF;
                else y[i].scales[j - 8] |= ((l & 0xF) << 4);
                l >>= 4;
                y[i].scales[j % 4 + 8] |= (l << (2 * (j / 4)));
            }
            y[i].d = fp32_to_fp16(1 / iscale);
        } else {
            y[i].d = fp32_to_fp16(0.f);
        }
        int8_t sc;
        for (int j = 0; j < QK_K / 16; ++j) {
            sc = j < 8 ? y[i].scales[j] & 0xF : y[i].scales[j - 8] >> 4;
            sc = (sc | (((y[i].scales[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32;
            const float d = lm_h2f(y[i].d) * sc;
            if (!d) continue;
            for (int ii = 0; ii < 16; ++ii) {
                int l = nearest_int(x[16 * j + ii] / d);
                l = QMAX(-4, QMIN(3, l));
                L[16 * j + ii] = l + 4;
            }
        }
        /* the high bit of element j goes to hmask[j % 32], bit j / 32 */
        memset(y[i].hmask, 0, QK_K / 8);
        int m = 0;
        uint8_t hm = 1;
        for (int j = 0; j < QK_K; ++j) {
            if (L[j] > 3) {
                y[i].hmask[m] |= hm;
                L[j] -= 4;
            }
            if (++m == QK_K / 8) {
                m = 0;
                hm <<= 1;
            }
        }
        for (int j = 0; j < QK_K; j += 128) {
            for (int l = 0; l < 32; ++l) {
                y[i].qs[j / 4 + l] = L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6);
            }
        }
        x += QK_K;
    }
}

/* Q4_K and Q5_K share everything but the level count, the search range and the packing */
static void qkx_scales_mins(const float *x, int nmax, float rmin, int nstep, uint8_t *L, uint8_t packed[12],
                            lm_half *d_out, lm_half *dmin_out) {
    uint8_t Laux[32];
    float weights[32], mins[QK_K / 32], scales[QK_K / 32];
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < QK_K / 32; ++j) {
        float sum_x2 = 0;
        for (int l = 0; l < 32; ++l) sum_x2 += x[32 * j + l] * x[32 * j + l];
        const float av_x = sqrtf(sum_x2 / 32);
        for (int l = 0; l < 32; ++l) weights[l] = av_x + fabsf(x[32 * j + l]);
        scales[j] =
            make_qkx2_quants(32, nmax, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, rmin, 0.1f, nstep, false);
        const float scale = scales[j];
        if (scale > max_scale) max_scale = scale;
        const float min = mins[j];
        if (min > max_min) max_min = min;
    }
    const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    for (int j = 0; j < QK_K / 32; ++j) {
        uint8_t ls = nearest_int(inv_scale * scales[j]);
        uint8_t lm = nearest_int(inv_min * mins[j]);
        ls = QMIN(63, ls);
        lm = QMIN(63, lm);
        if (j < 4) {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            packed[j - 4] |= ((ls >> 4) << 6);
            packed[j - 0] |= ((lm >> 4) << 6);
        }
    }
    *d_out = fp32_to_fp16(max_scale / 63.f);
    *dmin_out = fp32_to_fp16(max_min / 63.f);
    /* requantize against the rounded scales and mins */
    uint8_t sc, m;
    for (int j = 0; j < QK_K / 32; ++j) {
        scale_min_k4(j, packed, &sc, &m);
        const float d = lm_h2f(*d_out) * sc;
        if (!d) continue;
        const float dm = lm_h2f(*dmin_out) * m;
        for (int ii = 0; ii < 32; ++ii) {
            int l = nearest_int((x[32 * j + ii] + dm) / d);
            l = QMAX(0, QMIN(nmax, l));
            L[32 * j + ii] = l;
        }
    }
}

static void q4_K_row(const float *x, block_q4_K *y, int64_t k) {
    const int64_t nb = k / QK_K;
    uint8_t L[QK_K];
    for (int64_t i = 0; i < nb; i++, x += QK_K) {
        qkx_scales_mins(x, 15, -1.f, 20, L, y[i].scales, &y[i].d, &y[i].dmin);
        uint8_t *q = y[i].qs;
        for (int j = 0; j < QK_K; j += 64) {
            for (int l = 0; l < 32; ++l) q[l] = L[j + l] | (L[j + l + 32] << 4);
            q += 32;
        }
    }
}

static void q5_K_row(const float *x, block_q5_K *y, int64_t k) {
    const int64_t nb = k / QK_K;
    uint8_t L[QK_K];
    for (int64_t i = 0; i < nb; i++, x += QK_K) {
        qkx_scales_mins(x, 31, -0.5f, 15, L, y[i].scales, &y[i].d, &y[i].dmin);
        uint8_t *qh = y[i].qh, *ql = y[i].qs;
        memset(qh, 0, QK_K / 8);
        uint8_t m1 = 1, m2 = 2;
        for (int n = 0; n < QK_K; n += 64) {
            for (int j = 0; j < 32; ++j) {
                int l1 = L[n + j];
                if (l1 > 15) {
                    l1 -= 16;
                    qh[j] |= m1;
                }
                int l2 = L[n + j + 32];
                if (l2 > 15) {
                    l2 -= 16;
                    qh[j] |= m2;
                }
                ql[j] = l1 | (l2 << 4);
            }
            m1 <<= 2;
            m2 <<= 2;
            ql += 32;
        }
    }
}

static void q6_K_row(const float *x, block_q6_K *y, int64_t k) {
    const int64_t nb = k / QK_K;
    int8_t L[QK_K];
    float scales[QK_K / 16];
    for (int64_t i = 0; i < nb; i++) {
        float max_scale = 0, max_abs_scale = 0;
        for (int ib = 0; ib < QK_K / 16; ++ib) {
            const float scale = make_qx_quants(16, 32, x + 16 * ib, L + 16 * ib, 1);
            scales[ib] = scale;
            const float abs_scale = fabsf(scale);
            if (abs_scale > max_abs_scale) {
                max_abs_scale = abs_scale;
                max_scale = scale;
            }
        }
        if (max_abs_scale < GROUP_MAX_EPS) {
            memset(&y[i], 0, sizeof(block_q6_K));
            y[i].d = fp32_to_fp16(0.f);
            x += QK_K;
            continue;
        }
        const float iscale = -128.f / max_scale;
        y[i].d = fp32_to_fp16(1 / iscale);
        for (int ib = 0; ib < QK_K / 16; ++ib) y[i].scales[ib] = QMIN(127, nearest_int(iscale * scales[ib]));
        for (int j = 0; j < QK_K / 16; ++j) {
            const float d = lm_h2f(y[i].d) * y[i].scales[j];
            if (!d) continue;
            for (int ii = 0; ii < 16; ++ii) {
                int l = nearest_int(x[16 * j + ii] / d);
                l = QMAX(-32, QMIN(31, l));
                L[16 * j + ii] = l + 32;
            }
        }
        uint8_t *ql = y[i].ql, *qh = y[i].qh;
        for (int j = 0; j < QK_K; j += 128) {
            for (int l = 0; l < 32; ++l) {
                const uint8_t q1 = L[j + l + 0] & 0xF;
                const uint8_t q2 = L[j + l + 32] & 0xF;
                const uint8_t q3 = L[j + l + 64] & 0xF;
                const uint8_t q4 = L[j + l + 96] & 0xF;
                ql[l + 0] = q1 | (q3 << 4);
                ql[l + 32] = q2 | (q4 << 4);
                qh[l] = (L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) | ((L[j + l + 64] >> 4) << 4) |
                        ((L[j + l + 96] >> 4) << 6);
            }
            ql += 64;
            qh += 32;
        }
        x += QK_K;
    }
}

/* -- IQ4_NL / IQ4_XS --------------------------------------------------------------------------------- */

/* quantize_row_iq4_nl_impl without quant weights (weights x^2; ggml's sigma2 only feeds quant weights).
 * One block of super_block_size values; 32-element sub-blocks, each scale searched over 2*ntry + 1 trials.
 * IQ4_XS (several sub-blocks) stores 6-bit sub-block scales of one half scale; IQ4_NL its one scale. */
static void iq4_nl_impl(const int super_block_size, const int block_size, const float *x, lm_half *dh, uint8_t *q4,
                        uint16_t *scales_h, uint8_t *scales_l, float *scales, float *weight, uint8_t *L,
                        const int8_t *values, const int ntry) {
    memset(q4, 0, super_block_size / 2);
    dh[0] = fp32_to_fp16(0.f);
    float max_scale = 0, amax_scale = 0;
    for (int ib = 0; ib < super_block_size / block_size; ++ib) {
        const float *xb = x + ib * block_size;
        uint8_t *Lb = L + ib * block_size;
        for (int j = 0; j < block_size; ++j) weight[j] = xb[j] * xb[j];
        float amax = 0, max = 0;
        for (int j = 0; j < block_size; ++j) {
            const float ax = fabsf(xb[j]);
            if (ax > amax) {
                amax = ax;
                max = xb[j];
            }
        }
        if (amax < GROUP_MAX_EPS) {
            scales[ib] = 0;
            continue;
        }
        float d = ntry > 0 ? -max / values[0] : max / values[0];
        float id = 1 / d;
        float sumqx = 0, sumq2 = 0;
        for (int j = 0; j < block_size; ++j) {
            const float al = id * xb[j];
            const int l = best_index_int8(16, values, al);
            Lb[j] = l;
            const float q = values[l];
            const float w = weight[j];
            sumqx += w * q * xb[j];
            sumq2 += w * q * q;
        }
        d = sumq2 > 0 ? sumqx / sumq2 : 0.f;
        float best = d * sumqx;
        for (int itry = -ntry; itry <= ntry; ++itry) {
            id = (itry + values[0]) / max;
            sumqx = sumq2 = 0;
            for (int j = 0; j < block_size; ++j) {
                const float al = id * xb[j];
                const int l = best_index_int8(16, values, al);
                const float q = values[l];
                const float w = weight[j];
                sumqx += w * q * xb[j];
                sumq2 += w * q * q;
            }
            if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
                d = sumqx / sumq2;
                best = d * sumqx;
            }
        }
        scales[ib] = d;
        const float abs_d = fabsf(d);
        if (abs_d > amax_scale) {
            amax_scale = abs_d;
            max_scale = d;
        }
    }
    if (super_block_size / block_size > 1) {
        const int nb = super_block_size / block_size;
        memset(scales_h, 0, ((nb + 7) / 8) * sizeof(uint16_t));
        const float d = -max_scale / 32;
        dh[0] = fp32_to_fp16(d);
        const float id = d ? 1 / d : 0.f;
        for (int ib = 0; ib < super_block_size / block_size; ++ib) {
            int l = nearest_int(id * scales[ib]);
            l = QMAX(-32, QMIN(31, l));
            const float dl = d * l;
            const float idl = dl ? 1 / dl : 0.f;
            uint8_t *Lb = L + ib * block_size;
            const float *xb = x + ib * block_size;
            for (int j = 0; j < block_size; ++j) Lb[j] = best_index_int8(16, values, idl * xb[j]);
            l += 32;
            const uint8_t l_l = l & 0xf, l_h = l >> 4;
            if (ib % 2 == 0) scales_l[ib / 2] = l_l;
            else scales_l[ib / 2] |= (l_l << 4);
            scales_h[ib / 8] |= (l_h << 2 * (ib % 8));
        }
    } else {
        dh[0] = fp32_to_fp16(scales[0]);
        if (ntry > 0) {
            const float id = scales[0] ? 1 / scales[0] : 0;
            for (int j = 0; j < super_block_size; ++j) L[j] = best_index_int8(16, values, id * x[j]);
        }
    }
    for (int i = 0; i < super_block_size / 32; ++i) {
        for (int j = 0; j < 16; ++j) q4[16 * i + j] = L[32 * i + j] | (L[32 * i + 16 + j] << 4);
    }
}

/* quantize_iq4_nl / quantize_iq4_xs (ggml_quantize_chunk's entry points): ntry 7, unlike their *_ref */
static void iq4_nl_row(const float *x, block_iq4_nl *y, int64_t k) {
    uint8_t L[QK];
    float weight[QK], scale;
    uint16_t unused_h;
    for (int64_t ibl = 0; ibl < k / QK; ++ibl) {
        iq4_nl_impl(QK, 32, x + QK * ibl, &y[ibl].d, y[ibl].qs, &unused_h, NULL, &scale, weight, L, lm_iq4nl_values, 7);
    }
}

static void iq4_xs_row(const float *x, block_iq4_xs *y, int64_t k) {
    uint8_t L[QK_K];
    float weight[32], scales[QK_K / 32];
    for (int64_t ibl = 0; ibl < k / QK_K; ++ibl) {
        iq4_nl_impl(QK_K, 32, x + QK_K * ibl, &y[ibl].d, y[ibl].qs, &y[ibl].scales_h, y[ibl].scales_l, scales,
                    weight, L, lm_iq4nl_values, 7);
    }
}

/* -- entry points ------------------------------------------------------------------------------------ */

/* elements per block and bytes per block of a type quantize_rows writes, 0 if unsupported */
static int qtype_block(int type, int *block_bytes) {
    switch (type) {
        case T_F16: case T_BF16: case T_Q4_0: case T_Q4_1: case T_Q5_0: case T_Q5_1: case T_Q8_0:
        case T_Q2_K: case T_Q3_K: case T_Q4_K: case T_Q5_K: case T_Q6_K: case T_IQ4_NL: case T_IQ4_XS:
            return lm_block_size(type, block_bytes);
        default: return 0;
    }
}

/* n (a whole number of blocks) consecutive floats: every format's blocks depend only on their own values */
static void quantize_span(int type, const float *x, void *y, int64_t n) {
    switch (type) {
        case T_F16: for (int64_t i = 0; i < n; i++) ((lm_half *)y)[i] = fp32_to_fp16(x[i]); break;
        case T_BF16: for (int64_t i = 0; i < n; i++) ((uint16_t *)y)[i] = lm_f2bf(x[i]); break;
        case T_Q4_0: q4_0_row(x, y, n); break;
        case T_Q4_1: q4_1_row(x, y, n); break;
        case T_Q5_0: q5_0_row(x, y, n); break;
        case T_Q5_1: q5_1_row(x, y, n); break;
        case T_Q8_0: q8_0_row(x, y, n); break;
        case T_Q2_K: q2_K_row(x, y, n); break;
        case T_Q3_K: q3_K_row(x, y, n); break;
        case T_Q4_K: q4_K_row(x, y, n); break;
        case T_Q5_K: q5_K_row(x, y, n); break;
        case T_Q6_K: q6_K_row(x, y, n); break;
        case T_IQ4_NL: iq4_nl_row(x, y, n); break;
        case T_IQ4_XS: iq4_xs_row(x, y, n); break;
        default: break;
    }
}

int lm_quantize_rows(int type, const float *src, void *dst, int64_t nrows, int64_t n_per_row) {
    return lm_quantize_rows_mt(NULL, type, src, dst, nrows, n_per_row);
}

typedef struct {
    int type;
    const float *src;
    uint8_t *dst;
    int64_t nrows, n_per_row, row_bytes;
} quantize_task;

static void quantize_run(void *p, int ith, int nth) {
    const quantize_task *t = p;
    long r0, r1;
    lm_split((long)t->nrows, ith, nth, &r0, &r1);
    if (r1 > r0) {
        quantize_span(t->type, t->src + r0 * t->n_per_row, t->dst + r0 * t->row_bytes, (r1 - r0) * t->n_per_row);
    }
}

int lm_quantize_rows_mt(void *pool, int type, const float *src, void *dst, int64_t nrows, int64_t n_per_row) {
    int block_bytes;
    const int qk = qtype_block(type, &block_bytes);
    if (!qk || n_per_row <= 0 || n_per_row % qk || nrows < 0) return -1;
    const quantize_task t = {type, src, dst, nrows, n_per_row, n_per_row / qk * block_bytes};
    if (nrows > 0) lm_pool_run(pool, quantize_run, (void *)&t);
    return 0;
}
