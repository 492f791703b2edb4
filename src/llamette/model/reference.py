"""The reference Llama forward pass in numpy: plain float math on dequantized weights.

It stays forever as the oracle that faster backends are checked against, so it favours clarity over
speed. Shapes: T = new tokens, S = cached positions (including the new ones), D = head_dim.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from llamette.cache import KVCache
from llamette.model.config import ModelConfig


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x (T, dim) / sqrt(mean(x^2) + eps) * weight (dim,)"""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def rope(x: np.ndarray, positions: np.ndarray, cfg: ModelConfig, freq_factors: np.ndarray | None) -> np.ndarray:
    """Rotate x (T, heads, D) in place of its first rope_dims dims, as pairs (x[2i], x[2i+1]).

    GGUF stores Q/K rows permuted so that RoPE rotates adjacent pairs (ggml's "normal" rope mode);
    pair i turns by angle position * freq_scale * base^(-2i / rope_dims) / freq_factors[i].
    """
    n = cfg.rope_dims
    inv_freq = cfg.rope_base ** (-np.arange(0, n, 2, dtype=np.float64) / n)  # (n/2,)
    if freq_factors is not None:
        inv_freq = inv_freq / freq_factors
    theta = (positions.astype(np.float64) * cfg.rope_freq_scale)[:, None] * inv_freq  # (T, n/2)
    cos = np.cos(theta)[:, None, :].astype(x.dtype)  # (T, 1, n/2)
    sin = np.sin(theta)[:, None, :].astype(x.dtype)
    x0, x1 = x[..., 0:n:2], x[..., 1:n:2]
    out = x.copy()
    out[..., 0:n:2] = x0 * cos - x1 * sin
    out[..., 1:n:2] = x0 * sin + x1 * cos
    return out


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, q_positions: np.ndarray) -> np.ndarray:
    """Causal grouped-query attention. q (T, H, D); k, v (S, H_kv, D) for positions 0..S-1 -> (T, H, D)."""
    t, n_heads, d = q.shape
    s, n_kv, _ = k.shape
    qg = q.reshape(t, n_kv, n_heads // n_kv, d).transpose(1, 2, 0, 3)  # (H_kv, rep, T, D)
    scores = qg @ k.transpose(1, 2, 0)[:, None] / np.sqrt(d)  # (H_kv, rep, T, S)
    future = np.arange(s)[None, :] > q_positions[:, None]  # (T, S): keys after the query
    scores = np.where(future, -np.inf, scores)
    scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probs = scores / scores.sum(axis=-1, keepdims=True)
    out = probs @ v.transpose(1, 0, 2)[:, None]  # (H_kv, rep, T, D)
    return out.transpose(2, 0, 1, 3).reshape(t, n_heads, d)


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


@dataclass
class _Layer:
    """One transformer block's weights, (out_features, in_features) as stored in GGUF."""

    attn_norm: np.ndarray  # (dim,)
    attn_q: np.ndarray  # (n_heads * D, dim)
    attn_k: np.ndarray  # (n_kv_heads * D, dim)
    attn_v: np.ndarray  # (n_kv_heads * D, dim)
    attn_output: np.ndarray  # (dim, n_heads * D)
    ffn_norm: np.ndarray  # (dim,)
    ffn_gate: np.ndarray  # (ffn, dim)
    ffn_up: np.ndarray  # (ffn, dim)
    ffn_down: np.ndarray  # (dim, ffn)
    biases: dict[str, np.ndarray]  # optional, keyed by the weight's name ("attn_q", ...)

    def linear(self, name: str, x: np.ndarray) -> np.ndarray:
        y = x @ getattr(self, name).T
        bias = self.biases.get(name)
        return y if bias is None else y + bias


class ReferenceLlama:
    """Forward pass over a KV cache: prefill a batch of tokens, then decode one at a time."""

    def __init__(self, cfg: ModelConfig, weights: dict[str, np.ndarray], dtype: type = np.float32) -> None:
        self.cfg = cfg
        w = {name: a.astype(dtype, copy=False) for name, a in weights.items()}
        self.dtype = dtype
        self.token_embd = w["token_embd.weight"]  # (n_vocab, dim)
        self.output_norm = w["output_norm.weight"]  # (dim,)
        self.output = w.get("output.weight", self.token_embd)  # (n_vocab, dim): tied to the embedding if absent
        self.rope_freqs = w.get("rope_freqs.weight")  # (rope_dims / 2,) or None
        names = (
            "attn_norm",
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "ffn_norm",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
        )
        self.layers = [
            _Layer(
                **{n: w[f"blk.{i}.{n}.weight"] for n in names},
                biases={n: w[f"blk.{i}.{n}.bias"] for n in names if f"blk.{i}.{n}.bias" in w},
            )
            for i in range(cfg.n_layers)
        ]

    def new_cache(self, n_ctx: int) -> KVCache:
        return KVCache(self.cfg.n_layers, self.cfg.n_kv_heads, self.cfg.head_dim, n_ctx, dtype=self.dtype)

    def decode_batch(self, tokens: Sequence[int], caches: list[KVCache]) -> np.ndarray:
        """One decode step for several sequences (one after another: exact math has no batching effects)."""
        return np.concatenate([self.forward([t], c) for t, c in zip(tokens, caches, strict=True)])

    def forward(
        self, tokens: Sequence[int] | np.ndarray, cache: KVCache, all_logits: bool = False, hidden: bool = False
    ) -> np.ndarray:
        """Run T new tokens after what the cache holds; logits (T, n_vocab) if all_logits else (1, n_vocab).
        hidden: the final-normed hidden states (T, dim) instead (llama.cpp's embeddings)."""
        cfg = self.cfg
        tokens = np.asarray(tokens, dtype=np.int64)
        t = len(tokens)
        start = cache.extend(t)
        positions = np.arange(start, start + t)
        x = self.token_embd[tokens]  # (T, dim)
        for i, layer in enumerate(self.layers):
            h = rms_norm(x, layer.attn_norm, cfg.rms_eps)
            q = layer.linear("attn_q", h).reshape(t, cfg.n_heads, cfg.head_dim)
            k = layer.linear("attn_k", h).reshape(t, cfg.n_kv_heads, cfg.head_dim)
            v = layer.linear("attn_v", h).reshape(t, cfg.n_kv_heads, cfg.head_dim)
            q = rope(q, positions, cfg, self.rope_freqs)
            k = rope(k, positions, cfg, self.rope_freqs)
            k_all, v_all = cache.update_and_fetch(i, k, v)  # (S, n_kv_heads, D)
            a = attention(q, k_all, v_all, positions).reshape(t, cfg.q_dim)
            x = x + layer.linear("attn_output", a)
            h = rms_norm(x, layer.ffn_norm, cfg.rms_eps)
            x = x + layer.linear("ffn_down", silu(layer.linear("ffn_gate", h)) * layer.linear("ffn_up", h))
        if hidden:
            return rms_norm(x, self.output_norm, cfg.rms_eps)
        if not all_logits:
            x = x[-1:]
        return rms_norm(x, self.output_norm, cfg.rms_eps) @ self.output.T  # (T or 1, n_vocab)
