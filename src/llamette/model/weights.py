"""The tensors a Llama model needs (names are GGUF's), their validation, and loading them as float32."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llamette.errors import GGUFError
from llamette.gguf.reader import GGUFFile
from llamette.model.config import ModelConfig
from llamette.quant import CODECS, dequantize, supported_types


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]  # numpy order: (out_features, in_features) for matrices
    required: bool = True


def llama_tensor_specs(cfg: ModelConfig) -> list[TensorSpec]:
    d, q, kv, ffn = cfg.dim, cfg.q_dim, cfg.kv_dim, cfg.ffn_dim
    specs = [
        TensorSpec("token_embd.weight", (cfg.n_vocab, d)),
        TensorSpec("output_norm.weight", (d,)),
        TensorSpec("output.weight", (cfg.n_vocab, d), required=not cfg.tied_output),
        TensorSpec("rope_freqs.weight", (cfg.rope_dims // 2,), required=False),  # Llama 3.1 RoPE factors
    ]
    for i in range(cfg.n_layers):
        p = f"blk.{i}."
        specs += [
            TensorSpec(p + "attn_norm.weight", (d,)),
            TensorSpec(p + "attn_q.weight", (q, d)),
            TensorSpec(p + "attn_k.weight", (kv, d)),
            TensorSpec(p + "attn_v.weight", (kv, d)),
            TensorSpec(p + "attn_output.weight", (d, q)),
            TensorSpec(p + "ffn_norm.weight", (d,)),
            TensorSpec(p + "ffn_gate.weight", (ffn, d)),
            TensorSpec(p + "ffn_up.weight", (ffn, d)),
            TensorSpec(p + "ffn_down.weight", (d, ffn)),
        ]
        # optional biases, as llama.cpp's llama graph accepts them
        for name, n in (
            ("attn_q", q),
            ("attn_k", kv),
            ("attn_v", kv),
            ("attn_output", d),
            ("ffn_gate", ffn),
            ("ffn_up", ffn),
            ("ffn_down", d),
        ):
            specs.append(TensorSpec(f"{p}{name}.bias", (n,), required=False))
    return specs


def check_tensors(gguf: GGUFFile, cfg: ModelConfig) -> list[TensorSpec]:
    """Validate presence, shape and type of every tensor the model uses; return the specs present."""
    present = []
    for spec in llama_tensor_specs(cfg):
        info = gguf.tensors.get(spec.name)
        if info is None:
            if spec.required:
                raise GGUFError(
                    f"{gguf.path}: tensor '{spec.name}' is missing "
                    f"(a {cfg.arch} model with {cfg.n_layers} layers needs it)"
                )
            continue
        if info.shape != spec.shape:
            raise GGUFError(
                f"{gguf.path}: tensor '{spec.name}' has shape {_ne(info.shape)}, expected {_ne(spec.shape)} "
                "(ggml order: row length first)"
            )
        if info.type not in CODECS:
            names = ", ".join(t.name for t in supported_types())
            raise GGUFError(
                f"{gguf.path}: tensor '{spec.name}' has type {info.type.name}, which llamette cannot run yet "
                f"(supported: {names})"
            )
        present.append(spec)
    return present


def load_weights(gguf: GGUFFile, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """Every tensor the model uses, dequantized to float32 (the reference path; native kernels read blocks)."""
    return {
        spec.name: dequantize(gguf.tensor_bytes(spec.name), gguf.tensors[spec.name].type)
        for spec in check_tensors(gguf, cfg)
    }


def _ne(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in reversed(shape)) + "]"
