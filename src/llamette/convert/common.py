"""What every checkpoint layout shares: the model's hyper-parameters, the GGUF tensor plan and the writing.

A layout reader (hf.py, meta.py) produces a `Checkpoint`: hyper-parameters, a vocabulary (GGUF tokenizer
metadata) and a `TensorSource` that reads source tensors a slab of rows at a time. `write_gguf` validates the
plan (every tensor present, of the shape the hyper-parameters imply) before it opens the output, then streams
each tensor through the type conversion into the GGUF writer, which only renames its temporary file into place
when every tensor was written.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from llamette.errors import LlametteError
from llamette.gguf.constants import GGMLType, GGUFValueType
from llamette.gguf.writer import GGUFWriter, TensorSpec

V = GGUFValueType
Log = Callable[[str], None]

# outtype -> (tensor type of 2-D weights, general.file_type: llama.cpp's llama_ftype)
OUTTYPES: dict[str, tuple[GGMLType, int]] = {
    "f32": (GGMLType.F32, 0),
    "f16": (GGMLType.F16, 1),
    "bf16": (GGMLType.BF16, 32),
    "q8_0": (GGMLType.Q8_0, 7),
}
GGML_QUANT_VERSION = 2
SLAB_BYTES = 32 << 20  # float32 bytes of source rows converted at a time


@dataclass
class LlamaParams:
    """Hyper-parameters, named as GGUF's llama.* keys."""

    n_vocab: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    n_ctx: int
    rms_eps: float
    rope_base: float
    rope_dims: int
    tied: bool  # no output.weight: logits use token_embd
    name: str = ""
    rope_scaling_linear: float | None = None  # linear RoPE scaling factor
    rope_freqs: np.ndarray | None = None  # Llama 3.1 RoPE frequency factors (rope_freqs.weight)
    explicit_head_dim: bool = False  # write attention.key_length / value_length (llama.cpp does for HF configs)
    source: str = "config.json"  # where the hyper-parameters came from, for error messages

    def validate(self) -> None:
        for key in ("n_vocab", "dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "ffn_dim", "n_ctx"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise LlametteError(f"{self.source}: {key} is {value!r}, expected a positive integer")
        if self.n_heads % self.n_kv_heads:
            raise LlametteError(
                f"{self.source}: {self.n_heads} attention heads are not a multiple of {self.n_kv_heads} KV heads"
            )
        if self.head_dim % 2:
            raise LlametteError(f"{self.source}: head size {self.head_dim} is odd: RoPE needs pairs")
        for key in ("rms_eps", "rope_base"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise LlametteError(f"{self.source}: {key} is {value!r}, expected a positive number")


@dataclass
class VocabMeta:
    """tokenizer.* metadata, in the order llama.cpp's converter writes it."""

    entries: list[tuple[str, GGUFValueType, Any]] = field(default_factory=list)
    n_tokens: int = 0

    def add(self, key: str, vtype: GGUFValueType, value: Any) -> None:
        self.entries = [e for e in self.entries if e[0] != key]
        self.entries.append((key, vtype, value))

    def get(self, key: str, default: Any = None) -> Any:
        for k, _, v in self.entries:
            if k == key:
                return v
        return default


class TensorSource(Protocol):
    """Source tensors by their checkpoint name."""

    def names(self) -> list[str]: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def read(self, name: str, rows: slice) -> np.ndarray:
        """Rows [start:stop] of the (outermost axis of the) tensor, as float32 or float16."""
        ...


@dataclass
class Checkpoint:
    path: Path  # the model directory
    params: LlamaParams
    vocab: VocabMeta
    source: TensorSource
    names: dict[str, str]  # GGUF tensor name -> source tensor name
    ignored: frozenset[str] = frozenset()  # source tensors that are not converted
    permute_qk: bool = False  # Hugging Face layout: Q/K rows are in HF's rotate-half order


@dataclass
class _Planned:
    gguf_name: str
    src_name: str
    shape: tuple[int, ...]
    type: GGMLType
    rows_perm: np.ndarray | None  # output row r is source row rows_perm[r]


def permute_rows(rows: int, n_head: int) -> np.ndarray:
    """LlamaModel.permute of convert_hf_to_gguf.py as a row index: HF's rotate-half rows -> GGUF's pairs."""
    return np.arange(rows).reshape(n_head, 2, rows // n_head // 2).swapaxes(1, 2).reshape(-1)


def unpermute_rows(rows: int, n_head: int) -> np.ndarray:
    """The inverse: GGUF rows -> Hugging Face rows."""
    return np.argsort(permute_rows(rows, n_head))


def gguf_tensor_shapes(p: LlamaParams, biases: Sequence[str] = ()) -> dict[str, tuple[int, ...]]:
    """GGUF tensor name -> numpy shape, in the order llama.cpp's Llama files list them."""
    d, q, kv, ffn = p.dim, p.n_heads * p.head_dim, p.n_kv_heads * p.head_dim, p.ffn_dim
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (p.n_vocab, d)}
    bias_rows = {"attn_q": q, "attn_k": kv, "attn_v": kv, "attn_output": d, "ffn_gate": ffn, "ffn_up": ffn}
    bias_rows["ffn_down"] = d
    for i in range(p.n_layers):
        b = f"blk.{i}."
        layer = {
            "attn_norm.weight": (d,),
            "attn_q.weight": (q, d),
            "attn_k.weight": (kv, d),
            "attn_v.weight": (kv, d),
            "attn_output.weight": (d, q),
            "ffn_norm.weight": (d,),
            "ffn_gate.weight": (ffn, d),
            "ffn_up.weight": (ffn, d),
            "ffn_down.weight": (d, ffn),
        }
        for key, shape in layer.items():
            shapes[b + key] = shape
            base = key.removesuffix(".weight")
            if base in biases:
                shapes[f"{b}{base}.bias"] = (bias_rows[base],)
    shapes["output_norm.weight"] = (d,)
    if not p.tied:
        shapes["output.weight"] = (p.n_vocab, d)
    return shapes


def _tensor_type(name: str, shape: tuple[int, ...], wanted: GGMLType, log: Log) -> GGMLType:
    """convert_hf_to_gguf.py's choice: 1-D tensors and norms stay F32; Q8_0 needs rows of 32 (else F16)."""
    if len(shape) <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight"):
        return GGMLType.F32
    if wanted == GGMLType.Q8_0 and shape[-1] % 32:
        log(f"{name}: rows of {shape[-1]} values are not a whole number of Q8_0 blocks, falling back to F16")
        return GGMLType.F16
    return wanted


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), rounding to nearest even and keeping NaNs quiet (gguf-py's rounding)."""
    n = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    n = np.where((n & 0x7FFFFFFF) > 0x7F800000, (n & np.uint32(0xFFFF0000)) | np.uint32(64 << 16), n)
    n = (n.astype(np.uint64) + (0x7FFF + ((n >> 16) & 1))) >> 16
    return n.astype(np.uint16)


def _encode(data: np.ndarray, qtype: GGMLType) -> np.ndarray:
    if qtype == GGMLType.F32:
        return np.ascontiguousarray(data, dtype=np.float32)
    if qtype == GGMLType.F16:
        return np.ascontiguousarray(data.astype(np.float16))
    if qtype == GGMLType.BF16:
        return to_bf16_bits(data)
    from llamette.quant.quantize_native import quantize

    return quantize(np.ascontiguousarray(data, dtype=np.float32).reshape(-1, data.shape[-1]), int(qtype))


def _plan(ck: Checkpoint, wanted: GGMLType, log: Log) -> list[_Planned]:
    p = ck.params
    src_names = set(ck.source.names())
    biases = sorted({g.split(".")[2] for g in ck.names if g.endswith(".bias") and ck.names[g] in src_names})
    shapes = gguf_tensor_shapes(p, biases)
    if p.rope_freqs is not None:
        shapes = {"rope_freqs.weight": (len(p.rope_freqs),), **shapes}
    unused = src_names - set(ck.names.values()) - ck.ignored
    if unused:
        listed = ", ".join(sorted(unused)[:5]) + (", ..." if len(unused) > 5 else "")
        raise LlametteError(
            f"{ck.path}: {len(unused)} tensor(s) that a Llama model does not have: {listed} "
            "(is this a Llama-family checkpoint?)"
        )
    plan = []
    for gname, shape in shapes.items():
        if gname == "rope_freqs.weight":
            plan.append(_Planned(gname, "", shape, GGMLType.F32, None))
            continue
        src = ck.names.get(gname)
        if src is None or src not in src_names:
            raise LlametteError(
                f"{ck.path}: tensor '{src or gname}' is missing "
                f"(a model with {p.n_layers} layers needs it; GGUF name {gname})"
            )
        got = tuple(ck.source.shape(src))
        if got != shape:
            raise LlametteError(
                f"{ck.path}: tensor '{src}' has shape {list(got)}, expected {list(shape)} from {p.source} "
                f"(hidden size {p.dim}, {p.n_heads} heads of {p.head_dim}, {p.n_kv_heads} KV heads, "
                f"feed-forward {p.ffn_dim}, vocabulary {p.n_vocab})"
            )
        perm = None
        if ck.permute_qk and gname.split(".")[-2] in ("attn_q", "attn_k"):
            n_head = p.n_heads if gname.split(".")[-2] == "attn_q" else p.n_kv_heads
            perm = permute_rows(shape[0], n_head)
        plan.append(_Planned(gname, src, shape, _tensor_type(gname, shape, wanted, log), perm))
    return plan


def _title(name: str) -> str:
    """gguf-py's Metadata.id_to_title: a directory name as a model name."""
    words = name.strip().replace("-", " ").split()
    return " ".join(w.title() if w.islower() and not re.match(r"^(v\d+(?:\.\d+)*|\d.*)$", w) else w for w in words)


def size_label(n_params: int) -> str:
    """gguf-py's size_label (model_weight_count_rounded_notation): 135M, 1.2B, 1.8M."""
    for limit, scale, suffix in ((1e12, 1e-12, "T"), (1e9, 1e-9, "B"), (1e6, 1e-6, "M"), (0, 1e-3, "K")):
        if n_params > limit or suffix == "K":
            scaled = n_params * scale
            break
    fix = max(2 - len(str(round(scaled)).lstrip("0")), 0)
    return f"{scaled:.{fix}f}{suffix}"


def metadata(ck: Checkpoint, file_type: int, n_params: int) -> list[tuple[str, GGUFValueType, Any]]:
    p = ck.params
    meta: list[tuple[str, GGUFValueType, Any]] = [
        ("general.architecture", V.STRING, "llama"),
        ("general.type", V.STRING, "model"),
        ("general.name", V.STRING, _title(p.name or ck.path.name)),
        ("general.size_label", V.STRING, size_label(n_params)),
        ("llama.block_count", V.UINT32, p.n_layers),
        ("llama.context_length", V.UINT32, p.n_ctx),
        ("llama.embedding_length", V.UINT32, p.dim),
        ("llama.feed_forward_length", V.UINT32, p.ffn_dim),
        ("llama.attention.head_count", V.UINT32, p.n_heads),
        ("llama.attention.head_count_kv", V.UINT32, p.n_kv_heads),
        ("llama.rope.freq_base", V.FLOAT32, float(p.rope_base)),
        ("llama.attention.layer_norm_rms_epsilon", V.FLOAT32, float(p.rms_eps)),
    ]
    if p.rope_scaling_linear is not None:
        meta += [("llama.rope.scaling.type", V.STRING, "linear")]
        meta += [("llama.rope.scaling.factor", V.FLOAT32, float(p.rope_scaling_linear))]
    if p.explicit_head_dim:
        meta += [("llama.attention.key_length", V.UINT32, p.head_dim)]
        meta += [("llama.attention.value_length", V.UINT32, p.head_dim)]
    meta += [
        ("general.file_type", V.UINT32, file_type),
        ("llama.vocab_size", V.UINT32, p.n_vocab),
        ("llama.rope.dimension_count", V.UINT32, p.rope_dims),
    ]
    meta += ck.vocab.entries
    meta += [("general.quantization_version", V.UINT32, GGML_QUANT_VERSION)]
    return meta


def output_path(out_path: str | os.PathLike, model_dir: Path, outtype: str) -> Path:
    out = Path(out_path)
    if out.is_dir():
        out = out / f"{model_dir.name}-{outtype.upper()}.gguf"
    if not out.parent.is_dir():
        raise LlametteError(f"{out}: the output directory {out.parent} does not exist")
    return out


def write_gguf(ck: Checkpoint, out: Path, outtype: str, log: Log) -> Path:
    """Validate the whole plan, then stream every tensor into `out` (nothing is left there on failure)."""
    wanted, file_type = OUTTYPES[outtype]
    plan = _plan(ck, wanted, log)
    if ck.vocab.n_tokens > ck.params.n_vocab:
        raise LlametteError(
            f"{ck.path}: the tokenizer has {ck.vocab.n_tokens} tokens, more than the {ck.params.n_vocab} rows of "
            "the token embedding"
        )
    meta = metadata(ck, file_type, sum(int(np.prod(t.shape)) for t in plan))
    specs = [TensorSpec(t.gguf_name, t.type, t.shape) for t in plan]
    log(f"writing {out}: {len(plan)} tensors, {outtype.upper()}")
    with GGUFWriter(out, meta, specs) as w:
        for i, t in enumerate(plan):
            if t.gguf_name == "rope_freqs.weight":
                w.write(t.gguf_name, np.asarray(ck.params.rope_freqs, dtype=np.float32))
                continue
            log(f"[{i + 1}/{len(plan)}] {t.src_name} -> {t.gguf_name} {t.type.name} {list(reversed(t.shape))}")
            _write_tensor(w, ck.source, t)
    _default_permissions(out)
    return out


def _default_permissions(path: Path) -> None:
    """The writer's temporary file is private (0600): give the result the mode a new file gets (umask)."""
    mask = os.umask(0o022)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def _write_tensor(w: GGUFWriter, source: TensorSource, t: _Planned) -> None:
    rows = t.shape[0]
    if len(t.shape) == 1:
        data = np.asarray(source.read(t.src_name, slice(0, rows)), np.float32)
        w.write(t.gguf_name, _encode(data if t.rows_perm is None else data[t.rows_perm], t.type))
        return
    row_elems = int(np.prod(t.shape[1:]))
    step = max(1, SLAB_BYTES // (4 * row_elems))
    whole = source.read(t.src_name, slice(0, rows)) if t.rows_perm is not None else None
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        rows_slice = slice(start, stop)
        slab = source.read(t.src_name, rows_slice) if whole is None else whole[t.rows_perm[rows_slice]]
        if slab.shape != (stop - start, *t.shape[1:]):
            raise LlametteError(f"tensor '{t.src_name}': read {list(slab.shape)} for rows {start}:{stop}")
        w.write_part(t.gguf_name, _encode(slab, t.type), last=stop == rows)


def check_outtype(outtype: str) -> str:
    key = str(outtype).lower()
    if key not in OUTTYPES:
        raise LlametteError(f"unknown outtype {outtype!r}: choose from {', '.join(OUTTYPES)}")
    return key


def read_json(path: Path) -> dict[str, Any]:
    import json

    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except json.JSONDecodeError as e:
        raise LlametteError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except OSError as e:
        raise LlametteError(f"{path}: cannot read: {e.strerror or e}") from None
    if not isinstance(value, dict):
        raise LlametteError(f"{path}: expected a JSON object")
    return value


def llama3_rope_freqs(head_dim: int, base: float, scaling: dict[str, Any]) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.generate_extra_tensors: Llama 3.1 RoPE frequency factors."""
    # float32 arithmetic, as torch does it there
    f32 = np.float32
    freqs = f32(1.0) / (f32(base) ** (np.arange(0, head_dim, 2, dtype=np.float32) / f32(head_dim)))
    factor = scaling.get("factor", 8.0)
    low = scaling.get("low_freq_factor", 1.0)
    high = scaling.get("high_freq_factor", 4.0)
    old_ctx = scaling.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    out = []
    for freq in freqs:
        wavelen = f32(2 * math.pi) / freq
        if wavelen < high_wavelen:
            out.append(f32(1.0))
        elif wavelen > low_wavelen:
            out.append(f32(factor))
        else:
            smooth = (f32(old_ctx) / wavelen - f32(low)) / f32(high - low)
            out.append(f32(1) / ((f32(1) - smooth) / f32(factor) + smooth))
    return np.asarray(out, dtype=np.float32)
