"""Dequantization of every supported GGUF tensor type in numpy: the oracle for native and GPU kernels.

One codec class per format (see base.py); `dequantize` turns a tensor's raw bytes into float32.
"""

from llamette.quant import floats, iquants, kquants, legacy  # noqa: F401  (registers the codecs)
from llamette.quant.base import CODECS, Codec, dequantize, supported_types

__all__ = ["CODECS", "Codec", "dequantize", "supported_types"]
