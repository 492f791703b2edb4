"""The numpy reference forward pass (backend "ref") against llama.cpp's logits, and its KV cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, TINY_MANIFEST, TINY_TYPES, rewrite_gguf, tiny_path

from llamette.cache import KVCache
from llamette.errors import ContextFullError, GGUFError
from llamette.gguf import GGUFFile
from llamette.gguf.constants import GGUFValueType
from llamette.loader import load as load_any
from llamette.model.config import ModelConfig
from llamette.model.reference import ReferenceLlama
from llamette.model.weights import load_weights

TOKENS = TINY_MANIFEST["tokens"]


def load(path, **kw):
    return load_any(path, backend="ref", **kw)


# ||ours - llama.cpp|| / ||llama.cpp||: the acceptance bound; exact math lands at 0.0002 (F32) to 0.021
# (K-quants) because llama.cpp rounds activations to 8 bits and attention inputs to f16
LOGITS_TOLERANCE = 0.03


def relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


@pytest.mark.parametrize("qtype", TINY_TYPES)
def test_tiny_logits_match_llama_cpp(qtype: str) -> None:
    model = load(tiny_path(qtype))
    logits = model.net.forward(TOKENS, model.new_cache(), all_logits=True)
    ref = np.load(TINY / TINY_MANIFEST["models"][qtype]["logits"])
    assert logits.shape == ref.shape == (32, 512)
    err = relative_error(logits, ref)
    assert err <= LOGITS_TOLERANCE, f"{qtype}: {err:.4f}"
    if qtype == "F32":  # nothing is quantized: only llama.cpp's f16 KV cache separates us
        assert err < 0.001


@pytest.mark.parametrize("qtype", ["F32", "Q4_K", "Q8_0"])
def test_prefill_then_decode_equals_full_forward(qtype: str) -> None:
    model = load(tiny_path(qtype))
    full = model.net.forward(TOKENS, model.new_cache(), all_logits=True)
    cache = model.new_cache()
    steps = [model.net.forward(TOKENS[:16], cache, all_logits=True)]
    steps += [model.net.forward([t], cache) for t in TOKENS[16:]]
    incremental = np.concatenate(steps)
    assert cache.seq_len == 32
    assert relative_error(incremental, full) < 1e-4
    assert np.array_equal(incremental.argmax(-1), full.argmax(-1))


def test_last_row_only_by_default() -> None:
    model = load(tiny_path("F32"))
    last = model.net.forward(TOKENS, model.new_cache())
    full = model.net.forward(TOKENS, model.new_cache(), all_logits=True)
    assert last.shape == (1, 512)
    np.testing.assert_allclose(last[0], full[-1], rtol=1e-5, atol=1e-5)


def test_float64_agrees_with_float32() -> None:
    with GGUFFile(tiny_path("Q6_K")) as f:
        cfg = ModelConfig.from_gguf(f)
        weights = load_weights(f, cfg)
    a = ReferenceLlama(cfg, weights, dtype=np.float32)
    b = ReferenceLlama(cfg, weights, dtype=np.float64)
    la = a.forward(TOKENS, a.new_cache(64), all_logits=True)
    lb = b.forward(TOKENS, b.new_cache(64), all_logits=True)
    assert relative_error(la, lb) < 1e-5


def test_kv_cache_grows_and_guards_the_context() -> None:
    cache = KVCache(n_layers=2, n_kv_heads=2, head_dim=4, n_ctx=600)
    assert cache.capacity == 0 and cache.nbytes == 0
    k = np.ones((10, 2, 4), np.float32)
    assert cache.extend(10) == 0
    kk, vv = cache.update_and_fetch(0, k, 2 * k)
    assert kk.shape == (10, 2, 4) and vv[0, 0, 0] == 2
    assert cache.capacity == 256  # grown in steps, not n_ctx up front
    cache.extend(300)
    assert cache.capacity == 512 and cache.k[0][:10].sum() == 80  # old contents kept
    cache.extend(290)
    assert cache.capacity == 600  # never beyond n_ctx
    with pytest.raises(ContextFullError, match="context is full"):
        cache.extend(1)
    cache.truncate(5)
    assert cache.seq_len == 5
    cache.clear()
    assert cache.seq_len == 0


def test_generation_respects_the_context() -> None:
    from llamette.generation import GenerationStats, generate
    from llamette.sampling import Sampler

    model = load(tiny_path("Q8_0"))
    stats = GenerationStats()
    out = list(generate(model, TOKENS[:8], Sampler(0), max_tokens=100, cache=model.new_cache(12), stats=stats))
    # 4 tokens fill the cache; a 5th is sampled from the last logits and needs no cache slot
    assert len(out) == 5 and stats.stop_reason == "context"
    with pytest.raises(ContextFullError, match="longer than the context"):
        list(generate(model, TOKENS, Sampler(0), cache=model.new_cache(16)))


def test_generation_stops_at_end_of_generation() -> None:
    from llamette.generation import GenerationStats, generate

    model = load(tiny_path("F32"))
    eos = model.tokenizer.eos
    choices = iter([5, 6, eos, 7])
    stats = GenerationStats()
    out = list(generate(model, [1, 2], lambda logits: next(choices), max_tokens=10, stats=stats))
    assert out == [5, 6] and stats.stop_reason == "eog" and stats.n_generated == 2
    stats = GenerationStats()
    assert len(list(generate(model, [1, 2], lambda logits: 9, max_tokens=3, stats=stats))) == 3
    assert stats.stop_reason == "length"


# -- model files llamette cannot run -----------------------------------------------------------------------


def test_config_of_fixture_and_default_model(smollm2_path: Path) -> None:
    cfg = ModelConfig.from_gguf(GGUFFile(tiny_path("F32")))
    assert (cfg.n_vocab, cfg.dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.ffn_dim) == (
        512,
        256,
        2,
        4,
        2,
        768,
    )
    assert (cfg.head_dim, cfg.n_ctx_train, cfg.rope_base, cfg.tied_output) == (64, 256, 10000.0, False)
    cfg = ModelConfig.from_gguf(GGUFFile(smollm2_path))
    assert (cfg.n_layers, cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.ffn_dim, cfg.n_vocab) == (
        30,
        576,
        9,
        3,
        1536,
        49152,
    )
    assert cfg.tied_output and cfg.rope_base == 100000.0 and cfg.n_rep == 3


@pytest.mark.parametrize(
    "change,message",
    [
        ({"arch": "mamba9"}, "architecture 'mamba9' is not supported (supported: llama)"),
        ({"drop_tensors": ("blk.1.ffn_up.weight",)}, "tensor 'blk.1.ffn_up.weight' is missing"),
        ({"drop_tensors": ("output.weight", "token_embd.weight")}, "tensor 'token_embd.weight' is missing"),
        (
            {"tensors": {"blk.0.attn_norm.weight": np.ones(128)}},
            "'blk.0.attn_norm.weight' has shape [128], expected [256]",
        ),
        ({"drop_keys": ("llama.block_count",)}, "metadata 'llama.block_count' is missing"),
        (
            {"set_keys": {"llama.attention.head_count_kv": (3, GGUFValueType.UINT32)}},
            "head_count (4) is not a multiple of llama.attention.head_count_kv (3)",
        ),
        (
            {"set_keys": {"llama.attention.layer_norm_rms_epsilon": (-1.0, GGUFValueType.FLOAT32)}},
            "expected a positive number",
        ),
        ({"set_keys": {"llama.expert_count": (8, GGUFValueType.UINT32)}}, "mixture-of-experts"),
        (
            {"set_keys": {"llama.rope.scaling.type": ("yarn", GGUFValueType.STRING)}},
            "RoPE scaling type 'yarn'",
        ),
    ],
)
def test_unrunnable_models_are_clear_errors(tmp_path: Path, change: dict, message: str) -> None:
    path = rewrite_gguf(tiny_path("F32"), tmp_path / "bad.gguf", **change)
    with pytest.raises(GGUFError) as info:
        load(path)
    assert message in str(info.value) and str(path) in str(info.value)


def test_tied_output_and_optional_biases(tmp_path: Path) -> None:
    """No output.weight: logits come from token_embd. Biases on q/k/v are used when present."""
    with GGUFFile(tiny_path("F32")) as f:
        embd = np.array(f.tensor_bytes("token_embd.weight").view(np.float32))
    tied = load(rewrite_gguf(tiny_path("F32"), tmp_path / "tied.gguf", drop_tensors=("output.weight",)))
    assert tied.config.tied_output and tied.net.output is tied.net.token_embd
    np.testing.assert_array_equal(tied.net.output, embd)
    bias = np.random.default_rng(0).standard_normal(256).astype(np.float32)
    plain = load(tiny_path("F32"))
    biased = load(rewrite_gguf(tiny_path("F32"), tmp_path / "bias.gguf", tensors={"blk.0.attn_q.bias": bias}))
    a = plain.net.forward(TOKENS[:4], plain.new_cache())
    b = biased.net.forward(TOKENS[:4], biased.new_cache())
    assert not np.allclose(a, b)
