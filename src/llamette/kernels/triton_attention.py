"""Decode attention in Triton (flash-decoding): one query token per head against a KV cache whose filled length
is read from device memory, so the launch has the same shapes at every step and can be replayed by a CUDA graph.

Split phase: grid (n_heads, n_splits); a program takes query head h (kv head h // rep, GQA) and the positions
[s * SPLIT, (s + 1) * SPLIT) below the length, loops over them in BLOCK_N rows of K and V, and keeps the
online-softmax state: the running max m, the sum l of exp(score - m) and acc = sum exp(score - m) * v.
Splits past the length write m = -inf, l = 0. Combine phase: grid (n_heads,); weights exp(m_s - max m) merge
the splits: out = sum w_s acc_s / sum w_s l_s. Scores, softmax and sums are float32; K and V are read in the
cache's dtype (fp16 on a GPU).

SPLIT is chosen from the cache's capacity (at most MAX_SPLITS splits), not from the length, so one compiled
kernel and one grid serve every step until the cache is reallocated.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llamette.errors import LlametteError

MAX_SPLITS = 64
BLOCK_N = 64  # K/V rows per loop step


@triton.jit
def _split_kernel(
    q_ptr, k_ptr, v_ptr, len_ptr, m_ptr, l_ptr, acc_ptr,
    scale, n_splits, stride_kh, stride_kp, stride_vh, stride_vp,
    REP: tl.constexpr, D: tl.constexpr, D_P2: tl.constexpr, SPLIT: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    head = tl.program_id(0)
    split = tl.program_id(1)
    kvh = head // REP
    length = tl.load(len_ptr).to(tl.int32)
    start = split * SPLIT
    end = tl.minimum(start + SPLIT, length)
    d = tl.arange(0, D_P2)
    dmask = d < D
    q = tl.load(q_ptr + head * D + d, mask=dmask, other=0.0).to(tl.float32)
    m_i = tl.full([], float("-inf"), tl.float32)
    l_i = tl.full([], 0.0, tl.float32)
    acc = tl.zeros([D_P2], dtype=tl.float32)
    for n0 in range(start, end, BLOCK_N):
        offs = n0 + tl.arange(0, BLOCK_N)
        nmask = offs < end
        tile_mask = nmask[:, None] & dmask[None, :]
        k = tl.load(k_ptr + kvh * stride_kh + offs[:, None] * stride_kp + d[None, :], mask=tile_mask, other=0.0)
        s = tl.sum(k.to(tl.float32) * q[None, :], axis=1) * scale  # (BLOCK_N,)
        s = tl.where(nmask, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=0))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new)
        v = tl.load(v_ptr + kvh * stride_vh + offs[:, None] * stride_vp + d[None, :], mask=tile_mask, other=0.0)
        acc = acc * alpha + tl.sum(p[:, None] * v.to(tl.float32), axis=0)
        l_i = l_i * alpha + tl.sum(p, axis=0)
        m_i = m_new
    at = head * n_splits + split
    tl.store(m_ptr + at, m_i)
    tl.store(l_ptr + at, l_i)
    tl.store(acc_ptr + at * D + d, acc, mask=dmask)


@triton.jit
def _combine_kernel(m_ptr, l_ptr, acc_ptr, out_ptr, n_splits, D: tl.constexpr, D_P2: tl.constexpr,
                    SPLITS_P2: tl.constexpr):  # fmt: skip
    head = tl.program_id(0)
    s = tl.arange(0, SPLITS_P2)
    smask = s < n_splits
    d = tl.arange(0, D_P2)
    dmask = d < D
    m = tl.load(m_ptr + head * n_splits + s, mask=smask, other=float("-inf"))
    top = tl.max(m, axis=0)  # finite: split 0 always holds position 0
    w = tl.where(smask & (m > float("-inf")), tl.exp(m - top), 0.0)
    l = tl.sum(tl.load(l_ptr + head * n_splits + s, mask=smask, other=0.0) * w, axis=0)
    acc = tl.load(acc_ptr + (head * n_splits + s[:, None]) * D + d[None, :], mask=smask[:, None] & dmask[None, :],
                  other=0.0)  # fmt: skip
    tl.store(out_ptr + head * D + d, tl.sum(acc * w[:, None], axis=0) / l, mask=dmask)


def split_size(capacity: int) -> int:
    """Positions per split for a cache of this capacity: a power of two >= BLOCK_N, at most MAX_SPLITS splits."""
    return max(BLOCK_N, triton.next_power_of_2(triton.cdiv(max(capacity, 1), MAX_SPLITS)))


def decode_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, length: torch.Tensor, scale: float
) -> torch.Tensor:
    """softmax(q . K[:length]^T * scale) . V[:length] per head.

    q (n_heads, D) float; k, v (n_kv_heads, capacity, D) with unit stride along D (fp16, bf16 or fp32);
    length: a 1-element integer tensor on the same device, 1 <= length <= capacity (not checked: reading it
    would sync with the device). Returns (n_heads, D) float32.
    """
    if q.ndim != 2 or k.ndim != 3 or v.shape != k.shape:
        raise LlametteError(f"decode_attention: q (H, D), k and v (H_kv, S, D); got {tuple(q.shape)}, "
                            f"{tuple(k.shape)}, {tuple(v.shape)}")  # fmt: skip
    n_heads, d = q.shape
    n_kv, capacity, dk = k.shape
    if dk != d or n_kv < 1 or n_heads % n_kv:
        raise LlametteError(f"decode_attention: {n_heads} query heads of {d} over {n_kv} kv heads of {dk}")
    if k.stride(2) != 1 or v.stride(2) != 1:
        raise LlametteError("decode_attention: k and v need unit stride along the head dimension")
    if length.numel() != 1 or length.dtype not in (torch.int32, torch.int64) or length.device != q.device:
        raise LlametteError("decode_attention: length must be one int32/int64 element on q's device")
    q = q.contiguous()
    split = split_size(capacity)
    n_splits = triton.cdiv(capacity, split)
    dev = q.device
    m = torch.empty((n_heads, n_splits), dtype=torch.float32, device=dev)
    l = torch.empty((n_heads, n_splits), dtype=torch.float32, device=dev)
    acc = torch.empty((n_heads, n_splits, d), dtype=torch.float32, device=dev)
    out = torch.empty((n_heads, d), dtype=torch.float32, device=dev)
    d_p2 = triton.next_power_of_2(d)
    _split_kernel[(n_heads, n_splits)](
        q, k, v, length, m, l, acc, float(scale), n_splits, k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        REP=n_heads // n_kv, D=d, D_P2=d_p2, SPLIT=split, BLOCK_N=min(BLOCK_N, split), num_warps=4,
    )  # fmt: skip
    _combine_kernel[(n_heads,)](m, l, acc, out, n_splits, D=d, D_P2=d_p2,
                                SPLITS_P2=triton.next_power_of_2(n_splits), num_warps=4)  # fmt: skip
    return out
