"""`llamette convert`: Llama-family checkpoints (Hugging Face or Meta layout) -> llama.cpp-compatible GGUF.

    from llamette.convert import convert
    convert("path/to/model_dir", "model.gguf", outtype="f16")

The layout is detected from the directory: config.json (Hugging Face: safetensors weights, tokenizer.json or
tokenizer.model) or params.json (Meta: consolidated.00.pth and tokenizer.model). The file follows llama.cpp's
convert_hf_to_gguf.py: its tensor names, Q/K permutation, metadata keys, tokenizer metadata and tensor types
(2-D weights in `outtype`, 1-D tensors and norms in F32). Everything is validated before the output is
opened, tensors are streamed a slab of rows at a time, and nothing is left at `out_path` on any error.

export.py writes the other way (GGUF -> a Hugging Face or Meta directory), for round-trip tests.
"""

from __future__ import annotations

import os
from pathlib import Path

from llamette.convert.common import OUTTYPES, Log, check_outtype, output_path, write_gguf
from llamette.errors import LlametteError

__all__ = ["OUTTYPES", "convert", "detect_layout"]


def detect_layout(model_dir: str | os.PathLike) -> str:
    """ "hf" (config.json) or "meta" (params.json); LlametteError for anything else."""
    from llamette.convert.hf import is_hf_dir
    from llamette.convert.meta import is_meta_dir

    path = Path(model_dir)
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a directory"
        raise LlametteError(f"{path}: {what} (expected a model directory)")
    if is_hf_dir(path):
        return "hf"
    if is_meta_dir(path):
        return "meta"
    raise LlametteError(
        f"{path}: neither config.json (Hugging Face layout) nor params.json (Meta layout): not a model directory"
    )


def convert(
    model_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    outtype: str = "f16",
    log: Log | None = None,
) -> Path:
    """Convert the checkpoint in model_dir to a GGUF file at out_path (a directory: a name is made up there).

    outtype: "f32", "f16", "bf16" or "q8_0", the type of 2-D weights. log: called with each progress line.
    Returns the path written.
    """
    log = log or (lambda _line: None)
    outtype = check_outtype(outtype)
    layout = detect_layout(model_dir)
    path = Path(model_dir)
    out = output_path(out_path, path, outtype)
    if layout == "hf":
        from llamette.convert.hf import load_hf

        ck = load_hf(path, log)
    else:
        from llamette.convert.meta import load_meta

        ck = load_meta(path, log)
    log(f"{path}: {layout} layout, {ck.params.n_layers} layers, hidden size {ck.params.dim}")
    return write_gguf(ck, out, outtype, log)
