"""GGUF files: the reader (mmap, zero copy, validating) and the format's constants."""

from llamette.gguf.constants import GGML_BLOCK_SIZES, GGMLType, GGUFValueType
from llamette.gguf.reader import GGUFFile, TensorInfo

__all__ = ["GGMLType", "GGUFValueType", "GGML_BLOCK_SIZES", "GGUFFile", "TensorInfo"]
