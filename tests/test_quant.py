"""Dequantization: every supported type is bit-exact with gguf-py's reference dequantizer."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY_TYPES, tiny_path
from gguf.constants import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize

from llamette.errors import GGUFError
from llamette.gguf import GGML_BLOCK_SIZES, GGMLType, GGUFFile
from llamette.quant import dequantize, supported_types

REQUIRED = [
    "F32",
    "F16",
    "BF16",
    "Q8_0",
    "Q4_0",
    "Q4_1",
    "Q5_0",
    "Q5_1",
    "Q2_K",
    "Q3_K",
    "Q4_K",
    "Q5_K",
    "Q6_K",
    "IQ4_NL",
    "IQ4_XS",
]


def assert_bit_exact(ours: np.ndarray, ref: np.ndarray) -> None:
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    nan = np.isnan(ref)
    assert np.array_equal(np.isnan(ours), nan)
    assert np.array_equal(ours.view(np.uint32)[~nan], ref.astype(np.float32).view(np.uint32)[~nan])


def test_every_required_type_is_supported() -> None:
    assert sorted(t.name for t in supported_types()) == sorted(REQUIRED)


@pytest.mark.parametrize("name", REQUIRED)
@pytest.mark.parametrize("rows,blocks", [(1, 1), (3, 5), (7, 2), (2, 33)])
def test_random_blocks_bit_exact(name: str, rows: int, blocks: int) -> None:
    """Random bytes exercise every bit pattern, including inf/nan scales from corrupt files."""
    qtype = GGMLType[name]
    _, block_bytes = GGML_BLOCK_SIZES[qtype]
    rng = np.random.default_rng(rows * 1000 + blocks + int(qtype))
    raw = rng.integers(0, 256, size=(rows, blocks * block_bytes), dtype=np.uint8)
    with np.errstate(all="ignore"):
        ref = gguf_dequantize(raw, GGMLQuantizationType(int(qtype)))
    assert_bit_exact(dequantize(raw, qtype), ref)


@pytest.mark.parametrize("name", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "BF16", "F16"])
def test_real_quantized_data(name: str) -> None:
    """Blocks written by gguf-py's quantizer from normal-distributed weights (finite, realistic scales)."""
    from gguf.quants import quantize

    qtype = GGMLQuantizationType[name]
    x = np.random.default_rng(7).standard_normal((5, 96)).astype(np.float32)
    raw = quantize(x, qtype).view(np.uint8)
    ours = dequantize(raw.reshape(5, -1), GGMLType[name])
    assert_bit_exact(ours, gguf_dequantize(raw, qtype).reshape(5, 96))
    assert np.abs(ours - x).max() < 0.5  # and it is actually close to the data


@pytest.mark.parametrize("name", TINY_TYPES)
def test_fixture_tensors_bit_exact(name: str) -> None:
    with GGUFFile(tiny_path(name)) as f:
        for tensor in f.tensors.values():
            raw = f.tensor_bytes(tensor.name)
            ref = gguf_dequantize(raw, GGMLQuantizationType(int(tensor.type)))
            assert_bit_exact(dequantize(raw, tensor.type), ref.reshape(tensor.shape))


def test_unsupported_type_is_a_clear_error() -> None:
    with pytest.raises(GGUFError, match="IQ2_XXS is not supported"):
        dequantize(np.zeros((1, 66), np.uint8), GGMLType.IQ2_XXS)
