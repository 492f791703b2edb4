"""Meta's original checkpoints: params.json, consolidated.00.pth and a SentencePiece tokenizer.model.

The weights are loaded with torch (an optional dependency) memory-mapped, one tensor's rows at a time. Meta's
Q/K rows are already in the interleaved-pairs order GGUF uses, so nothing is permuted. Hyper-parameters follow
llama.cpp's convert_legacy_llama.py (loadOriginalParamsJson): the feed-forward size from dim, multiple_of and
ffn_dim_multiplier as Meta's model code computes it (checked against the w1 tensor), the context length from
params.json's max_seq_len when present, else guessed as llama.cpp does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from llamette.convert.common import Checkpoint, LlamaParams, Log, llama3_rope_freqs, read_json
from llamette.convert.vocab import spm_vocab
from llamette.errors import LlametteError

_LAYER_NAMES = {
    "attn_norm.weight": "attention_norm.weight",
    "attn_q.weight": "attention.wq.weight",
    "attn_k.weight": "attention.wk.weight",
    "attn_v.weight": "attention.wv.weight",
    "attn_output.weight": "attention.wo.weight",
    "ffn_norm.weight": "ffn_norm.weight",
    "ffn_gate.weight": "feed_forward.w1.weight",
    "ffn_down.weight": "feed_forward.w2.weight",
    "ffn_up.weight": "feed_forward.w3.weight",
}


def is_meta_dir(path: Path) -> bool:
    return (path / "params.json").is_file()


def tensor_names(n_layers: int) -> dict[str, str]:
    """GGUF tensor name -> Meta name."""
    names = {"token_embd.weight": "tok_embeddings.weight"}
    for i in range(n_layers):
        for gguf_name, meta in _LAYER_NAMES.items():
            names[f"blk.{i}.{gguf_name}"] = f"layers.{i}.{meta}"
    names["output_norm.weight"] = "norm.weight"
    names["output.weight"] = "output.weight"
    return names


def import_torch():
    try:
        import torch
    except ImportError:
        raise LlametteError(
            "reading Meta checkpoints (consolidated.*.pth) needs PyTorch, an optional dependency: pip install torch"
        ) from None
    return torch


class TorchSource:
    """A state dict loaded with torch.load(mmap=True): tensors stay on disk until their rows are read."""

    def __init__(self, path: Path) -> None:
        torch = import_torch()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # pickle, zip and torch errors alike
            raise LlametteError(f"{path}: cannot load the checkpoint with torch.load: {e}") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise LlametteError(f"{path}: expected a dict of tensors (a consolidated state dict)")
        self.path, self.state, self.torch = path, state, torch

    def names(self) -> list[str]:
        return list(self.state)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.state[name].shape)

    def read(self, name: str, rows: slice) -> np.ndarray:
        t = self.state[name]
        if not t.is_floating_point():
            raise LlametteError(f"{self.path}: tensor '{name}' is {t.dtype}, expected floating-point weights")
        part = t[rows] if t.dim() else t
        if part.dtype not in (self.torch.float32, self.torch.float16):
            part = part.to(self.torch.float32)
        return part.numpy()


def meta_ffn_dim(dim: int, multiple_of: int, multiplier: float | None) -> int:
    """FeedForward's hidden size in Meta's llama/model.py."""
    hidden = int(2 * (4 * dim) / 3)
    if multiplier is not None:
        hidden = int(multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def _int(params: dict[str, Any], path: Path, key: str, default: Any = None) -> int:
    value = params.get(key)
    if value is None:
        value = default
    if value is None:
        raise LlametteError(f"{path}: {key} is missing")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise LlametteError(f"{path}: {key} is {value!r}, expected a positive integer")
    return value


def meta_params(params: dict[str, Any], path: Path, source: TorchSource, name: str) -> LlamaParams:
    dim = _int(params, path, "dim")
    n_heads = _int(params, path, "n_heads")
    n_kv = _int(params, path, "n_kv_heads", n_heads)
    if dim % n_heads:
        raise LlametteError(f"{path}: dim {dim} is not a multiple of n_heads {n_heads}")
    if "tok_embeddings.weight" not in source.state:
        raise LlametteError(f"{source.path}: tensor 'tok_embeddings.weight' is missing")
    n_vocab = source.shape("tok_embeddings.weight")[0]
    declared = params.get("vocab_size", -1)
    if isinstance(declared, int) and declared > 0 and declared != n_vocab:
        raise LlametteError(
            f"{path}: vocab_size is {declared} but tok_embeddings.weight has {n_vocab} rows in {source.path.name}"
        )
    w1 = source.state.get("layers.0.feed_forward.w1.weight")
    if "multiple_of" in params:
        multiplier = params.get("ffn_dim_multiplier")
        ffn = meta_ffn_dim(dim, _int(params, path, "multiple_of"), multiplier)
        if w1 is not None and w1.shape[0] != ffn:
            raise LlametteError(
                f"{path}: dim {dim}, multiple_of {params['multiple_of']} and ffn_dim_multiplier {multiplier} give "
                f"a feed-forward size of {ffn}, but layers.0.feed_forward.w1.weight has {w1.shape[0]} rows"
            )
    elif w1 is not None:
        ffn = int(w1.shape[0])
    else:
        raise LlametteError(f"{path}: multiple_of is missing (and so is layers.0.feed_forward.w1.weight)")
    rope_base = params.get("rope_theta", 10000.0)
    eps = params.get("norm_eps")
    if params.get("max_seq_len") is not None:
        n_ctx = _int(params, path, "max_seq_len")
    elif params.get("use_scaled_rope"):
        n_ctx = 131072  # Llama 3.1
    elif rope_base == 500000:
        n_ctx = 8192  # Llama 3
    elif rope_base == 1000000:
        n_ctx = 16384  # CodeLlama
    elif eps == 1e-05:
        n_ctx = 4096  # Llama 2
    else:
        n_ctx = 2048  # Llama 1
    head_dim = dim // n_heads
    freqs = None
    if params.get("use_scaled_rope"):
        freqs = llama3_rope_freqs(head_dim, float(rope_base), {"factor": params.get("rope_scaling_factor", 8.0)})
    if params.get("moe"):
        raise LlametteError(f"{path}: mixture-of-experts checkpoints are not supported")
    p = LlamaParams(
        n_vocab=n_vocab,
        dim=dim,
        n_layers=_int(params, path, "n_layers"),
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=head_dim,
        ffn_dim=ffn,
        n_ctx=n_ctx,
        rms_eps=eps if eps is not None else 1e-5,
        rope_base=rope_base,
        rope_dims=head_dim,
        tied="output.weight" not in source.state,
        name=name,
        rope_freqs=freqs,
        source=str(path),
    )
    if eps is None:
        raise LlametteError(f"{path}: norm_eps is missing")
    p.validate()
    return p


def load_meta(model_dir: Path, log: Log) -> Checkpoint:
    params_path = model_dir / "params.json"
    params = read_json(params_path)
    shards = sorted(model_dir.glob("consolidated.*.pth"))
    if not shards:
        raise LlametteError(f"{model_dir}: no consolidated.*.pth weights next to params.json")
    if len(shards) > 1:
        raise LlametteError(
            f"{model_dir}: {len(shards)} model-parallel shards ({shards[0].name} ...): only single-file "
            "checkpoints are supported; merge the shards or convert the Hugging Face checkpoint"
        )
    tokenizer = model_dir / "tokenizer.model"
    if not tokenizer.is_file():
        raise LlametteError(f"{model_dir}: tokenizer.model is missing")
    source = TorchSource(shards[0])
    p = meta_params(params, params_path, source, model_dir.name)
    vocab = spm_vocab(tokenizer, p.n_vocab, model_dir, log)
    ignored = frozenset(n for n in source.names() if n == "rope.freqs")  # Llama 1's precomputed RoPE table
    return Checkpoint(model_dir, p, vocab, source, tensor_names(p.n_layers), ignored)
