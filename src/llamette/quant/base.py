"""The codec registry and the row-chunked `dequantize` entry point shared by every format."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from llamette.errors import GGUFError
from llamette.gguf.constants import GGML_BLOCK_SIZES, GGMLType

CODECS: dict[GGMLType, type[Codec]] = {}

# blocks dequantized per numpy call: bounds the temporaries (a few x the output) for big tensors
_CHUNK_BLOCKS = 1 << 16


class Codec:
    """One GGUF block format. Subclasses implement `dequantize_blocks` and register by subclassing."""

    qtype: ClassVar[GGMLType]
    block_elems: ClassVar[int]
    block_bytes: ClassVar[int]

    def __init_subclass__(cls, qtype: GGMLType, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.qtype = qtype
        cls.block_elems, cls.block_bytes = GGML_BLOCK_SIZES[qtype]
        assert qtype not in CODECS, f"two codecs for {qtype.name}"
        CODECS[qtype] = cls

    @classmethod
    def dequantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        """(n_blocks, block_bytes) uint8 -> (n_blocks, block_elems) float32."""
        raise NotImplementedError


def supported_types() -> list[GGMLType]:
    return sorted(CODECS, key=int)


def dequantize(raw: np.ndarray, qtype: GGMLType) -> np.ndarray:
    """Raw tensor bytes shaped (*outer, row_bytes) -> float32 (*outer, row_elements)."""
    codec = CODECS.get(GGMLType(qtype))
    if codec is None:
        names = ", ".join(t.name for t in supported_types())
        raise GGUFError(f"tensor type {GGMLType(qtype).name} is not supported (supported: {names})")
    raw = np.ascontiguousarray(raw).view(np.uint8)
    row_bytes = raw.shape[-1]
    if row_bytes % codec.block_bytes:
        raise ValueError(f"{qtype.name}: row of {row_bytes} bytes is not a whole number of blocks")
    out_shape = (*raw.shape[:-1], row_bytes // codec.block_bytes * codec.block_elems)
    blocks = raw.reshape(-1, codec.block_bytes)
    out = np.empty((blocks.shape[0], codec.block_elems), dtype=np.float32)
    with np.errstate(invalid="ignore", over="ignore"):  # corrupt scales may hold inf/nan: pass them on
        for start in range(0, blocks.shape[0], _CHUNK_BLOCKS):
            stop = start + _CHUNK_BLOCKS
            out[start:stop] = codec.dequantize_blocks(blocks[start:stop])
    return out.reshape(out_shape)


def f16(field: np.ndarray) -> np.ndarray:
    """(n, 2) uint8 little-endian half floats -> (n, 1) float32."""
    return np.ascontiguousarray(field).view(np.float16).astype(np.float32)


def nibbles(qs: np.ndarray) -> np.ndarray:
    """(n, k) bytes -> (n, 2k): low nibbles of all k bytes first, then the high nibbles (ggml's order)."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def bits(packed: np.ndarray, n_bits: int) -> np.ndarray:
    """(n, k) uint8 -> (n, n_bits, k): bit b of every byte (bit planes), as uint8 0/1."""
    shifts = np.arange(n_bits, dtype=np.uint8).reshape(1, n_bits, 1)
    return (packed[:, None, :] >> shifts) & 1
