"""Llama-family models: configuration, tensor layout, and the numpy reference forward pass."""

from llamette.model.config import SUPPORTED_ARCHITECTURES, ModelConfig

__all__ = ["ModelConfig", "SUPPORTED_ARCHITECTURES"]
