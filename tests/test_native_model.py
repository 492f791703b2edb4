"""The native forward pass (backend "cpu", the default) against llama.cpp's logits, and its KV cache."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY, TINY_MANIFEST, TINY_TYPES, tiny_path

from llamette.errors import ContextFullError, LlametteError
from llamette.kernels import cpu
from llamette.loader import load as load_any

pytestmark = pytest.mark.skipif(not cpu.available(), reason="native library not built")

TOKENS = TINY_MANIFEST["tokens"]
# the acceptance bound; the kernels follow llama.cpp's arithmetic, so on x86 they land at 0 exactly
LOGITS_TOLERANCE = 0.005


def load(path, **kw):
    return load_any(path, backend="cpu", **kw)


def relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


@pytest.mark.parametrize("qtype", TINY_TYPES)
def test_tiny_logits_match_llama_cpp(qtype: str) -> None:
    model = load(tiny_path(qtype), n_threads=2)
    logits = model.net.forward(TOKENS, model.new_cache(64), all_logits=True)
    ref = np.load(TINY / TINY_MANIFEST["models"][qtype]["logits"])
    assert logits.shape == ref.shape == (32, 512)
    err = relative_error(logits, ref)
    assert err <= LOGITS_TOLERANCE, f"{qtype}: {err:.5f} (max abs {np.abs(logits - ref).max():.3g})"


@pytest.mark.parametrize("qtype", ["Q4_K", "Q6_K", "Q4_0", "F16"])
def test_one_and_two_threads_agree_bitwise(qtype: str) -> None:
    one, two = load(tiny_path(qtype), n_threads=1), load(tiny_path(qtype), n_threads=2)
    a = one.net.forward(TOKENS, one.new_cache(64), all_logits=True)
    b = two.net.forward(TOKENS, two.new_cache(64), all_logits=True)
    assert np.array_equal(a, b)


@pytest.mark.parametrize("qtype", ["F32", "Q4_K", "Q8_0", "Q2_K"])
def test_prefill_then_decode_equals_full_forward(qtype: str) -> None:
    """Single-token steps run llama.cpp's one-column kernels, a batch its batch kernels: the same numbers up to
    rounding."""
    model = load(tiny_path(qtype))
    full = model.net.forward(TOKENS, model.new_cache(64), all_logits=True)
    cache = model.new_cache(64)
    steps = [model.net.forward(TOKENS[:16], cache, all_logits=True)]
    steps += [model.net.forward([t], cache) for t in TOKENS[16:]]
    incremental = np.concatenate(steps)
    assert cache.seq_len == 32
    assert relative_error(incremental, full) < 1e-3
    assert np.array_equal(incremental.argmax(-1), full.argmax(-1))


def test_native_agrees_with_reference() -> None:
    native, ref = load(tiny_path("Q5_K")), load_any(tiny_path("Q5_K"), backend="ref")
    a = native.net.forward(TOKENS, native.new_cache(64), all_logits=True)
    b = ref.net.forward(TOKENS, ref.new_cache(64), all_logits=True)
    assert relative_error(a, b) < 0.03


def test_interleaved_copies_are_counted() -> None:
    # Q4_0 matrices with rows % 8 == 0 are copied into 8-row interleaved blocks (the embedding table is not)
    model = load(tiny_path("Q4_0"))
    expected = sum(
        t.nbytes
        for name, t in model.gguf.tensors.items()
        if name != "token_embd.weight" and t.type == cpu.GGMLType.Q4_0 and t.shape[0] % 8 == 0
    )
    assert expected > 0 and model.net.repacked_bytes == (expected if cpu.can_interleave(cpu.GGMLType.Q4_0) else 0)
    assert load(tiny_path("Q8_0")).net.repacked_bytes == 0


def test_kv_cache_grows_with_use() -> None:
    model = load(tiny_path("Q8_0"))
    cache = model.new_cache(4096)
    assert cache.capacity == 0 and cache.nbytes == 0
    model.net.forward(TOKENS[:10], cache)
    assert 10 <= cache.capacity < 4096  # not the whole context up front
    before = model.net.forward(TOKENS[10:11], cache)
    grown = cache.capacity
    cache.truncate(10)
    again = model.net.forward(TOKENS[10:11], cache)
    assert np.array_equal(before, again) and cache.capacity == grown
    big = model.new_cache(40)
    model.net.forward(TOKENS, big)
    with pytest.raises(ContextFullError, match="context is full"):
        model.net.forward(TOKENS[:9], big)


def test_bad_tokens_are_refused_before_c() -> None:
    model = load(tiny_path("F32"))
    with pytest.raises(LlametteError, match="token id 512 is out of range"):
        model.net.forward([1, 512], model.new_cache(8))
    with pytest.raises(LlametteError, match="token id -1"):
        model.net.forward([-1], model.new_cache(8))
    with pytest.raises(LlametteError, match="at least one token"):
        model.net.forward([], model.new_cache(8))
    with pytest.raises(LlametteError, match="thread count"):
        load(tiny_path("F32"), n_threads=0)


LAYOUTS = [(q, False) for q in TINY_TYPES] + [(q, True) for q in ("Q4_1", "Q8_0")]


@pytest.mark.parametrize("flash", [False, True])
@pytest.mark.parametrize(("qtype", "batch_layout"), LAYOUTS, ids=[f"{q}{'-batch' if b else ''}" for q, b in LAYOUTS])
def test_batched_decode_gives_each_sequence_its_lone_bits(qtype: str, flash: bool, batch_layout: bool) -> None:
    """decode_batch (the server's continuous batching) reads the weights once for several sequences; each row
    must equal that sequence decoded alone, bit for bit, whatever else shares the step. Also with the server's
    16-row layout (batch_layout), and there also against prompt batches."""
    from llamette.loader import load

    model = load(tiny_path(qtype), backend="cpu", n_threads=2, flash_attn=flash, batch_layout=batch_layout)
    if batch_layout and not model.net.repacked_bytes:
        pytest.skip("this build has no 16-row kernel (needs AVX-512 VNNI)")
    tokens = TINY_MANIFEST["tokens"]
    prompts = [tokens[i : i + 3 + i % 5] for i in range(9)]
    nxt = [tokens[(5 + i) % 32] for i in range(9)]
    alone = []
    for p, t in zip(prompts, nxt, strict=True):
        cache = model.new_cache(64)
        model.net.forward(p, cache)
        alone.append(model.net.forward([t], cache)[0])
    for group in ([0], [3, 1], [8, 2, 5, 0, 7], list(range(9))):
        caches = []
        for i in group:
            caches.append(model.new_cache(64 if i % 2 else 32))  # different capacities too
            model.net.forward(prompts[i], caches[-1])
        out = model.net.decode_batch([nxt[i] for i in group], caches)
        for row, i in zip(out, group, strict=True):
            np.testing.assert_array_equal(row, alone[i])
        assert [c.seq_len for c in caches] == [len(prompts[i]) + 1 for i in group]


@pytest.mark.parametrize("qtype", ["Q4_1", "Q8_0"])
def test_batch_layout_logits_near_llama_cpp(qtype: str) -> None:
    """The server layout sums each block exactly (ggml's reference arithmetic), so its logits differ from
    llama.cpp's AVX ones by rounding only (activations are still rounded to 8 bits the same way)."""
    model = load_any(tiny_path(qtype), backend="cpu", batch_layout=True)
    if not model.net.repacked_bytes:
        pytest.skip("this build has no 16-row kernel (needs AVX-512 VNNI)")
    ref = np.load(TINY / TINY_MANIFEST["models"][qtype]["logits"])
    ours = model.net.forward(TOKENS, model.new_cache(64), all_logits=True)
    assert np.linalg.norm(ours - ref) / np.linalg.norm(ref) < 0.03
    # a prompt evaluated in pieces of 2+ tokens (the server's prompt cache) gives the bits of one batch
    cache = model.new_cache(64)
    model.net.forward(TOKENS[:19], cache)
    tail = model.net.forward(TOKENS[19:21], cache)[0]
    np.testing.assert_array_equal(tail, model.net.forward(TOKENS[:21], model.new_cache(64))[0])
