"""`llamette quantize`: a GGUF model to another type, with llama.cpp's per-tensor recipes (llama-quant.cpp).

Each tensor is read, converted and written in slabs of rows, so memory stays bounded for files larger than RAM.
Which type each tensor gets follows llama_tensor_get_type: the mix's default type, changed by tensor category
(output, token embedding, attn_v, ffn_down, attn_output, attn_qkv) for the K-quant mixes, then a fallback
when a row is not a whole number of blocks.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llamette.errors import LlametteError
from llamette.gguf.constants import GGML_BLOCK_SIZES, LLAMA_FTYPE_NAMES, GGMLType, GGUFValueType
from llamette.gguf.reader import GGUFFile
from llamette.gguf.writer import GGUFWriter, TensorSpec

T = GGMLType
QUANT_VERSION = 2  # GGML_QNT_VERSION


@dataclass(frozen=True)
class FType:
    """A llama_ftype: the file type id written to general.file_type and the mix's default tensor type."""

    name: str
    id: int
    default: GGMLType


# the mixes quantize offers, with their default tensor type; ids from llama.cpp's llama_ftype table
_MIX_DEFAULTS = {
    "F32": T.F32, "F16": T.F16, "BF16": T.BF16, "Q8_0": T.Q8_0, "Q4_0": T.Q4_0, "Q4_1": T.Q4_1, "Q5_0": T.Q5_0,
    "Q5_1": T.Q5_1, "Q2_K": T.Q2_K, "Q3_K_S": T.Q3_K, "Q3_K_M": T.Q3_K, "Q3_K_L": T.Q3_K, "Q4_K_S": T.Q4_K,
    "Q4_K_M": T.Q4_K, "Q5_K_S": T.Q5_K, "Q5_K_M": T.Q5_K, "Q6_K": T.Q6_K, "IQ4_NL": T.IQ4_NL, "IQ4_XS": T.IQ4_XS,
}  # fmt: skip
_FTYPE_IDS = {name: i for i, name in LLAMA_FTYPE_NAMES.items()}
FTYPES = {name: FType(name, _FTYPE_IDS[name], default) for name, default in _MIX_DEFAULTS.items()}
ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}  # as llama-quantize
TENSOR_TYPES = {t.name: t for t in (T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q2_K, T.Q3_K,
                                    T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_NL, T.IQ4_XS)}  # fmt: skip
FLOAT_TYPES = (T.F32, T.F16, T.BF16)
SLAB_BYTES = 64 << 20  # float32 rows converted at a time


def ftype_named(name: str) -> FType:
    key = ALIASES.get(name.upper(), name.upper())
    if key not in FTYPES:
        raise LlametteError(f"unknown quantization type {name!r}: choose from {', '.join([*FTYPES, *ALIASES])}")
    return FTYPES[key]


def tensor_type_named(name: str) -> GGMLType:
    if name.upper() not in TENSOR_TYPES:
        raise LlametteError(f"unknown tensor type {name!r}: choose from {', '.join(TENSOR_TYPES)}")
    return TENSOR_TYPES[name.upper()]


@dataclass
class Options:
    pure: bool = False
    output_tensor_type: GGMLType | None = None
    token_embedding_type: GGMLType | None = None
    allow_requantize: bool = False
    leave_output_tensor: bool = False


@dataclass
class _Counters:
    """llama.cpp's quantize_state_impl: how many attn_v / ffn_down tensors there are and have been seen."""

    n_attention_wv: int = 0
    i_attention_wv: int = 0
    n_ffn_down: int = 0
    i_ffn_down: int = 0
    tied: bool = True
    n_gqa: int = 1
    log: list[str] = field(default_factory=list)


def category(name: str) -> str:
    """tensor_get_category, for the names llamette loads."""
    if name == "output.weight":
        return "output"
    if name == "token_embd.weight":
        return "token_embd"
    for key in ("attn_qkv.weight", "attn_v.weight", "attn_k.weight", "attn_q.weight", "attn_output.weight"):
        if key in name:
            return key.removesuffix(".weight")
    for key in ("ffn_up", "ffn_gate", "ffn_down"):
        if key in name:
            return key
    return "other"


def quantizable(name: str, shape: tuple[int, ...], options: Options) -> bool:
    """tensor_allows_quantization for Llama: 2-D weights other than norms (and the output, if left alone)."""
    if len(shape) < 2 or not name.endswith("weight") or "_norm.weight" in name:
        return False
    return not (options.leave_output_tensor and name == "output.weight")


def _use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _mix_type(c: _Counters, new: GGMLType, name: str, cols: int, ftype: FType, options: Options) -> GGMLType:
    """llama_tensor_get_type_impl for the types above (not Falcon, not MoE, not 70B-specific)."""
    cat, f = category(name), ftype.name
    if cat == "output" or (c.tied and cat == "token_embd"):
        if options.output_tensor_type is not None:
            return options.output_tensor_type
        if cols % GGML_BLOCK_SIZES[new][0]:
            return T.Q8_0
        return new if new == T.Q8_0 else T.Q6_K
    if cat == "token_embd":
        return options.token_embedding_type if options.token_embedding_type is not None else new
    if cat in ("attn_v", "attn_qkv"):  # category_is_attn_v: a fused qkv counts as attn_v
        if f == "Q2_K":
            new = T.Q4_K if c.n_gqa >= 4 else T.Q3_K
        elif f == "Q3_K_M":
            new = T.Q5_K if c.i_attention_wv < 2 else T.Q4_K
        elif f == "Q3_K_L" or f in ("IQ4_NL", "IQ4_XS") and c.n_gqa >= 4:
            new = T.Q5_K
        elif f in ("Q4_K_M", "Q5_K_M") and _use_more_bits(c.i_attention_wv, c.n_attention_wv):
            new = T.Q6_K
        elif f == "Q4_K_S" and c.i_attention_wv < 4:
            new = T.Q5_K
        c.i_attention_wv += 1
    elif cat == "ffn_down":
        i, n = c.i_ffn_down, c.n_ffn_down
        if f == "Q2_K":
            new = T.Q3_K
        elif f == "Q3_K_M":
            new = T.Q5_K if i < n // 16 else T.Q4_K
        elif f == "Q3_K_L":
            new = T.Q5_K
        elif f == "Q4_K_M":
            if _use_more_bits(i, n):
                new = T.Q6_K
        elif i < n // 8 and f in ("IQ4_NL", "IQ4_XS"):
            new = T.Q5_K
        elif f == "Q5_K_M" and _use_more_bits(i, n):
            new = T.Q6_K
        elif f == "Q4_K_S" and i < n // 8:
            new = T.Q5_K
        c.i_ffn_down += 1
    elif cat == "attn_output":
        new = {"Q2_K": T.Q3_K, "Q3_K_M": T.Q4_K, "Q3_K_L": T.Q5_K}.get(f, new)
    return new


_FALLBACK = {T.IQ4_XS: T.IQ4_NL, T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0, T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0}


def _fallback(new: GGMLType, cols: int, name: str, c: _Counters) -> GGMLType:
    """tensor_type_fallback: a row that is not a whole number of blocks takes a 32-block type, else F16."""
    block = GGML_BLOCK_SIZES[new][0]
    if cols % block == 0:
        return new
    out = _FALLBACK.get(new, new)
    if cols % GGML_BLOCK_SIZES[out][0]:
        out = T.F16
    c.log.append(f"{name}: {cols} columns are not a multiple of {block} ({new.name}): using {out.name}")
    return out


def llama_order(names) -> list[str]:
    """llama.cpp's weights_map order, which its quantizer writes in: by layer number (others first), then name."""

    def key(name: str) -> tuple[int, str]:
        m = re.match(r"blk\.(\d+)\.", name)
        return (int(m.group(1)) if m else -1, name)

    return sorted(names, key=key)


def choose_types(gguf: GGUFFile, ftype: FType, options: Options) -> tuple[dict[str, GGMLType], list[str]]:
    """The type of every tensor in the output, in llama.cpp's order (llama_tensor_get_type), and the fallbacks."""
    tensors = [(name, gguf.tensors[name].type, gguf.tensors[name].shape) for name in llama_order(gguf.tensors)]
    return choose_types_for(gguf.metadata, tensors, ftype, options)


def choose_types_for(
    meta: dict, tensors: list[tuple[str, GGMLType, tuple[int, ...]]], ftype: FType, options: Options
) -> tuple[dict[str, GGMLType], list[str]]:
    """choose_types from the metadata and (name, type, shape) of each tensor, in file order."""
    arch = meta.get("general.architecture", "llama")
    n_head = int(meta.get(f"{arch}.attention.head_count", 1) or 1)
    n_kv = int(meta.get(f"{arch}.attention.head_count_kv", n_head) or n_head)
    c = _Counters(n_gqa=n_head // max(n_kv, 1), n_ffn_down=int(meta.get(f"{arch}.block_count", 0) or 0))
    for name, _, _ in tensors:
        c.n_attention_wv += category(name) in ("attn_v", "attn_qkv")
        c.tied &= name != "output.weight"
    out = {}
    for name, qtype, shape in tensors:
        new = qtype
        if quantizable(name, shape, options):
            cat = category(name)
            if options.token_embedding_type is not None and cat == "token_embd":
                new = options.token_embedding_type
            elif options.output_tensor_type is not None and cat == "output":
                new = options.output_tensor_type
            else:
                new = ftype.default
                if new not in FLOAT_TYPES:
                    if not options.pure:
                        new = _mix_type(c, new, name, shape[-1], ftype, options)
                    new = _fallback(new, shape[-1], name, c)
        out[name] = GGMLType(new)
    return out, c.log


@dataclass
class Summary:
    n_tensors: int = 0
    n_quantized: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    n_params: int = 0
    seconds: float = 0.0
    types: dict[str, int] = field(default_factory=dict)

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.bytes_out / self.n_params if self.n_params else 0.0


def quantize_file(
    src_path: str | os.PathLike,
    dst_path: str | os.PathLike,
    ftype_name: str,
    options: Options | None = None,
    n_threads: int | None = None,
    log: Callable[[str], None] = lambda s: None,
    progress: Callable[[int, int], None] | None = None,
) -> Summary:
    """Write dst_path: src_path's metadata and tensors, converted per the mix. A failure leaves no dst file.
    progress(done, total): input bytes processed so far, after every slab of rows."""
    from llamette.kernels import cpu
    from llamette.quant import dequantize
    from llamette.quant.quantize_native import quantize

    options = options or Options()
    ftype = ftype_named(ftype_name)
    src_path, dst_path = Path(src_path), Path(dst_path)
    if src_path.resolve() == dst_path.resolve():
        raise LlametteError(f"{dst_path}: the output would overwrite the input")
    t0 = time.perf_counter()
    with GGUFFile(src_path) as src:
        types, fallbacks = choose_types(src, ftype, options)
        for line in fallbacks:
            log(f"warning: {line}")
        for name, info in src.tensors.items():
            if types[name] != info.type and info.type not in FLOAT_TYPES and not options.allow_requantize:
                raise LlametteError(
                    f"{src_path}: tensor {name!r} is already {info.type.name}: requantizing loses quality, "
                    "pass --allow-requantize to do it anyway"
                )
        metadata = [(k, src.metadata_types[k], v) for k, v in src.metadata.items()
                    if k not in ("general.file_type", "general.quantization_version")]  # fmt: skip
        metadata += [("general.quantization_version", GGUFValueType.UINT32, QUANT_VERSION),
                     ("general.file_type", GGUFValueType.UINT32, ftype.id)]  # fmt: skip
        order = list(types)  # llama.cpp's order, so the file matches llama-quantize's byte for byte
        specs = [TensorSpec(name, types[name], src.tensors[name].shape) for name in order]
        pool = cpu.ThreadPool(n_threads or cpu.default_threads())
        summary = Summary(n_tensors=len(specs))
        total = sum(info.nbytes for info in src.tensors.values())
        done = 0
        with GGUFWriter(dst_path, metadata, specs, alignment=src.alignment) as out:
            for i, name in enumerate(order):
                info = src.tensors[name]
                new = types[name]
                raw = src.tensor_bytes(name)
                rows, cols = (int(np.prod(info.shape[:-1])) if len(info.shape) > 1 else 1), info.shape[-1]
                shape = str(list(info.shape))
                log(f"[{i + 1:4d}/{len(specs)}] {name:36s} {shape:16s} {info.type.name:>6s} -> {new.name}")
                if new == info.type:
                    out.write(name, raw)
                    done += info.nbytes
                    if progress is not None:
                        progress(done, total)
                else:
                    summary.n_quantized += 1
                    raw2 = raw.reshape(rows, -1)
                    step = max(1, SLAB_BYTES // (4 * cols))
                    for r0 in range(0, rows, step):
                        part = raw2[r0 : r0 + step]
                        x = dequantize(part.reshape(-1), info.type).reshape(len(part), cols).astype(np.float32)
                        out.write_part(name, _convert(x, new, pool, quantize), last=r0 + step >= rows)
                        done += part.nbytes
                        if progress is not None:
                            progress(done, total)
                summary.bytes_in += info.nbytes
                summary.bytes_out += specs[i].nbytes
                summary.n_params += info.n_elements
                summary.types[new.name] = summary.types.get(new.name, 0) + 1
                src.release(name)
    summary.seconds = time.perf_counter() - t0
    return summary


def _convert(x: np.ndarray, new: GGMLType, pool, quantize) -> np.ndarray:
    """float32 rows -> new's bytes."""
    if new == T.F32:
        return x
    return quantize(x, int(new), pool)


def parse_type_list(text: str) -> list[str]:
    return [t for t in re.split(r"[,\s]+", text) if t]
