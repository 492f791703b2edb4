"""Tokenizer: token ids equal llama.cpp's (its own vocab test files and the default model's fixtures)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from conftest import SMOLLM2, SMOLLM2_REFERENCE, read_vocab_cases, rewrite_gguf, tiny_path

from llamette.errors import GGUFError
from llamette.gguf.constants import GGUFValueType
from llamette.tokenizer import StreamDecoder, Tokenizer

# every vocabulary llama.cpp ships .inp/.out tests for whose tokenizer llamette supports
VOCABS = [
    "llama-spm",
    "phi-3",
    "llama-bpe",
    "gpt-2",
    "qwen2",
    "qwen35",
    "deepseek-llm",
    "deepseek-coder",
    "starcoder",
    "falcon",
    "mpt",
    "refact",
    "command-r",
]


@pytest.fixture(scope="module")
def smollm2_tok(smollm2_path: Path) -> Tokenizer:
    return Tokenizer.load(smollm2_path)


def _vocab(vocab_dir: Path, name: str) -> Tokenizer:
    return Tokenizer.load(vocab_dir / f"ggml-vocab-{name}.gguf")


@pytest.mark.parametrize("name", VOCABS)
def test_llama_cpp_vocab_cases(vocab_dir: Path, name: str) -> None:
    """llama.cpp's test-tokenizer-0: no BOS/EOS, special tokens not parsed."""
    path = vocab_dir / f"ggml-vocab-{name}.gguf"
    tok = Tokenizer.load(path)
    cases = read_vocab_cases(path)
    assert len(cases) >= 40
    wrong = [
        (text, tok.encode(text, add_special=False), ids)
        for text, ids in cases
        if tok.encode(text, add_special=False) != ids
    ]
    assert not wrong, f"{len(wrong)} of {len(cases)} differ, first: {wrong[0]}"


@pytest.mark.parametrize("name", VOCABS)
def test_detokenize_round_trip(vocab_dir: Path, name: str) -> None:
    """Pieces join back into the input, except where a vocabulary is lossy by design."""
    path = vocab_dir / f"ggml-vocab-{name}.gguf"
    tok = Tokenizer.load(path)
    for text, ids in read_vocab_cases(path):
        back = b"".join(tok.token_to_piece(i) for i in ids).decode("utf-8", errors="replace")
        if tok.vocab.model == "llama":  # SPM adds a leading space that detokenize removes again
            back = tok.detokenize(ids).decode("utf-8", errors="replace")
        if "\ufffd" in text or (tok.vocab.model == "llama" and "\x00" in text):
            continue
        assert back == text, (name, text)


def test_default_model_reference(smollm2_tok: Tokenizer) -> None:
    for case in SMOLLM2_REFERENCE["tokenize"]:
        assert smollm2_tok.encode(case["text"], parse_special=True) == case["ids_special"], case["text"]
        assert smollm2_tok.encode(case["text"], parse_special=False) == case["ids_plain"], case["text"]
    for case in SMOLLM2_REFERENCE["greedy"]:
        assert smollm2_tok.encode(case["prompt"], parse_special=True) == case["prompt_ids"]
        assert smollm2_tok.detokenize(case["greedy_ids"]).decode() == case["greedy_text"]


def test_default_model_special_tokens(smollm2_tok: Tokenizer) -> None:
    assert not smollm2_tok.add_bos and smollm2_tok.bos == 1 and smollm2_tok.eos == 2
    assert smollm2_tok.eog_ids == {
        0,
        2,
        4,
    }  # <|endoftext|>, <|im_end|>, <reponame> (a FIM token), as llama.cpp
    assert smollm2_tok.token_to_piece(2) == b"<|im_end|>"
    assert smollm2_tok.token_to_piece(2, special=False) == b""
    assert smollm2_tok.decode([19556, 905, 2]) == "Hello world"
    assert smollm2_tok.decode([19556, 905, 2], special=True) == "Hello world<|im_end|>"


def test_shakespeare_round_trip(smollm2_tok: Tokenizer) -> None:
    text = (SMOLLM2 / "shakespeare_eval.txt").read_text(encoding="utf-8")
    ids = smollm2_tok.encode(text, parse_special=False)
    assert 90_000 < len(ids) < 100_000
    assert smollm2_tok.detokenize(ids).decode("utf-8") == text


def test_spm_bos_and_space_prefix(vocab_dir: Path) -> None:
    tok = _vocab(vocab_dir, "llama-spm")
    assert tok.encode("") == [1] and tok.encode("", add_special=False) == []
    hello = tok.encode("Hello", add_special=False)
    assert tok.encode("Hello") == [1, *hello]
    assert tok.vocab.tokens[hello[0]] == "\u2581Hello"  # the SentencePiece space prefix
    # after a special token the next text gets a space prefix again, as in llama.cpp
    assert tok.encode("</s>Hello", add_special=False, parse_special=True) == [2, *hello]
    assert tok.encode("</s>Hello", add_special=False) != [2, *hello]  # not parsed: plain text


def test_spm_byte_fallback(vocab_dir: Path) -> None:
    tok = _vocab(vocab_dir, "llama-spm")
    ids = tok.encode("\u0d9e", add_special=False)  # a character Llama's vocabulary does not have
    assert [tok.vocab.tokens[i] for i in ids[1:]] == ["<0xE0>", "<0xB6>", "<0x9E>"]
    assert tok.detokenize(ids) == "\u0d9e".encode()


def test_phi3_strips_space_after_special_tokens(vocab_dir: Path) -> None:
    tok = _vocab(vocab_dir, "phi-3")
    a = tok.encode("<|user|> \n hello", add_special=False, parse_special=True)
    b = tok.encode("<|user|>hello", add_special=False, parse_special=True)
    assert a == b and a[0] == tok.vocab.token_to_id["<|user|>"]


def test_spm_split_matches_whole_text(vocab_dir: Path) -> None:
    """The cut-and-cache speed-up gives exactly llama.cpp's whole-text algorithm."""
    session = _vocab(vocab_dir, "llama-spm")._session
    rng = random.Random(0)
    alphabet = list(" \u2581\u2581\u2581\n\tabcdeézy.,!?日本語🦙0123")
    words = (SMOLLM2 / "shakespeare_eval.txt").read_text(encoding="utf-8").split()[:5000]
    for _ in range(200):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        assert session.encode(text) == session.encode_unsplit(text), repr(text)
        text = ("\u2581" * rng.randint(1, 3)).join(rng.choice(words) for _ in range(15))
        assert session.encode(text) == session.encode_unsplit(text), repr(text)


def test_clean_spaces_on_detokenize(vocab_dir: Path) -> None:
    """gpt-2 vocabularies drop spaces before punctuation when detokenizing (llama.cpp's clean_spaces)."""
    tok = _vocab(vocab_dir, "gpt-2")
    assert tok.vocab.clean_spaces
    assert tok.detokenize(tok.encode("Hello , world ! it ' s done .")) == b"Hello, world! it's done."
    assert tok.detokenize(tok.encode("we 're here , they 'll go")) == b"we're here, they 'll go"


def test_stream_decoder_holds_split_characters(smollm2_tok: Tokenizer) -> None:
    ids = smollm2_tok.encode("a🦙b日本")
    decoder = StreamDecoder(smollm2_tok)
    deltas = [decoder.push(i) for i in ids] + [decoder.flush()]
    assert "".join(deltas) == "a🦙b日本"
    assert all("\ufffd" not in d for d in deltas)
    assert "" in deltas  # the llama arrives in pieces and is held back until whole
    bad = StreamDecoder(smollm2_tok)
    lone = smollm2_tok.encode("🦙")[:1]  # the first byte(s) only
    assert bad.push(lone[0]) == "" and bad.flush() == "\ufffd"


def test_out_of_range_token(smollm2_tok: Tokenizer) -> None:
    from llamette.errors import LlametteError

    with pytest.raises(LlametteError, match="out of range"):
        smollm2_tok.token_to_piece(49152)


def test_vocabulary_errors(tmp_path: Path) -> None:
    src = tiny_path("F32")
    with pytest.raises(GGUFError, match="no tokenizer"):
        Tokenizer.load(rewrite_gguf(src, tmp_path / "a.gguf", drop_keys=("tokenizer.ggml.model",)))
    bert = rewrite_gguf(src, tmp_path / "b.gguf", set_keys={"tokenizer.ggml.model": ("bert", GGUFValueType.STRING)})
    with pytest.raises(GGUFError, match="tokenizer model 'bert' is not supported"):
        Tokenizer.load(bert)
    bpe = rewrite_gguf(
        src,
        tmp_path / "c.gguf",
        set_keys={
            "tokenizer.ggml.model": ("gpt2", GGUFValueType.STRING),
            "tokenizer.ggml.pre": ("nope", GGUFValueType.STRING),
        },
    )
    with pytest.raises(GGUFError, match="pre-tokenizer 'nope' .* not supported .*smollm"):
        Tokenizer.load(bpe)
    types = rewrite_gguf(
        src, tmp_path / "d.gguf", set_keys={"tokenizer.ggml.add_bos_token": ("yes", GGUFValueType.STRING)}
    )
    with pytest.raises(GGUFError, match="add_bos_token"):
        Tokenizer.load(types)


def test_bpe_unknown_merge_result_keeps_ascii_bytes() -> None:
    """A merged symbol that is not a token: llama.cpp emits only the one-byte pieces it can find."""
    from llamette.tokenizer.vocab import Vocab

    tokens = ["a", "b", "c", "\u0120"]
    meta = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": ["a b"],
        "tokenizer.ggml.token_type": np.ones(4, np.int32),
    }
    tok = Tokenizer(Vocab.from_metadata(meta))
    assert tok.encode("abc", add_special=False) == [0, 1, 2]
