"""Compute backends for the model: 'cpu' (the native C library, the default) and 'ref' (the numpy oracle).

A backend's network offers forward(tokens, cache, all_logits) -> logits and new_cache(n_ctx).
"""

BACKENDS = ("cpu", "ref")
