"""Native causal attention, with and without flash attention (csrc/ops.c lm_attention_part, csrc/flash_attn.c),
through the lm_attention_test entry point, against attention computed exactly in float64 numpy.

Bit-exactness with llama.cpp is checked against llama.cpp itself by a dev script (it needs llama.cpp's ggml);
here each result must lie within a bound derived from the f16 roundings its algorithm performs, computed per
output element from the exact attention weights (u = 2^-11, the unit roundoff of f16):

* the reference uses the query as the kernel sees it: rounded to f16 (non-flash, flash one-chunk and split-KV
  paths, as ggml converts Q to K's vec_dot type) or in f32 (flash tiled path, n_tok >= 64);
* non-flash attention rounds each probability p_k to f16 before P.V: error <= u * sum_k p_k |v_kd|;
* flash one-chunk / split-KV keep the unnormalised V accumulator in f16: adding w_k v_k to an f16 value y rounds
  by at most min(u |y + w_k v_k|, |w_k v_k|) (y itself is a candidate for the rounding), and each rescale on a
  new running maximum by at most u |y|; summed over keys (per KV chunk) and divided by S = sum_k w_k;
* the flash tiled path is f32 throughout;
* every path also carries f32 error on the scores (|ds_k| <= (D + 2) 2^-24 scale sum_d |q_d k_kd|, moving the
  output by at most (e^(2 max ds) - 1) sum_k p_k |v_kd|) and a 1e-5 relative term for f32 softmax / expf /
  normalisation error; bounds get a factor 1.25 for second-order terms.
"""

from __future__ import annotations

from ctypes import c_float, c_int, c_int64, c_void_p

import numpy as np
import pytest

from llamette.kernels.cpu import NativeUnavailable, library

try:
    LIB = library()
    TEST_FN = LIB.lm_attention_test
except (NativeUnavailable, OSError, AttributeError) as exc:  # not built, or built before this entry point
    pytest.skip(f"native attention not available: {exc}", allow_module_level=True)

TEST_FN.restype = c_int
TEST_FN.argtypes = [c_int, c_int, c_void_p, c_int64, c_int64, c_int64, c_int64, c_void_p, c_void_p, c_int64,
                    c_int64, c_float, c_void_p]  # fmt: skip

U16 = 2.0**-11  # f16 unit roundoff
SUB16 = 2.0**-25  # half the smallest f16 subnormal: the absolute rounding error below f16's normal range


def _ptr(a: np.ndarray) -> c_void_p:
    return a.ctypes.data_as(c_void_p)


def make_case(seed, n_tok, pos0, n_heads, n_kv_heads, head_dim, sharp=2.0):
    """Random q, K and V (V transposed, as llamette's cache stores it); cells past the sequence hold NaN."""
    rng = np.random.default_rng(seed)
    n_keys = pos0 + n_tok
    cap = n_keys + 19
    q = rng.standard_normal((n_tok, n_heads, head_dim)).astype(np.float32)
    k = rng.standard_normal((n_kv_heads, n_keys, head_dim)).astype(np.float16)
    v = (rng.standard_normal((n_kv_heads, n_keys, head_dim)) * 1.5).astype(np.float16)
    k_cache = np.full((n_kv_heads, cap, head_dim), np.nan, np.float16)
    v_cache = np.full((n_kv_heads, head_dim, cap), np.nan, np.float16)
    k_cache[:, :n_keys] = k
    v_cache[:, :, :n_keys] = v.transpose(0, 2, 1)
    scale = sharp / np.sqrt(head_dim)  # scores with a standard deviation of about `sharp`
    return dict(q=q, k=k, v=v, k_cache=k_cache, v_cache=v_cache, cap=cap, pos0=pos0, scale=np.float32(scale))


def run(case, flash, n_threads):
    q, kc, vc = case["q"], case["k_cache"], case["v_cache"]
    n_tok, n_heads, head_dim = q.shape
    out = np.full_like(q, np.nan)
    rc = TEST_FN(flash, n_threads, _ptr(q), n_tok, n_heads, kc.shape[0], head_dim, _ptr(kc), _ptr(vc), case["cap"],
                 case["pos0"], case["scale"], _ptr(out))  # fmt: skip
    assert rc == 0
    return out


def flash_path(n_tok, pos0):
    """llama.cpp's choice (ggml_compute_forward_flash_attn_ext_f16); its KV cache pads n_kv to 256"""
    n_kv = (pos0 + n_tok + 255) // 256 * 256
    if n_tok == 1 and n_kv >= 512:
        return "split"
    return "tiled" if n_tok >= 64 else "chunk"


def _mm(a, b):
    """a @ b.T without BLAS: the matrices are small, and a threaded BLAS only adds start-up and contention"""
    return np.einsum("ij,kj->ik", a, b)


def reference(case, kind, n_threads=1):
    """(exact output, error bound), memoised in the case"""
    key = (kind, n_threads if kind == "split" else 1)
    memo = case.setdefault("refs", {})
    if key not in memo:
        memo[key] = _reference(case, kind, n_threads)
    return memo[key]


def _reference(case, kind, n_threads):
    """Exact attention (float64) for the kernel `kind` ('nonflash', 'tiled', 'chunk', 'split') and a per-element
    error bound for it (see the module docstring)."""
    q, k, v, pos0, scale = case["q"], case["k"], case["v"], case["pos0"], float(case["scale"])
    n_tok, n_heads, head_dim = q.shape
    n_kv_heads, n_keys = k.shape[0], k.shape[1]
    rep = n_heads // n_kv_heads
    qx = q.astype(np.float64) if kind == "tiled" else q.astype(np.float16).astype(np.float64)
    kx, vx = k.astype(np.float64), v.astype(np.float64)
    n_kv = (n_keys + 255) // 256 * 256
    chunk = -(-n_kv // n_threads) if kind == "split" else n_keys  # split-KV: nth key chunks, one per thread
    ref = np.zeros((n_tok, n_heads, head_dim))
    bound = np.zeros_like(ref)
    pos = np.arange(n_keys)
    for h in range(n_heads):
        K, V = kx[h // rep], vx[h // rep]
        s = scale * _mm(qx[:, h], K)  # (n_tok, n_keys)
        visible = pos[None, :] <= pos0 + np.arange(n_tok)[:, None]
        s = np.where(visible, s, -np.inf)
        w = np.exp(s - s.max(axis=1, keepdims=True))  # weights relative to the final maximum
        S = w.sum(axis=1)
        out = _mm(w, V.T) / S[:, None]
        pv = _mm(w, np.abs(V).T) / S[:, None]  # sum_k p_k |v_kd|
        ds = (head_dim + 2) * 2.0**-24 * scale * _mm(np.abs(qx[:, h]), np.abs(K))
        ds = np.where(visible, ds, 0).max(axis=1)
        b = (np.expm1(2 * ds)[:, None] + 1e-5) * pv
        if kind == "nonflash":
            b += U16 * pv
        elif kind in ("chunk", "split"):
            acc_err = np.zeros((n_tok, head_dim))
            for c0 in range(0, n_keys, chunk):
                wc, sc, Vc = w[:, c0 : c0 + chunk], s[:, c0 : c0 + chunk], V[c0 : c0 + chunk]
                t = wc[:, :, None] * Vc[None]  # each key's term w_k v_k
                A = np.cumsum(t, axis=1)  # the accumulator after each key
                step = np.minimum(U16 * np.abs(A), np.abs(t)) + SUB16 * (wc > 0)[:, :, None]
                run_max = np.maximum.accumulate(sc, axis=1)
                raised = np.concatenate([np.isfinite(sc[:, :1]), sc[:, 1:] > run_max[:, :-1]], axis=1)
                A_before = np.concatenate([np.zeros_like(A[:, :1]), A[:, :-1]], axis=1)
                step += raised[:, :, None] * (U16 * np.abs(A_before) + SUB16)
                acc_err += step.sum(axis=1)
            b += acc_err / S[:, None]
        ref[:, h] = out
        bound[:, h] = 1.25 * b
    return ref, bound


# (n_tok, pos0, n_heads, n_kv_heads, head_dim): GQA ratios 1, 3, 8; all three flash paths and both head sizes
CASES = [
    (1, 0, 4, 4, 64),
    (1, 5, 8, 1, 64),
    (1, 300, 8, 1, 128),  # flash: split KV (n_kv 512)
    (1, 700, 6, 2, 64),  # flash: split KV (n_kv 768)
    (3, 0, 6, 2, 64),
    (3, 301, 6, 2, 128),
    (64, 0, 8, 1, 64),  # flash: tiled from here on
    (64, 300, 4, 4, 128),
    (65, 300, 6, 2, 64),
    (130, 0, 4, 4, 64),
    (130, 333, 8, 1, 64),
]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: "T{}-pos{}-H{}x{}-D{}".format(*c))
def case(request):
    n_tok, pos0, n_heads, n_kv_heads, head_dim = request.param
    return make_case(hash(request.param) % 2**32, n_tok, pos0, n_heads, n_kv_heads, head_dim)


def check_within(out, ref, bound, what):
    assert np.all(np.isfinite(out)), f"{what}: non-finite output"
    err = np.abs(out - ref)
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert np.all(err <= bound), f"{what}: |err| {err[worst]:.3g} > bound {bound[worst]:.3g} at {worst}"


def test_non_flash_matches_exact_attention(case):
    ref, bound = reference(case, "nonflash")
    out1 = run(case, 0, 1)
    check_within(out1, ref, bound, "non-flash")
    assert np.array_equal(out1, run(case, 0, 2)), "non-flash: 1 and 2 threads differ"


def test_flash_matches_exact_attention(case):
    n_tok = case["q"].shape[0]
    kind = flash_path(n_tok, case["pos0"])
    out1, out2 = run(case, 1, 1), run(case, 1, 2)
    ref, bound = reference(case, kind, 1)
    check_within(out1, ref, bound, f"flash ({kind}, 1 thread)")
    if kind == "split":
        # llama.cpp splits the keys into one chunk per thread, each with its own f16 accumulator, then merges
        # them: the result depends on the thread count, so each count gets its own bound
        ref2, bound2 = reference(case, kind, 2)
        check_within(out2, ref2, bound2, f"flash ({kind}, 2 threads)")
    else:
        assert np.array_equal(out1, out2), f"flash ({kind}): 1 and 2 threads differ"


def test_flash_agrees_with_non_flash(case):
    kind = flash_path(case["q"].shape[0], case["pos0"])
    ref_f, bound_f = reference(case, kind)
    ref_n, bound_n = reference(case, "nonflash")
    diff = np.abs(run(case, 1, 1) - run(case, 0, 1))
    assert np.all(diff <= bound_f + bound_n + np.abs(ref_f - ref_n))


def test_bounds_are_tight_enough_to_matter():
    """A one-key slip of the causal mask must break the bounds (guards against vacuous tolerances)."""
    case = make_case(11, 3, 40, 4, 4, 64)
    shifted = dict(case, pos0=case["pos0"] - 1)  # the same data, but query t sees keys 0..pos0+t-1
    for kind in ("nonflash", "chunk"):
        ref, bound = _reference(case, kind, 1)
        assert np.any(np.abs(_reference(shifted, kind, 1)[0] - ref) > bound), kind


def test_bad_arguments():
    case = make_case(3, 2, 0, 4, 4, 64)
    q, kc, vc = case["q"], case["k_cache"], case["v_cache"]
    out = np.zeros_like(q)
    args = (_ptr(q), 2, 4, 3, 64, _ptr(kc), _ptr(vc), case["cap"], 0, c_float(0.125), _ptr(out))  # 4 % 3 heads
    assert TEST_FN(1, 1, *args) == -1
    assert TEST_FN(0, 1, *args) == -1
    too_far = (_ptr(q), 2, 4, 4, 64, _ptr(kc), _ptr(vc), case["cap"], case["cap"] - 1, c_float(0.125), _ptr(out))
    assert TEST_FN(1, 1, *too_far) == -1
