"""The Triton GGUF kernels (llamette.kernels.triton_kernels) against the numpy reference, for every type.

Without a GPU they run under Triton's interpreter on CPU tensors (TRITON_INTERPRET=1, set before triton is
imported). Random bytes exercise every bit of quants and packed scales; only the half-float scale fields are
set to finite, moderate values. dequantize must equal the reference exactly (fp32) or after one rounding
(fp16/bf16); matvec must equal the float64 product of the reference weights within float32 accumulation.
"""

from __future__ import annotations

import os

if not os.path.exists("/dev/nvidiactl"):  # (conftest does the same; this module may be run alone)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from conftest import random_weights  # noqa: E402

from llamette.errors import LlametteError  # noqa: E402
from llamette.gguf.constants import GGML_BLOCK_SIZES, GGMLType  # noqa: E402
from llamette.kernels import triton_kernels as tk  # noqa: E402
from llamette.quant import dequantize as np_dequantize  # noqa: E402

T = GGMLType
TYPES = [
    T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1,
    T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_NL, T.IQ4_XS,
]  # fmt: skip
DEVICE = "cuda" if torch.cuda.is_available() and not tk.interpreting() else "cpu"

pytestmark = pytest.mark.skipif(
    DEVICE == "cpu" and not tk.interpreting(), reason="no GPU and triton was imported without TRITON_INTERPRET=1"
)


def block_elems(t: GGMLType) -> int:
    """A test 'block' of K: the format's block, 24 elements for the float types (not a power of two)."""
    return 24 if t in (T.F32, T.F16, T.BF16) else GGML_BLOCK_SIZES[t][0]


def case(t: GGMLType, rows: int, blocks: int, seed: int = 0):
    rng = np.random.default_rng(1000 * int(t) + 10 * rows + blocks + seed)
    k = blocks * block_elems(t)
    w = random_weights(t, rows, k, rng)
    ref = np_dequantize(w.reshape(-1), t).reshape(rows, k)
    return rng, k, w, ref, torch.from_numpy(w).to(DEVICE)


def check_product(got: torch.Tensor, ref: np.ndarray, x: np.ndarray) -> None:
    """|got - x @ W.T| within 1e-5 of |x| @ |W|.T (the scale of float32 rounding in the sums)."""
    got = got.cpu().numpy().astype(np.float64)
    wf, xf = ref.astype(np.float64), x.astype(np.float64)
    exact, bound = xf @ wf.T, np.abs(xf) @ np.abs(wf).T
    assert got.shape == exact.shape
    assert np.all(np.abs(got - exact) <= 1e-5 * bound + 1e-30), np.max(np.abs(got - exact) / (bound + 1e-30))


@pytest.mark.parametrize("wtype", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("rows,blocks", [(16, 1), (40, 2)])
def test_dequantize_equals_reference(wtype: GGMLType, rows: int, blocks: int) -> None:
    _, k, _, ref, w = case(wtype, rows, blocks)
    got32 = tk.dequantize(w, int(wtype), k, torch.float32)
    assert got32.dtype == torch.float32 and got32.shape == (rows, k)
    np.testing.assert_array_equal(got32.cpu().numpy().view(np.uint32), ref.view(np.uint32))  # bit for bit
    got16 = tk.dequantize(w, wtype, k)  # fp16 by default: one round-to-nearest-even of the fp32 value
    assert got16.dtype == torch.float16
    np.testing.assert_array_equal(got16.cpu().numpy(), ref.astype(np.float16))
    got_bf = tk.dequantize(w, int(wtype), k, torch.bfloat16)
    want_bf = torch.from_numpy(ref).to(torch.bfloat16)
    assert torch.equal(got_bf.cpu().view(torch.int16), want_bf.view(torch.int16))


@pytest.mark.parametrize("wtype", TYPES, ids=lambda t: t.name)
def test_matvec_equals_reference(wtype: GGMLType) -> None:
    for rows, blocks, n in [(16, 1, 1), (40, 2, 3)]:
        rng, k, _, ref, w = case(wtype, rows, blocks)
        x = rng.standard_normal((n, k)).astype(np.float32)
        got = tk.matvec(w, int(wtype), torch.from_numpy(x).to(DEVICE), k)
        assert got.dtype == torch.float32 and got.shape == (n, rows)
        check_product(got, ref, x)
        if n == 1:  # a 1-D x gives a 1-D result
            got1 = tk.matvec(w, int(wtype), torch.from_numpy(x[0]).to(DEVICE), k)
            assert got1.shape == (rows,)
            assert torch.equal(got1, got[0])


@pytest.mark.parametrize("wtype", [T.Q4_0, T.Q5_1, T.Q3_K, T.Q4_K, T.Q6_K, T.IQ4_XS, T.F16], ids=lambda t: t.name)
def test_matvec_tiling(wtype: GGMLType) -> None:
    """Partial row tiles, K steps smaller than a block, more vectors than one program takes, fp16 x."""
    rng, k, _, ref, w = case(wtype, 13, 2, seed=1)
    x = rng.standard_normal((11, k)).astype(np.float16)
    bk = 16 if block_elems(wtype) <= 32 else 64  # inside a block / a super-block
    got = tk.matvec(w, wtype, torch.from_numpy(x).to(DEVICE), k, block_rows=4, block_k=bk)
    check_product(got, ref, x)
    got_dq = tk.dequantize(w, wtype, k, torch.float32, block_rows=8, block_k=bk)
    np.testing.assert_array_equal(got_dq.cpu().numpy().view(np.uint32), ref.view(np.uint32))


def test_empty() -> None:
    w = torch.zeros((0, 18), dtype=torch.uint8, device=DEVICE)
    assert tk.matvec(w, T.Q4_0, torch.zeros(2, 32, device=DEVICE), 32).shape == (2, 0)
    assert tk.dequantize(w, T.Q4_0, 32).shape == (0, 32)


def test_bad_input() -> None:
    w = torch.zeros((4, 18), dtype=torch.uint8, device=DEVICE)
    x = torch.zeros(32, device=DEVICE)
    bad_calls = [
        (lambda: tk.matvec(w.float(), T.Q4_0, x, 32), "uint8"),
        (lambda: tk.matvec(w.numpy(force=True), T.Q4_0, x, 32), "torch.Tensor"),
        (lambda: tk.matvec(w.reshape(-1), T.Q4_0, x, 32), "2-D"),
        (lambda: tk.matvec(w, T.Q4_1, x, 32), "take 20 bytes"),
        (lambda: tk.matvec(w, T.Q4_0, x, 48), "multiple of 32"),
        (lambda: tk.matvec(w, T.Q4_0, x, 0), "multiple of 32"),
        (lambda: tk.matvec(w, T.Q8_K, x, 256), "Q8_K"),
        (lambda: tk.matvec(w, 99, x, 32), "type 99"),
        (lambda: tk.matvec(w, "Q4_0", x, 32), "int GGML type id"),
        (lambda: tk.matvec(w, True, x, 32), "int GGML type id"),
        (lambda: tk.matvec(w, T.Q4_0, x.to(torch.int32), 32), "float32"),
        (lambda: tk.matvec(w, T.Q4_0, torch.zeros(64, device=DEVICE), 32), "(K,) or (n, K)"),
        (lambda: tk.matvec(w, T.Q4_0, torch.zeros(1, 1, 32, device=DEVICE), 32), "(K,) or (n, K)"),
        (lambda: tk.matvec(w, T.Q4_0, [0.0] * 32, 32), "x must be a torch.Tensor"),
        (lambda: tk.matvec(w, T.Q4_0, x, 32, block_rows=6), "power of two"),
        (lambda: tk.dequantize(w, T.Q4_0, 32, torch.int8), "out_dtype"),
        (lambda: tk.dequantize(w, T.Q4_0, 32.0), "K must be an int"),
    ]
    for call, message in bad_calls:
        with pytest.raises(LlametteError, match=message.replace("(", r"\(").replace(")", r"\)")):
            call()
