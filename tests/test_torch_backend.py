"""The torch backend's forward pass. On the CPU (every machine) its graph must compute what the numpy reference
computes; on a CUDA GPU (when there is one) its logits must match llama.cpp's and its greedy text the CPU
backend's."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SMOLLM2_REFERENCE, TINY, TINY_MANIFEST, TINY_TYPES, tiny_path

from llamette.errors import ContextFullError, LlametteError
from llamette.loader import load

torch = pytest.importorskip("torch")
TOKENS = TINY_MANIFEST["tokens"]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("qtype", TINY_TYPES)
def test_cpu_graph_equals_the_reference(qtype: str) -> None:
    model, ref = load(tiny_path(qtype), backend="torch"), load(tiny_path(qtype), backend="ref")
    assert model.net.device.type in ("cpu", "cuda")
    if model.net.device.type == "cuda":
        pytest.skip("covered by the GPU tests below")
    a = model.net.forward(TOKENS, model.new_cache(64), all_logits=True)
    b = ref.net.forward(TOKENS, ref.new_cache(64), all_logits=True)
    assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()
    cache = model.new_cache(24)  # prefill then decode, the cache growing from 0
    model.net.forward(TOKENS[:20], cache)
    steps = np.concatenate([model.net.forward([t], cache) for t in TOKENS[20:24]])
    assert np.abs(steps - b[20:24]).max() <= 1e-5 * np.abs(b).max()
    with pytest.raises(ContextFullError):
        model.net.forward([1], cache)
    with pytest.raises(LlametteError, match="out of range"):
        model.net.forward([10**6], model.new_cache(4))


@cuda
@pytest.mark.parametrize("qtype", TINY_TYPES)
def test_gpu_logits_match_llama_cpp(qtype: str) -> None:
    model = load(tiny_path(qtype), backend="torch")
    ref = np.load(TINY / TINY_MANIFEST["models"][qtype]["logits"])
    ours = model.net.forward(TOKENS, model.new_cache(64), all_logits=True)
    assert np.linalg.norm(ours - ref) / np.linalg.norm(ref) < 0.005


@cuda
def test_gpu_greedy_equals_cpu(smollm2_path) -> None:
    from llamette.generation import generate
    from llamette.sampling import Sampler

    gpu, cpu = load(smollm2_path, backend="torch"), load(smollm2_path, backend="cpu")
    for case in SMOLLM2_REFERENCE["greedy"]:
        a = list(generate(gpu, case["prompt_ids"], Sampler(0), max_tokens=48, cache=gpu.new_cache(128)))
        b = list(generate(cpu, case["prompt_ids"], Sampler(0), max_tokens=48, cache=cpu.new_cache(128)))
        assert a == b, case["prompt"]


@pytest.mark.parametrize("ngl", [0, 1, 2, 3])
def test_layer_split_gives_the_same_logits(ngl: int) -> None:
    """-ngl N: the last N layers on the offload device, the rest on the CPU; here both are the CPU, so any
    split must give the full model's logits (the hidden state crosses devices between layers)."""
    whole = load(tiny_path("Q4_K"), backend="torch", device="cpu")
    split = load(tiny_path("Q4_K"), backend="torch", device="cpu", n_gpu_layers=ngl)
    assert split.net.n_gpu_layers == min(ngl, 2)
    a = whole.net.forward(TOKENS, whole.new_cache(64), all_logits=True)
    cache = split.new_cache(64)
    b = np.concatenate([split.net.forward(TOKENS[:20], cache, all_logits=True),
                        *[split.net.forward([t], cache) for t in TOKENS[20:]]])  # fmt: skip
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * np.abs(a).max())


def test_cli_flags(capsys) -> None:
    from llamette import cli

    args = ["run", "-m", str(tiny_path("Q8_0")), "-p", "hi", "-n", "3", "--temp", "0", "-ngl", "1", "--device", "cpu"]
    assert cli.main(args) == 0 and "generated: 3 tokens" in capsys.readouterr().err
    assert cli.main(["run", "-p", "x", "-n", "1", "-ngl", "2", "--backend", "cpu"]) == 1
    assert "need the torch backend" in capsys.readouterr().err


@cuda
def test_gpu_partial_offload_equals_full(smollm2_path) -> None:
    full = load(smollm2_path, backend="torch")
    half = load(smollm2_path, backend="torch", n_gpu_layers=full.config.n_layers // 2)
    ids = SMOLLM2_REFERENCE["greedy"][0]["prompt_ids"]
    a = full.net.forward(ids, full.new_cache(64))[0]
    b = half.net.forward(ids, half.new_cache(64))[0]
    assert int(np.argmax(a)) == int(np.argmax(b)) and np.abs(a - b).max() < 0.05 * np.abs(a).max()


@pytest.mark.parametrize("qtype", ["Q4_K"])  # the interpreter is slow: one type here, every type's kernels
def test_gpu_path_under_the_triton_interpreter(qtype: str) -> None:  # are in test_triton_kernels.py
    """The GPU path (weights in GGUF blocks, Triton matvec for decode, Triton dequantization + matmul for a
    prompt batch) run on the CPU under TRITON_INTERPRET=1: the reference's logits."""
    pytest.importorskip("triton")
    from llamette.kernels import triton_kernels
    from llamette.kernels.torch_backend import TorchLlama
    from llamette.loader import open_model_file

    if not triton_kernels.interpreting():
        pytest.skip("a GPU is present: the GPU tests run this path for real")
    gguf, cfg = open_model_file(tiny_path(qtype))
    net = TorchLlama(cfg, gguf, device="cpu", blocks=True)
    assert net.layers[0]["attn_q"].blocks is not None
    ref = load(tiny_path(qtype), backend="ref")
    prompt = TOKENS[:9]  # more than 8 columns: dequantize + matmul; then single-token decode: matvec
    b = ref.net.forward(TOKENS[:10], ref.new_cache(32), all_logits=True)
    cache = net.new_cache(32)
    a = np.concatenate([net.forward(prompt, cache, all_logits=True), net.forward(TOKENS[9:10], cache)])
    assert np.abs(a - b).max() <= 2e-3 * np.abs(b).max()  # fp16 tiles for the prompt batch


def test_decode_batch_for_the_server() -> None:
    model = load(tiny_path("Q8_0"), backend="torch", device="cpu")
    caches = [model.new_cache(32) for _ in range(3)]
    alone = []
    for i, c in enumerate(caches):
        model.net.forward(TOKENS[i : i + 4], c)
        solo = model.new_cache(32)
        model.net.forward(TOKENS[i : i + 4], solo)
        alone.append(model.net.forward([TOKENS[10 + i]], solo)[0])
    out = model.net.decode_batch([TOKENS[10 + i] for i in range(3)], caches)
    np.testing.assert_array_equal(out, np.array(alone))
