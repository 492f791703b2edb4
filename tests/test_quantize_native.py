"""Weight quantization in the native library (csrc/quantize.c, llamette.quant.quantize_native).

The tiny fixtures were written by llama.cpp's `llama-quantize --pure` from the F32 file: quantizing the F32
tensors must give their bytes exactly. Random data checks the rest: thread-count independence, round trips
through the numpy dequantizer, and input validation.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tiny_path

from llamette.errors import LlametteError
from llamette.gguf.constants import GGML_BLOCK_SIZES, GGMLType
from llamette.gguf.reader import GGUFFile
from llamette.kernels import cpu
from llamette.quant import dequantize
from llamette.quant.quantize_native import QUANTIZABLE_TYPES, quantize

pytestmark = pytest.mark.skipif(not cpu.available(), reason="native library not built")

T = GGMLType
TYPES = [
    T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1,
    T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_NL, T.IQ4_XS,
]  # fmt: skip
# worst relative RMS round-trip error seen on normal, uniform and t(4) data, with about 1.5x headroom
RMS_BOUND = {
    T.F16: 1e-3, T.BF16: 5e-3, T.Q8_0: 0.015, T.Q6_K: 0.05, T.Q5_0: 0.12, T.Q5_1: 0.08, T.Q5_K: 0.08,
    T.Q4_0: 0.22, T.Q4_1: 0.17, T.Q4_K: 0.17, T.IQ4_NL: 0.18, T.IQ4_XS: 0.17, T.Q3_K: 0.32, T.Q2_K: 0.62,
}  # fmt: skip


def block_elems(t: GGMLType) -> int:
    return GGML_BLOCK_SIZES[t][0]


def row_lengths(t: GGMLType) -> list[int]:
    return [256, 768, 1280] if block_elems(t) == 256 else [32, 96, 256, 800]


@pytest.fixture(scope="module")
def f32_model() -> GGUFFile:
    return GGUFFile(tiny_path("F32"))


@pytest.fixture(scope="module")
def pool2() -> cpu.ThreadPool:
    return cpu.ThreadPool(2)


def random_rows(rng: np.random.Generator, rows: int, n: int) -> np.ndarray:
    """Rows of varied shape and magnitude: normal, uniform, heavy-tailed, one-signed, zero, tiny and huge."""
    kinds = [
        lambda: rng.standard_normal(n),
        lambda: rng.uniform(-1, 1, n),
        lambda: rng.standard_t(4, n),
        lambda: np.abs(rng.standard_normal(n)) + 0.5,  # all positive: the min/offset formats' other branch
        lambda: -np.abs(rng.standard_normal(n)),
        lambda: np.zeros(n),
        lambda: rng.standard_normal(n) * 1e-3,
        lambda: rng.standard_normal(n) * 1e3,
        lambda: np.round(rng.standard_normal(n) * 2) / 2,  # many exact ties and repeated values
    ]
    x = np.stack([kinds[i % len(kinds)]() for i in range(rows)])
    return x.astype(np.float32)


# -- bit-exact with llama-quantize ---------------------------------------------------------------------


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_matches_llama_quantize(qtype: GGMLType, f32_model: GGUFFile) -> None:
    ref = GGUFFile(tiny_path(qtype.name))
    compared = 0
    for name, info in ref.tensors.items():
        if info.type != qtype or len(info.shape) != 2:
            continue  # norms stay F32
        src = f32_model.tensors[name]
        assert src.type == T.F32 and src.shape == info.shape, name
        x = f32_model.tensor_bytes(name).view(np.float32)
        got = quantize(x, int(qtype))
        want = ref.tensor_bytes(name)
        assert got.shape == want.shape, name
        bad_rows = np.flatnonzero((got != want).any(axis=1))
        assert bad_rows.size == 0, f"{name}: {bad_rows.size} of {got.shape[0]} rows differ (first {bad_rows[0]})"
        compared += 1
    assert compared > 0, f"no {qtype.name} tensor in {ref.path.name}"


# -- random data ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_threads_and_round_trip(qtype: GGMLType, pool2: cpu.ThreadPool) -> None:
    rng = np.random.default_rng(int(qtype))
    for rows in (1, 7, 13):
        for n in row_lengths(qtype):
            x = random_rows(rng, rows, n)
            one = quantize(x, int(qtype))
            assert one.dtype == np.uint8
            assert one.shape == (rows, n // block_elems(qtype) * GGML_BLOCK_SIZES[qtype][1])
            np.testing.assert_array_equal(quantize(x, int(qtype), pool=pool2), one)
            # each row is quantized on its own: a row's bytes do not depend on its neighbours
            np.testing.assert_array_equal(quantize(x[-1:], int(qtype)), one[-1:])

            y = dequantize(one, qtype)
            assert y.shape == x.shape
            zero = ~x.any(axis=1)
            assert not y[zero].any(), "zero rows must come back as zeros"
            rms = np.sqrt(np.mean(x[~zero].astype(np.float64) ** 2, axis=1))
            err = np.sqrt(np.mean((y[~zero] - x[~zero]).astype(np.float64) ** 2, axis=1))
            assert (err <= RMS_BOUND[qtype] * rms).all(), f"rows {rows} x {n}: worst {np.max(err / rms):.4f}"


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_extreme_magnitudes_are_deterministic(qtype: GGMLType, pool2: cpu.ThreadPool) -> None:
    # past the half-float range the scales saturate; the bytes must still not depend on threads or neighbours
    rng = np.random.default_rng(7)
    n = row_lengths(qtype)[0]
    x = rng.standard_normal((9, n)) * np.array([1e-30, 1e-20, 1e-8, 1e5, 1e20, 1e30, 1.0, 0.0, 3e38])[:, None]
    x = np.clip(x, -3e38, 3e38).astype(np.float32)
    x[6, ::2] = 0.0  # a mostly-zero row
    one = quantize(x, int(qtype))
    np.testing.assert_array_equal(quantize(x, int(qtype), pool=pool2), one)
    for r in range(x.shape[0]):
        np.testing.assert_array_equal(quantize(x[r : r + 1], int(qtype)), one[r : r + 1])


def test_float_conversions_round_to_nearest_even() -> None:
    x = np.array([[1.0, 1.0 + 2**-11, 1.0 + 3 * 2**-11, 65504.0, 65520.0, 1e-8, -0.0, np.inf]], np.float32)
    h = quantize(x, int(T.F16)).view(np.uint16)
    assert h.tolist() == [[0x3C00, 0x3C00, 0x3C02, 0x7BFF, 0x7C00, 0x0000, 0x8000, 0x7C00]]
    b = np.array([[1.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, np.nan, -np.inf]], np.float32)
    bf = quantize(b, int(T.BF16)).view(np.uint16)
    assert bf.tolist() == [[0x3F80, 0x3F80, 0x3F82, 0x7FC0, 0xFF80]]


def test_empty_and_non_contiguous_input() -> None:
    assert quantize(np.zeros((0, 64), np.float32), int(T.Q8_0)).shape == (0, 2 * 34)
    x = np.random.default_rng(1).standard_normal((6, 512)).astype(np.float32)
    np.testing.assert_array_equal(quantize(x[::2], int(T.Q4_K)), quantize(np.ascontiguousarray(x[::2]), int(T.Q4_K)))
    np.testing.assert_array_equal(quantize(x[:, :256], int(T.Q4_0)), quantize(x[:, :256].copy(), int(T.Q4_0)))


def test_quantizable_types() -> None:
    assert {int(t) for t in TYPES} == QUANTIZABLE_TYPES


# -- bad input -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("qtype", "n"), [(T.Q4_0, 48), (T.Q8_0, 16), (T.IQ4_NL, 100), (T.Q4_K, 128), (T.Q6_K, 384), (T.IQ4_XS, 32)]
)
def test_bad_row_length(qtype: GGMLType, n: int) -> None:
    with pytest.raises(LlametteError, match="multiple of"):
        quantize(np.zeros((2, n), np.float32), int(qtype))


@pytest.mark.parametrize("qtype", [0, 9, 15, 16, 21, 31, 99, -1])
def test_unsupported_type(qtype: int) -> None:
    with pytest.raises(LlametteError, match="cannot quantize"):
        quantize(np.zeros((2, 256), np.float32), qtype)


@pytest.mark.parametrize(
    "data",
    [
        np.zeros((2, 256), np.float64),
        np.zeros(256, np.float32),
        np.zeros((2, 2, 256), np.float32),
        np.zeros((2, 0), np.float32),
        [[0.0] * 256],
    ],
    ids=["float64", "1-D", "3-D", "empty-rows", "list"],
)
def test_bad_data(data: object) -> None:
    with pytest.raises(LlametteError):
        quantize(data, int(T.Q4_K))  # type: ignore[arg-type]


def test_bad_type_and_pool_arguments() -> None:
    x = np.zeros((1, 256), np.float32)
    with pytest.raises(LlametteError, match="type id"):
        quantize(x, "Q4_K")  # type: ignore[arg-type]
    with pytest.raises(LlametteError, match="pool"):
        quantize(x, int(T.Q4_K), pool=object())  # type: ignore[arg-type]
