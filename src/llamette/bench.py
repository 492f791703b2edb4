"""Throughput benchmark with llama-bench's method: pp (one batch of random prompt tokens into an empty
cache) and tg (random tokens decoded one at a time from an empty cache), each repeated after a warm-up,
reported as tokens/s mean +- sample standard deviation, plus the memory bandwidth tg achieved."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from llamette.loader import Model


@dataclass
class BenchResult:
    test: str  # "pp512", "tg128", as llama-bench names them
    n_prompt: int
    n_gen: int
    samples: list[float] = field(default_factory=list)  # tokens/s of each repetition
    bytes_per_token: float = 0.0  # memory a tg step reads (weights + the KV cache so far, on average); 0 for pp

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples)

    @property
    def std(self) -> float:
        return statistics.stdev(self.samples) if len(self.samples) > 1 else 0.0

    @property
    def gb_per_s(self) -> float | None:
        return self.bytes_per_token * self.mean / 1e9 if self.bytes_per_token else None

    def as_dict(self) -> dict:
        return {**asdict(self), "avg_ts": self.mean, "stddev_ts": self.std, "gb_per_s": self.gb_per_s}


def weight_bytes_per_token(model: Model) -> int:
    """Bytes of weights one decode step streams: every matrix once, but only one row of the embedding table
    (unless the output reuses it)."""
    total = 0
    tied = "output.weight" not in model.gguf.tensors
    for name, info in model.gguf.tensors.items():
        if name == "token_embd.weight" and not tied:
            total += info.nbytes // info.shape[0]
        else:
            total += info.nbytes
    return total


def kv_bytes_per_position(model: Model) -> int:
    c = model.config
    return 2 * c.n_layers * c.n_kv_heads * c.head_dim * 2  # K and V, f16


def random_tokens(model: Model, n: int, rng: np.random.Generator) -> list[int]:
    tokens = [int(t) for t in rng.integers(0, model.config.n_vocab, n)]
    if model.tokenizer.add_bos and model.tokenizer.bos is not None and tokens:
        tokens[0] = model.tokenizer.bos  # like llama-bench
    return tokens


def time_prompt(model: Model, tokens: list[int]) -> float:
    cache = model.new_cache(len(tokens))
    t0 = time.perf_counter()
    model.net.forward(tokens, cache)
    return time.perf_counter() - t0


def time_generation(model: Model, tokens: list[int]) -> float:
    cache = model.new_cache(len(tokens))
    t0 = time.perf_counter()
    for token in tokens:
        model.net.forward([token], cache)
    return time.perf_counter() - t0


def run_bench(
    model: Model,
    n_prompt: int = 512,
    n_gen: int = 128,
    repetitions: int = 5,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> list[BenchResult]:
    """pp{n_prompt} and tg{n_gen} (either skipped when 0), each with one warm-up run first."""
    rng = np.random.default_rng(seed)
    results = []
    if n_prompt > 0:
        pp = BenchResult(f"pp{n_prompt}", n_prompt, 0)
        time_prompt(model, random_tokens(model, n_prompt, rng))  # warm-up: page in the weights
        for r in range(repetitions):
            pp.samples.append(n_prompt / time_prompt(model, random_tokens(model, n_prompt, rng)))
            if progress:
                progress(f"{pp.test}: run {r + 1}/{repetitions}: {pp.samples[-1]:.1f} tok/s")
        results.append(pp)
    if n_gen > 0:
        mean_kv = kv_bytes_per_position(model) * (n_gen + 1) / 2
        tg = BenchResult(f"tg{n_gen}", 0, n_gen, bytes_per_token=weight_bytes_per_token(model) + mean_kv)
        time_generation(model, random_tokens(model, 1, rng))
        for r in range(repetitions):
            tg.samples.append(n_gen / time_generation(model, random_tokens(model, n_gen, rng)))
            if progress:
                progress(f"{tg.test}: run {r + 1}/{repetitions}: {tg.samples[-1]:.1f} tok/s")
        results.append(tg)
    return results


def model_summary(model: Model) -> dict:
    """The model columns of the table: name, quantization, size and parameters."""
    from llamette.gguf.constants import LLAMA_FTYPE_NAMES

    tensors = model.gguf.tensors.values()
    ftype = model.gguf.metadata.get("general.file_type")
    params = sum(int(np.prod(t.shape)) for t in tensors)
    return {
        "file": str(model.path),
        "model": f"{model.config.arch} {_params_label(params)} {LLAMA_FTYPE_NAMES.get(ftype, '?')}",
        "size_bytes": sum(t.nbytes for t in tensors),
        "n_params": params,
        "backend": model.backend,
        "n_threads": getattr(model.net, "n_threads", 1),
        "weights": _weights_note(model),
    }


def _weights_note(model: Model) -> str:
    if model.backend == "torch":
        return _torch_note(model.net)
    if model.backend != "cpu":
        return "dequantized (numpy)"
    copied = getattr(model.net, "repacked_bytes", 0)
    if not copied:
        return "memory-mapped, read in place (not repacked)"
    return f"memory-mapped; {copied / 2**20:.1f} MiB repacked into 8-row interleaved blocks at load (as llama.cpp)"


def _torch_note(net) -> str:
    """Where the torch backend's layers are, and in what form."""
    dev = net.device
    name = dev.type
    if dev.type == "cuda":
        import torch

        name = f"cuda ({torch.cuda.get_device_name(dev)})"
    n = net.cfg.n_layers
    cpu_part = f", {n - net.n_gpu_layers} on the CPU ({'native' if net.native is not None else 'torch'})"
    where = f"{net.n_gpu_layers}/{n} layers on {name}" + (cpu_part if net.n_gpu_layers < n else "")
    blocks = bool(net.layers) and net.layers[-1]["attn_q"].blocks is not None
    form = "GGUF blocks, Triton kernels" if blocks else "dequantized to float32"
    graphs = "; decode as CUDA graphs" if net.cuda_graphs else ""
    return f"{where}; {form}{graphs}"


def _params_label(n: int) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def format_markdown(summary: dict, results: list[BenchResult]) -> str:
    header = "| model | size | params | backend | threads | test | t/s | GB/s |"
    lines = [header, "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |"]
    for r in results:
        gbs = f"{r.gb_per_s:.2f}" if r.gb_per_s else ""
        lines.append(
            f"| {summary['model']} | {summary['size_bytes'] / 2**20:.2f} MiB | {summary['n_params'] / 1e6:.2f} M "
            f"| {summary['backend']} | {summary['n_threads']} | {r.test} | {r.mean:.2f} ± {r.std:.2f} | {gbs} |"
        )
    return "\n".join(lines) + "\n"
