"""KV cache for one sequence: per-layer keys and values, grown on demand up to n_ctx."""

from __future__ import annotations

import numpy as np

from llamette.errors import ContextFullError

_MIN_GROWTH = 256  # positions added at least per reallocation


def check_room(seq_len: int, n_tokens: int, n_ctx: int) -> None:
    """Raise ContextFullError when n_tokens more positions would not fit in the context."""
    if seq_len + n_tokens > n_ctx:
        raise ContextFullError(
            f"context is full: {seq_len} tokens in the cache + {n_tokens} new > context size {n_ctx} (raise it with -c)"
        )


def grown_capacity(current: int, needed: int, n_ctx: int) -> int:
    """The next storage size: at least needed, doubling (in steps of >= 256), never past n_ctx."""
    return min(n_ctx, max(needed, 2 * current, _MIN_GROWTH))


class KVCache:
    """k[layer], v[layer]: (capacity, n_kv_heads, head_dim); positions 0..seq_len-1 are filled.

    Storage starts empty and doubles as the sequence grows, so a large n_ctx costs nothing until used.
    """

    def __init__(
        self, n_layers: int, n_kv_heads: int, head_dim: int, n_ctx: int, dtype: np.dtype | type = np.float32
    ) -> None:
        self.n_ctx = n_ctx
        self.seq_len = 0
        self.tokens: list[int] = []  # the ids at positions 0..seq_len-1, kept by the generation loop
        self._shape = (n_kv_heads, head_dim)
        self._dtype = np.dtype(dtype)
        self.k = [np.empty((0, *self._shape), self._dtype) for _ in range(n_layers)]
        self.v = [np.empty((0, *self._shape), self._dtype) for _ in range(n_layers)]

    @property
    def capacity(self) -> int:
        return self.k[0].shape[0] if self.k else 0

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.k) + sum(a.nbytes for a in self.v)

    def extend(self, n_tokens: int) -> int:
        """Reserve the next n_tokens positions; returns the first. Raises ContextFullError past n_ctx."""
        start = self.seq_len
        check_room(start, n_tokens, self.n_ctx)
        if start + n_tokens > self.capacity:
            new_cap = grown_capacity(self.capacity, start + n_tokens, self.n_ctx)
            for store in (self.k, self.v):
                for i, old in enumerate(store):
                    grown = np.empty((new_cap, *self._shape), self._dtype)
                    grown[:start] = old[:start]
                    store[i] = grown
        self.seq_len = start + n_tokens
        return start

    def update_and_fetch(self, layer: int, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Write k, v (T, n_kv_heads, head_dim) at the T positions last reserved; return all (seq_len, ...)."""
        t = k.shape[0]
        self.k[layer][self.seq_len - t : self.seq_len] = k
        self.v[layer][self.seq_len - t : self.seq_len] = v
        return self.k[layer][: self.seq_len], self.v[layer][: self.seq_len]

    def truncate(self, n_tokens: int) -> None:
        """Forget every position from n_tokens on (keeps the prefix, e.g. for prompt reuse)."""
        self.seq_len = min(self.seq_len, max(0, n_tokens))

    def clear(self) -> None:
        self.seq_len = 0
        self.tokens = []

    def discard(self, p0: int, p1: int, rotate_k) -> None:
        """Remove positions [p0, p1) and move the later ones down (llama.cpp's context shift): their keys are
        turned back by p1 - p0 positions with rotate_k(k (T, heads, D), delta) -> k."""
        n, end = p1 - p0, self.seq_len
        for k, v in zip(self.k, self.v, strict=True):
            k[p0 : end - n] = rotate_k(k[p1:end].copy(), -n)
            v[p0 : end - n] = v[p1:end].copy()
        self.seq_len = end - n
        del self.tokens[p0:p1]

    def snapshot(self) -> dict:
        n = self.seq_len
        return {
            "seq_len": n,
            "tokens": list(self.tokens),
            "k": [a[:n].copy() for a in self.k],
            "v": [a[:n].copy() for a in self.v],
        }

    def restore(self, snap: dict) -> None:
        self.seq_len = 0
        self.extend(snap["seq_len"])
        for dst, src in zip(self.k, snap["k"], strict=True):
            dst[: len(src)] = src
        for dst, src in zip(self.v, snap["v"], strict=True):
            dst[: len(src)] = src
        self.tokens = list(snap["tokens"])
