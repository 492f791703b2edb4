"""Perplexity of a text, with llama-perplexity's procedure (tools/perplexity/perplexity.cpp, perplexity()).

The text is tokenized once (with BOS if the model adds one, special tokens not parsed) and cut into
chunks of n_ctx tokens. Each chunk runs on its own from position 0 (its first token replaced by BOS when
the model uses one); only the second half of each chunk is scored, the first half being context.
PPL = exp(mean negative log-likelihood).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from llamette.errors import LlametteError
from llamette.loader import Model


@dataclass
class PerplexityResult:
    ppl: float
    ppl_error: float  # +/- one standard error, as llama-perplexity prints it
    n_ctx: int
    n_chunks: int
    n_scored: int  # tokens whose likelihood entered the estimate
    running: list[float] = field(default_factory=list)  # the estimate after each chunk


def token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Negative log-likelihood of targets (N,) under logits (N, n_vocab), in float64."""
    x = logits.astype(np.float64)
    peak = x.max(axis=-1, keepdims=True)
    log_z = np.log(np.exp(x - peak).sum(axis=-1)) + peak[:, 0]
    return log_z - x[np.arange(len(targets)), targets]


def perplexity(
    model: Model,
    tokens: Sequence[int],
    n_ctx: int,
    n_chunks: int = -1,
    on_chunk: Callable[[int, int, float], None] | None = None,
) -> PerplexityResult:
    """Perplexity over up to n_chunks chunks (-1: all); on_chunk(i, n_chunks, running_ppl) after each."""
    tokens = np.asarray(tokens, dtype=np.int64)
    if n_ctx < 4:
        raise LlametteError(f"context size {n_ctx} is too small for perplexity (use -c 128 or more)")
    if len(tokens) < 2 * n_ctx:
        raise LlametteError(
            f"you need at least {2 * n_ctx} tokens to evaluate perplexity with a context of {n_ctx}; "
            f"the text gives only {len(tokens)}"
        )
    n_chunk_max = len(tokens) // n_ctx
    n_chunk = n_chunk_max if n_chunks < 0 else min(n_chunks, n_chunk_max)
    first = n_ctx // 2
    bos = model.tokenizer.bos if model.tokenizer.add_bos else None
    nll_sum = nll2_sum = 0.0
    count = 0
    running = []
    for i in range(n_chunk):
        chunk = tokens[i * n_ctx : (i + 1) * n_ctx].copy()
        if bos is not None:
            chunk[0] = bos
        logits = model.net.forward(chunk, model.new_cache(n_ctx), all_logits=True)  # (n_ctx, n_vocab)
        # the logits at position j predict token j + 1 of the original text
        nll = token_nll(logits[first : n_ctx - 1], tokens[i * n_ctx + first + 1 : (i + 1) * n_ctx])
        nll_sum += float(nll.sum())
        nll2_sum += float((nll * nll).sum())
        count += len(nll)
        running.append(math.exp(nll_sum / count))
        if on_chunk is not None:
            on_chunk(i, n_chunk, running[-1])
    mean = nll_sum / count
    var = nll2_sum / count - mean * mean
    ppl = math.exp(mean)
    err = math.sqrt(var / (count - 1)) * ppl if var > 0 and count > 1 else 0.0
    return PerplexityResult(ppl, err, n_ctx, n_chunk, count, running)
