"""`from llamette import Llama`: llama-cpp-python's high-level API, checked against llama-cpp-python's own outputs
and its README examples (run as written there, with only the import and the model path changed)."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
from conftest import SMOLLM2

from llamette import Llama
from llamette.errors import LlametteError

SEEDED = json.loads((SMOLLM2 / "seeded_completions.json").read_text())["cases"]

# llama-cpp-python 0.3.36 README.md, "High-level API" and "Chat Completion", verbatim
README_COMPLETION = """
from llama_cpp import Llama

llm = Llama(
      model_path="./models/7B/llama-model.gguf",
      # n_gpu_layers=-1, # Uncomment to use GPU acceleration
      # seed=1337, # Uncomment to set a specific seed
      # n_ctx=2048, # Uncomment to increase the context window
)
output = llm(
      "Q: Name the planets in the solar system? A: ", # Prompt
      max_tokens=32, # Generate up to 32 tokens, set to None to generate up to the end of the context window
      stop=["Q:", "\\n"], # Stop generating just before the model would generate a new question
      echo=True # Echo the prompt back in the output
) # Generate a completion, can also call create_completion
print(output)
"""
README_CHAT = """
from llama_cpp import Llama
llm = Llama(
      model_path="path/to/llama-2/llama-model.gguf",
      chat_format="llama-2"
)
llm.create_chat_completion(
      messages = [
          {"role": "system", "content": "You are an assistant who perfectly describes images."},
          {
              "role": "user",
              "content": "Describe this image in detail please."
          }
      ]
)
"""
# the streaming and tokenize examples of llama-cpp-python's API reference
DOCS_STREAM = """
from llama_cpp import Llama
llm = Llama(model_path="./models/7B/llama-model.gguf")
for output in llm("Q: Name the planets in the solar system? A: ", max_tokens=32, stream=True):
    print(output["choices"][0]["text"], end="", flush=True)
"""
DOCS_TOKENIZE = """
from llama_cpp import Llama
llm = Llama(model_path="./models/7B/llama-model.gguf", verbose=False)
tokens = llm.tokenize(b"Hello, world!")
print(tokens, llm.detokenize(tokens))
"""


def _run_example(source: str, model_path) -> dict:
    source = source.replace("from llama_cpp import Llama", "from llamette import Llama")
    for fake in ("./models/7B/llama-model.gguf", "path/to/llama-2/llama-model.gguf"):
        source = source.replace(fake, str(model_path))
    scope: dict = {}
    exec(compile(textwrap.dedent(source), "<readme example>", "exec"), scope)
    return scope


@pytest.fixture(scope="module")
def llm(smollm2_path) -> Llama:
    return Llama(model_path=str(smollm2_path), n_ctx=512, verbose=False)


def test_readme_completion(smollm2_path, capsys) -> None:
    scope = _run_example(README_COMPLETION, smollm2_path)
    out = scope["output"]
    assert out["object"] == "text_completion" and out["id"].startswith("cmpl-")
    choice = out["choices"][0]
    assert choice["text"].startswith("Q: Name the planets in the solar system? A: ")  # echo
    answer = choice["text"][len("Q: Name the planets in the solar system? A: ") :]
    assert "\n" not in answer and "Q:" not in answer  # stop strings never leak
    assert choice["finish_reason"] in ("stop", "length") and choice["index"] == 0 and choice["logprobs"] is None
    usage = out["usage"]
    assert usage["prompt_tokens"] == 13 and usage["total_tokens"] == 13 + usage["completion_tokens"]
    assert usage["completion_tokens"] <= 32
    assert "'object': 'text_completion'" in capsys.readouterr().out


def test_readme_chat(smollm2_path) -> None:
    scope = _run_example(README_CHAT.replace("llm.create_chat_completion(", "result = llm.create_chat_completion("),
                         smollm2_path)  # fmt: skip
    result = scope["result"]
    assert result["object"] == "chat.completion"
    msg = result["choices"][0]["message"]
    assert msg["role"] == "assistant" and isinstance(msg["content"], str)  # (this model may end at once here)
    assert result["choices"][0]["finish_reason"] in ("stop", "length")
    assert scope["llm"].apply_chat_template([{"role": "user", "content": "x"}]) == "[INST] x [/INST]"


def test_docs_stream_and_tokenize(smollm2_path, capsys) -> None:
    _run_example(DOCS_STREAM, smollm2_path)  # unseeded: any text (even none, if the model ends at once)
    capsys.readouterr()
    _run_example(DOCS_TOKENIZE, smollm2_path)
    assert capsys.readouterr().out.strip() == "[19556, 28, 905, 17] b'Hello, world!'"


@pytest.mark.parametrize("case", SEEDED, ids=[f"{c['seed']}-{'-'.join(c['kw']) or 'defaults'}" for c in SEEDED])
def test_seeded_completions_equal_llama_cpp_python(llm: Llama, case: dict) -> None:
    """The same call with the same seed gives llama-cpp-python's text: defaults, no truncation, mirostat v1
    and v2, penalties with typical-p."""
    out = llm.create_completion(case["prompt"], max_tokens=40, seed=case["seed"], **case["kw"])
    assert out["choices"][0]["text"] == case["text"]


def test_seeded_runs_repeat_and_unseeded_vary(llm: Llama) -> None:
    a = llm("Once upon a time", max_tokens=20, seed=5)["choices"][0]["text"]
    b = llm("Once upon a time", max_tokens=20, seed=5)["choices"][0]["text"]
    assert a == b
    texts = {llm("Once upon a time", max_tokens=20, seed=-1)["choices"][0]["text"] for _ in range(3)}
    assert len(texts) > 1


def test_stream_chunks_join_to_the_full_text(llm: Llama) -> None:
    full = llm("The capital of France is", max_tokens=24, temperature=0, stop=["."])
    chunks = list(llm("The capital of France is", max_tokens=24, temperature=0, stop=["."], stream=True))
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == full["choices"][0]["text"]
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == full["choices"][0]["finish_reason"] == "stop"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert "." not in full["choices"][0]["text"]


def test_stop_strings_split_across_tokens_never_leak(llm: Llama) -> None:
    greedy = llm("The capital of France is", max_tokens=30, temperature=0)["choices"][0]["text"]
    # stop on a string made of the end of one token and the start of the next
    tokens = llm.tokenize(greedy.encode(), add_bos=False)
    pieces = [llm.detokenize([t]).decode() for t in tokens]
    cut = next(i for i in range(3, len(pieces)) if len(pieces[i]) > 1 and len(pieces[i - 1]) > 1)
    stop = pieces[cut - 1][-2:] + pieces[cut][:2]
    expected = greedy[: greedy.index(stop)]
    for stream in (False, True):
        out = llm("The capital of France is", max_tokens=30, temperature=0, stop=[stop, "zzzz"], stream=stream)
        text = "".join(c["choices"][0]["text"] for c in out) if stream else out["choices"][0]["text"]
        assert text == expected and stop not in text


def test_logprobs(llm: Llama) -> None:
    out = llm("The capital of France is", max_tokens=4, temperature=0, logprobs=3)
    lp = out["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 4
    assert "".join(lp["tokens"]) == out["choices"][0]["text"]
    assert lp["text_offset"][0] == 0
    for token, logprob, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"], strict=True):
        assert logprob <= 0 and token in top and max(top.values()) == pytest.approx(logprob)  # greedy = the best
    echo = llm("The capital of France is", max_tokens=2, temperature=0, logprobs=1, echo=True)
    lp = echo["choices"][0]["logprobs"]
    assert lp["token_logprobs"][0] is None and len(lp["tokens"]) == 5 + 2


def test_chat_completion_and_stream(llm: Llama) -> None:
    messages = [{"role": "user", "content": "Say hello."}]
    full = llm.create_chat_completion(messages, temperature=0, max_tokens=16)
    assert full["object"] == "chat.completion" and full["id"].startswith("chatcmpl-")
    chunks = list(llm.create_chat_completion(messages, temperature=0, max_tokens=16, stream=True))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert chunks[-1]["choices"][0]["delta"] == {} and chunks[-1]["choices"][0]["finish_reason"] is not None
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == full["choices"][0]["message"]["content"]
    assert full["usage"]["prompt_tokens"] == len(llm.chat_prompt_ids(messages))


def test_prompt_longer_than_context(smollm2_path) -> None:
    small = Llama(model_path=str(smollm2_path), n_ctx=16, verbose=False)
    with pytest.raises(ValueError, match="exceed context window of 16"):
        small("word " * 40)
    out = small("Hello", max_tokens=100)  # generation stops at the full context
    assert out["choices"][0]["finish_reason"] == "length" and out["usage"]["total_tokens"] <= 16


def test_eval_sample_reset_and_state(llm: Llama) -> None:
    llm.reset()
    ids = llm.tokenize(b"The capital of France is")
    llm.eval(ids)
    assert llm.n_tokens == len(ids) and list(llm.input_ids) == ids
    first = llm.sample(temp=0)
    state = llm.save_state()
    llm.eval([first])
    after = llm.scores[-1].copy()
    llm.eval(llm.tokenize(b" and some more text"))
    llm.load_state(state)
    assert llm.n_tokens == len(ids)
    llm.eval([first])
    np.testing.assert_array_equal(llm.scores[-1], after)
    llm.reset()
    assert llm.n_tokens == 0
    gen = llm.generate(ids, temp=0)
    assert next(gen) == first


def test_facts_and_tokens(llm: Llama) -> None:
    assert llm.n_ctx() == 512 and llm.n_vocab() == 49152 and llm.n_embd() == 576
    assert llm.token_bos() == 1 and llm.token_eos() == 2
    ids = llm.tokenize(b"<|im_start|>hi", special=True)
    assert ids[0] == 1 and llm.tokenize(b"<|im_start|>hi", special=False)[0] != 1
    assert llm.detokenize(ids, special=True) == b"<|im_start|>hi"


def test_embeddings(llm: Llama) -> None:
    one = llm.embed("Hello, world!")
    assert len(one) == 576 and np.linalg.norm(one) == pytest.approx(1.0)
    many, count = llm.embed(["Hello, world!", "Goodbye"], return_count=True)
    np.testing.assert_allclose(many[0], one, rtol=1e-6)
    assert count == 4 + 2
    out = llm.create_embedding(["a cat", "a dog", "stock market prices"])
    assert out["object"] == "list" and [d["index"] for d in out["data"]] == [0, 1, 2]
    v = np.array([d["embedding"] for d in out["data"]])
    assert v[0] @ v[1] > v[0] @ v[2]  # related texts are closer


def test_bad_arguments_are_clear(llm: Llama) -> None:
    with pytest.raises(LlametteError, match="top_p"):
        llm("x", top_p=3)
    with pytest.raises(LlametteError, match="logit_bias"):
        llm("x", logit_bias={"abc": 1})
    with pytest.raises(LlametteError, match="seed"):
        llm("x", seed=-5)
    with pytest.raises(LlametteError, match=r"messages\[0\]"):
        llm.create_chat_completion([{"content": "no role"}])
    with pytest.raises(LlametteError, match="response_format"):
        llm.create_chat_completion([{"role": "user", "content": "x"}], response_format={"type": "json_object"})


def test_package_names_stay_functions() -> None:
    """`llamette.generate` is the function even after the API imported the generation module."""
    import llamette

    assert callable(llamette.generate) and callable(llamette.stream_text) and llamette.Llama is Llama
