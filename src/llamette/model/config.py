"""ModelConfig: the hyper-parameters of a Llama-family model, read and validated from GGUF metadata."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from llamette.errors import GGUFError
from llamette.gguf.reader import GGUFFile

# Llama 1/2/3, Mistral, TinyLlama, SmolLM, ... are all stored as architecture "llama"
SUPPORTED_ARCHITECTURES = ("llama",)


@dataclass(frozen=True)
class ModelConfig:
    arch: str
    n_vocab: int
    dim: int  # embedding width (n_embd)
    n_layers: int
    n_heads: int
    n_kv_heads: int  # < n_heads: grouped-query attention; 1: multi-query
    head_dim: int
    ffn_dim: int
    n_ctx_train: int  # context length the model was trained for
    rms_eps: float
    rope_base: float
    rope_dims: int  # leading dimensions of each head that RoPE rotates (usually head_dim)
    rope_freq_scale: float = 1.0  # linear RoPE scaling: positions are multiplied by this
    tied_output: bool = False  # no output.weight: logits use token_embd
    name: str = ""

    @property
    def n_rep(self) -> int:
        """Query heads per KV head."""
        return self.n_heads // self.n_kv_heads

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    @classmethod
    def from_gguf(cls, gguf: GGUFFile) -> ModelConfig:
        meta, path = gguf.metadata, gguf.path
        arch = meta.get("general.architecture")
        if not isinstance(arch, str):
            raise GGUFError(f"{path}: metadata 'general.architecture' is missing: not a model file")
        if arch not in SUPPORTED_ARCHITECTURES:
            raise GGUFError(
                f"{path}: architecture '{arch}' is not supported (supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
            )
        get = _MetadataGetter(gguf, arch)
        if get.int("expert_count", default=0, minimum=0) > 0:
            raise GGUFError(f"{path}: mixture-of-experts '{arch}' models (Mixtral-style) are not supported yet")
        dim = get.int("embedding_length")
        n_heads = get.int("attention.head_count")
        n_kv_heads = get.int("attention.head_count_kv", default=n_heads)
        if n_heads % n_kv_heads:
            raise GGUFError(
                f"{path}: {arch}.attention.head_count ({n_heads}) is not a multiple of "
                f"{arch}.attention.head_count_kv ({n_kv_heads})"
            )
        if "token_embd.weight" not in gguf.tensors:
            raise GGUFError(f"{path}: tensor 'token_embd.weight' is missing")
        n_vocab_default = gguf.tensors["token_embd.weight"].shape[0]
        default_head_dim = dim // n_heads if dim % n_heads == 0 else None
        head_dim = get.int("attention.key_length", default=default_head_dim)
        value_dim = get.int("attention.value_length", default=head_dim)
        if value_dim != head_dim:
            raise GGUFError(f"{path}: key_length {head_dim} != value_length {value_dim} is not supported")
        rope_dims = get.int("rope.dimension_count", default=head_dim)
        if rope_dims > head_dim or rope_dims % 2:
            raise GGUFError(
                f"{path}: {arch}.rope.dimension_count is {rope_dims}, expected an even number <= head size {head_dim}"
            )
        return cls(
            arch=arch,
            n_vocab=get.int("vocab_size", default=n_vocab_default),
            dim=dim,
            n_layers=get.int("block_count"),
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            head_dim=head_dim,
            ffn_dim=get.int("feed_forward_length"),
            n_ctx_train=get.int("context_length"),
            rms_eps=get.float("attention.layer_norm_rms_epsilon"),
            rope_base=get.float("rope.freq_base", default=10000.0),
            rope_dims=rope_dims,
            rope_freq_scale=_rope_freq_scale(get),
            tied_output="output.weight" not in gguf.tensors,
            name=meta.get("general.name", "") if isinstance(meta.get("general.name"), str) else "",
        )


def _rope_freq_scale(get: _MetadataGetter) -> float:
    kind = get.str("rope.scaling.type", default="none")
    if kind in ("none", ""):
        old_style = get.float("rope.scale_linear", default=1.0)  # pre-2024 files
        return 1.0 / old_style
    if kind == "linear":
        return 1.0 / get.float("rope.scaling.factor")
    raise GGUFError(f"{get.path}: RoPE scaling type '{kind}' is not supported (supported: none, linear)")


class _MetadataGetter:
    """Typed access to '{arch}.*' keys: each value is checked, and the error names key and expectation."""

    _MISSING: Any = object()

    def __init__(self, gguf: GGUFFile, arch: str) -> None:
        self.meta, self.path, self.arch = gguf.metadata, gguf.path, arch

    def _raw(self, key: str, default: Any) -> tuple[str, Any]:
        full = f"{self.arch}.{key}"
        if full in self.meta:
            return full, self.meta[full]
        if default is self._MISSING or default is None:
            raise GGUFError(f"{self.path}: metadata '{full}' is missing")
        return full, default

    def int(self, key: str, default: Any = _MISSING, minimum: int = 1) -> int:
        full, value = self._raw(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise GGUFError(f"{self.path}: metadata '{full}' is {value!r}, expected an integer >= {minimum}")
        return value

    def float(self, key: str, default: Any = _MISSING) -> float:
        full, value = self._raw(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise GGUFError(f"{self.path}: metadata '{full}' is {value!r}, expected a positive number")
        return float(value)

    def str(self, key: str, default: Any = _MISSING) -> str:
        full, value = self._raw(key, default)
        if not isinstance(value, str):
            raise GGUFError(f"{self.path}: metadata '{full}' is {value!r}, expected a string")
        return value
