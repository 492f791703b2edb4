"""Triton kernels that read GGUF weights in their block layout: fused dequantize-matvec and dequantize-to-tiles.

Weights are a uint8 tensor (rows, bytes_per_row), the bytes of the GGUF file unchanged. A kernel never sees
a float copy of the weights: it works on a [BLOCK_ROWS, BLOCK_K] tile of element indices (row r, column k),
computes for every element the byte address of its block (row base + (k // QK) * block_bytes), gathers the
packed bytes, decodes scale and quant in registers and hands back float32 values. The loads along k are
contiguous inside a row's blocks (neighbouring lanes read neighbouring bytes, a nibble pair's two lanes share
one), and the per-block fields (d, dmin, scale bytes) are the same address for a block's lanes, i.e. broadcast
loads served by L1. One decoder (`_decode`) serves both kernels; the GGML type id is a constexpr, so each type
compiles to its own straight-line code.

Arithmetic is float32 in ggml's order (dequantize_row_* in ggml-quants.c: scale products first, d * sc, then
times q, then - dmin * m), so dequantize(..., torch.float32) equals the numpy reference (llamette.quant) bit
for bit; its kernel is compiled with enable_fp_fusion=False so that a GPU does not contract d * q + m into an
FMA either. matvec keeps FMA contraction (its sums are float32 anyway).

Families (bit layouts as in llamette.quant, the ground truth):

* F32 / F16 / BF16: one element per "block"; BF16 is widened by shifting its 16 bits into a float32's top half.
* Legacy 32-element blocks: Q8_0 (d f16 | 32 int8), Q4_0 (d | qs[16]) and IQ4_NL (same layout), Q4_1
  (d | m | qs[16]), Q5_0 (d | qh u32 | qs[16]), Q5_1 (d | m | qh | qs[16]). Element j < 16 is the low nibble
  of qs[j], element j + 16 the high nibble of qs[j]; the fifth bit of element j is bit j of the little-endian
  qh word, read as bit j % 8 of byte j // 8. x = d * (q - 8), d * q + m, d * (q - 16), d * q + m, d * q.
* K-quants, 256-element super-blocks with per-sub-block scales, decoded per element from its sub-block index:
  - Q2_K (scales[16] | qs[64] | d | dmin): sub-block j // 16 has scale = low nibble, min = high nibble of
    scales[j // 16]; the 2-bit q is at shift 2 * (i // 32) of qs[32 * (j // 128) + i % 32], i = j % 128.
    x = (d * sc) * q - dmin * m.
  - Q3_K (hmask[32] | qs[64] | scales[12] | d): low 2 bits as Q2_K; bit j // 32 of hmask[j % 32] is the third
    bit, clear meaning q -= 4. The 16 six-bit scales: low 4 bits at nibble s // 8 of byte s % 8, high 2 bits at
    shift 2 * (s // 4) of byte 8 + s % 4; scale - 32. x = (d * (scale - 32)) * q.
  - Q4_K / Q5_K (d | dmin | scales[12] | [qh[32] |] qs[128]): 8 sub-blocks of 32 with 6-bit scale and min
    packed as ggml's get_scale_min_k4: s < 4: sc = b[s] & 63, m = b[s + 4] & 63; s >= 4: sc = (b[s + 4] & 15)
    | (b[s - 4] >> 6) << 4, m = (b[s + 4] >> 4) | (b[s] >> 6) << 4. The kernel loads b[s], b[s + 4] and
    b[(s + 4) % 8] (= b[s - 4] when s >= 4) and selects. Sub-block s reads qs[32 * (s // 2) + l], low nibble
    for even s; Q5_K adds bit s of qh[l] as bit 4. x = (d * sc) * q - dmin * m.
  - Q6_K (ql[128] | qh[64] | scales[16] int8 | d): per 128-half h, low 4 bits from ql[64 h + i % 64] (high
    nibble for i >= 64), 2 high bits at shift 2 * (i // 32) of qh[32 h + i % 32]; x = (d * sc) * (q - 32).
* IQ4 (non-linear): the nibble indexes the codebook lm_iq4nl_values = [-127, -104, -83, -65, -49, -35, -22,
  -10, 1, 13, 25, 38, 53, 69, 89, 113] (ggml's kvalues_iq4nl), held as a 16-float table in device memory
  (one cached line). IQ4_NL: Q4_0's layout, x = d * table[q]. IQ4_XS (d | scales_h u16 | scales_l[4] |
  qs[128]): sub-block s's 6-bit scale = nibble s % 2 of scales_l[s // 2] | bits 2 (s % 4) of byte 2 + s // 4
  << 4, minus 32; its 16 bytes qs[16 s ..] hold elements 0-15 (low nibbles) and 16-31 (high).
  x = (d * scale) * table[q].

matvec: grid (cdiv(rows, BLOCK_ROWS), cdiv(n, VECS)); a program owns BLOCK_ROWS rows and up to VECS (<= 8)
activation vectors, loops over K in BLOCK_K steps (any power of two: decoding is per element, so a step may
cover part of a super-block), decodes the weight tile once and multiplies it by each vector (a row sum of
tile * x per vector), accumulating in float32. Defaults BLOCK_ROWS 8, BLOCK_K 128 (quantized) / 256 (floats):
8-16 elements per thread at 4 warps, 40-72 registers and no spills when compiled for sm_90.
dequantize: grid (cdiv(rows, BLOCK_ROWS), cdiv(K, BLOCK_K)), decode a tile, store it as fp16/bf16/fp32.
"""

from __future__ import annotations

import functools
import numbers

import torch
import triton
import triton.language as tl

from llamette.errors import LlametteError
from llamette.gguf.constants import GGML_BLOCK_SIZES, GGMLType, type_name

__all__ = ["SUPPORTED_TYPES", "dequantize", "interpreting", "matvec"]

T = GGMLType
SUPPORTED_TYPES: tuple[int, ...] = tuple(
    int(t)
    for t in (
        T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1,
        T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_NL, T.IQ4_XS,
    )
)  # fmt: skip
IQ4NL_VALUES = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)

MAX_VECS = 8  # activation vectors per matvec program (the decode batch); more spread over grid axis 1
# default tiles: (BLOCK_ROWS, BLOCK_K) per family
_MATVEC_TILE = {"float": (8, 256), "legacy": (8, 128), "kquant": (8, 128)}  # ~40-72 regs on sm_90
_DEQUANT_TILE = {"float": (16, 256), "legacy": (16, 256), "kquant": (16, 256)}
_OUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_X_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------------------------- device code


@triton.jit
def _u8(p, mask):
    """Bytes at p as int32 (0 where masked)."""
    return tl.load(p, mask=mask, other=0).to(tl.int32)


@triton.jit
def _i8(p, mask):
    """Signed bytes at p as float32."""
    return tl.load(p, mask=mask, other=0).to(tl.int8, bitcast=True).to(tl.float32)


@triton.jit
def _f16(p, mask):
    """Little-endian half floats at p (2-byte aligned) as float32."""
    return tl.load(p.to(tl.pointer_type(tl.float16)), mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _nib32(qs, j, mask):
    """Element j (0..31) of a 32-element run packed in 16 bytes at qs: low nibbles 0-15, high 16-31."""
    return (_u8(qs + j % 16, mask) >> ((j // 16) * 4)) & 15


@triton.jit
def _q45_k(base, j, mask, HAS_QH: tl.constexpr):
    """Element j (0..255) of the Q4_K (HAS_QH False) or Q5_K super-block at base."""
    s = j // 32
    l = j % 32
    if HAS_QH:
        q = (_u8(base + 48 + (s // 2) * 32 + l, mask) >> ((s % 2) * 4)) & 15
        q = q | (((_u8(base + 16 + l, mask) >> s) & 1) << 4)
    else:
        q = (_u8(base + 16 + (s // 2) * 32 + l, mask) >> ((s % 2) * 4)) & 15
    # get_scale_min_k4 on the 12 bytes at base + 4: a = b[s], b = b[s + 4], c = b[(s + 4) % 8] (b[s - 4] if s >= 4)
    a = _u8(base + 4 + s, mask)
    b = _u8(base + 8 + s, mask)
    c = _u8(base + 4 + (s + 4) % 8, mask)
    low_half = s < 4
    sc = tl.where(low_half, a & 63, (b & 15) | ((c >> 6) << 4))
    mn = tl.where(low_half, b & 63, (b >> 4) | ((a >> 6) << 4))
    dl = _f16(base, mask) * sc.to(tl.float32)
    ml = _f16(base + 2, mask) * mn.to(tl.float32)
    return dl * q.to(tl.float32) - ml


@triton.jit
def _decode(row, k, mask, tab, WTYPE: tl.constexpr):
    """Float32 values of elements k of the rows starting at `row` (uint8 pointers, broadcast to mask's shape)."""
    if WTYPE == 0:  # F32
        val = tl.load((row + k * 4).to(tl.pointer_type(tl.float32)), mask=mask, other=0.0)
    elif WTYPE == 1:  # F16
        val = _f16(row + k * 2, mask)
    elif WTYPE == 30:  # BF16
        h = tl.load((row + k * 2).to(tl.pointer_type(tl.uint16)), mask=mask, other=0)
        val = (h.to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    elif WTYPE == 8:  # Q8_0: d | qs[32]
        base = row + (k // 32) * 34
        val = _i8(base + 2 + k % 32, mask) * _f16(base, mask)
    elif WTYPE == 2:  # Q4_0: d | qs[16]
        base = row + (k // 32) * 18
        q = _nib32(base + 2, k % 32, mask)
        val = _f16(base, mask) * (q - 8).to(tl.float32)
    elif WTYPE == 20:  # IQ4_NL: d | qs[16], codebook
        base = row + (k // 32) * 18
        q = _nib32(base + 2, k % 32, mask)
        val = _f16(base, mask) * tl.load(tab + q, mask=mask, other=0.0)
    elif WTYPE == 3:  # Q4_1: d | m | qs[16]
        base = row + (k // 32) * 20
        q = _nib32(base + 4, k % 32, mask)
        val = _f16(base, mask) * q.to(tl.float32) + _f16(base + 2, mask)
    elif WTYPE == 6:  # Q5_0: d | qh[4] | qs[16]
        base = row + (k // 32) * 22
        j = k % 32
        hb = (_u8(base + 2 + j // 8, mask) >> (j % 8)) & 1
        q = _nib32(base + 6, j, mask) | (hb << 4)
        val = _f16(base, mask) * (q - 16).to(tl.float32)
    elif WTYPE == 7:  # Q5_1: d | m | qh[4] | qs[16]
        base = row + (k // 32) * 24
        j = k % 32
        hb = (_u8(base + 4 + j // 8, mask) >> (j % 8)) & 1
        q = _nib32(base + 8, j, mask) | (hb << 4)
        val = _f16(base, mask) * q.to(tl.float32) + _f16(base + 2, mask)
    elif WTYPE == 10:  # Q2_K: scales[16] | qs[64] | d | dmin
        base = row + (k // 256) * 84
        j = k % 256
        i = j % 128
        q = (_u8(base + 16 + (j // 128) * 32 + i % 32, mask) >> ((i // 32) * 2)) & 3
        sc = _u8(base + j // 16, mask)
        dl = _f16(base + 80, mask) * (sc & 15).to(tl.float32)
        ml = _f16(base + 82, mask) * (sc >> 4).to(tl.float32)
        val = dl * q.to(tl.float32) - ml
    elif WTYPE == 11:  # Q3_K: hmask[32] | qs[64] | scales[12] | d
        base = row + (k // 256) * 110
        j = k % 256
        i = j % 128
        low = (_u8(base + 32 + (j // 128) * 32 + i % 32, mask) >> ((i // 32) * 2)) & 3
        hbit = (_u8(base + j % 32, mask) >> (j // 32)) & 1
        q = low - ((hbit ^ 1) << 2)
        s = j // 16
        lo4 = (_u8(base + 96 + s % 8, mask) >> ((s // 8) * 4)) & 15
        hi2 = (_u8(base + 104 + s % 4, mask) >> ((s // 4) * 2)) & 3
        scale = (lo4 | (hi2 << 4)) - 32
        val = (_f16(base + 108, mask) * scale.to(tl.float32)) * q.to(tl.float32)
    elif WTYPE == 12:  # Q4_K: d | dmin | scales[12] | qs[128]
        val = _q45_k(row + (k // 256) * 144, k % 256, mask, False)
    elif WTYPE == 13:  # Q5_K: d | dmin | scales[12] | qh[32] | qs[128]
        val = _q45_k(row + (k // 256) * 176, k % 256, mask, True)
    elif WTYPE == 14:  # Q6_K: ql[128] | qh[64] | scales[16] (int8) | d
        base = row + (k // 256) * 210
        j = k % 256
        h = j // 128
        i = j % 128
        low = (_u8(base + h * 64 + i % 64, mask) >> ((i // 64) * 4)) & 15
        high = (_u8(base + 128 + h * 32 + i % 32, mask) >> ((i // 32) * 2)) & 3
        q = (low | (high << 4)) - 32
        dl = _f16(base + 208, mask) * _i8(base + 192 + j // 16, mask)
        val = dl * q.to(tl.float32)
    elif WTYPE == 23:  # IQ4_XS: d | scales_h (u16) | scales_l[4] | qs[128], codebook
        base = row + (k // 256) * 136
        j = k % 256
        s = j // 32
        lo = (_u8(base + 4 + s // 2, mask) >> ((s % 2) * 4)) & 15
        hi = (_u8(base + 2 + s // 4, mask) >> ((s % 4) * 2)) & 3
        scale = (lo | (hi << 4)) - 32
        q = _nib32(base + 8 + s * 16, j % 32, mask)
        val = (_f16(base, mask) * scale.to(tl.float32)) * tl.load(tab + q, mask=mask, other=0.0)
    else:
        tl.static_assert(False, "unsupported GGML type")
    return val


@triton.jit
def _matvec_kernel(
    w_ptr,
    x_ptr,
    out_ptr,
    tab_ptr,
    rows,
    K,
    n,
    row_bytes,
    stride_x,
    stride_o,
    WTYPE: tl.constexpr,
    VECS: tl.constexpr,
    VECS_P2: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_r = tl.program_id(0)
    pid_n = tl.program_id(1)
    r = pid_r * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    r_ok = r < rows
    row = w_ptr + r.to(tl.int64)[:, None] * row_bytes  # [BLOCK_ROWS, 1]
    vec = pid_n * VECS + tl.arange(0, VECS_P2)  # [VECS_P2]
    cols = tl.arange(0, VECS_P2)
    acc = tl.zeros([BLOCK_ROWS, VECS_P2], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < K
        w = _decode(row, k[None, :], r_ok[:, None] & k_ok[None, :], tab_ptr, WTYPE)  # [BLOCK_ROWS, BLOCK_K]
        for v in tl.static_range(VECS):
            vk = (pid_n * VECS + v) + tl.zeros_like(k)  # this vector's index, per lane
            xv = tl.load(x_ptr + vk.to(tl.int64) * stride_x + k, mask=k_ok & (vk < n), other=0.0)
            part = tl.sum(w * xv.to(tl.float32)[None, :], axis=1)  # [BLOCK_ROWS]
            acc = tl.where(cols[None, :] == v, acc + part[:, None], acc)
    out = out_ptr + vec.to(tl.int64)[None, :] * stride_o + r[:, None]
    tl.store(out, acc, mask=r_ok[:, None] & (cols[None, :] < VECS) & (vec[None, :] < n))


@triton.jit
def _dequant_kernel(
    w_ptr,
    out_ptr,
    tab_ptr,
    rows,
    K,
    row_bytes,
    stride_o,
    WTYPE: tl.constexpr,
    OUT_BF16: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_r = tl.program_id(0)
    pid_k = tl.program_id(1)
    r = pid_r * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = (r < rows)[:, None] & (k < K)[None, :]
    r64 = r.to(tl.int64)[:, None]
    val = _decode(w_ptr + r64 * row_bytes, k[None, :], mask, tab_ptr, WTYPE)
    out = out_ptr + r64 * stride_o + k[None, :]
    if OUT_BF16:
        # round to nearest even in integers (Triton's interpreter truncates float32 -> bfloat16), NaN kept NaN
        u = val.to(tl.uint32, bitcast=True)
        h = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).to(tl.uint16)
        h = tl.where(val != val, ((u >> 16) | 0x40).to(tl.uint16), h)
        tl.store(out.to(tl.pointer_type(tl.uint16)), h, mask=mask)
    else:
        tl.store(out, val.to(out_ptr.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------------------------------------- host code


def interpreting() -> bool:
    """True when these kernels run under Triton's interpreter (TRITON_INTERPRET=1 when they were defined)."""
    return type(_decode).__name__ == "InterpretedFunction" or type(_matvec_kernel).__name__ == "InterpretedFunction"


def _family(wtype: int) -> str:
    if wtype in (T.F32, T.F16, T.BF16):
        return "float"
    return "legacy" if GGML_BLOCK_SIZES[T(wtype)][0] == 32 else "kquant"


@functools.cache
def _table(device: torch.device) -> torch.Tensor:
    return torch.tensor(IQ4NL_VALUES, dtype=torch.float32, device=device)


def _check_weights(w: object, wtype: object, K: object) -> tuple[torch.Tensor, int, int]:
    if isinstance(wtype, bool) or not isinstance(wtype, numbers.Integral):
        raise LlametteError(f"wtype must be an int GGML type id, got {wtype!r}")
    wtype = int(wtype)
    if wtype not in SUPPORTED_TYPES:
        names = ", ".join(T(t).name for t in SUPPORTED_TYPES)
        raise LlametteError(f"Triton kernels do not support {type_name(wtype)} (supported: {names})")
    name = T(wtype).name
    if not isinstance(w, torch.Tensor):
        raise LlametteError(f"weights must be a torch.Tensor, got {type(w).__name__}")
    if w.dtype != torch.uint8:
        raise LlametteError(f"weights must be uint8 (the GGUF bytes), got {w.dtype}")
    if w.ndim != 2:
        raise LlametteError(f"weights must be 2-D (rows, bytes per row), got shape {tuple(w.shape)}")
    if isinstance(K, bool) or not isinstance(K, numbers.Integral):
        raise LlametteError(f"K must be an int, got {K!r}")
    block_elems, block_bytes = GGML_BLOCK_SIZES[T(wtype)]
    if K <= 0 or K % block_elems:
        raise LlametteError(f"{name}: K must be a positive multiple of {block_elems}, got {K}")
    row_bytes = K // block_elems * block_bytes
    if w.shape[1] != row_bytes:
        raise LlametteError(f"{name} rows of K={K} take {row_bytes} bytes, but weights have {w.shape[1]} per row")
    if w.device.type == "cpu" and not interpreting():
        raise LlametteError("Triton kernels need GPU tensors (or TRITON_INTERPRET=1 set before importing triton)")
    w = w.contiguous()
    if w.data_ptr() % 4:  # the f16/f32 fields are read through wider pointers
        w = w.clone()
    return w, wtype, row_bytes


_INTERPRETER_TILE = (64, 512)  # under the interpreter a program costs ~30 ms whatever its size: few, large ones


def _tile(table: dict[str, tuple[int, int]], wtype: int, K: int, block_rows: int | None, block_k: int | None):
    br, bk = _INTERPRETER_TILE if interpreting() else table[_family(wtype)]
    br = block_rows if block_rows is not None else br
    bk = block_k if block_k is not None else min(bk, triton.next_power_of_2(K))
    for what, v in (("block_rows", br), ("block_k", bk)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1 or v & (v - 1):
            raise LlametteError(f"{what} must be a power of two, got {v!r}")
    return br, bk


def matvec(
    w: torch.Tensor,
    wtype: int,
    x: torch.Tensor,
    K: int,
    *,
    block_rows: int | None = None,
    block_k: int | None = None,
) -> torch.Tensor:
    """x @ W.T with W read in its GGUF block layout: w (rows, row_bytes) uint8, x (K,) or (n, K) float.

    Returns float32 (n, rows), or (rows,) for a 1-D x. Accumulation is float32.
    """
    w, wtype, row_bytes = _check_weights(w, wtype, K)
    if not isinstance(x, torch.Tensor):
        raise LlametteError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _X_DTYPES:
        raise LlametteError(f"x must be float32, float16 or bfloat16, got {x.dtype}")
    if x.ndim not in (1, 2) or x.shape[-1] != K:
        raise LlametteError(f"x must be (K,) or (n, K) with K={K}, got shape {tuple(x.shape)}")
    if x.device != w.device:
        raise LlametteError(f"x is on {x.device} but the weights are on {w.device}")
    squeeze = x.ndim == 1
    x2 = x.reshape(1, K) if squeeze else x
    x2 = x2.contiguous()
    rows, n = w.shape[0], x2.shape[0]
    out = torch.empty((n, rows), dtype=torch.float32, device=w.device)
    if rows and n:
        br, bk = _tile(_MATVEC_TILE, wtype, K, block_rows, block_k)
        vecs = min(n, MAX_VECS)
        grid = (triton.cdiv(rows, br), triton.cdiv(n, vecs))
        _matvec_kernel[grid](
            w, x2, out, _table(w.device), rows, K, n, row_bytes, x2.stride(0), out.stride(0),
            WTYPE=wtype, VECS=vecs, VECS_P2=triton.next_power_of_2(vecs), BLOCK_ROWS=br, BLOCK_K=bk,
            num_warps=4,
        )  # fmt: skip
    return out[0] if squeeze else out


def dequantize(
    w: torch.Tensor,
    wtype: int,
    K: int,
    out_dtype: torch.dtype = torch.float16,
    *,
    block_rows: int | None = None,
    block_k: int | None = None,
) -> torch.Tensor:
    """Expand GGUF blocks (rows, row_bytes) uint8 to a (rows, K) tensor of out_dtype (fp16, bf16 or fp32)."""
    w, wtype, row_bytes = _check_weights(w, wtype, K)
    if out_dtype not in _OUT_DTYPES:
        raise LlametteError(f"out_dtype must be float16, bfloat16 or float32, got {out_dtype}")
    rows = w.shape[0]
    out = torch.empty((rows, K), dtype=out_dtype, device=w.device)
    if rows:
        br, bk = _tile(_DEQUANT_TILE, wtype, K, block_rows, block_k)
        grid = (triton.cdiv(rows, br), triton.cdiv(K, bk))
        _dequant_kernel[grid](
            w, out, _table(w.device), rows, K, row_bytes, out.stride(0),
            WTYPE=wtype, OUT_BF16=out_dtype == torch.bfloat16, BLOCK_ROWS=br, BLOCK_K=bk,
            num_warps=4, enable_fp_fusion=False,
        )  # fmt: skip
    return out
