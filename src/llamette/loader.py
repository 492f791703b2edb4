"""Loading a model file: GGUF -> config, tokenizer and forward pass, validated before any compute."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamette.default_model import default_model_path
from llamette.errors import GGUFError, LlametteError
from llamette.gguf.reader import GGUFFile
from llamette.kernels import BACKENDS, cuda_gpu_present
from llamette.model.config import ModelConfig
from llamette.model.reference import ReferenceLlama
from llamette.model.weights import check_tensors, load_weights
from llamette.tokenizer import Tokenizer


@dataclass
class Model:
    """A loaded model: its file, hyper-parameters, tokenizer and forward pass."""

    path: Path
    gguf: GGUFFile
    config: ModelConfig
    tokenizer: Tokenizer
    net: Any  # ReferenceLlama or kernels.cpu.NativeLlama: forward(tokens, cache, all_logits), new_cache(n_ctx)
    backend: str = "ref"

    def new_cache(self, n_ctx: int | None = None):
        """An empty KV cache; n_ctx defaults to the context length the model was trained for."""
        return self.net.new_cache(n_ctx or self.config.n_ctx_train)


def resolve_model_path(path: str | os.PathLike | None) -> Path:
    return Path(path) if path is not None else default_model_path()


def open_model_file(path: str | os.PathLike | None) -> tuple[GGUFFile, ModelConfig]:
    """Open and validate a model file (metadata and tensor table), without loading weights."""
    gguf = GGUFFile(resolve_model_path(path))
    config = ModelConfig.from_gguf(gguf)
    check_tensors(gguf, config)
    return gguf, config


def load_tokenizer(path: str | os.PathLike | None) -> Tokenizer:
    """Only the vocabulary: enough to tokenize, for any GGUF file that carries one."""
    with GGUFFile(resolve_model_path(path)) as gguf:
        return Tokenizer.from_gguf(gguf)


def load(
    path: str | os.PathLike | None = None,
    backend: str | None = None,
    n_threads: int | None = None,
    flash_attn: bool = False,
    batch_layout: bool = False,
    device: str | None = None,
    n_gpu_layers: int | None = None,
) -> Model:
    """Load a GGUF model (the default model when path is None).

    backend: "torch" (PyTorch + Triton, the default when a CUDA GPU and llamette[gpu] are there), "cpu"
    (native kernels, the default otherwise when the library was built) or "ref" (the numpy reference).
    n_threads: native threads (default: the physical cores).
    device, n_gpu_layers: the torch backend's device and -ngl (the last N layers there, the rest on the CPU).
    flash_attn: compute attention as llama.cpp does with flash attention on (its command-line tools' default)
        instead of without (llama-cpp-python's default); native backend only, the numbers differ in rounding.
    batch_layout: lay Q4_1 and Q8_0 weights out for decoding many sequences at once (the server); native only.
    """
    from llamette.kernels import cpu

    if backend not in (None, *BACKENDS):
        raise LlametteError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
    if backend is None and cuda_gpu_present():
        backend = "torch"
    if backend is None:
        backend = "cpu" if cpu.available() else "ref"
        if backend == "ref":
            print("warning: native kernels not built, using the slow numpy reference", file=sys.stderr)
    gguf, config = open_model_file(path)
    tokenizer = Tokenizer.from_gguf(gguf)
    if tokenizer.n_vocab > config.n_vocab:
        raise GGUFError(
            f"{gguf.path}: the tokenizer has {tokenizer.n_vocab} tokens but the embedding only {config.n_vocab} rows"
        )
    if backend == "torch":
        from llamette.kernels.torch_backend import TorchLlama

        net = TorchLlama(config, gguf, device=device, n_gpu_layers=n_gpu_layers, n_threads=n_threads)
    elif backend == "cpu":
        net = cpu.NativeLlama(config, gguf, n_threads, flash_attn=flash_attn, batch_layout=batch_layout)
    else:
        net = ReferenceLlama(config, load_weights(gguf, config))
    return Model(gguf.path, gguf, config, tokenizer, net, backend)
