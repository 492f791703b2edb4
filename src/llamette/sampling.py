"""The sampler chain: logits -> one token, with llama.cpp's samplers, order, defaults and arithmetic.

Order (llama.cpp's common_sampler): logit bias -> penalties -> top-k -> typical -> top-p -> min-p ->
temperature -> dist; or, with mirostat, logit bias -> penalties -> temperature -> mirostat (v1 or v2).
Temperature <= 0 is greedy: the first token with the largest logit after bias and penalties.

Each step works on `Candidates` (token ids, float32 logits and probabilities, a sorted flag) exactly as
llama.cpp's step works on its llama_token_data_array: same float32 operations, same order of the kept
tokens, and the same random numbers (std::mt19937 seeded like llama.cpp, std::uniform_real_distribution
and std::discrete_distribution as libstdc++ draws them). So a seed gives llama.cpp's tokens when the
logits are llama.cpp's (ties in sorting aside: we keep ties in token order, C++'s sort does not promise any).
"""

from __future__ import annotations

import functools
import math
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace

import numpy as np

from llamette.errors import LlametteError

RANDOM_SEED = -1  # llama.cpp's LLAMA_DEFAULT_SEED (0xFFFFFFFF): a fresh random seed
_UINT32 = 2**32


# -- parameters --------------------------------------------------------------------------------------------


@dataclass
class SamplingParams:
    """Sampler settings with llama.cpp's defaults (common_params_sampling)."""

    temperature: float = 0.8  # <= 0: greedy
    top_k: int = 40  # <= 0: the whole vocabulary
    top_p: float = 0.95  # 1.0: off
    min_p: float = 0.05  # 0.0: off
    typical_p: float = 1.0  # 1.0: off
    repeat_penalty: float = 1.0  # 1.0: off
    repeat_last_n: int = 64  # tokens of history the penalties look at; 0: off (-1 = the context: set by caller)
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    mirostat: int = 0  # 0 off, 1 mirostat, 2 mirostat 2.0
    mirostat_tau: float = 5.0  # target entropy (--mirostat-ent)
    mirostat_eta: float = 0.1  # learning rate (--mirostat-lr)
    logit_bias: Mapping[int, float] = field(default_factory=dict)  # token id -> added to its logit (-inf bans)
    seed: int = RANDOM_SEED
    min_keep: int = 0  # top-p / min-p / typical keep at least this many tokens
    n_probs: int = 0  # report the top n_probs candidates of each step (after the chain)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    def validate(self, n_vocab: int | None = None) -> SamplingParams:
        """Raise LlametteError naming the first setting outside its range; returns self."""
        checks = [
            ("top_p", 0.0 <= self.top_p <= 1.0, "between 0 and 1"),
            ("min_p", 0.0 <= self.min_p <= 1.0, "between 0 and 1"),
            ("typical_p", 0.0 <= self.typical_p <= 1.0, "between 0 and 1"),
            ("repeat_penalty", self.repeat_penalty > 0, "greater than 0"),
            ("repeat_last_n", self.repeat_last_n >= -1, "-1 (the context), 0 (off) or a count"),
            ("mirostat", self.mirostat in (0, 1, 2), "0, 1 or 2"),
            ("mirostat_eta", self.mirostat_eta >= 0, "0 or more"),
            ("min_keep", self.min_keep >= 0, "0 or more"),
            ("n_probs", self.n_probs >= 0, "0 or more"),
            ("seed", -1 <= self.seed < _UINT32, "-1 (random) or 0 .. 2^32-1"),
        ]
        for name in ("temperature", "top_p", "min_p", "typical_p", "repeat_penalty", "frequency_penalty",
                     "presence_penalty", "mirostat_tau", "mirostat_eta"):  # fmt: skip
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or math.isnan(value):
                raise LlametteError(f"sampling: {name} must be a number, got {value!r}")
        for name, ok, expected in checks:
            if not ok:
                raise LlametteError(f"sampling: {name} must be {expected}, got {getattr(self, name)!r}")
        for token, bias in self.logit_bias.items():
            if not isinstance(token, (int, np.integer)) or token < 0 or (n_vocab is not None and token >= n_vocab):
                limit = f" (the model has {n_vocab} tokens)" if n_vocab is not None else ""
                raise LlametteError(f"sampling: logit_bias token {token!r} is not a token id{limit}")
            if not isinstance(bias, (int, float)) or math.isnan(bias):
                raise LlametteError(f"sampling: logit_bias for token {token} must be a number, got {bias!r}")
        return self

    def updated(self, **changes) -> SamplingParams:
        """A copy with the given settings changed; None values are ignored (keep the current one)."""
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise LlametteError(f"sampling: unknown setting(s) {', '.join(sorted(unknown))}")
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


# -- random numbers as llama.cpp draws them ----------------------------------------------------------------


class Mt19937:
    """std::mt19937 seeded with a 32-bit seed, and the two libstdc++ distributions llama.cpp samples with."""

    def __init__(self, seed: int) -> None:
        self._bits = np.random.MT19937()
        self._bits._legacy_seeding(seed)  # init_genrand(seed): the same state as std::mt19937(seed)

    def canonical(self) -> float:
        """std::generate_canonical<double, 53>: two 32-bit draws, low word first, in [0, 1)."""
        lo, hi = (float(x) for x in self._bits.random_raw(2))
        u = (lo + hi * 4294967296.0) / 18446744073709551616.0
        return u if u < 1.0 else math.nextafter(1.0, 0.0)

    def discrete(self, weights: np.ndarray) -> int:
        """std::discrete_distribution<int>(weights)(rng): lower_bound of u in the normalised cumulative sums."""
        w = weights.astype(np.float64)
        cp = np.cumsum(w / w.sum())
        cp[-1] = 1.0
        return int(np.searchsorted(cp, self.canonical(), side="left"))

    def state(self) -> dict:
        return self._bits.state

    def set_state(self, state: dict) -> None:
        self._bits.state = state


def resolve_seed(seed: int) -> int:
    """-1 -> a fresh random 32-bit seed; anything else as given."""
    return int(np.random.SeedSequence().entropy % _UINT32) if seed == RANDOM_SEED else int(seed)


# -- candidates and the sampling steps ---------------------------------------------------------------------


@dataclass
class Candidates:
    """llama_token_data_array: ids (n,) int32, logits (n,) float32, p (n,) float32, and whether the
    entries are sorted by logit, largest first."""

    ids: np.ndarray
    logits: np.ndarray
    p: np.ndarray
    sorted: bool = False
    in_id_order: bool = False  # entry i is token i (the whole vocabulary, untouched): lookups by index

    @classmethod
    def from_logits(cls, logits: np.ndarray) -> Candidates:
        logits = np.array(logits, dtype=np.float32).reshape(-1)
        ids, p = _identity(len(logits))
        return cls(ids, logits, p, in_id_order=True)

    def __len__(self) -> int:
        return len(self.ids)

    def keep(self, index: np.ndarray | slice, sorted_: bool | None = None) -> None:
        self.ids, self.logits, self.p = self.ids[index], self.logits[index], self.p[index]
        self.in_id_order = False
        if sorted_ is not None:
            self.sorted = sorted_


@functools.lru_cache(maxsize=4)
def _identity(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Shared read-only ids 0..n-1 and zero probabilities (steps replace these arrays, never write them)."""
    ids, p = np.arange(n, dtype=np.int32), np.zeros(n, np.float32)
    ids.flags.writeable = p.flags.writeable = False
    return ids, p


def _f32(x: float) -> np.float32:
    return np.float32(x)


def sort_desc(c: Candidates, n: int | None = None) -> None:
    """Keep the n largest logits (all when None), sorted largest first; ties stay in their current order."""
    size = len(c)
    n = size if n is None else min(n, size)
    if c.sorted:
        c.keep(slice(0, n))
        return
    if n < size // 4:  # partial selection first, as llama.cpp's bucket sort avoids sorting the whole vocabulary
        part = np.argpartition(c.logits, size - n)[size - n :]
        # argpartition breaks ties at the boundary arbitrarily: take the k-th value's ties in index order
        kth = c.logits[part].min()
        above = np.flatnonzero(c.logits > kth)
        ties = np.flatnonzero(c.logits == kth)[: n - len(above)]
        part = np.concatenate([above, ties])
        part = np.sort(part)  # index order, so the stable sort keeps ties in their current order
        order = part[np.argsort(-c.logits[part], kind="stable")]
    else:
        order = np.argsort(-c.logits, kind="stable")[:n]
    c.keep(order, sorted_=True)


def softmax(c: Candidates, do_sort: bool) -> None:
    """llama_sampler_softmax_impl: p = exp(logit - max) / sum, float32, summed in order."""
    if do_sort and not c.sorted:
        sort_desc(c)
    max_l = c.logits[0] if c.sorted else c.logits.max()
    p = np.exp(c.logits - max_l, dtype=np.float32)
    c.p = p / np.cumsum(p, dtype=np.float32)[-1]


def apply_logit_bias(c: Candidates, bias: Mapping[int, float]) -> None:
    for token, b in bias.items():
        hit = [token] if c.in_id_order and token < len(c) else np.flatnonzero(c.ids == token)
        c.logits[hit] += _f32(b)


def apply_penalties(c: Candidates, counts: Mapping[int, int], repeat: float, freq: float, present: float) -> None:
    """Repeat penalty (divide positive logits, multiply negative ones) then frequency and presence."""
    if not counts:
        return
    tokens = np.fromiter(counts.keys(), np.int64, len(counts))
    n = np.fromiter(counts.values(), np.float32, len(counts))
    if c.in_id_order:
        found = tokens < len(c)
        where, n = tokens[found], n[found]
    else:
        pos = {int(t): i for i, t in enumerate(c.ids)}
        keep = [(pos[int(t)], k) for t, k in zip(tokens, n, strict=True) if int(t) in pos]
        where = np.array([w for w, _ in keep], np.int64)
        n = np.array([k for _, k in keep], np.float32)
    logit = c.logits[where]
    logit = np.where(logit <= 0, logit * _f32(repeat), logit / _f32(repeat)).astype(np.float32)
    logit -= n * _f32(freq) + np.float32(1.0) * _f32(present)
    c.logits[where] = logit
    c.sorted = False


def top_k(c: Candidates, k: int) -> None:
    if k <= 0:
        return
    sort_desc(c, k)


def typical(c: Candidates, p: float, min_keep: int) -> None:
    if p >= 1.0:
        return
    softmax(c, do_sort=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        logp = np.log(c.p)
        terms = np.where(c.p > 0, -c.p * logp, np.float32(0)).astype(np.float32)
        entropy = np.cumsum(terms, dtype=np.float32)[-1]
        shifted = np.abs(-logp - entropy).astype(np.float32)
    order = np.argsort(shifted, kind="stable")
    cum = np.cumsum(c.p[order], dtype=np.float32)
    last = len(order)
    for i, s in enumerate(cum):
        if s > _f32(p) and (min_keep == 0 or i >= min_keep - 1):
            last = i + 1
            break
    c.keep(order[:last], sorted_=False)


def top_p(c: Candidates, p: float, min_keep: int) -> None:
    if p >= 1.0:
        return
    softmax(c, do_sort=False)
    if not c.sorted:
        sort_desc(c)
    cum = np.cumsum(c.p, dtype=np.float32)
    reached = np.flatnonzero((cum >= _f32(p)) & (np.arange(1, len(c) + 1) >= min_keep))
    last = int(reached[0]) + 1 if len(reached) else len(c)
    c.keep(slice(0, last))


def min_p(c: Candidates, p: float, min_keep: int) -> None:
    if p <= 0.0 or not len(c):
        return
    if not c.sorted:
        min_logit = c.logits.max() + _f32(math.log(p))  # logf(p) in float, added in float
        kept = np.flatnonzero(c.logits >= np.float32(min_logit))
        if len(kept) and len(kept) >= min_keep:
            c.keep(kept)  # the unsorted path keeps the current order
            return
        sort_desc(c)
    min_logit = np.float32(c.logits[0] + _f32(math.log(p)))
    small = np.flatnonzero((c.logits < min_logit) & (np.arange(len(c)) >= max(min_keep, 1)))
    c.keep(slice(0, int(small[0]) if len(small) else len(c)))


def temperature(c: Candidates, temp: float) -> None:
    if temp <= 0:  # keep only the first largest logit
        best = int(np.argmax(c.logits))
        rest = np.ones(len(c), bool)
        rest[best] = False
        c.logits[rest] = -np.inf
        return
    c.logits = (c.logits / _f32(temp)).astype(np.float32)


def dist(c: Candidates, rng: Mt19937) -> int:
    """llama_sampler_dist: softmax (double sum of float terms), one uniform draw, first cumulative >= target."""
    if len(c) == 1:
        rng.canonical()  # llama.cpp draws once even then, keeping the stream aligned
        c.p = np.ones(1, np.float32)
        return 0
    max_l = c.logits[0] if c.sorted else c.logits.max()
    p = np.exp(c.logits - max_l, dtype=np.float32)
    cum = np.cumsum(p.astype(np.float64))
    total = cum[-1]
    target = total * rng.canonical()
    c.p = (p / total).astype(np.float32)
    hit = int(np.searchsorted(cum, target, side="left"))
    return min(hit, len(c) - 1)


def mirostat_v1(c: Candidates, state: MirostatState, rng: Mt19937, n_vocab: int, m: int = 100) -> int:
    softmax(c, do_sort=True)
    n = min(m - 1, len(c) - 1)
    i = np.arange(n, dtype=np.float32)
    t = np.log((i + 2) / (i + 1)).astype(np.float32)
    b = np.log(c.p[:n] / c.p[1 : n + 1]).astype(np.float32)
    sum_tb = np.cumsum(t * b, dtype=np.float32)[-1] if n else np.float32(0)
    sum_tt = np.cumsum(t * t, dtype=np.float32)[-1] if n else np.float32(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        s_hat = np.float32(sum_tb / sum_tt)
        eps = np.float32(s_hat - 1)
        k = np.float32(
            np.power(np.float32(eps * np.power(np.float32(2), state.mu)) / (1 - np.power(np.float32(n_vocab), -eps)),
                     np.float32(1) / s_hat)
        )  # fmt: skip
    k_int = int(k) if np.isfinite(k) and k < 2**31 else (2**31 - 1 if k > 0 else 1)
    sort_desc(c, max(k_int, 1))
    softmax(c, do_sort=True)
    idx = rng.discrete(c.p)
    state.update(c.p[idx])
    return idx


def mirostat_v2(c: Candidates, state: MirostatState, rng: Mt19937) -> int:
    softmax(c, do_sort=True)
    with np.errstate(divide="ignore"):
        surprise = -np.log2(c.p)
    over = np.flatnonzero(surprise > state.mu)
    c.keep(slice(0, max(int(over[0]) if len(over) else len(c), 1)))
    softmax(c, do_sort=True)
    idx = rng.discrete(c.p)
    state.update(c.p[idx])
    return idx


@dataclass
class MirostatState:
    """mu, the running surprise budget: starts at 2 tau, moves by eta x (observed surprise - tau)."""

    tau: float
    eta: float
    mu: np.float32 = np.float32(0)

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.mu = np.float32(2.0 * self.tau)

    def update(self, p: float) -> None:
        observed = np.float32(-np.log2(np.float32(p)))
        self.mu = np.float32(self.mu - _f32(self.eta) * np.float32(observed - _f32(self.tau)))


# -- the chain ---------------------------------------------------------------------------------------------


@dataclass
class TokenProbs:
    """What a step saw: the chosen token and the top candidates with their probabilities after the chain."""

    token: int
    top: list[tuple[int, float]]


class Sampler:
    """The sampler chain with its state (penalty history, mirostat mu, random numbers).

    sampler(logits) picks a token and records it in the history (as llama_sampler_sample does);
    accept(token) records tokens that were not sampled (e.g. the prompt, so penalties see it).
    """

    def __init__(
        self,
        temperature: float | None = None,
        seed: int | None = None,
        params: SamplingParams | None = None,
        n_vocab: int | None = None,
        **settings,
    ) -> None:
        params = params if params is not None else SamplingParams()
        params = params.updated(temperature=temperature, **settings)
        if seed is not None:
            params = replace(params, seed=seed)
        self.params = params.validate(n_vocab)
        self.n_vocab = n_vocab
        self.seed = resolve_seed(params.seed)
        self.last: TokenProbs | None = None
        bias = self.params.logit_bias
        self._bias_ids = np.fromiter((int(t) for t in bias), np.int64, len(bias))
        self._bias_vals = np.fromiter((float(v) for v in bias.values()), np.float32, len(bias))
        self.reset()

    @property
    def greedy(self) -> bool:
        return self.params.greedy

    @property
    def penalizes(self) -> bool:
        s = self.params
        return s.repeat_last_n != 0 and (s.repeat_penalty != 1.0 or bool(s.frequency_penalty or s.presence_penalty))

    @property
    def argmax_only(self) -> bool:
        """The token is the logits' argmax: greedy, no bias or penalties, no probabilities to report (so a
        backend may pick it on its device)."""
        s = self.params
        return s.greedy and not self.penalizes and not s.n_probs and not len(self._bias_ids)

    def reset(self) -> None:
        """Back to the start: empty history, mirostat mu = 2 tau, the random stream from the seed."""
        self._rng = Mt19937(self.seed)
        self._history: deque[int] = deque()
        self._counts: Counter[int] = Counter()
        self._mirostat = MirostatState(self.params.mirostat_tau, self.params.mirostat_eta)

    def accept(self, token: int) -> None:
        last_n = self.params.repeat_last_n
        if last_n == 0:
            return
        self._counts[token] += 1
        if last_n > 0 and len(self._history) >= last_n:
            old = self._history.popleft()
            self._counts[old] -= 1
            if not self._counts[old]:
                del self._counts[old]
        self._history.append(token)

    def __call__(self, logits: np.ndarray) -> int:
        token = self.sample(logits)
        self.accept(token)
        return token

    def sample(self, logits: np.ndarray) -> int:
        """logits (n_vocab,) -> token id, without recording it."""
        s = self.params
        penalize = self.penalizes
        if s.greedy and not penalize and not s.n_probs:  # the common serving case, without building candidates
            if not len(self._bias_ids):
                return int(np.argmax(logits))
            x = np.array(logits, dtype=np.float32).reshape(-1)
            ok = self._bias_ids < len(x)
            x[self._bias_ids[ok]] += self._bias_vals[ok]
            return int(np.argmax(x))
        c = Candidates.from_logits(logits)
        if s.logit_bias:
            apply_logit_bias(c, s.logit_bias)
        if penalize:
            apply_penalties(c, self._counts, s.repeat_penalty, s.frequency_penalty, s.presence_penalty)
        if s.greedy:
            idx = int(np.argmax(c.logits))
        elif s.mirostat:
            temperature(c, s.temperature)
            if s.mirostat == 1:
                idx = mirostat_v1(c, self._mirostat, self._rng, self.n_vocab or len(logits))
            else:
                idx = mirostat_v2(c, self._mirostat, self._rng)
        else:
            top_k(c, s.top_k)
            typical(c, s.typical_p, s.min_keep)
            top_p(c, s.top_p, s.min_keep)
            min_p(c, s.min_p, s.min_keep)
            temperature(c, s.temperature)
            idx = dist(c, self._rng)
        token = int(c.ids[idx])
        if s.n_probs:
            self.last = TokenProbs(token, self._top_probs(c, s.n_probs))
        return token

    @staticmethod
    def _top_probs(c: Candidates, n: int) -> list[tuple[int, float]]:
        if not c.p.any():  # greedy: probabilities of what is left, for reporting
            softmax(c, do_sort=True)
        order = np.argsort(-c.p, kind="stable")[:n]
        return [(int(c.ids[i]), float(c.p[i])) for i in order]

    def state(self) -> dict:
        """Everything needed to continue the same stream later (for save_state / load_state)."""
        return {
            "rng": self._rng.state(),
            "history": list(self._history),
            "mu": float(self._mirostat.mu),
        }

    def set_state(self, state: dict) -> None:
        self.reset()
        self._rng.set_state(state["rng"])
        for t in state["history"]:
            self.accept(int(t))
        self._mirostat.mu = np.float32(state["mu"])


def token_logprobs(tok, logits: np.ndarray, token: int, n: int) -> dict:
    """The chosen token's log-probability under the raw logits (n_vocab,), and the n most likely tokens':
    {"id", "token" (its text), "logprob", "top": [{"id", "token", "logprob"}, ...]} (what logprobs report)."""
    x = logits.astype(np.float64)
    logp = x - x.max()
    logp -= np.log(np.exp(logp).sum())
    best = np.argpartition(-logp, min(n, len(logp) - 1))[:n]
    best = best[np.argsort(-logp[best], kind="stable")]

    def piece(t: int) -> str:
        return tok.token_to_piece(int(t)).decode("utf-8", "replace")

    return {
        "id": int(token),
        "token": piece(token),
        "logprob": float(logp[token]),
        "top": [{"id": int(t), "token": piece(t), "logprob": float(logp[t])} for t in best],
    }
