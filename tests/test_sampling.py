"""The sampler chain on hand-made logits, against values worked out by hand (in the comments)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llamette.errors import LlametteError
from llamette.sampling import (
    Candidates,
    MirostatState,
    Mt19937,
    Sampler,
    SamplingParams,
    apply_logit_bias,
    apply_penalties,
    dist,
    min_p,
    mirostat_v1,
    mirostat_v2,
    softmax,
    temperature,
    top_k,
    top_p,
    typical,
)

HALVES = np.log(np.array([0.5, 0.25, 0.125, 0.125], np.float32))  # p = 1/2, 1/4, 1/8, 1/8


class FixedDraws(Mt19937):
    """A generator whose uniform draws are given: the selection rules become checkable by hand."""

    def __init__(self, *draws: float) -> None:
        self.draws = list(draws)

    def canonical(self) -> float:
        return self.draws.pop(0)


def cand(logits) -> Candidates:
    return Candidates.from_logits(np.array(logits, np.float32))


def test_mt19937_is_std_mt19937() -> None:
    # the C++ standard fixes the 10000th output of a default-constructed std::mt19937 (seed 5489)
    bits = Mt19937(5489)._bits
    assert int(bits.random_raw(10000)[-1]) == 4123659995
    # generate_canonical<double, 53>: first word low, second high, over 2^64
    a, b = (int(x) for x in Mt19937(7)._bits.random_raw(2))
    assert Mt19937(7).canonical() == (a + b * 2**32) / 2**64


def test_top_k_ties_larger_than_vocab_and_off() -> None:
    c = cand([1, 3, 2, 3, 0])
    top_k(c, 2)
    assert c.ids.tolist() == [1, 3] and c.sorted  # tied logits keep token order
    c = cand([1, 3, 2, 3, 0])
    top_k(c, 10)  # more than the vocabulary: everything, sorted
    assert c.ids.tolist() == [1, 3, 2, 0, 4]
    c = cand([1, 3, 2])
    top_k(c, 0)  # off
    assert c.ids.tolist() == [0, 1, 2] and not c.sorted
    big = np.zeros(1000, np.float32)
    big[[900, 7, 500]] = [5, 4, 4]  # partial selection on a large vocabulary: ties at the cut in token order
    c = cand(big)
    top_k(c, 3)
    assert c.ids.tolist() == [900, 7, 500]
    c = cand(big)
    top_k(c, 4)
    assert c.ids.tolist() == [900, 7, 500, 0]


def test_softmax_by_hand() -> None:
    c = cand(HALVES)
    softmax(c, do_sort=True)
    np.testing.assert_allclose(c.p, [0.5, 0.25, 0.125, 0.125], rtol=1e-6)


@pytest.mark.parametrize(
    ("p", "min_keep", "kept"),
    [
        (0.75, 0, [0, 1]),  # 0.5 + 0.25 reaches 0.75 exactly: the token that reaches it is kept
        (0.7, 0, [0, 1]),
        (0.76, 0, [0, 1, 3]),  # the two 1/8 tokens tie: token order decides
        (0.5, 0, [0]),
        (0.5, 3, [0, 1, 3]),  # min_keep wins over p
        (0.0, 0, [0]),
    ],
)
def test_top_p_by_hand(p: float, min_keep: int, kept: list[int]) -> None:
    c = cand(HALVES[::-1].copy())  # tokens 3..0 so sorting matters: p = 1/8, 1/8, 1/4, 1/2
    top_p(c, p, min_keep)
    assert c.ids.tolist() == [3 - i for i in kept]


def test_top_p_one_is_off() -> None:
    c = cand([0.0, 2.0, 1.0])
    top_p(c, 1.0, 0)
    assert c.ids.tolist() == [0, 1, 2] and not c.sorted


def test_min_p_by_hand() -> None:
    # logits 1, 0, 2: p relative to the best = e^-1 = 0.37, e^-2 = 0.14, 1
    c = cand([1.0, 0.0, 2.0])
    min_p(c, 0.3, 0)
    assert c.ids.tolist() == [0, 2]  # unsorted: kept in their order
    c = cand([1.0, 0.0, 2.0])
    min_p(c, 0.1, 0)
    assert c.ids.tolist() == [0, 1, 2]
    c = cand([2.0, 2.0, 1.0])
    min_p(c, 1.0, 0)  # p = 1: only the best, ties included
    assert c.ids.tolist() == [0, 1]
    c = cand([1.0, 0.0, 2.0])
    min_p(c, 0.0, 0)  # off
    assert c.ids.tolist() == [0, 1, 2]
    c = cand([1.0, 0.0, 2.0])
    min_p(c, 0.5, 2)  # too few pass (1 < min_keep 2): the sorted path keeps min_keep
    assert c.ids.tolist() == [2, 0] and c.sorted
    c = cand([1.0, 0.0, 2.0])
    top_k(c, 3)
    min_p(c, 0.3, 0)  # already sorted input
    assert c.ids.tolist() == [2, 0]


def test_typical_by_hand() -> None:
    # p = 1/2 1/4 1/8 1/8: entropy H = 1.75 ln 2 = 1.213; |-ln p - H| = 0.520, 0.173, 0.866, 0.866
    # so the most typical token is 1 (p 1/4), then 0, then 2 and 3
    c = cand(HALVES)
    typical(c, 0.5, 0)
    assert c.ids.tolist() == [1, 0]  # 1/4 is not > 0.5; 1/4 + 1/2 is
    c = cand(HALVES)
    typical(c, 0.2, 0)
    assert c.ids.tolist() == [1]
    c = cand(HALVES)
    typical(c, 0.2, 3)
    assert c.ids.tolist() == [1, 0, 2]
    c = cand(HALVES)
    typical(c, 1.0, 0)
    assert c.ids.tolist() == [0, 1, 2, 3]


def test_temperature_by_hand() -> None:
    c = cand([1.0, 2.0, -3.0])
    temperature(c, 0.5)
    assert c.logits.tolist() == [2.0, 4.0, -6.0]
    c = cand([3.0, 1.0, 3.0])
    temperature(c, 0.0)  # only the first best survives
    assert c.logits.tolist() == [3.0, -np.inf, -np.inf]


def test_penalties_by_hand() -> None:
    c = cand([2.0, -1.0, 0.5, 1.0])
    apply_penalties(c, {0: 2, 1: 1}, repeat=2.0, freq=0.5, present=0.25)
    # token 0 (seen twice, positive): 2 / 2 - (2 x 0.5 + 0.25) = -0.25; token 1 (negative): -1 x 2 - 0.75
    assert c.logits.tolist() == [-0.25, -2.75, 0.5, 1.0]


def test_penalty_window() -> None:
    s = Sampler(temperature=0, repeat_penalty=2.0, repeat_last_n=2)
    logits = np.array([1.0, 0.9, 0.1], np.float32)
    for t in (0, 1, 0):
        s.accept(t)
    assert s._counts == {1: 1, 0: 1}  # the window holds the last 2: (1, 0)
    assert s.sample(logits) == 0  # 0.5, 0.45, 0.1
    s = Sampler(temperature=0, repeat_penalty=2.0, repeat_last_n=2)
    for t in (0, 0, 0):
        s.accept(t)
    assert s.sample(logits) == 1  # 0.5 < 0.9
    s = Sampler(temperature=0, repeat_penalty=2.0, repeat_last_n=0)  # 0 = off
    for t in (0, 0):
        s.accept(t)
    assert s.sample(logits) == 0


def test_logit_bias() -> None:
    c = cand([1.0, 0.0, 2.0])
    apply_logit_bias(c, {1: 5.0, 2: -math.inf})
    assert c.logits.tolist() == [1.0, 5.0, -np.inf]
    s = Sampler(temperature=0, logit_bias={2: -math.inf})
    assert s.sample(np.array([1.0, 0.0, 2.0], np.float32)) == 0
    s = Sampler(temperature=0.8, seed=1, logit_bias={1: 100.0})
    assert all(s(np.array([1.0, 0.0, 2.0], np.float32)) == 1 for _ in range(20))


def test_greedy_takes_first_of_ties() -> None:
    assert Sampler(temperature=0).sample(np.array([1.0, 3.0, 3.0], np.float32)) == 1


def test_dist_selection_by_hand() -> None:
    # p = 1/2 1/4 1/8 1/8, cumulative 0.5 0.75 0.875 1: a draw u picks the first cumulative >= u
    for u, want in [(0.0, 0), (0.5, 0), (0.5000001, 1), (0.8, 2), (0.99, 3)]:
        c = cand(HALVES)
        assert dist(c, FixedDraws(u)) == want, u
        np.testing.assert_allclose(c.p, [0.5, 0.25, 0.125, 0.125], rtol=1e-6)


def test_dist_single_candidate_still_draws() -> None:
    rng = FixedDraws(0.3, 0.9)
    c = cand([1.0])
    assert dist(c, rng) == 0 and rng.draws == [0.9]


def test_dist_frequencies() -> None:
    rng = Mt19937(123)
    counts = np.bincount([dist(cand(HALVES), rng) for _ in range(4000)], minlength=4) / 4000
    np.testing.assert_allclose(counts, [0.5, 0.25, 0.125, 0.125], atol=0.03)


def test_mirostat_v2_by_hand_and_state() -> None:
    state = MirostatState(tau=1.0, eta=0.1)
    assert state.mu == 2.0  # starts at 2 tau
    # surprises -log2 p = 1, 2, 3, 3: mu 2 keeps the first two, renormalised to 2/3, 1/3
    c = cand(HALVES)
    assert mirostat_v2(c, state, FixedDraws(0.9)) == 1
    np.testing.assert_allclose(c.p, [2 / 3, 1 / 3], rtol=1e-6)
    # observed surprise log2 3 = 1.585: mu = 2 - 0.1 (1.585 - 1) = 1.9415
    assert state.mu == pytest.approx(2 - 0.1 * (math.log2(3) - 1), rel=1e-6)
    c = cand(HALVES)  # the next step uses the new mu: now only surprise 1 fits
    assert mirostat_v2(c, state, FixedDraws(0.9)) == 0 and len(c) == 1
    assert state.mu == pytest.approx(1.9415 - 0.1 * (0 - 1), rel=1e-5)


def test_mirostat_v1_by_hand_and_state() -> None:
    # Zipf probabilities p_i ~ 1/i^s: the estimate s_hat is s itself; then
    # k = (eps 2^mu / (1 - N^-eps))^(1/s) with eps = s - 1: (0.1 x 64 / (1 - 200^-0.1))^(1/1.1) = 12.12
    n, s_exp, tau = 200, 1.1, 3.0
    logits = (-s_exp * np.log(np.arange(1, n + 1))).astype(np.float32)
    eps, mu = s_exp - 1, 2 * tau
    k = (eps * 2**mu / (1 - n**-eps)) ** (1 / s_exp)
    state = MirostatState(tau=tau, eta=0.5)
    c = cand(logits)
    idx = mirostat_v1(c, state, FixedDraws(0.0), n_vocab=n)
    assert len(c) == int(k) == 12 and idx == 0
    p0 = (1.0 / np.arange(1, 13) ** s_exp).sum() ** -1  # the best token's renormalised probability
    assert state.mu == pytest.approx(mu - 0.5 * (-math.log2(p0) - tau), rel=1e-4)
    c = cand(logits)  # the surprise was below tau, so mu grew: more tokens next time
    mirostat_v1(c, state, FixedDraws(0.0), n_vocab=n)
    assert len(c) > 12


def test_mirostat_state_persists_in_sampler() -> None:
    s = Sampler(temperature=1.0, seed=5, mirostat=2, mirostat_tau=2.0, mirostat_eta=0.3)
    logits = np.linspace(3, -3, 50).astype(np.float32)
    mus = []
    for _ in range(5):
        s(logits)
        mus.append(float(s._mirostat.mu))
    assert len(set(mus)) > 1 and mus[0] != 4.0
    s.reset()
    assert float(s._mirostat.mu) == 4.0


def test_seeded_sampler_repeats() -> None:
    logits = np.random.default_rng(0).normal(size=(30, 300)).astype(np.float32)
    runs = []
    for seed in (11, 11, 12):
        s = Sampler(seed=seed)
        runs.append([s(row) for row in logits])
    assert runs[0] == runs[1] and runs[0] != runs[2]
    s = Sampler(seed=11)
    state = None
    for i, row in enumerate(logits):
        if i == 10:
            state = s.state()
        s(row)
    t = Sampler(seed=99)
    t.set_state(state)
    assert [t(row) for row in logits[10:]] == runs[0][10:]


def test_random_seed_is_recorded() -> None:
    s = Sampler(seed=-1)
    assert 0 <= s.seed < 2**32
    logits = np.random.default_rng(1).normal(size=(10, 100)).astype(np.float32)
    again = Sampler(seed=s.seed)
    assert [s(r) for r in logits] == [again(r) for r in logits]


def test_n_probs_reports_the_chain() -> None:
    s = Sampler(seed=3, n_probs=2, top_k=2)
    s(HALVES)
    assert [t for t, _ in s.last.top] == [0, 1]
    assert sum(p for _, p in s.last.top) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "bad",
    [
        {"top_p": 1.5},
        {"min_p": -0.1},
        {"typical_p": 2},
        {"repeat_penalty": 0},
        {"repeat_last_n": -2},
        {"mirostat": 3},
        {"seed": 2**32},
        {"temperature": float("nan")},
        {"logit_bias": {-1: 1.0}},
        {"logit_bias": {5: "x"}},
    ],
)
def test_bad_settings_are_named(bad: dict) -> None:
    with pytest.raises(LlametteError, match=next(iter(bad))):
        Sampler(n_vocab=10, **bad)


def test_logit_bias_beyond_vocab() -> None:
    with pytest.raises(LlametteError, match="logit_bias token 10 .*10 tokens"):
        SamplingParams(logit_bias={10: 1.0}).validate(n_vocab=10)
