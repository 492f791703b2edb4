"""K-quants: 256-element super-blocks with per-sub-block scales: Q2_K Q3_K Q4_K Q5_K Q6_K.

Follows ggml-quants.c dequantize_row_q*_K: float32, scale products formed first (d * sc), so the results
are bit-exact with gguf-py and ggml. Shapes in comments are per call: n = number of super-blocks.
"""

import numpy as np

from llamette.gguf.constants import GGMLType
from llamette.quant.base import Codec, bits, f16, nibbles


def _crumbs(qs: np.ndarray) -> np.ndarray:
    """(n, k) bytes -> (n, 4k): 2-bit fields, shift 0 of all k bytes first, then shifts 2, 4, 6."""
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 4, 1)
    return ((qs[:, None, :] >> shifts) & 3).reshape(qs.shape[0], 4 * qs.shape[1])


def _two_halves(qs: np.ndarray, unpack) -> np.ndarray:
    """Apply a per-128-element unpacker to both halves of a super-block and join them: (n, 256)."""
    half = qs.shape[1] // 2
    return np.concatenate([unpack(qs[:, :half]), unpack(qs[:, half:])], axis=1)


def scale_min_k4(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K 12-byte packing of 8 six-bit scales and 8 six-bit mins (ggml get_scale_min_k4).

    bytes 0-3: scale j (low 6 bits) | 4-7: min j | 8-11: low nibble = scale j+4, high nibble = min j+4;
    the top 2 bits of bytes 0-3 / 4-7 are the high bits of scale j+4 / min j+4.
    """
    q = scales.astype(np.uint8)
    lo_sc, lo_m, hi = q[:, 0:4], q[:, 4:8], q[:, 8:12]
    sc = np.concatenate([lo_sc & 63, (hi & 0x0F) | ((lo_sc >> 6) << 4)], axis=1)
    m = np.concatenate([lo_m & 63, (hi >> 4) | ((lo_m >> 6) << 4)], axis=1)
    return sc, m  # (n, 8) each


class Q2_K(Codec, qtype=GGMLType.Q2_K):
    """84 bytes: scales[16] (low nibble scale, high nibble min, per 16 elements) | qs[64] | d | dmin.

    Each 128-element half uses 32 bytes of qs; shift 0, 2, 4, 6 give its 4 runs of 32 elements.
    x = (d * scale) * q - (dmin * min)
    """

    @classmethod
    def dequantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        n = blocks.shape[0]
        scales = blocks[:, 0:16]
        q = _two_halves(blocks[:, 16:80], _crumbs).reshape(n, 16, 16).astype(np.float32)
        d = f16(blocks[:, 80:82])
        dmin = f16(blocks[:, 82:84])
        dl = (d * (scales & 0x0F).astype(np.float32)).reshape(n, 16, 1)
        ml = (dmin * (scales >> 4).astype(np.float32)).reshape(n, 16, 1)
        return (dl * q - ml).reshape(n, 256)


class Q3_K(Codec, qtype=GGMLType.Q3_K):
    """110 bytes: hmask[32] | qs[64] (low 2 bits, as Q2_K) | scales[12] (16 six-bit) | d.

    Element 32*b + l takes bit b of hmask[l] as its third bit; a clear bit means q -= 4.
    Scale j: low nibble of byte j % 8 (high nibble for j >= 8), top 2 bits at 2*(j // 4) of byte 8 + j % 4.
    x = (d * (scale - 32)) * q
    """

    @classmethod
    def dequantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        n = blocks.shape[0]
        hmask, raw_scales = blocks[:, 0:32], blocks[:, 96:108]
        low = _two_halves(blocks[:, 32:96], _crumbs).astype(np.int8)  # (n, 256)
        high = bits(hmask, 8).reshape(n, 256)
        q = (low - ((high ^ 1) << 2).astype(np.int8)).astype(np.float32).reshape(n, 16, 16)
        lo4 = nibbles(raw_scales[:, 0:8])  # (n, 16)
        hi2 = _crumbs(raw_scales[:, 8:12])  # scale j: byte 8 + j % 4, shift 2 * (j // 4)
        scales = ((lo4 | (hi2 << 4)).astype(np.int8) - np.int8(32)).astype(np.float32)
        d = f16(blocks[:, 108:110])
        dl = (d * scales).reshape(n, 16, 1)
        return (dl * q).reshape(n, 256)


class Q4_K(Codec, qtype=GGMLType.Q4_K):
    """144 bytes: d | dmin | scales[12] (see scale_min_k4) | qs[128].

    Sub-blocks of 32: bytes 32c..32c+31 hold sub-block 2c in their low nibbles and 2c+1 in the high ones.
    x = (d * scale) * q - (dmin * min)
    """

    @classmethod
    def dequantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        n = blocks.shape[0]
        d, dmin = f16(blocks[:, 0:2]), f16(blocks[:, 2:4])
        sc, m = scale_min_k4(blocks[:, 4:16])
        qs = blocks[:, 16:144].reshape(n, 4, 32)
        q = np.stack([qs & 0x0F, qs >> 4], axis=2).reshape(n, 8, 32).astype(np.float32)
        dl = (d * sc.astype(np.float32)).reshape(n, 8, 1)
        ml = (dmin * m.astype(np.float32)).reshape(n, 8, 1)
        return (dl * q - ml).reshape(n, 256)


class Q5_K(Codec, qtype=GGMLType.Q5_K):
    """176 bytes: d | dmin | scales[12] | qh[32] | qs[128]: Q4_K plus a fifth bit, bit s of qh[l]
    for element l of sub-block s.  x = (d * scale) * q - (dmin * min)
    """

    @classmethod
    def dequantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        n = blocks.shape[0]
        d, dmin = f16(blocks[:, 0:2]), f16(blocks[:, 2:4])
        sc, m = scale_min_k4(blocks[:, 4:16])
        high = bits(blocks[:, 16:48], 8)  # (n, 8 sub-blocks, 32)
        qs = blocks[:, 48:176].reshape(n, 4, 32)
        low = np.stack([qs & 0x0F, qs >> 4], axis=2).reshape(n, 8, 32)
        q = (low | (high << 4)).astype(np.float32)
        dl = (d * sc.astype(np.float32)).reshape(n, 8, 1)
        ml = (dmin * m.astype(np.float32)).reshape(n, 8, 1)
        return (dl * q - ml).reshape(n, 256)


class Q6_K(Codec, qtype=GGMLType.Q6_K):
    """210 bytes: ql[128] (low 4 bits) | qh[64] (high 2 bits) | scales[16] (int8, per 16) | d.

    Per 128-element half: ql[64] gives elements 0-63 from low nibbles and 64-127 from high nibbles;
    qh[32] gives the 2 high bits, shift 0, 2, 4, 6 for the runs of 32.  x = (d * scale) * (q - 32)
    """

    @classmethod
    def dequantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        n = blocks.shape[0]
        low = _two_halves(blocks[:, 0:128], nibbles)  # (n, 256)
        high = _two_halves(blocks[:, 128:192], _crumbs)  # (n, 256)
        q = ((low | (high << 4)).astype(np.int8) - np.int8(32)).astype(np.float32).reshape(n, 16, 16)
        scales = np.ascontiguousarray(blocks[:, 192:208]).view(np.int8).astype(np.float32)
        d = f16(blocks[:, 208:210])
        return ((d * scales).reshape(n, 16, 1) * q).reshape(n, 256)
