"""Weight quantization (float32 rows -> GGUF blocks) in the native library (csrc/quantize.c).

The bytes are those llama.cpp's `llama-quantize` writes without an importance matrix. Input is checked here, so
bad arguments raise LlametteError before anything reaches C.
"""

from __future__ import annotations

import numpy as np

from llamette.errors import LlametteError
from llamette.gguf.constants import GGML_BLOCK_SIZES, GGMLType, type_name
from llamette.kernels import cpu

QUANTIZABLE_TYPES: frozenset[int] = frozenset(
    int(t)
    for t in (
        GGMLType.F16, GGMLType.BF16, GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0,
        GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K, GGMLType.IQ4_NL,
        GGMLType.IQ4_XS,
    )
)  # fmt: skip


def quantize(data: np.ndarray, ggml_type: int, pool: cpu.ThreadPool | None = None) -> np.ndarray:
    """(rows, n_per_row) float32 -> (rows, bytes per row) uint8 in ggml_type's block layout.

    pool spreads the rows over its threads; the bytes are the same for any thread count.
    """
    if isinstance(ggml_type, bool) or not isinstance(ggml_type, (int, np.integer)):
        raise LlametteError(f"ggml_type must be an int type id, got {ggml_type!r}")
    ggml_type = int(ggml_type)
    if ggml_type not in QUANTIZABLE_TYPES:
        names = ", ".join(GGMLType(t).name for t in sorted(QUANTIZABLE_TYPES))
        raise LlametteError(f"cannot quantize to {type_name(ggml_type)} (supported: {names})")
    if not isinstance(data, np.ndarray):
        raise LlametteError(f"data must be a numpy array, got {type(data).__name__}")
    if data.dtype != np.float32:
        raise LlametteError(f"data must be float32, got {data.dtype}")
    if data.ndim != 2:
        raise LlametteError(f"data must be 2-D (rows, n_per_row), got shape {data.shape}")
    rows, n_per_row = data.shape
    block_elems, block_bytes = GGML_BLOCK_SIZES[GGMLType(ggml_type)]
    name = GGMLType(ggml_type).name
    if n_per_row == 0 or n_per_row % block_elems:
        raise LlametteError(
            f"{name} rows must be a positive multiple of {block_elems} elements, got n_per_row={n_per_row}"
        )
    if pool is not None and not isinstance(pool, cpu.ThreadPool):
        raise LlametteError(f"pool must be a cpu.ThreadPool or None, got {type(pool).__name__}")
    src = np.ascontiguousarray(data)
    out = np.empty((rows, n_per_row // block_elems * block_bytes), dtype=np.uint8)
    if rows == 0:
        return out
    handle = pool.handle if pool is not None else None
    rc = cpu.library().lm_quantize_rows_mt(handle, ggml_type, src.ctypes.data, out.ctypes.data, rows, n_per_row)
    if rc != 0:
        raise LlametteError(f"native quantization to {name} failed (code {rc})")
    return out
