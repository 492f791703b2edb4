"""Choosing the next token from logits: greedy, or temperature sampling with a seeded generator.

The full llama.cpp sampler chain (top-k, top-p, min-p, penalties, mirostat) builds on this later.
"""

from __future__ import annotations

import numpy as np


class Sampler:
    """Greedy (argmax, first of equal maxima) when temperature <= 0; otherwise a draw from
    softmax(logits / temperature). The same seed and settings give the same tokens."""

    def __init__(self, temperature: float = 0.8, seed: int | None = None) -> None:
        self.temperature = temperature
        self.seed = seed if seed is not None else int(np.random.SeedSequence().entropy % 2**32)
        self._rng = np.random.default_rng(self.seed)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    def __call__(self, logits: np.ndarray) -> int:
        """logits (n_vocab,) -> token id."""
        if self.greedy:
            return int(np.argmax(logits))
        scaled = logits.astype(np.float64) / self.temperature
        probs = np.exp(scaled - scaled.max())
        cdf = np.cumsum(probs)
        return int(min(np.searchsorted(cdf, self._rng.random() * cdf[-1], side="right"), len(cdf) - 1))
