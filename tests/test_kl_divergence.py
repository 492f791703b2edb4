"""`llamette perplexity --kl-divergence-base / --kl-divergence`: saved log-probabilities in llama-perplexity's
format, and the KL divergence, PPL ratio and top-token agreement of another model against them."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SMOLLM2, tiny_path

from llamette import cli
from llamette.errors import LlametteError
from llamette.perplexity import dequantized_log_probs, kl_divergence, quantized_log_probs, read_base_header

TEXT = str(SMOLLM2 / "shakespeare_eval.txt")


def test_stored_log_probs_round_trip() -> None:
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((5, 301)) * 4).astype(np.float32)
    rows = quantized_log_probs(logits)
    assert rows.shape == (5, 4 + 302) and rows.dtype == np.uint16  # an odd vocabulary is padded to even
    x = logits.astype(np.float64)
    true = x - x.max(axis=1, keepdims=True)
    true -= np.log(np.exp(true).sum(axis=1, keepdims=True))
    back = dequantized_log_probs(rows, 301)
    top = true > true.max(axis=1, keepdims=True) - 16  # only the top 16 nats are kept
    step = (logits.max(axis=1) - np.maximum(logits.min(axis=1), logits.max(axis=1) - 16)) / 65535
    assert np.all(np.abs(back - true)[top] <= (step[:, None] * 0.6 + 1e-5).repeat(301, 1)[top])


@pytest.fixture(scope="module")
def base_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("kld") / "tiny-f32.kld"
    args = ["perplexity", "-m", str(tiny_path("F32")), "-f", TEXT, "-c", "64", "--chunks", "5",
            "--kl-divergence-base", str(path)]  # fmt: skip
    assert cli.main(args) == 0
    return path


def test_base_file_layout(base_file) -> None:
    n_ctx, n_vocab, n_chunk, tokens, offset = read_base_header(base_file)
    assert (n_ctx, n_vocab, n_chunk, len(tokens)) == (64, 512, 5, 320)
    rows = 64 - 1 - 32
    assert base_file.stat().st_size == offset + 2 * (4 + 512) * rows * n_chunk


def test_a_model_against_itself(base_file) -> None:
    from llamette.loader import load

    result = kl_divergence(load(tiny_path("F32")), base_file)
    assert result.n == 31 * 5 and result.same_top == 1.0
    assert abs(result.kld_mean) < 1e-5 and abs(result.ln_ratio) < 1e-4


def test_kld_by_hand_and_ordering(base_file) -> None:
    """KL(base || Q) from the stored base against a direct numpy computation; more bits, less divergence."""
    from llamette.loader import load

    q8, q4 = load(tiny_path("Q8_0")), load(tiny_path("Q4_0"))
    r8, r4 = kl_divergence(q8, base_file), kl_divergence(q4, base_file)
    assert 0 < r8.kld_mean < r4.kld_mean and r8.same_top >= r4.same_top
    # by hand for the first chunk
    n_ctx, n_vocab, _, tokens, offset = read_base_header(base_file)
    f32 = load(tiny_path("F32"))
    chunk = tokens[:n_ctx].copy()
    chunk[0] = f32.tokenizer.bos

    def log_softmax(m):
        x = m.net.forward(chunk, m.new_cache(n_ctx), all_logits=True)[32:63].astype(np.float64)
        x -= x.max(axis=1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=1, keepdims=True))

    p, q = log_softmax(f32), log_softmax(q8)
    direct = (np.exp(p) * (p - q)).sum(axis=1)
    np.testing.assert_allclose(r8.kld_values[:31], direct, rtol=0.02, atol=2e-4)


def test_cli_report_and_errors(base_file, tmp_path, capsys) -> None:
    assert cli.main(["perplexity", "-m", str(tiny_path("Q4_K")), "--kl-divergence-base", str(base_file),
                     "--kl-divergence"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    for line in ("Mean PPL(Q)/PPL(base)", "Mean    KLD:", "Same top p:", "RMS Δp"):
        assert line in out
    bad = tmp_path / "bad.kld"
    bad.write_bytes(b"not logits")
    assert cli.main(["perplexity", "--kl-divergence-base", str(bad), "--kl-divergence"]) == 1
    assert "bad magic" in capsys.readouterr().err
    assert cli.main(["perplexity", "--kl-divergence"]) == 1
    assert "needs --kl-divergence-base" in capsys.readouterr().err
    truncated = tmp_path / "short.kld"
    truncated.write_bytes(base_file.read_bytes()[:5000])
    with pytest.raises(LlametteError, match="truncated"):
        read_base_header(truncated)
    assert cli.main(["perplexity", "-m", str(tiny_path("Q8_0")), "--kl-divergence-base", str(base_file),
                     "--kl-divergence"]) == 0  # fmt: skip
