"""`llamette info`: a readable report of a GGUF file (architecture, shapes, sizes, types, tokenizer)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np

from llamette.errors import GGUFError
from llamette.gguf.constants import LLAMA_FTYPE_NAMES
from llamette.gguf.reader import GGUFFile
from llamette.loader import resolve_model_path
from llamette.model.config import ModelConfig
from llamette.model.weights import check_tensors
from llamette.tokenizer import Tokenizer
from llamette.tokenizer.vocab import TOKENIZER_MODELS

_MIB = 1024 * 1024


def describe(
    path: str | os.PathLike | None, show_tensors: bool = False, show_metadata: bool = False
) -> tuple[str, str | None]:
    """(report, problem): problem says why llamette cannot run the file, or is None when it can."""
    gguf = GGUFFile(resolve_model_path(path))
    meta = gguf.metadata
    lines: list[str] = []
    add = lines.append
    problem = None
    size = Path(gguf.path).stat().st_size
    add(f"file:          {gguf.path} ({size / _MIB:.1f} MiB, GGUF v{gguf.version})")
    if isinstance(meta.get("general.name"), str):
        add(f"name:          {meta['general.name']}")
    add(f"architecture:  {gguf.architecture or '(none)'}")
    ftype = meta.get("general.file_type")
    if isinstance(ftype, int):
        add(f"file type:     {LLAMA_FTYPE_NAMES.get(ftype, 'unknown')} (general.file_type = {ftype})")

    n_params = sum(t.n_elements for t in gguf.tensors.values())
    n_bytes = sum(t.nbytes for t in gguf.tensors.values())
    if n_params:
        add(
            f"parameters:    {_count(n_params)} in {len(gguf.tensors)} tensors, {n_bytes / _MIB:.1f} MiB "
            f"({8 * n_bytes / n_params:.2f} bits per weight)"
        )
        by_type: Counter[str] = Counter()
        bytes_by_type: Counter[str] = Counter()
        for t in gguf.tensors.values():
            by_type[t.type.name] += 1
            bytes_by_type[t.type.name] += t.nbytes
        add(
            "tensor types:  "
            + ", ".join(f"{name} x{n} ({bytes_by_type[name] / _MIB:.1f} MiB)" for name, n in by_type.most_common())
        )
    try:
        cfg = ModelConfig.from_gguf(gguf)
        add(
            f"shapes:        {cfg.n_layers} layers, embedding {cfg.dim}, feed-forward {cfg.ffn_dim}, "
            f"vocab {cfg.n_vocab}"
        )
        attn = (
            "multi-head"
            if cfg.n_kv_heads == cfg.n_heads
            else ("multi-query" if cfg.n_kv_heads == 1 else f"grouped-query, {cfg.n_rep} query heads per KV head")
        )
        add(f"attention:     {cfg.n_heads} heads, {cfg.n_kv_heads} KV heads ({attn}), head size {cfg.head_dim}")
        rope = f"RoPE base {cfg.rope_base:g} on {cfg.rope_dims} dims"
        if cfg.rope_freq_scale != 1.0:
            rope += f", linear scaling x{1 / cfg.rope_freq_scale:g}"
        add(f"context:       {cfg.n_ctx_train} tokens (trained), {rope}, RMS norm eps {cfg.rms_eps:g}")
        add(f"output:        {'tied to token_embd' if cfg.tied_output else 'separate output.weight'}")
        check_tensors(gguf, cfg)
    except GGUFError as e:
        problem = str(e)
    try:
        lines += _tokenizer_lines(Tokenizer.from_gguf(gguf))
    except GGUFError as e:
        problem = problem or str(e)
    template = meta.get("tokenizer.chat_template")
    if isinstance(template, str):
        add(f"chat template: {len(template)} characters")
        lines += ["    " + line for line in template.splitlines()]
    if show_tensors:
        add("tensors:")
        for t in gguf.tensors.values():
            shape = " x ".join(str(d) for d in reversed(t.shape))
            add(f"    {t.name:40s} {t.type.name:7s} {shape:>16s}  {t.nbytes / 1024:10.1f} KiB  @ {t.offset}")
    if show_metadata:
        add("metadata:")
        for key, value in meta.items():
            add(f"    {key} = {_short(value)}")
    if n_params and not problem:
        add(f"native CPU:    {_native_layout(gguf)}")
    add(f"runs in llamette: {'no (see the error below)' if problem else 'yes'}")
    return "\n".join(lines) + "\n", problem


def _native_layout(gguf: GGUFFile) -> str:
    """How the native backend holds the weights: memory-mapped, plus the interleaved copies it makes at load."""
    from llamette.kernels.cpu import NativeUnavailable, interleaved_bytes

    try:
        copied = interleaved_bytes(gguf)
    except NativeUnavailable:
        return "native library unavailable (the numpy backend dequantizes the weights)"
    if not copied:
        return "weights memory-mapped and read in place"
    return (
        f"weights memory-mapped; {copied / _MIB:.1f} MiB repacked at load into 8-row interleaved blocks "
        "(as llama.cpp's CPU_REPACK), their file pages released"
    )


def _tokenizer_lines(tok: Tokenizer) -> list[str]:
    v = tok.vocab
    kind = TOKENIZER_MODELS[v.model]
    pre = f", pre-tokenizer {v.pre.name}" if v.pre else ""
    merges = f", {len(v.merges)} merges" if v.merges else ""

    def name(i: int | None) -> str:
        return "none" if i is None else f"{i} {v.tokens[i]!r}"

    eog = ", ".join(name(i) for i in sorted(v.eog_ids))
    return [
        f"tokenizer:     {v.model} ({kind}){pre}, {v.n_tokens} tokens{merges}",
        f"special:       BOS {name(v.bos)} ({'added' if v.add_bos else 'not added'}), EOS {name(v.eos)}, "
        f"end of generation: {eog or 'none'}",
    ]


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"


def _short(value: object) -> str:
    if isinstance(value, (list, np.ndarray)):
        items = list(value[:8])
        more = f", ... ({len(value)} items)" if len(value) > 8 else ""
        return "[" + ", ".join(repr(x.item() if hasattr(x, "item") else x) for x in items) + more + "]"
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + f"... ({len(text)} chars)"
