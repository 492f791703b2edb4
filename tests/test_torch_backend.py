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
