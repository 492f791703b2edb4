"""Text embeddings: the final-normed hidden states of a text's tokens, mean-pooled (llama.cpp's pooling "mean")."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llamette.loader import Model


def pooled_embedding(model: Model, cache, ids: Sequence[int], normalize: bool = True, n_batch: int = 512) -> np.ndarray:
    """ids -> (dim,) float64: their hidden states averaged, L2-normalised when normalize. cache is cleared."""
    cache.clear()
    batches = [ids[s : s + n_batch] for s in range(0, len(ids), n_batch)]
    hidden = np.concatenate([model.net.forward(b, cache, hidden=True) for b in batches])  # (T, dim)
    v = hidden.mean(axis=0, dtype=np.float64)
    return v / max(float(np.linalg.norm(v)), 1e-12) if normalize else v
