"""The native kernels (csrc/) against the numpy reference, for every weight type, on random data.

Products: our result must equal the exact product of the dequantized weights and the dequantized quantized
activations up to float rounding. Both sides see the same integers, so a wrong bit in any integer path
(unpacking, scales, mins, sign handling) shows up as an error far above rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import random_weights

from llamette.errors import LlametteError
from llamette.gguf.constants import GGML_BLOCK_SIZES, GGMLType
from llamette.kernels import cpu
from llamette.quant import dequantize

pytestmark = pytest.mark.skipif(not cpu.available(), reason="native library not built")

T = GGMLType
WEIGHT_TYPES = [
    T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1,
    T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_NL, T.IQ4_XS,
]  # fmt: skip
ACT_KIND = {T.F32: "f32", T.F16: "f16", T.BF16: "bf16", T.Q4_1: "q8_1", T.Q5_1: "q8_1"}
for _t in (T.Q4_0, T.Q5_0, T.Q8_0, T.IQ4_NL):
    ACT_KIND[_t] = "q8_0"
for _t in (T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_XS):
    ACT_KIND[_t] = "q8_K"


def block_elems(t: GGMLType) -> int:
    return GGML_BLOCK_SIZES[t][0] if t not in (T.F32, T.F16, T.BF16) else 32


def decode_activations(t: GGMLType, act: np.ndarray, k: int) -> np.ndarray:
    """The values the quantized activation rows stand for, (n, k) float64."""
    kind, n = ACT_KIND[t], act.shape[0]
    if kind == "f32":
        return act.view(np.float32).astype(np.float64)
    if kind == "f16":
        return act.view(np.float16).astype(np.float64)
    if kind == "bf16":
        return (act.view(np.uint16).astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    if kind == "q8_K":
        blocks = act.reshape(n, k // 256, 292)
        d = blocks[:, :, :4].copy().view(np.float32)
        q = blocks[:, :, 4:260].view(np.int8).astype(np.float64)
        return (q * d.astype(np.float64)).reshape(n, k)
    size, qoff = (34, 2) if kind == "q8_0" else (36, 4)
    blocks = act.reshape(n, k // 32, size)
    d = blocks[:, :, :2].copy().view(np.float16).astype(np.float64)
    q = blocks[:, :, qoff:].view(np.int8).astype(np.float64)
    return (q * d).reshape(n, k)


def exact_product(t: GGMLType, w: np.ndarray, k: int, act: np.ndarray) -> np.ndarray:
    wf = dequantize(w.reshape(-1), t).reshape(w.shape[0], k).astype(np.float64)
    a = decode_activations(t, act, k)
    if ACT_KIND[t] != "q8_1":
        return a @ wf.T
    # q8_1 pairs a block's min m with the activation block's stored s = d * sum(q) (a half float), not the sum
    n, rows, nb = a.shape[0], w.shape[0], k // 32
    m = w.reshape(rows, nb, -1)[:, :, 2:4].copy().view(np.float16).astype(np.float64)[:, :, 0]  # (rows, nb)
    s = act.reshape(n, nb, 36)[:, :, 2:4].copy().view(np.float16).astype(np.float64)[:, :, 0]  # (n, nb)
    scaled = (wf.reshape(rows, nb, 32) - m[:, :, None]).reshape(rows, k)
    return a @ scaled.T + s @ m.T


@pytest.fixture(scope="module")
def pools():
    return cpu.ThreadPool(1), cpu.ThreadPool(2)


@pytest.mark.parametrize("wtype", WEIGHT_TYPES, ids=lambda t: t.name)
def test_matmul_equals_exact_product(wtype: GGMLType, pools) -> None:
    rng = np.random.default_rng(int(wtype))
    qk = block_elems(wtype)
    cases = [(13, qk, 1), (37, 3 * qk, 3), (24, 2 * qk, 8), (16, qk, 17), (8, 5 * qk, 5)]
    for rows, k, n in cases:
        w = random_weights(wtype, rows, k, rng)
        x = (rng.standard_normal((n, k)) * rng.uniform(0.1, 10)).astype(np.float32)
        act = cpu.quantize_activations(wtype, x)
        ref = exact_product(wtype, w, k, act)
        variants = [(False, False)]
        if wtype in cpu.REPACKED_TYPES and rows % 8 == 0:
            variants.append((True, False))
            if cpu.can_interleave(wtype):
                variants.append((True, True))
        for repacked, interleave in variants:
            one, two = (cpu.matmul(p, wtype, w, k, x, repacked=repacked, interleave=interleave) for p in pools)
            assert np.array_equal(one, two), f"{wtype.name} {rows}x{k} n={n}: 1 and 2 threads differ"
            err = np.abs(one - ref).max() / np.abs(ref).max()
            assert err < 2e-6, f"{wtype.name} {rows}x{k} n={n} repacked={repacked}: relative error {err:.2e}"


@pytest.mark.parametrize("wtype", [T.Q4_1, T.Q8_0], ids=lambda t: t.name)
def test_packed16_product_is_exact_and_column_invariant(wtype: GGMLType, pools) -> None:
    """The server's 16-row layout: close to the exact product (block sums are exact integers), the same bits
    with 1 or 2 threads, and every column's bits independent of the other columns in the call."""
    if not cpu.can_pack16(wtype, 16):
        pytest.skip("this build has no 16-row kernel (needs AVX-512 VNNI)")
    rng = np.random.default_rng(7 + int(wtype))
    for rows, k, n in [(16, 32, 1), (48, 96, 3), (32, 64, 9), (64, 160, 17)]:
        w = random_weights(wtype, rows, k, rng)
        x = (rng.standard_normal((n, k)) * rng.uniform(0.1, 10)).astype(np.float32)
        act = cpu.quantize_activations(wtype, x)
        ref = exact_product(wtype, w, k, act)
        one, two = (cpu.matmul(p, wtype, w, k, x, packed16=True) for p in pools)
        assert np.array_equal(one, two)
        assert np.abs(one - ref).max() / np.abs(ref).max() < 2e-6, (rows, k, n)
        for c in range(n):  # alone, and with its neighbours reordered
            alone = cpu.matmul(pools[1], wtype, w, k, x[c : c + 1], packed16=True)
            np.testing.assert_array_equal(alone[0], one[c])
        order = rng.permutation(n)
        np.testing.assert_array_equal(cpu.matmul(pools[1], wtype, w, k, x[order], packed16=True), one[order])
    with pytest.raises(LlametteError, match="16-row layout"):
        cpu.pack16(wtype, random_weights(wtype, 8, 32, rng), 32)


@pytest.mark.parametrize("wtype", [t for t in WEIGHT_TYPES if t not in (T.F32, T.F16, T.BF16)], ids=lambda t: t.name)
def test_activation_quantization(wtype: GGMLType) -> None:
    """Activations round to ggml's formats: q8 codes within half a step of x / d, the scale from the block's
    largest magnitude, sums (q8_1's s, q8_K's bsums) consistent with the codes."""
    rng = np.random.default_rng(7)
    k = 512
    x = (rng.standard_normal((4, k)) * np.array([[0.01], [1], [30], [0]])).astype(np.float32)
    act = cpu.quantize_activations(wtype, x)
    vals = decode_activations(wtype, act, k)
    qk = 256 if ACT_KIND[wtype] == "q8_K" else 32
    blocks = x.reshape(4, -1, qk).astype(np.float64)
    amax = np.abs(blocks).max(axis=-1, keepdims=True)
    # half a step, plus what rounding the scale to a half float (q8_0, q8_1) moves the largest code
    slack = 0.0 if ACT_KIND[wtype] == "q8_K" else amax * 2.0**-10
    assert np.all(np.abs(vals.reshape(blocks.shape) - blocks) <= amax / 127 * 0.5 * (1 + 1e-6) + slack + 1e-12)
    assert np.all(vals[3] == 0)
    if ACT_KIND[wtype] == "q8_K":
        raw = act.reshape(4, k // 256, 292)
        q = raw[:, :, 4:260].view(np.int8).astype(np.int64).reshape(4, -1, 16, 16)
        bsums = raw[:, :, 260:].copy().view(np.int16).reshape(4, -1, 16)
        assert np.array_equal(q.sum(-1), bsums)


@pytest.mark.parametrize("wtype", WEIGHT_TYPES, ids=lambda t: t.name)
def test_embedding_rows_equal_numpy_dequantize(wtype: GGMLType) -> None:
    rng = np.random.default_rng(3)
    k = 2 * block_elems(wtype) if block_elems(wtype) == 256 else 96
    w = random_weights(wtype, 5, k, rng)
    ours = cpu.dequantize_rows(wtype, w, k)
    ref = dequantize(w.reshape(-1), wtype).reshape(5, k)
    assert np.array_equal(ours, ref)


def test_bad_shapes_are_refused(pools) -> None:
    w = random_weights(T.Q4_K, 8, 256, np.random.default_rng(0))
    with pytest.raises(Exception, match="shapes do not fit"):
        cpu.matmul(pools[0], T.Q4_K, w, 255, np.zeros((1, 255), np.float32))
    with pytest.raises(Exception, match="no repacked layout"):
        cpu.matmul(pools[0], T.Q6_K, random_weights(T.Q6_K, 8, 256, np.random.default_rng(0)), 256,
                   np.zeros((1, 256), np.float32), repacked=True)  # fmt: skip
