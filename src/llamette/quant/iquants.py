"""Non-linear 4-bit formats: IQ4_NL and IQ4_XS (a 16-entry codebook instead of q - offset)."""

import numpy as np

from llamette.gguf.constants import GGMLType
from llamette.quant.base import Codec, f16, nibbles

# kvalues_iq4nl in ggml-common.h: the codebook both formats index with a nibble
IQ4_CODEBOOK = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.float32)


class IQ4_NL(Codec, qtype=GGMLType.IQ4_NL):
    """18 bytes: d (f16) | qs[16], nibbles laid out as Q4_0.  x = d * codebook[q]"""

    @classmethod
    def dequantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        d = f16(blocks[:, 0:2])
        return d * IQ4_CODEBOOK[nibbles(blocks[:, 2:18])]


class IQ4_XS(Codec, qtype=GGMLType.IQ4_XS):
    """136 bytes: d (f16) | scales_h (u16) | scales_l[4] | qs[128]; 8 sub-blocks of 32.

    Sub-block s: 6-bit scale = nibble s of scales_l (low nibble first) | bits 2s..2s+1 of scales_h << 4;
    its 16 bytes of qs hold elements 0-15 in low nibbles, 16-31 in high.  x = (d * (scale - 32)) * codebook[q]
    """

    @classmethod
    def dequantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        n = blocks.shape[0]
        d = f16(blocks[:, 0:2])
        scales_h = np.ascontiguousarray(blocks[:, 2:4]).view("<u2")  # (n, 1)
        lo = np.stack([blocks[:, 4:8] & 0x0F, blocks[:, 4:8] >> 4], axis=2).reshape(n, 8)
        hi = ((scales_h >> (2 * np.arange(8, dtype=np.uint16))) & 3).astype(np.uint8)
        scales = ((lo | (hi << 4)).astype(np.int8) - np.int8(32)).astype(np.float32)
        qs = blocks[:, 8:136].reshape(n * 8, 16)
        values = IQ4_CODEBOOK[nibbles(qs)].reshape(n, 8, 32)
        return ((d * scales).reshape(n, 8, 1) * values).reshape(n, 256)
