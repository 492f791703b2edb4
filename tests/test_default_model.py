"""The default model (SmolLM2-135M-Instruct Q4_1) end to end against llama.cpp's outputs."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SMOLLM2, SMOLLM2_REFERENCE

from llamette import cli
from llamette.generation import generate
from llamette.sampling import Sampler

GREEDY = SMOLLM2_REFERENCE["greedy"]
# llama.cpp rounds activations to 8 bits and attention inputs to f16, which moves this small model's logits
# by ~0.3 (rms) from exact math: where two tokens are that close, either may win. Measured worst case: 0.26.
NEAR_TIE = 0.35


def _teacher_forced_logits(model, case: dict) -> np.ndarray:
    """Our logits at every step of llama.cpp's continuation: (48, n_vocab)."""
    ids = case["prompt_ids"] + case["greedy_ids"]
    logits = model.net.forward(ids, model.new_cache(128), all_logits=True)
    return logits[len(case["prompt_ids"]) - 1 : len(ids) - 1]


@pytest.mark.slow
def test_llama_cpp_greedy_choices_are_ours(smollm2) -> None:
    """Following llama.cpp's 48-token greedy continuation, its choice is our argmax at (nearly) every step and
    otherwise our second choice within rounding noise."""
    agree = total = 0
    for case in GREEDY:
        logits = _teacher_forced_logits(smollm2, case)
        for step, (row, token) in enumerate(zip(logits, case["greedy_ids"], strict=True)):
            margin = float(row.max() - row[token])
            rank = int((row > row[token]).sum())
            assert rank <= 1 and margin < NEAR_TIE, (case["prompt"], step, rank, margin)
            agree += rank == 0
            total += 1
    assert agree / total >= 0.95, f"{agree}/{total}"


@pytest.mark.slow
def test_next_token_ranking(smollm2) -> None:
    for case in GREEDY:
        logits = smollm2.net.forward(case["prompt_ids"], smollm2.new_cache(64))[0]
        order = list(np.argsort(-logits))
        ref = case["top10_next"]
        assert order[0] == ref[0] and set(order[:3]) == set(ref[:3]), case["prompt"]
        assert max(order.index(t) for t in ref) < 12, case["prompt"]


def _free_running_report(model, n: int) -> list[tuple[str, int, float]]:
    """Per prompt: where our own greedy run first differs from llama.cpp's (n if never) and the logit margin there."""
    report = []
    for case in GREEDY:
        ours = list(generate(model, case["prompt_ids"], Sampler(0), max_tokens=n, cache=model.new_cache(128)))
        ref = case["greedy_ids"][:n]
        split = next((i for i, (a, b) in enumerate(zip(ours, ref, strict=False)) if a != b), min(len(ours), n))
        margin = 0.0
        if split < n:
            row = _teacher_forced_logits(model, case)[split]
            margin = float(row[ours[split]] - row[ref[split]])
        report.append((case["prompt"], split, margin))
    for prompt, split, margin in report:
        state = f"all {n} equal" if split == n else f"splits at token {split}, logit margin {margin:.4f}"
        print(f"{prompt!r}: {state}")
    return report


@pytest.mark.slow
def test_free_running_greedy_matches_all_48_tokens(smollm2) -> None:
    """The native backend rounds like ggml, so our own greedy run is llama.cpp's, token for token, on every prompt
    (the first issue asked for 32 tokens on 4 of 5 prompts; exact arithmetic makes it all 48 on all 5)."""
    assert smollm2.backend == "cpu", "the native library is not built: pip install -e . compiles it"
    report = _free_running_report(smollm2, 48)
    assert all(split == 48 for _, split, _ in report), report


@pytest.mark.slow
def test_perplexity_command_matches_llama_perplexity(capsys) -> None:
    """`llamette perplexity -f shakespeare_eval.txt -c 128 --chunks 20`, as llama-perplexity was run: with its
    default flash attention, within 0.2 % (llama-perplexity batches 16 chunks per call, whose split into
    32-token pieces rounds attention slightly differently; same arithmetic in one call gives 38.5887)."""
    ref = next(r for r in SMOLLM2_REFERENCE["perplexity"] if r["n_ctx"] == 128)
    code = cli.main(["perplexity", "-f", str(SMOLLM2 / ref["text_file"]), "-c", "128", "--chunks", str(ref["chunks"])])
    out, err = capsys.readouterr()
    assert code == 0 and "seconds per pass" in err and "over 20 chunks, n_ctx=128" in err
    assert out.startswith("[1]") and "[20]" in out and "[21]" not in out
    last = out.splitlines()[-1]
    assert last.startswith("Final estimate: PPL = ")
    ppl = float(last.split("=")[1].split("+/-")[0])
    assert abs(ppl / ref["ppl"] - 1) < 0.002, (ppl, ref["ppl"])
