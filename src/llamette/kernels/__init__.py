"""Compute backends for the model: 'cpu' (the native C library, the default), 'ref' (the numpy oracle) and
'torch' (PyTorch + Triton on a CUDA GPU; on the CPU without one, for testing the graph).

A backend's network offers forward(tokens, cache, all_logits) -> logits and new_cache(n_ctx).
"""

BACKENDS = ("cpu", "ref", "torch")
