"""GGUF -> checkpoint directories, the inverse of `convert`: what the round-trip tests start from.

- `export_hf`: config.json, model.safetensors (dequantized float32, Q/K rows permuted back to Hugging Face's
  rotate-half order), tokenizer.json (byte-level BPE, built with the `tokenizers` package from the GGUF
  vocabulary, merges and pre-tokenizer) or tokenizer.model (SentencePiece vocabularies), tokenizer_config.json.
  `transformers` loads the directory as a LlamaForCausalLM.
- `export_meta`: params.json, consolidated.00.pth (torch.save of Meta-named float32 tensors) and a
  SentencePiece tokenizer.model holding the GGUF vocabulary (SentencePiece vocabularies only).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from llamette.convert import spm
from llamette.convert.common import Log, unpermute_rows
from llamette.convert.hf import tensor_names as hf_tensor_names
from llamette.convert.meta import import_torch
from llamette.convert.meta import tensor_names as meta_tensor_names
from llamette.errors import LlametteError
from llamette.gguf.reader import GGUFFile
from llamette.model.config import ModelConfig
from llamette.quant import dequantize
from llamette.tokenizer.pretokenize import pre_tokenizer

__all__ = ["export_hf", "export_meta", "spm_model_from_gguf", "tokenizer_json_from_gguf"]


def _short(x: float) -> float:
    """A float32 metadata value as the shortest decimal that reads back to it (1e-05, not 9.99999974738e-06)."""
    return float(str(np.float32(x)))


def _open(gguf_path: str | os.PathLike) -> tuple[GGUFFile, ModelConfig]:
    g = GGUFFile(gguf_path)
    cfg = ModelConfig.from_gguf(g)
    if "rope_freqs.weight" in g.tensors:
        raise LlametteError(f"{g.path}: RoPE frequency factors (rope_freqs.weight) cannot be exported")
    return g, cfg


def _weights(g: GGUFFile, names: dict[str, str], cfg: ModelConfig, hf: bool) -> Iterator[tuple[str, np.ndarray]]:
    """(checkpoint name, float32 array) for each GGUF tensor, Q/K rows permuted back for Hugging Face."""
    for gguf_name, name in names.items():
        if gguf_name not in g.tensors:
            continue
        info = g.tensors[gguf_name]
        data = dequantize(g.tensor_bytes(gguf_name), info.type).reshape(info.shape)
        kind = gguf_name.split(".")[-2]
        if hf and kind in ("attn_q", "attn_k"):
            data = data[unpermute_rows(info.shape[0], cfg.n_heads if kind == "attn_q" else cfg.n_kv_heads)]
        yield name, np.ascontiguousarray(data, dtype=np.float32)


def _check_names(g: GGUFFile, names: dict[str, str]) -> None:
    extra = [n for n in g.tensors if n not in names]
    if extra:
        raise LlametteError(f"{g.path}: tensor {extra[0]} has no counterpart in the exported layout")


# -- safetensors ----------------------------------------------------------------------------------------------


def write_safetensors(
    path: Path, tensors: list[tuple[str, tuple[int, ...]]], produce: Callable[[], Iterator[tuple[str, np.ndarray]]]
) -> None:
    """A float32 .safetensors file, streamed: the header from the declared shapes, then each array as produced."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in tensors:
        n = int(np.prod(shape, dtype=np.int64)) * 4
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            for (name, shape), (got, data) in zip(tensors, produce(), strict=True):
                if got != name or data.shape != tuple(shape):
                    raise LlametteError(f"{path}: tensor {got} {data.shape} written in place of {name} {shape}")
                f.write(np.ascontiguousarray(data, dtype="<f4").tobytes())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# -- tokenizers -----------------------------------------------------------------------------------------------


def _special_ids(meta: dict[str, Any]) -> dict[str, int]:
    keys = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id", "pad": "padding_token_id"}
    out = {}
    for typ, key in keys.items():
        value = meta.get(f"tokenizer.ggml.{key}")
        if isinstance(value, int) and not isinstance(value, bool):
            out[typ] = value
    return out


def tokenizer_json_from_gguf(meta: dict[str, Any]) -> str:
    """A byte-level BPE GGUF vocabulary as a Hugging Face tokenizer.json (built with `tokenizers`)."""
    try:
        from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    except ImportError:
        raise LlametteError(
            "exporting a BPE tokenizer needs the `tokenizers` package: pip install tokenizers"
        ) from None
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    types = meta.get("tokenizer.ggml.token_type", np.ones(len(tokens), np.int32))
    if len(set(tokens)) != len(tokens):
        raise LlametteError("the GGUF vocabulary has duplicate tokens: a tokenizer.json cannot hold it")
    pre = pre_tokenizer(meta.get("tokenizer.ggml.pre", "default"))
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=pre.ignore_merges, fuse_unk=False))
    splits = [pre_tokenizers.Split(Regex(p), behavior="isolated") for p in pre.patterns]
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tok.decoder = decoders.ByteLevel()
    ids = _special_ids(meta)
    if meta.get("tokenizer.ggml.add_bos_token", pre.add_bos) and "bos" in ids:
        bos = tokens[ids["bos"]]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, ids["bos"])]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    specials = [AddedToken(tokens[i], special=True, normalized=False) for i in np.nonzero(np.asarray(types) == 3)[0]]
    users = [AddedToken(tokens[i], special=False, normalized=False) for i in np.nonzero(np.asarray(types) == 4)[0]]
    tok.add_special_tokens(specials)
    tok.add_tokens(users)
    return tok.to_str(pretty=True)


def spm_model_from_gguf(meta: dict[str, Any]) -> bytes:
    """A SentencePiece (BPE) tokenizer.model holding a GGUF "llama" vocabulary: pieces, scores, types, ids."""
    if meta.get("tokenizer.ggml.model") != "llama":
        raise LlametteError(
            f"a tokenizer.model holds SentencePiece vocabularies only, this one is {meta.get('tokenizer.ggml.model')!r}"
        )
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    n = len(tokens)
    scores = meta.get("tokenizer.ggml.scores", np.zeros(n, np.float32))
    types = [int(t) if int(t) in range(1, 7) else spm.NORMAL for t in meta.get("tokenizer.ggml.token_type", [1] * n)]
    ids = _special_ids(meta)
    model = spm.SentencePieceModel(
        pieces=list(tokens),
        scores=[float(s) for s in scores[:n]],
        types=types,
        model_type=spm.BPE,
        byte_fallback=spm.BYTE in types,
        unk_id=ids.get("unk", 0),
        bos_id=ids.get("bos", 1),
        eos_id=ids.get("eos", 2),
        pad_id=ids.get("pad", -1),
        add_dummy_prefix=bool(meta.get("tokenizer.ggml.add_space_prefix", True)),
        remove_extra_whitespaces=False,
        normalizer_name="identity",
    )
    return spm.serialize(model)


def _tokenizer_config(meta: dict[str, Any], spm_vocab: bool) -> dict[str, Any]:
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    default_bos = True if spm_vocab else pre_tokenizer(meta.get("tokenizer.ggml.pre", "default")).add_bos
    out: dict[str, Any] = {
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", default_bos)),
        "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
    }
    if "tokenizer.ggml.add_space_prefix" in meta:
        out["add_prefix_space"] = bool(meta["tokenizer.ggml.add_space_prefix"])
    for typ, tid in _special_ids(meta).items():
        out[f"{typ}_token"] = tokens[tid]
    if isinstance(meta.get("tokenizer.chat_template"), str):
        out["chat_template"] = meta["tokenizer.chat_template"]
    out["clean_up_tokenization_spaces"] = False
    out["tokenizer_class"] = "LlamaTokenizer" if spm_vocab else "PreTrainedTokenizerFast"
    return out


# -- exporters ------------------------------------------------------------------------------------------------


def _prepare_dir(out_dir: str | os.PathLike) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out


def export_hf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike, log: Log | None = None) -> Path:
    """Write a Hugging Face Llama directory (float32 safetensors) from a GGUF model; returns the directory."""
    log = log or (lambda _line: None)
    g, cfg = _open(gguf_path)
    with g:
        meta = g.metadata
        names = hf_tensor_names(cfg.n_layers)
        names = {k: v for k, v in names.items() if k in g.tensors}
        _check_names(g, names)
        out = _prepare_dir(out_dir)
        ids = _special_ids(meta)
        config: dict[str, Any] = {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": cfg.dim,
            "intermediate_size": cfg.ffn_dim,
            "num_hidden_layers": cfg.n_layers,
            "num_attention_heads": cfg.n_heads,
            "num_key_value_heads": cfg.n_kv_heads,
            "max_position_embeddings": cfg.n_ctx_train,
            "rms_norm_eps": _short(cfg.rms_eps),
            "rope_theta": _short(cfg.rope_base),
            "vocab_size": cfg.n_vocab,
            "tie_word_embeddings": cfg.tied_output,
            "hidden_act": "silu",
            "attention_bias": any(n.endswith("attn_q.bias") for n in g.tensors),
            "mlp_bias": any(n.endswith("ffn_up.bias") for n in g.tensors),
            "torch_dtype": "float32",
        }
        if cfg.head_dim * cfg.n_heads != cfg.dim:
            config["head_dim"] = cfg.head_dim
        if cfg.rope_freq_scale != 1.0:
            config["rope_scaling"] = {"rope_type": "linear", "factor": _short(1.0 / cfg.rope_freq_scale)}
        for typ in ("bos", "eos", "pad"):
            if typ in ids:
                config[f"{typ}_token_id"] = ids[typ]
        (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        shapes = [(name, g.tensors[gname].shape) for gname, name in names.items()]
        log(f"writing {out / 'model.safetensors'}: {len(shapes)} float32 tensors")
        write_safetensors(out / "model.safetensors", shapes, lambda: _weights(g, names, cfg, hf=True))
        spm_vocab = meta.get("tokenizer.ggml.model") == "llama"
        if spm_vocab:
            (out / "tokenizer.model").write_bytes(spm_model_from_gguf(meta))
        else:
            (out / "tokenizer.json").write_text(tokenizer_json_from_gguf(meta), encoding="utf-8")
        (out / "tokenizer_config.json").write_text(
            json.dumps(_tokenizer_config(meta, spm_vocab), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
    return out


def _meta_ffn_params(dim: int, ffn: int) -> tuple[int, float | None]:
    """(multiple_of, ffn_dim_multiplier) for which Meta's FeedForward sizing gives ffn."""
    hidden = int(2 * (4 * dim) / 3)
    if hidden <= ffn:
        return ffn, None  # rounding hidden up to a multiple of ffn gives ffn
    return 1, (ffn + 0.5) / hidden


def export_meta(gguf_path: str | os.PathLike, out_dir: str | os.PathLike, log: Log | None = None) -> Path:
    """Write Meta's original layout (params.json, consolidated.00.pth, tokenizer.model); returns the directory."""
    log = log or (lambda _line: None)
    torch = import_torch()
    g, cfg = _open(gguf_path)
    with g:
        meta = g.metadata
        if any(n.endswith(".bias") for n in g.tensors):
            raise LlametteError(f"{g.path}: Meta checkpoints have no biases")
        if cfg.head_dim * cfg.n_heads != cfg.dim:
            raise LlametteError(f"{g.path}: head size {cfg.head_dim} != dim / heads: not expressible in params.json")
        names = {k: v for k, v in meta_tensor_names(cfg.n_layers).items() if k in g.tensors}
        _check_names(g, names)
        tokenizer = spm_model_from_gguf(meta)
        out = _prepare_dir(out_dir)
        multiple_of, multiplier = _meta_ffn_params(cfg.dim, cfg.ffn_dim)
        params = {
            "dim": cfg.dim,
            "n_layers": cfg.n_layers,
            "n_heads": cfg.n_heads,
            "n_kv_heads": cfg.n_kv_heads,
            "vocab_size": cfg.n_vocab,
            "multiple_of": multiple_of,
            "ffn_dim_multiplier": multiplier,
            "norm_eps": _short(cfg.rms_eps),
            "rope_theta": _short(cfg.rope_base),
            "max_seq_len": cfg.n_ctx_train,
        }
        (out / "params.json").write_text(json.dumps(params, indent=2) + "\n")
        state = {name: torch.from_numpy(data) for name, data in _weights(g, names, cfg, hf=False)}
        log(f"writing {out / 'consolidated.00.pth'}: {len(state)} float32 tensors")
        torch.save(state, out / "consolidated.00.pth")
        (out / "tokenizer.model").write_bytes(tokenizer)
    return out
