"""The generation loop: stop strings held back, prompt-prefix reuse, context shift, embeddings' hidden states."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY_MANIFEST, tiny_path

from llamette.errors import ContextFullError
from llamette.generation import (
    ContextShift,
    GenerationStats,
    TextStream,
    generate,
    prefill,
    rope_rotation,
    stream_text,
)
from llamette.loader import load
from llamette.sampling import Sampler

TOKENS = TINY_MANIFEST["tokens"]


class Pieces:
    """A decoder stand-in: token i decodes to pieces[i]."""

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces

    def push(self, token: int) -> str:
        return self.pieces[token]

    def flush(self) -> str:
        return ""


def run_stream(pieces: list[str], stop: list[str]) -> tuple[list[str], str | None]:
    s = TextStream(Pieces(pieces), stop)
    out = [s.push(i) for i in range(len(pieces))]
    out.append(s.flush())
    return out, s.stopped


def test_stop_string_split_across_tokens_is_held_then_dropped() -> None:
    out, stopped = run_stream(["Hello", " wor", "ld", "! Q", ":", " more"], ["Q:"])
    assert out == ["Hello", " wor", "ld", "! ", "", "", ""] and stopped == "Q:"


def test_held_text_is_released_when_it_is_not_a_stop() -> None:
    out, stopped = run_stream(["a Q", "x", "Q", ""], ["Q:"])
    assert out == ["a ", "Qx", "", "", "Q"] and stopped is None  # the last "Q" comes out at the end


def test_stop_inside_one_token_and_earliest_of_several() -> None:
    out, stopped = run_stream(["one. two\n three"], ["\n", "."])
    assert out == ["one", ""] and stopped == "."
    out, stopped = run_stream(["ab", "cd", "ef"], ["bcde", "cd"])
    assert "".join(out) == "ab" and stopped == "cd"


def test_no_stop_strings_pass_everything() -> None:
    out, stopped = run_stream(["x", "y"], [""])
    assert out == ["x", "y", ""] and stopped is None


@pytest.fixture(scope="module")
def tiny():
    return load(tiny_path("F32"), backend="ref")


@pytest.fixture(scope="module")
def tiny_native():
    return load(tiny_path("Q8_0"), backend="cpu", n_threads=1)


def _layer0(cache, which: str) -> tuple[np.ndarray, np.ndarray]:
    """Layer 0's keys and values as (positions, kv_heads, head_dim) float32."""
    n = cache.seq_len
    if which == "tiny":
        return cache.k[0][:n].astype(np.float32), cache.v[0][:n].astype(np.float32)
    return cache.k[0][:, :n].transpose(1, 0, 2).astype(np.float32), cache.v[0][:, :, :n].transpose(2, 0, 1).astype(
        np.float32
    )


@pytest.mark.parametrize("which", ["tiny", "tiny_native"])
def test_context_shift_moves_and_re_rotates_the_keys(which: str, request) -> None:
    """Dropping positions [keep, keep + n) moves the later entries down and turns their keys back by n positions
    with rope. Layer 0's keys depend only on token and position, so they must equal a fresh run of the kept
    tokens (up to rounding: f16 in the native cache). Deeper layers keep what they saw (llama.cpp does the same)."""
    model = request.getfixturevalue(which)
    keep, drop = 4, 8
    cache = model.new_cache(32)
    model.net.forward(TOKENS[:20], cache)
    cache.tokens = list(TOKENS[:20])
    cache.discard(keep, keep + drop, rope_rotation(model))
    kept = TOKENS[:keep] + TOKENS[keep + drop : 20]
    assert cache.seq_len == 12 and cache.tokens == kept
    fresh = model.new_cache(32)
    model.net.forward(kept, fresh)
    (k, v), (k_ref, v_ref) = _layer0(cache, which), _layer0(fresh, which)
    # (the numpy reference's BLAS rounds a 20-row product unlike a 12-row one: compare it to 1e-5)
    exact = 0.0 if which == "tiny_native" else 1e-5
    assert np.abs(v - v_ref).max() <= exact * np.abs(v_ref).max()
    assert np.abs(k[:keep] - k_ref[:keep]).max() <= exact * np.abs(k_ref).max()  # the kept prefix is untouched
    tol = 1e-5 if which == "tiny" else 2e-3  # moved keys: rotation rounding (and f16 in the native cache)
    assert np.abs(k - k_ref).max() <= tol * np.abs(k_ref).max()
    model.net.forward(TOKENS[20:23], cache)  # and the cache goes on from position 12
    assert cache.seq_len == 15


def test_generation_goes_on_past_the_context_with_shift(tiny) -> None:
    stats = GenerationStats()
    cache = tiny.new_cache(16)
    out = list(generate(tiny, TOKENS[:6], Sampler(0), max_tokens=40, cache=cache, stats=stats,
                        context_shift=ContextShift(n_keep=3)))  # fmt: skip
    assert len(out) == 40 and stats.n_shifts >= 3 and stats.stop_reason == "length"
    assert cache.tokens[:3] == TOKENS[:3] and cache.seq_len == len(cache.tokens) <= 16
    stats = GenerationStats()
    out = list(generate(tiny, TOKENS[:6], Sampler(0), max_tokens=40, cache=tiny.new_cache(16), stats=stats))
    assert stats.stop_reason == "context" and len(out) == 11


def test_prompt_longer_than_context_is_an_error(tiny) -> None:
    with pytest.raises(ContextFullError, match="prompt is 20 tokens, longer than the context of 8"):
        list(generate(tiny, TOKENS[:20], Sampler(0), cache=tiny.new_cache(8)))


def test_prefix_reuse_evaluates_only_the_new_tokens(tiny_native) -> None:
    model = tiny_native
    cache = model.new_cache(64)
    stats = GenerationStats()
    first = prefill(model, cache, TOKENS[:10], stats)
    assert stats.n_prompt == 10
    again = prefill(model, cache, TOKENS[:10], stats, reuse=True)  # the same prompt: its last 2 tokens again
    assert stats.n_prompt == 2 and stats.n_reused == 8
    np.testing.assert_array_equal(first, again)  # a 2-token batch computes them as the 10-token one did
    longer = prefill(model, cache, TOKENS[:10] + TOKENS[20:25], stats, reuse=True)
    assert stats.n_prompt == 5 and stats.n_reused == 10
    fresh = prefill(model, model.new_cache(64), TOKENS[:10] + TOKENS[20:25], GenerationStats())
    np.testing.assert_array_equal(longer, fresh)
    prefill(model, cache, TOKENS[:3] + [7, 8], stats, reuse=True)  # diverges at 3: the rest is dropped
    assert stats.n_reused == 3 and cache.tokens == TOKENS[:3] + [7, 8]


def test_stream_text_stops_and_reports(tiny) -> None:
    greedy = list(generate(tiny, TOKENS[:6], Sampler(0), max_tokens=12, cache=tiny.new_cache(32)))
    text = tiny.tokenizer.decode(greedy)
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    stats = GenerationStats()
    pieces = [p for _, p in stream_text(tiny, TOKENS[:6], Sampler(0), max_tokens=12, stop=[stop],
                                        cache=tiny.new_cache(32), stats=stats)]  # fmt: skip
    # decode() drops the SentencePiece prefix space of the first token; the stream keeps pieces as they are
    streamed = tiny.tokenizer.detokenize(greedy).decode("utf-8", "replace")
    assert "".join(pieces).lstrip() == text[: text.index(stop)] and stats.stop_reason == "stop"
    assert stop not in "".join(pieces) and streamed.startswith("".join(pieces).lstrip())


@pytest.mark.parametrize("qtype", ["F32", "Q4_K"])
def test_hidden_states_native_equal_reference(qtype: str) -> None:
    native = load(tiny_path(qtype), backend="cpu", n_threads=2)
    ref = load(tiny_path(qtype), backend="ref")
    a = native.net.forward(TOKENS[:9], native.new_cache(16), hidden=True)
    b = ref.net.forward(TOKENS[:9], ref.new_cache(16), hidden=True)
    assert a.shape == b.shape == (9, native.config.dim)
    assert np.linalg.norm(a - b) / np.linalg.norm(b) < 0.03
