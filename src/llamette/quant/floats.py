"""Unquantized tensor types: F32, F16, BF16 (one element per 'block')."""

import numpy as np

from llamette.gguf.constants import GGMLType
from llamette.quant.base import Codec


class F32(Codec, qtype=GGMLType.F32):
    """IEEE float32, little-endian."""

    @classmethod
    def dequantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(blocks).view(np.float32).copy()


class F16(Codec, qtype=GGMLType.F16):
    """IEEE half float, little-endian; widening to float32 is exact."""

    @classmethod
    def dequantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(blocks).view(np.float16).astype(np.float32)


class BF16(Codec, qtype=GGMLType.BF16):
    """bfloat16: the top 16 bits of a float32, so widening is a shift."""

    @classmethod
    def dequantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        u16 = np.ascontiguousarray(blocks).view(np.uint16)
        return (u16.astype(np.uint32) << 16).view(np.float32)
