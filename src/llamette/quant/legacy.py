"""The legacy 32-element block formats: Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 (ggml-quants.c dequantize_row_*).

Arithmetic is float32 in ggml's order (d * q, then + m), so results are bit-exact with gguf-py and ggml.
"""

import numpy as np

from llamette.gguf.constants import GGMLType
from llamette.quant.base import Codec, f16, nibbles


def _high_bits(qh: np.ndarray) -> np.ndarray:
    """(n, 4) bytes of a little-endian uint32 -> (n, 32) uint8: bit j is the 5th bit of element j."""
    word = np.ascontiguousarray(qh).view("<u4")  # (n, 1)
    return ((word >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)


class Q4_0(Codec, qtype=GGMLType.Q4_0):
    """18 bytes: d (f16) | qs[16]. Element j < 16 is the low nibble of qs[j], element j + 16 the high one.

    x = d * (q - 8)
    """

    @classmethod
    def dequantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        d = f16(blocks[:, 0:2])
        q = nibbles(blocks[:, 2:18]).astype(np.int8) - np.int8(8)
        return d * q.astype(np.float32)


class Q4_1(Codec, qtype=GGMLType.Q4_1):
    """20 bytes: d (f16) | m (f16) | qs[16], nibbles as Q4_0.  x = d * q + m"""

    @classmethod
    def dequantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        d = f16(blocks[:, 0:2])
        m = f16(blocks[:, 2:4])
        q = nibbles(blocks[:, 4:20]).astype(np.float32)
        return d * q + m


class Q5_0(Codec, qtype=GGMLType.Q5_0):
    """22 bytes: d (f16) | qh (u32, bit j = bit 4 of element j) | qs[16], low 4 bits as Q4_0.

    x = d * (q - 16)
    """

    @classmethod
    def dequantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        d = f16(blocks[:, 0:2])
        q = nibbles(blocks[:, 6:22]) | (_high_bits(blocks[:, 2:6]) << 4)
        return d * (q.astype(np.int8) - np.int8(16)).astype(np.float32)


class Q5_1(Codec, qtype=GGMLType.Q5_1):
    """24 bytes: d (f16) | m (f16) | qh (u32) | qs[16], 5-bit q as Q5_0.  x = d * q + m"""

    @classmethod
    def dequantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        d = f16(blocks[:, 0:2])
        m = f16(blocks[:, 2:4])
        q = nibbles(blocks[:, 8:24]) | (_high_bits(blocks[:, 4:8]) << 4)
        return d * q.astype(np.float32) + m


class Q8_0(Codec, qtype=GGMLType.Q8_0):
    """34 bytes: d (f16) | qs[32] (int8).  x = q * d"""

    @classmethod
    def dequantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        d = f16(blocks[:, 0:2])
        q = np.ascontiguousarray(blocks[:, 2:34]).view(np.int8).astype(np.float32)
        return q * d
