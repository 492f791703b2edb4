"""The torch backend's forward pass. On the CPU (every machine) its graph must compute what the numpy reference
computes; on a CUDA GPU (when there is one) its logits must match llama.cpp's and its greedy text the CPU
backend's."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import SMOLLM2_REFERENCE, TINY, TINY_MANIFEST, TINY_TYPES, tiny_path

from llamette.errors import ContextFullError, LlametteError
from llamette.loader import load

torch = pytest.importorskip("torch")
from llamette.kernels.torch_backend import TorchLlama  # noqa: E402

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
    h = model.net.forward(TOKENS, model.new_cache(64), hidden=True)  # embeddings
    g = ref.net.forward(TOKENS, ref.new_cache(64), hidden=True)
    assert h.shape == g.shape and np.abs(h - g).max() <= 1e-5 * np.abs(g).max()
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
    """-ngl N with the CPU layers in torch: the last N layers on the offload device, the rest on the CPU; here
    both are the CPU, so any split must give the full model's logits (the hidden state crosses devices)."""
    whole = load(tiny_path("Q4_K"), backend="torch", device="cpu")
    split = TorchLlama(whole.config, whole.gguf, device="cpu", n_gpu_layers=ngl, native_cpu_layers=False)
    assert split.n_gpu_layers == min(ngl, 2) and split.native is None
    a = whole.net.forward(TOKENS, whole.new_cache(64), all_logits=True)
    cache = split.new_cache(64)
    b = np.concatenate([split.forward(TOKENS[:20], cache, all_logits=True),
                        *[split.forward([t], cache) for t in TOKENS[20:]]])  # fmt: skip
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * np.abs(a).max())


def test_native_residual_is_the_first_layers() -> None:
    """The native backend run over the first k layers hands on their residual stream: normed, it is what the
    numpy reference of a k-layer model gives (within the native kernels' rounding), and a model loaded
    without its output layer gives the same bits as the whole one."""
    from llamette.kernels.cpu import NativeLlama, available
    from llamette.model.reference import ReferenceLlama, rms_norm
    from llamette.model.weights import load_weights

    if not available():
        pytest.skip("native library not built")
    m = load(tiny_path("Q8_0"), backend="ref")
    part = dataclasses.replace(m.config, n_layers=1)
    first = NativeLlama(part, m.gguf, with_output=False)
    whole = NativeLlama(m.config, m.gguf)
    x = first.forward(TOKENS, first.new_cache(64), residual=True)
    ref = ReferenceLlama(part, load_weights(m.gguf, part)).forward(TOKENS, KVCacheFor(part), hidden=True)
    normed = rms_norm(x, m.net.output_norm, part.rms_eps)
    assert np.linalg.norm(normed - ref) / np.linalg.norm(ref) < 0.01
    full_x = whole.forward(TOKENS, whole.new_cache(64), residual=True)
    assert full_x.shape == (len(TOKENS), m.config.dim) and not np.array_equal(full_x, x)  # 2 layers vs 1
    with pytest.raises(LlametteError, match="without its output"):
        first.forward(TOKENS, first.new_cache(64))


def KVCacheFor(cfg):  # noqa: N802 (a cache factory for the reference)
    from llamette.cache import KVCache

    return KVCache(cfg.n_layers, cfg.n_kv_heads, cfg.head_dim, 64)


@pytest.mark.parametrize("ngl", [0, 1])
def test_layer_split_with_native_cpu_layers(ngl: int) -> None:
    """-ngl N with the first layers in the native CPU backend: -ngl 0 is the native backend, bit for bit; a
    split gives the reference's logits within the native kernels' rounding, for a prompt and for decode steps
    after it, and the cache can be truncated, shifted, saved and restored across both parts."""
    from llamette.kernels.cpu import available

    if not available():
        pytest.skip("native library not built")
    path = tiny_path("Q8_0")
    ref, native = load(path, backend="ref"), load(path, backend="cpu")
    split = load(path, backend="torch", device="cpu", n_gpu_layers=ngl)
    assert split.net.native is not None and split.net.n_gpu_layers == ngl
    b = ref.net.forward(TOKENS, ref.new_cache(64), all_logits=True)
    cache = split.new_cache(64)
    a = np.concatenate([split.net.forward(TOKENS[:20], cache, all_logits=True),
                        *[split.net.forward([t], cache) for t in TOKENS[20:]]])  # fmt: skip
    assert cache.seq_len == cache.native.seq_len == len(TOKENS)
    assert np.linalg.norm(a - b) / np.linalg.norm(b) < 0.03
    if ngl == 0:
        n = native.net.forward(TOKENS, native.new_cache(64), all_logits=True)
        np.testing.assert_array_equal(split.net.forward(TOKENS, split.new_cache(64), all_logits=True), n)
    snap = cache.snapshot()
    cache.truncate(10)
    assert cache.native.seq_len == 10
    cache.restore(snap)
    again = split.net.forward([TOKENS[0]], cache)
    fresh = split.new_cache(64)  # filled in the same steps (a batch and single tokens round differently)
    split.net.forward(TOKENS[:20], fresh)
    for t in TOKENS[20:]:
        split.net.forward([t], fresh)
    np.testing.assert_array_equal(again, split.net.forward([TOKENS[0]], fresh))


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


@pytest.mark.parametrize("gpu_path", [False, True])
def test_decode_batch_for_the_server(gpu_path: bool) -> None:
    """decode_batch (the server's step for every running request) gives each sequence the bits of its step
    alone: looping on the CPU graph, and in one pass over the weights on the GPU path (under the interpreter)."""
    model = interpreted_gpu_model("Q4_K") if gpu_path else load(tiny_path("Q8_0"), backend="torch", device="cpu")
    caches = [model.new_cache(32) for _ in range(3)]
    alone = []
    for i, c in enumerate(caches):
        model.net.forward(TOKENS[i : i + 4 + i], c)  # sequences of different lengths
        solo = model.new_cache(32)
        model.net.forward(TOKENS[i : i + 4 + i], solo)
        alone.append(model.net.forward([TOKENS[10 + i]], solo)[0])
    out = model.net.decode_batch([TOKENS[10 + i] for i in range(3)], caches)
    np.testing.assert_array_equal(out, np.array(alone))
    assert [c.seq_len for c in caches] == [5, 6, 7]
    with pytest.raises(LlametteError, match="one token per distinct cache"):
        model.net.decode_batch([1, 2], [caches[0], caches[0]])


def interpreted_gpu_model(qtype: str):
    """The tiny model with the GPU path (GGUF blocks, Triton kernels, device-side decode) on the CPU."""
    from llamette.kernels import triton_kernels

    if not triton_kernels.interpreting():
        pytest.skip("a GPU is present: the GPU tests run this path for real")
    model = load(tiny_path(qtype), backend="torch", device="cpu")
    model.net = TorchLlama(model.config, model.gguf, device="cpu", blocks=True)
    assert model.net.device_decode and model.net.device_greedy and not model.net.cuda_graphs
    return model


def test_greedy_on_the_device_equals_the_host_loop(monkeypatch) -> None:
    """generate() with greedy_tokens (argmax on the device, one step launched ahead) gives the host loop's
    tokens, cache contents and stop reason: at max tokens, an end-of-generation token, a full context, and
    a consumer that stops early (the step ahead is taken back out of the cache)."""
    from llamette.generation import GenerationStats, generate
    from llamette.sampling import Sampler

    model = interpreted_gpu_model("Q4_0")
    prompt = TOKENS[:5]

    def run(on_device: bool, n_ctx: int = 64, max_tokens: int = 4, take: int | None = None):
        model.net.device_greedy = on_device
        cache, stats = model.new_cache(n_ctx), GenerationStats()
        out = []
        for t in generate(model, prompt, Sampler(0), max_tokens, cache, stats):
            out.append(t)
            if take is not None and len(out) == take:
                break
        return out, cache.seq_len, list(cache.tokens), stats.stop_reason, stats.n_generated

    host = run(False)
    assert run(True) == host and host[3] == "length"
    for kw in [{"n_ctx": 8, "max_tokens": -1}, {"take": 2}]:
        assert run(True, **kw) == run(False, **kw), kw
    monkeypatch.setattr(model.tokenizer, "is_eog", lambda t: t == host[0][2])
    eog = run(True)
    assert eog[3] == "eog" and eog[0] == host[0][:2] and eog == run(False)


def test_torch_cache_context_shift_and_state() -> None:
    """The torch cache's discard (context shift), snapshot and restore give the logits the reference cache
    gives after the same operations."""
    from llamette.generation import rope_rotation

    model, ref = load(tiny_path("Q8_0"), backend="torch", device="cpu"), load(tiny_path("Q8_0"), backend="ref")
    a, b = model.new_cache(64), ref.new_cache(64)
    model.net.forward(TOKENS[:20], a)
    ref.net.forward(TOKENS[:20], b)
    a.tokens, b.tokens = list(TOKENS[:20]), list(TOKENS[:20])
    a.discard(4, 12, rope_rotation(model))
    b.discard(4, 12, rope_rotation(ref))
    assert a.seq_len == b.seq_len == 12 and a.tokens == b.tokens
    snap = a.snapshot()
    x = model.net.forward(TOKENS[20:23], a, all_logits=True)
    y = ref.net.forward(TOKENS[20:23], b, all_logits=True)
    assert np.abs(x - y).max() <= 1e-5 * np.abs(y).max()
    a.restore(snap)
    assert a.seq_len == 12
    np.testing.assert_array_equal(model.net.forward(TOKENS[20:23], a, all_logits=True), x)


@cuda
def test_cuda_graph_decode_equals_eager(smollm2_path) -> None:
    """Decode steps replayed from CUDA graphs give the bits of the same step launched eagerly, also after the
    cache grows (a new capture over the new buffers), and greedy tokens taken on the GPU one step ahead equal
    the host loop's."""
    from llamette.generation import generate
    from llamette.sampling import Sampler

    graphs = load(smollm2_path, backend="torch")
    eager = load(smollm2_path, backend="torch")
    eager.net.cuda_graphs = False
    assert graphs.net.cuda_graphs and graphs.net.device_greedy
    ids = SMOLLM2_REFERENCE["greedy"][0]["prompt_ids"]
    a, b = graphs.new_cache(4096), eager.new_cache(4096)
    graphs.net.forward(ids, a)
    eager.net.forward(ids, b)
    for i in range(300):  # past the first capacity (256): the graph is captured again
        token = 100 + i
        np.testing.assert_array_equal(graphs.net.forward([token], a), eager.net.forward([token], b))
    for case in SMOLLM2_REFERENCE["greedy"]:
        runs = []
        for on_device in (True, False):
            graphs.net.device_greedy = on_device
            cache = graphs.new_cache(128)
            runs.append((list(generate(graphs, case["prompt_ids"], Sampler(0), 48, cache)), list(cache.tokens)))
        assert runs[0] == runs[1], case["prompt"]
