"""The generation loop: prefill the prompt, then sample and decode one token at a time.

`generate` yields token ids; `stream_text` turns them into text deltas with stop strings held back.
Both stop at an end-of-generation token, max tokens, or a full context (unless context_shift).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from llamette.errors import ContextFullError, LlametteError
from llamette.loader import Model
from llamette.sampling import Sampler
from llamette.tokenizer import StreamDecoder


@dataclass
class GenerationStats:
    n_prompt: int = 0  # prompt tokens evaluated (not counting a reused prefix)
    n_generated: int = 0
    n_reused: int = 0  # prompt tokens already in the cache
    n_shifts: int = 0  # context shifts done
    prompt_seconds: float = 0.0
    generate_seconds: float = 0.0
    # "eog" (end-of-generation token), "length" (max tokens), "context" (n_ctx full), "stop" (a stop string)
    stop_reason: str = ""

    @property
    def prompt_tps(self) -> float:
        return self.n_prompt / self.prompt_seconds if self.prompt_seconds else 0.0

    @property
    def generate_tps(self) -> float:
        return self.n_generated / self.generate_seconds if self.generate_seconds else 0.0


@dataclass
class ContextShift:
    """When the context is full, drop half of the tokens after the first n_keep (llama.cpp's --context-shift)."""

    n_keep: int = 0

    def apply(self, model: Model, cache) -> int:
        """Shift the cache; returns how many positions were dropped."""
        n_past = cache.seq_len
        n_keep = min(self.n_keep, n_past - 1)
        n_discard = (n_past - n_keep) // 2
        if n_discard < 1:
            raise ContextFullError(f"context is full ({n_past} tokens) and --keep {self.n_keep} leaves nothing to drop")
        cache.discard(n_keep, n_keep + n_discard, rope_rotation(model))  # also drops those cache.tokens
        return n_discard


def rope_rotation(model: Model) -> Callable[[np.ndarray, int], np.ndarray]:
    """k (T, heads, D), delta -> k turned by delta positions (rope is a rotation: angles add up)."""
    from llamette.model.reference import rope

    freqs = getattr(model.net, "rope_freqs", None)
    cfg = model.config

    def rotate(k: np.ndarray, delta: int) -> np.ndarray:
        return rope(k.astype(np.float32), np.full(k.shape[0], delta), cfg, freqs)

    return rotate


def prefill(model: Model, cache, prompt_ids: Sequence[int], stats: GenerationStats, reuse: bool = False) -> np.ndarray:
    """Evaluate the prompt after what the cache holds; logits (n_vocab,) of its last token.

    reuse: the cache holds an earlier sequence whose tokens are `cache.tokens`; keep the common prefix and
    evaluate only the rest (at least the last token, for its logits)."""
    if not prompt_ids:
        raise LlametteError("the prompt is empty (and this model adds no BOS token): give some text")
    start = 0
    if reuse:
        start = reuse_point(cache.tokens, prompt_ids)
        cache.truncate(start)
    else:
        cache.clear()
    todo = list(prompt_ids[start:])
    if cache.seq_len + len(todo) > cache.n_ctx:
        raise ContextFullError(
            f"the prompt is {len(prompt_ids)} tokens, longer than the context of {cache.n_ctx} tokens "
            "(raise it with -c)"
        )
    t0 = time.perf_counter()
    logits = model.net.forward(todo, cache)[-1]
    cache.tokens = list(prompt_ids)
    stats.n_prompt, stats.n_reused = len(todo), start
    stats.prompt_seconds = time.perf_counter() - t0
    return logits


def reuse_point(held: Sequence[int], prompt: Sequence[int]) -> int:
    """How many leading prompt tokens to keep from a cache holding `held`: the common prefix, but at least the
    last two prompt tokens are evaluated again. A batch of 2+ tokens computes each token as the whole prompt's
    batch did (the batch kernels' columns do not depend on the batch size; tested for the legacy and float
    types), so the logits equal a fresh evaluation; one token alone would take the decode kernels."""
    return min(common_prefix(held, prompt), max(len(prompt) - 2, 0))


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def generate(
    model: Model,
    prompt_ids: Sequence[int],
    sampler: Sampler,
    max_tokens: int = -1,
    cache=None,
    stats: GenerationStats | None = None,
    context_shift: ContextShift | None = None,
    reuse_cache: bool = False,
    penalize_prompt: bool = False,
) -> Iterator[int]:
    """Yield generated token ids. Stops at an end-of-generation token (not yielded), after max_tokens
    (-1: no limit), or when the context is full (with context_shift: drops old tokens and goes on).
    A prompt that does not fit raises ContextFullError.

    reuse_cache: keep what the cache holds of the same prompt prefix (chat turns, repeated prompts).
    penalize_prompt: the repeat penalties also see the prompt (llama.cpp's CLI) rather than only the
    generated tokens (llama-cpp-python)."""
    stats = stats if stats is not None else GenerationStats()
    cache = cache if cache is not None else model.new_cache()
    logits = prefill(model, cache, prompt_ids, stats, reuse=reuse_cache)
    if penalize_prompt:
        for t in prompt_ids:
            sampler.accept(t)
    t0 = time.perf_counter()
    on_device = getattr(model.net, "device_greedy", False) and sampler.argmax_only and context_shift is None
    while True:
        if max_tokens >= 0 and stats.n_generated >= max_tokens:
            stats.stop_reason = "length"
            break
        token = sampler(logits)
        if model.tokenizer.is_eog(token):
            stats.stop_reason = "eog"
            break
        stats.n_generated += 1
        yield token
        if cache.seq_len >= cache.n_ctx:
            if context_shift is None:
                stats.stop_reason = "context"
                break
            context_shift.apply(model, cache)
            stats.n_shifts += 1
        if on_device:
            yield from _greedy_on_device(model, token, cache, sampler, max_tokens, stats, t0)
            return
        logits = model.net.forward([token], cache)[-1]
        cache.tokens.append(token)
        stats.generate_seconds = time.perf_counter() - t0  # current even if the consumer stops early
    stats.generate_seconds = time.perf_counter() - t0


def _greedy_on_device(
    model: Model, token: int, cache, sampler: Sampler, max_tokens: int, stats: GenerationStats, t0: float
) -> Iterator[int]:
    """The rest of a greedy generation after token (already yielded), the argmax taken on the device
    (model.net.greedy_tokens): the same tokens, cache and stop reasons as the loop in `generate`."""
    steps = model.net.greedy_tokens(token, cache)
    prev = token
    try:
        for nxt in steps:
            cache.tokens.append(prev)  # prev has been evaluated
            stats.generate_seconds = time.perf_counter() - t0
            if max_tokens >= 0 and stats.n_generated >= max_tokens:
                stats.stop_reason = "length"
                return
            sampler.accept(nxt)
            if model.tokenizer.is_eog(nxt):
                stats.stop_reason = "eog"
                return
            stats.n_generated += 1
            yield nxt
            prev = nxt
        stats.stop_reason = "context"  # the steps end when the cache is full
    finally:
        steps.close()  # takes the step evaluated ahead back out of the cache
        stats.generate_seconds = time.perf_counter() - t0


class TextStream:
    """Token ids in, text out: whole UTF-8 characters only, and stop strings held back.

    Text that could be the start of a stop string is kept until the next token shows it is not; when a stop
    string appears, the text before it is released and `stopped` names it. Nothing of a stop string is ever
    returned, however the tokens split it."""

    def __init__(self, decoder: StreamDecoder, stop: Sequence[str] = ()) -> None:
        self.decoder = decoder
        self.stop = [s for s in stop if s]
        self.stopped: str | None = None
        self._pending = ""

    def push(self, token: int) -> str:
        if self.stopped is not None:
            return ""
        self._pending += self.decoder.push(token)
        return self._release(final=False)

    def flush(self) -> str:
        if self.stopped is not None:
            return ""
        self._pending += self.decoder.flush()
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        text = self._pending
        hits = [(text.find(s), s) for s in self.stop if s in text]
        if hits:
            at, self.stopped = min(hits)
            self._pending = ""
            return text[:at]
        hold = 0 if final else max((_partial_suffix(text, s) for s in self.stop), default=0)
        self._pending = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold]


def _partial_suffix(text: str, stop: str) -> int:
    """Length of the longest end of text that is a proper start of stop."""
    for n in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0


def stream_text(
    model: Model,
    prompt_ids: Sequence[int],
    sampler: Sampler,
    max_tokens: int = -1,
    stop: Sequence[str] = (),
    cache=None,
    stats: GenerationStats | None = None,
    **options,
) -> Iterator[tuple[int, str]]:
    """Yield (token, text released by it) pairs; generation ends at a stop string (stop_reason "stop"),
    whose text and what follows it are never released. options: those of `generate`."""
    stats = stats if stats is not None else GenerationStats()
    text = TextStream(StreamDecoder(model.tokenizer), stop)
    for token in generate(model, prompt_ids, sampler, max_tokens, cache, stats, **options):
        delta = text.push(token)
        if text.stopped is not None:
            stats.stop_reason = "stop"
            if delta:
                yield token, delta
            return
        yield token, delta
    tail = text.flush()
    if text.stopped is not None:
        stats.stop_reason = "stop"
    if tail:
        yield -1, tail
