"""The Triton decode-attention kernel (llamette.kernels.triton_attention) against float64 attention in numpy:
GQA and plain heads, head sizes that are not powers of two, fp16 and fp32 caches, lengths from 1 to the
capacity and across split boundaries. Without a GPU it runs under Triton's interpreter."""

from __future__ import annotations

import os

if not os.path.exists("/dev/nvidiactl"):  # (conftest does the same; this module may be run alone)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from llamette.errors import LlametteError  # noqa: E402
from llamette.kernels import triton_kernels as tk  # noqa: E402
from llamette.kernels.triton_attention import decode_attention, split_size  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() and not tk.interpreting() else "cpu"
pytestmark = pytest.mark.skipif(
    DEVICE == "cpu" and not tk.interpreting(), reason="no GPU and triton was imported without TRITON_INTERPRET=1"
)


def exact(q: np.ndarray, k: np.ndarray, v: np.ndarray, length: int, scale: float) -> np.ndarray:
    rep = q.shape[0] // k.shape[0]
    kk = np.repeat(k[:, :length].astype(np.float64), rep, axis=0)  # (H, L, D)
    vv = np.repeat(v[:, :length].astype(np.float64), rep, axis=0)
    s = np.einsum("hd,hld->hl", q.astype(np.float64), kk) * scale
    p = np.exp(s - s.max(axis=1, keepdims=True))
    return np.einsum("hl,hld->hd", p / p.sum(axis=1, keepdims=True), vv)


@pytest.mark.parametrize(
    "heads,kv_heads,dim,capacity,lengths,dtype",
    [
        (4, 2, 16, 64, [1, 2, 37, 64], torch.float32),
        (6, 2, 24, 300, [1, 63, 64, 65, 300], torch.float16),  # D not a power of two
        (8, 8, 64, 4096, [1, 2500, 4096], torch.float16),  # 64 splits of 64
        (3, 1, 8, 130, [129], torch.float32),
        (9, 3, 40, 5000, [4097], torch.bfloat16),  # splits of 128
    ],
)
def test_equals_exact_attention(heads, kv_heads, dim, capacity, lengths, dtype) -> None:
    rng = np.random.default_rng(heads * 1000 + capacity)
    q = rng.standard_normal((heads, dim)).astype(np.float32)
    k = (2 * rng.standard_normal((kv_heads, capacity, dim))).astype(np.float32)
    v = rng.standard_normal((kv_heads, capacity, dim)).astype(np.float32)
    kt, vt = torch.from_numpy(k).to(DEVICE, dtype), torch.from_numpy(v).to(DEVICE, dtype)
    k, v = kt.float().cpu().numpy(), vt.float().cpu().numpy()  # the values the kernel reads
    scale = dim**-0.5
    length = torch.zeros(1, dtype=torch.int64, device=DEVICE)
    for n in lengths:
        length.fill_(n)  # the same tensor, a new value: as a replayed CUDA graph sees it
        got = decode_attention(torch.from_numpy(q).to(DEVICE), kt, vt, length, scale).cpu().numpy()
        want = exact(q, k, v, n, scale)
        assert got.shape == (heads, dim) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * np.abs(want).max() + 1e-6)


def test_strided_cache_view() -> None:
    """k and v may be views (the cache's layer tensors are used as they are)."""
    rng = np.random.default_rng(1)
    big = torch.from_numpy(rng.standard_normal((2, 2, 100, 16)).astype(np.float32)).to(DEVICE)
    q = torch.from_numpy(rng.standard_normal((4, 16)).astype(np.float32)).to(DEVICE)
    got = decode_attention(q, big[0], big[1], torch.tensor([77], device=DEVICE), 0.25).cpu().numpy()
    want = exact(q.cpu().numpy(), big[0].cpu().numpy(), big[1].cpu().numpy(), 77, 0.25)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_split_size() -> None:
    assert split_size(1) == split_size(4096) == 64 and split_size(4097) == 128
    assert split_size(131072) == 2048


def test_bad_input() -> None:
    q, k = torch.zeros(4, 16, device=DEVICE), torch.zeros(2, 8, 16, device=DEVICE)
    n = torch.tensor([1], device=DEVICE)
    for call, message in [
        (lambda: decode_attention(q[0], k, k, n, 1.0), "q \\(H, D\\)"),
        (lambda: decode_attention(torch.zeros(3, 16, device=DEVICE), k, k, n, 1.0), "3 query heads"),
        (lambda: decode_attention(q, k, k[:, :4], n, 1.0), "k and v"),
        (lambda: decode_attention(q, k.transpose(1, 2), k.transpose(1, 2), n, 1.0), "4 query heads of 16"),
        (lambda: decode_attention(q, k, k, n.float(), 1.0), "length must be"),
        (lambda: decode_attention(q, k, k, torch.tensor([1, 2], device=DEVICE), 1.0), "length must be"),
    ]:
        with pytest.raises(LlametteError, match=message):
            call()
