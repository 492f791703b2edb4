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


def chunk_count(tokens: np.ndarray, n_ctx: int, n_chunks: int) -> int:
    """How many chunks perplexity evaluates (up to n_chunks, -1: all), after checking there are enough tokens."""
    if n_ctx < 4:
        raise LlametteError(f"context size {n_ctx} is too small for perplexity (use -c 128 or more)")
    if len(tokens) < 2 * n_ctx:
        raise LlametteError(
            f"you need at least {2 * n_ctx} tokens to evaluate perplexity with a context of {n_ctx}; "
            f"the text gives only {len(tokens)}"
        )
    n_chunk_max = len(tokens) // n_ctx
    return n_chunk_max if n_chunks < 0 else min(n_chunks, n_chunk_max)


def _chunks(model: Model, tokens: np.ndarray, n_ctx: int, n_chunk: int):
    """(chunk index, logits (n_ctx, n_vocab), the tokens the scored rows predict) for each chunk."""
    bos = model.tokenizer.bos if model.tokenizer.add_bos else None
    first = n_ctx // 2
    for i in range(n_chunk):
        chunk = tokens[i * n_ctx : (i + 1) * n_ctx].copy()
        if bos is not None:
            chunk[0] = bos
        logits = model.net.forward(chunk, model.new_cache(n_ctx), all_logits=True)
        yield i, logits[first : n_ctx - 1], tokens[i * n_ctx + first + 1 : (i + 1) * n_ctx]


def perplexity(
    model: Model,
    tokens: Sequence[int],
    n_ctx: int,
    n_chunks: int = -1,
    on_chunk: Callable[[int, int, float], None] | None = None,
    on_logits: Callable[[np.ndarray], None] | None = None,
) -> PerplexityResult:
    """Perplexity over up to n_chunks chunks (-1: all); on_chunk(i, n_chunks, running_ppl) after each;
    on_logits(logits (scored rows, n_vocab)) gets each chunk's scored logits."""
    tokens = np.asarray(tokens, dtype=np.int64)
    n_chunk = chunk_count(tokens, n_ctx, n_chunks)
    nll_sum = nll2_sum = 0.0
    count = 0
    running = []
    for i, logits, targets in _chunks(model, tokens, n_ctx, n_chunk):
        if on_logits is not None:
            on_logits(logits)
        nll = token_nll(logits, targets)
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


# -- KL divergence against a base model's saved log-probabilities (llama-perplexity's file format) ------------

LOGITS_MAGIC = b"_logits_"


def quantized_log_probs(logits: np.ndarray) -> np.ndarray:
    """llama-perplexity's stored row per token: (scale, min log-prob) as 2 floats, then each token's log-prob
    as uint16 over the top 16 nats -> (N, 4 + n_vocab rounded up to even) uint16."""
    x = logits.astype(np.float32)
    n, n_vocab = x.shape
    max_l = x.max(axis=1)
    min_l = np.maximum(x.min(axis=1), max_l - np.float32(16))
    sum_exp = np.exp((x - max_l[:, None]).astype(np.float32)).astype(np.float64).sum(axis=1)
    log_sum_exp = np.log(sum_exp).astype(np.float32)
    min_log_prob = (min_l - max_l - log_sum_exp).astype(np.float32)
    scale = ((max_l - min_l) / np.float32(65535)).astype(np.float32)
    nv = 2 * ((n_vocab + 1) // 2) + 4
    out = np.zeros((n, nv), np.uint16)
    head = np.stack([scale, min_log_prob], axis=1).astype(np.float32)
    out[:, :4] = head.view(np.uint16)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(scale > 0, np.float32(1) / scale, np.float32(0)).astype(np.float32)
        q = np.rint(inv[:, None] * (x - min_l[:, None]))
    q = np.where((x > min_l[:, None]) & (scale[:, None] > 0), q, 0)
    out[:, 4 : 4 + n_vocab] = np.clip(q, 0, 65535).astype(np.uint16)
    return out


def dequantized_log_probs(rows: np.ndarray, n_vocab: int) -> np.ndarray:
    """The inverse of quantized_log_probs: (N, nv) uint16 -> (N, n_vocab) float32 log-probabilities."""
    head = np.ascontiguousarray(rows[:, :4]).view(np.float32)  # (N, 2): scale, min log-prob
    return head[:, :1] * rows[:, 4 : 4 + n_vocab].astype(np.float32) + head[:, 1:2]


@dataclass
class KLDResult:
    n: int
    ppl: float
    ppl_error: float
    ppl_base: float
    ppl_base_error: float
    ln_ratio: float
    ln_ratio_error: float
    kld_mean: float
    kld_error: float
    kld_values: np.ndarray
    p_diff_values: np.ndarray
    same_top: float

    def report(self) -> str:
        def pct(v: np.ndarray, f: float) -> float:
            p = f * (len(v) - 1)
            i = int(p)
            return float((1 - (p - i)) * v[i] + (p - i) * v[min(i + 1, len(v) - 1)])

        k, d = np.sort(self.kld_values), np.sort(self.p_diff_values)
        lines = [
            "====== Perplexity statistics ======",
            f"Mean PPL(Q)                   : {self.ppl:10.6f} ± {self.ppl_error:10.6f}",
            f"Mean PPL(base)                : {self.ppl_base:10.6f} ± {self.ppl_base_error:10.6f}",
            f"Mean ln(PPL(Q)/PPL(base))     : {self.ln_ratio:10.6f} ± {self.ln_ratio_error:10.6f}",
            f"Mean PPL(Q)/PPL(base)         : {math.exp(self.ln_ratio):10.6f} ± "
            f"{math.exp(self.ln_ratio) * self.ln_ratio_error:10.6f}",
            "",
            "====== KL divergence statistics ======",
            f"Mean    KLD: {self.kld_mean:10.6f} ± {self.kld_error:10.6f}",
            f"Maximum KLD: {k[-1]:10.6f}",
            f"99.9%   KLD: {pct(k, 0.999):10.6f}",
            f"99.0%   KLD: {pct(k, 0.99):10.6f}",
            f"Median  KLD: {float(np.median(k)):10.6f}",
            f"Minimum KLD: {k[0]:10.6f}",
            "",
            "====== Token probability statistics ======",
            f"Mean    Δp: {100 * float(d.mean()):6.3f} %",
            f"Maximum Δp: {100 * d[-1]:6.3f}%",
            f"Median  Δp: {100 * float(np.median(d)):6.3f}%",
            f"Minimum Δp: {100 * d[0]:6.3f}%",
            f"RMS Δp    : {100 * math.sqrt(float((d * d).mean())):6.3f} %",
            f"Same top p: {100 * self.same_top:6.3f} ± "
            f"{100 * math.sqrt(self.same_top * (1 - self.same_top) / max(self.n - 1, 1)):5.3f} %",
        ]
        return "\n".join(lines) + "\n"


def save_base_logits(
    model: Model,
    tokens: Sequence[int],
    n_ctx: int,
    path,
    n_chunks: int = -1,
    on_chunk: Callable[[int, int, float], None] | None = None,
) -> PerplexityResult:
    """Perplexity as perplexity(), also writing every scored token's log-probabilities to path in
    llama-perplexity's --kl-divergence-base format (readable by both tools)."""
    import os
    import tempfile
    from pathlib import Path

    tokens = np.asarray(tokens, dtype=np.int64)
    n_chunk = chunk_count(tokens, n_ctx, n_chunks)
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(LOGITS_MAGIC)
            f.write(np.array([n_ctx], np.uint32).tobytes())
            f.write(np.array([model.config.n_vocab, n_chunk], np.int32).tobytes())
            f.write(tokens[: n_chunk * n_ctx].astype(np.int32).tobytes())
            result = perplexity(model, tokens, n_ctx, n_chunk, on_chunk,
                                on_logits=lambda logits: f.write(quantized_log_probs(logits).tobytes()))  # fmt: skip
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return result


def read_base_header(path) -> tuple[int, int, int, np.ndarray, int]:
    """(n_ctx, n_vocab, n_chunk, tokens, offset of the log-prob rows) of a --kl-divergence-base file."""
    from pathlib import Path

    path = Path(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(8)
            if magic != LOGITS_MAGIC:
                raise LlametteError(f"{path}: not a logits file from --kl-divergence-base (bad magic {magic!r})")
            n_ctx = int(np.frombuffer(f.read(4), np.uint32)[0])
            n_vocab, n_chunk = (int(v) for v in np.frombuffer(f.read(8), np.int32))
    except (OSError, IndexError, ValueError) as e:
        raise LlametteError(f"{path}: cannot read the logits file header: {e}") from None
    if not (4 <= n_ctx <= 1 << 20 and 0 < n_vocab <= 1 << 22 and 0 < n_chunk <= 1 << 20):
        raise LlametteError(f"{path}: implausible header (n_ctx {n_ctx}, n_vocab {n_vocab}, n_chunk {n_chunk})")
    nv = 2 * ((n_vocab + 1) // 2) + 4
    offset = 20 + 4 * n_ctx * n_chunk
    need = offset + 2 * nv * (n_ctx - 1 - n_ctx // 2) * n_chunk
    if path.stat().st_size < need:
        raise LlametteError(f"{path}: truncated: {path.stat().st_size} bytes, the header promises {need}")
    tokens = np.fromfile(path, np.int32, count=n_ctx * n_chunk, offset=20).astype(np.int64)
    return n_ctx, n_vocab, n_chunk, tokens, offset


def kl_divergence(
    model: Model, base_path, n_chunks: int = -1, on_chunk: Callable[[int, int, float], None] | None = None
) -> KLDResult:
    """Compare model with the base whose log-probabilities are in base_path (llama-perplexity --kl-divergence)."""
    n_ctx, n_vocab, n_chunk, tokens, offset = read_base_header(base_path)
    if n_vocab != model.config.n_vocab:
        raise LlametteError(f"{base_path}: vocabulary of {n_vocab} tokens, the model has {model.config.n_vocab}")
    n_chunk = n_chunk if n_chunks < 0 else min(n_chunks, n_chunk)
    nv = 2 * ((n_vocab + 1) // 2) + 4
    n_rows = n_ctx - 1 - n_ctx // 2
    rows_all = np.memmap(base_path, np.uint16, "r", offset=offset, shape=(n_chunk * n_rows, nv))
    nll, nll_base, kld, p_diff, same = [], [], [], [], 0
    for i, logits, targets in _chunks(model, tokens, n_ctx, n_chunk):
        base = dequantized_log_probs(np.asarray(rows_all[i * n_rows : (i + 1) * n_rows]), n_vocab)  # (R, V)
        x = logits.astype(np.float64)
        logp = x - x.max(axis=1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
        r = np.arange(len(targets))
        nll.append(-logp[r, targets])
        nll_base.append(-base[r, targets].astype(np.float64))
        keep = base > -16  # llama.cpp skips base probabilities below e^-16
        pb = np.where(keep, np.exp(base.astype(np.float64)), 0.0)
        kld.append((pb * (base - logp)).sum(axis=1))
        p_diff.append(np.exp(-nll[-1]) - np.exp(-nll_base[-1]))
        same += int((logits.argmax(axis=1) == base.argmax(axis=1)).sum())
        if on_chunk is not None:
            on_chunk(i, n_chunk, float(np.concatenate(kld).mean()))
    nll_a, base_a, kld_a = np.concatenate(nll), np.concatenate(nll_base), np.concatenate(kld)
    n = len(nll_a)

    def mean_err(v: np.ndarray) -> tuple[float, float]:
        return float(v.mean()), float(v.std() / math.sqrt(max(n - 1, 1)))

    (m, e), (mb, eb) = mean_err(nll_a), mean_err(base_a)
    cov = float(((nll_a - m) * (base_a - mb)).mean()) / max(n - 1, 1)
    ln_err = math.sqrt(max(e * e + eb * eb - 2 * cov, 0.0))
    kmean, kerr = mean_err(kld_a)
    return KLDResult(n, math.exp(m), math.exp(m) * e, math.exp(mb), math.exp(mb) * eb, m - mb, ln_err, kmean, kerr,
                     kld_a, np.concatenate(p_diff), same / n)  # fmt: skip
