"""Compute backends for the model: 'cpu' (the native C library, the default), 'ref' (the numpy oracle) and
'torch' (PyTorch + Triton on a CUDA GPU; on the CPU without one, for testing the graph).

A backend's network offers forward(tokens, cache, all_logits) -> logits and new_cache(n_ctx).
"""

import importlib.util
import os

BACKENDS = ("cpu", "ref", "torch")


def cuda_gpu_present() -> bool:
    """Whether an NVIDIA GPU can run the torch backend: a driver, torch and triton installed, and torch sees a
    device (torch is imported only when the driver is there, so a CPU machine pays nothing)."""
    if not os.path.exists("/dev/nvidiactl"):
        return False
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("triton") is None:
        return False
    import torch

    return torch.cuda.is_available()
