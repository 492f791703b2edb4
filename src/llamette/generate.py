"""The generation loop: prefill the prompt, then sample and decode one token at a time."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from llamette.cache import KVCache
from llamette.errors import ContextFullError, LlametteError
from llamette.loader import Model
from llamette.sampling import Sampler


@dataclass
class GenerationStats:
    n_prompt: int = 0
    n_generated: int = 0
    prompt_seconds: float = 0.0
    generate_seconds: float = 0.0
    stop_reason: str = ""  # "eog" (end-of-generation token), "length" (max tokens), "context" (n_ctx full)

    @property
    def prompt_tps(self) -> float:
        return self.n_prompt / self.prompt_seconds if self.prompt_seconds else 0.0

    @property
    def generate_tps(self) -> float:
        return self.n_generated / self.generate_seconds if self.generate_seconds else 0.0


def generate(
    model: Model,
    prompt_ids: Sequence[int],
    sampler: Sampler,
    max_tokens: int = -1,
    cache: KVCache | None = None,
    stats: GenerationStats | None = None,
) -> Iterator[int]:
    """Yield generated token ids. Stops at an end-of-generation token (not yielded), after max_tokens
    (-1: no limit), or when the context is full. A prompt that does not fit raises ContextFullError."""
    stats = stats if stats is not None else GenerationStats()
    cache = cache if cache is not None else model.new_cache()
    if not prompt_ids:
        raise LlametteError("the prompt is empty (and this model adds no BOS token): give some text")
    if cache.seq_len + len(prompt_ids) > cache.n_ctx:
        raise ContextFullError(
            f"the prompt is {len(prompt_ids)} tokens, longer than the context of {cache.n_ctx - cache.seq_len} "
            "(raise it with -c)"
        )
    t0 = time.perf_counter()
    logits = model.net.forward(prompt_ids, cache)[-1]
    stats.n_prompt, stats.prompt_seconds = len(prompt_ids), time.perf_counter() - t0
    t0 = time.perf_counter()
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
            stats.stop_reason = "context"
            break
        logits = model.net.forward([token], cache)[-1]
        stats.generate_seconds = time.perf_counter() - t0  # current even if the consumer stops early
    stats.generate_seconds = time.perf_counter() - t0
