"""Hugging Face checkpoints: config.json, *.safetensors (one file or sharded), tokenizer files.

Tensors are read with the `safetensors` package, a slab of rows at a time from its memory map; bfloat16
tensors, which numpy cannot hold, are read as raw 16-bit words and widened to float32. Q and K rows are
permuted back from Hugging Face's rotate-half order to the interleaved pairs GGUF uses (LlamaModel.permute).
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np

from llamette.convert.common import Checkpoint, LlamaParams, Log, llama3_rope_freqs, read_json
from llamette.convert.vocab import hf_vocab
from llamette.errors import LlametteError

ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")
MODEL_TYPES = ("llama", "mistral")

_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": None}  # None: raw 16-bit words
_ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
_ITEMSIZE.update({"F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8})

_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


def is_hf_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def _field(config: dict[str, Any], path: Path, *keys: str, default: Any = None, kind: type = int) -> Any:
    """The first of keys that config has: a positive int (kind int) or a positive finite number (kind float)."""
    for key in keys:
        value = config.get(key)
        if value is None:
            continue
        numeric = isinstance(value, (float, int) if kind is float else int) and not isinstance(value, bool)
        if not numeric or not math.isfinite(value) or value <= 0:
            expected = "a positive integer" if kind is int else "a positive number"
            raise LlametteError(f"{path}: {key} is {value!r}, expected {expected}")
        return value
    if default is None:
        raise LlametteError(f"{path}: {keys[0]} is missing")
    return default


def hf_params(config: dict[str, Any], path: Path, name: str) -> LlamaParams:
    """LlamaModel.set_gguf_parameters: hyper-parameters from config.json, checked."""
    archs = config.get("architectures") or []
    if not isinstance(archs, list):
        raise LlametteError(f"{path}: architectures is {archs!r}, expected a list")
    model_type = config.get("model_type")
    if archs and not any(a in ARCHITECTURES for a in archs):
        raise LlametteError(
            f"{path}: architecture {', '.join(map(str, archs))} is not supported "
            f"(supported: {', '.join(ARCHITECTURES)})"
        )
    if not archs and model_type not in MODEL_TYPES:
        raise LlametteError(f"{path}: model_type {model_type!r} is not supported (supported: {', '.join(MODEL_TYPES)})")
    if config.get("quantization_config"):
        method = config["quantization_config"].get("quant_method", "?")
        raise LlametteError(f"{path}: quantized checkpoints ({method}) are not supported: convert the original weights")
    act = config.get("hidden_act", "silu")
    if act != "silu":
        raise LlametteError(f"{path}: hidden_act {act!r} is not supported (Llama uses silu)")
    dim = _field(config, path, "hidden_size", "n_embd", "dim")
    n_heads = _field(config, path, "num_attention_heads", "n_head", "n_heads")
    n_kv = _field(config, path, "num_key_value_heads", "n_kv_heads", default=n_heads)
    if config.get("head_dim") is None and dim % n_heads:
        raise LlametteError(f"{path}: hidden_size {dim} is not a multiple of num_attention_heads {n_heads}")
    head_dim = _field(config, path, "head_dim", default=dim // n_heads)
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if not isinstance(rope, dict):
        raise LlametteError(f"{path}: rope_scaling is {rope!r}, expected an object")
    rope_base = config.get("rope_theta", rope.get("rope_theta", 10000.0))
    rope_type = rope.get("rope_type", rope.get("type")) or "default"
    linear, freqs = None, None
    if rope_type == "linear":
        linear = _field(rope, path, "factor", kind=float)
    elif rope_type == "llama3":
        freqs = llama3_rope_freqs(head_dim, float(rope_base), rope)
    elif rope_type != "default":
        raise LlametteError(f"{path}: RoPE scaling {rope_type!r} is not supported (supported: linear, llama3)")
    params = LlamaParams(
        n_vocab=_field(config, path, "vocab_size"),
        dim=dim,
        n_layers=_field(config, path, "num_hidden_layers", "n_layer", "n_layers"),
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=head_dim,
        ffn_dim=_field(config, path, "intermediate_size", "n_inner", "hidden_dim"),
        n_ctx=_field(
            config, path, "max_position_embeddings", "n_ctx", "n_positions", "max_length", "max_sequence_length"
        ),
        rms_eps=_field(config, path, "rms_norm_eps", "norm_eps", kind=float),
        rope_base=rope_base,
        rope_dims=head_dim,
        tied=bool(config.get("tie_word_embeddings", False)),
        name=name,
        rope_scaling_linear=linear,
        rope_freqs=freqs,
        # llama.cpp reads config.json through transformers, whose LlamaConfig always has head_dim
        explicit_head_dim=True,
        source=str(path),
    )
    params.validate()
    return params


class SafetensorsSource:
    """Tensors of one or more .safetensors files, read through `safetensors.safe_open` (numpy)."""

    def __init__(self, files: list[Path]) -> None:
        try:
            from safetensors import safe_open
        except ImportError:
            raise LlametteError(
                "reading .safetensors needs the `safetensors` package: pip install safetensors"
            ) from None
        self._where: dict[str, tuple[Path, dict[str, Any], int]] = {}
        self._handles: dict[Path, Any] = {}
        for path in files:
            header, data_start = read_header(path)
            try:
                self._handles[path] = safe_open(str(path), framework="numpy")
            except Exception as e:  # SafetensorError
                raise LlametteError(f"{path}: corrupted safetensors file: {e}") from None
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                if name in self._where:
                    raise LlametteError(f"{path}: tensor '{name}' is also in {self._where[name][0].name}")
                self._where[name] = (path, info, data_start)

    def names(self) -> list[str]:
        return list(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._where[name][1]["shape"])

    def read(self, name: str, rows: slice) -> np.ndarray:
        path, info, data_start = self._where[name]
        dtype, shape = info["dtype"], tuple(info["shape"])
        if dtype not in _DTYPES:
            raise LlametteError(f"{path}: tensor '{name}' is {dtype}: only F32, F16 and BF16 weights can be converted")
        if dtype == "BF16":
            begin = data_start + info["data_offsets"][0]
            words = np.memmap(path, dtype="<u2", mode="r", offset=begin, shape=shape)
            part = np.asarray(words[rows]) if shape else np.asarray(words)
            return (part.astype(np.uint32) << 16).view(np.float32)
        if not shape:
            return np.asarray(self._handles[path].get_tensor(name))
        return np.asarray(self._handles[path].get_slice(name)[rows])


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """A .safetensors header, every entry checked against the file size; (header, offset of the data)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise LlametteError(f"{path}: corrupted safetensors header: the file has only {size} bytes")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8 or n > 100 << 20:
                raise LlametteError(
                    f"{path}: corrupted safetensors header: it claims {n} bytes, "
                    f"the file has {size - 8} after the length"
                )
            raw = f.read(n)
    except OSError as e:
        raise LlametteError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LlametteError(f"{path}: corrupted safetensors header: not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise LlametteError(f"{path}: corrupted safetensors header: not a JSON object")
    data_size = size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        ok = isinstance(info, dict) and isinstance(info.get("shape"), list) and isinstance(info.get("dtype"), str)
        offsets = info.get("data_offsets") if ok else None
        ok = ok and isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(d, int) for d in info["shape"])
        if not ok:
            raise LlametteError(f"{path}: corrupted safetensors header: bad entry for tensor '{name}'")
        begin, end = offsets
        count = int(np.prod(info["shape"], dtype=np.int64))
        expected = count * _ITEMSIZE.get(info["dtype"], 0)
        if not (0 <= begin <= end <= data_size) or (info["dtype"] in _ITEMSIZE and end - begin != expected):
            raise LlametteError(
                f"{path}: corrupted safetensors header: tensor '{name}' ({info['dtype']} {info['shape']}) at bytes "
                f"{begin}..{end} does not fit the {data_size} bytes of data"
            )
    return header, 8 + n


def safetensors_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise LlametteError(f"{index}: weight_map is missing")
        files = sorted({model_dir / f for f in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise LlametteError(f"{index}: shard {missing[0]} is missing from {model_dir}")
        return files
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        other = [p.name for p in model_dir.glob("*.bin")] + [p.name for p in model_dir.glob("*.pth")]
        hint = f" (found {other[0]}: only safetensors weights are read)" if other else ""
        raise LlametteError(f"{model_dir}: no *.safetensors weights{hint}")
    return files


def tensor_names(n_layers: int, prefix: str = "model.") -> dict[str, str]:
    """GGUF tensor name -> Hugging Face name."""
    names = {"token_embd.weight": f"{prefix}embed_tokens.weight"}
    for i in range(n_layers):
        for gguf_name, hf in _LAYER_NAMES.items():
            names[f"blk.{i}.{gguf_name}"] = f"{prefix}layers.{i}.{hf}"
            if gguf_name.endswith("_norm.weight"):
                continue
            names[f"blk.{i}.{gguf_name[:-7]}.bias"] = f"{prefix}layers.{i}.{hf[:-7]}.bias"
    names["output_norm.weight"] = f"{prefix}norm.weight"
    names["output.weight"] = "lm_head.weight"
    return names


def load_hf(model_dir: Path, log: Log) -> Checkpoint:
    config_path = model_dir / "config.json"
    config = read_json(config_path)
    params = hf_params(config, config_path, model_dir.name)
    source = SafetensorsSource(safetensors_files(model_dir))
    available = set(source.names())
    prefix = "" if "embed_tokens.weight" in available else "model."  # LlamaModel checkpoints have no "model."
    names = tensor_names(params.n_layers, prefix)
    ignored = {n for n in available if n.endswith("rotary_emb.inv_freq")}
    if params.tied:
        ignored.add("lm_head.weight")
    vocab = hf_vocab(model_dir, params.n_vocab, log)
    return Checkpoint(model_dir, params, vocab, source, names, frozenset(ignored), permute_qk=True)
