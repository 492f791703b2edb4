"""The native CPU backend: ctypes bindings to llamette's C library (csrc/) and the model it runs.

Weights stay in the memory-mapped GGUF file; the C side reads their blocks in place. Everything is
validated here before it reaches C, so bad input gives a Python error, never a crash.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.machinery
import os
from ctypes import POINTER, c_float, c_int, c_int64, c_size_t, c_void_p
from pathlib import Path

import numpy as np

from llamette.cache import check_room, grown_capacity
from llamette.errors import LlametteError
from llamette.gguf.constants import GGMLType
from llamette.gguf.reader import GGUFFile
from llamette.model.config import ModelConfig
from llamette.model.weights import check_tensors
from llamette.quant import dequantize

ABI_VERSION = 6


class NativeUnavailable(LlametteError):
    """The C library is missing (not built) or does not match this Python code."""


# -- the library -------------------------------------------------------------------------------------------


LM_REPACKED = 1
LM_INTERLEAVED = 2
LM_PACK16 = 4  # the server's 16-row layout (mm16.c)
# llama.cpp (x86 with AVX2; Q2_K needs AVX-512) repacks these weight types into 8-row interleaved blocks when
# rows % 8 == 0, and their kernels round differently: the native kernels compute what llama.cpp's would,
# reading the GGUF layout in place (nothing is repacked here)
REPACKED_TYPES = frozenset({GGMLType.Q4_0, GGMLType.IQ4_NL, GGMLType.Q4_K, GGMLType.Q2_K})


class LmWeight(ctypes.Structure):
    _fields_ = [
        ("data", c_void_p),
        ("type", c_int64),
        ("rows", c_int64),
        ("cols", c_int64),
        ("row_bytes", c_int64),
        ("flags", c_int64),
    ]


class LmLayer(ctypes.Structure):
    _fields_ = [
        ("attn_norm", c_void_p), ("ffn_norm", c_void_p),
        ("wq", LmWeight), ("wk", LmWeight), ("wv", LmWeight), ("wo", LmWeight),
        ("gate", LmWeight), ("up", LmWeight), ("down", LmWeight),
        ("bq", c_void_p), ("bk", c_void_p), ("bv", c_void_p), ("bo", c_void_p),
        ("bgate", c_void_p), ("bup", c_void_p), ("bdown", c_void_p),
    ]  # fmt: skip


class LmModel(ctypes.Structure):
    _fields_ = [
        ("n_layers", c_int64), ("dim", c_int64), ("n_heads", c_int64), ("n_kv_heads", c_int64),
        ("head_dim", c_int64), ("ffn_dim", c_int64), ("n_vocab", c_int64), ("rope_dims", c_int64),
        ("rms_eps", c_float), ("rope_base", c_float), ("rope_freq_scale", c_float), ("attn_scale", c_float),
        ("rope_freqs", c_void_p), ("output_norm", c_void_p),
        ("token_embd", LmWeight), ("output", LmWeight), ("layers", POINTER(LmLayer)), ("flash_attn", c_int64),
        ("batch_layout", c_int64),
    ]  # fmt: skip


class LmKV(ctypes.Structure):
    _fields_ = [("capacity", c_int64), ("k", POINTER(c_void_p)), ("v", POINTER(c_void_p))]


def _library_path() -> Path | None:
    override = os.environ.get("LLAMETTE_NATIVE_LIB")  # a development build of csrc/ to use instead
    if override:
        return Path(override)
    here = Path(__file__).resolve().parent.parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = here / f"_native{suffix}"
        if path.exists():
            return path
    return None


@functools.cache
def library() -> ctypes.CDLL:
    path = _library_path()
    if path is None:
        raise NativeUnavailable(
            "the native library was not built (no llamette/_native*.so): reinstall with `pip install .` "
            "on a machine with a C compiler, or use --backend ref"
        )
    lib = ctypes.CDLL(str(path))  # CDLL releases the GIL during every call
    if lib.lm_abi_version() != ABI_VERSION:
        raise NativeUnavailable(f"{path} is from another llamette version: reinstall with `pip install .`")
    sig = {
        "lm_pool_create": (c_void_p, [c_int]),
        "lm_pool_free": (None, [c_void_p]),
        "lm_build_info": (ctypes.c_char_p, []),
        "lm_block_size": (c_int, [c_int, POINTER(c_int)]),
        "lm_dequantize_row": (c_int, [c_int, c_void_p, c_void_p, c_int64]),
        "lm_act_type": (c_int, [c_int]),
        "lm_act_row_bytes": (c_int64, [c_int, c_int64]),
        "lm_quantize_act": (c_int, [c_int, c_void_p, c_void_p, c_int64]),
        "lm_vec_dot": (c_float, [c_int, c_int64, c_void_p, c_void_p]),
        "lm_matmul": (c_int, [c_void_p, c_int, c_int64, c_void_p, c_int64, c_int64, c_void_p, c_int64, c_void_p]),
        "lm_can_interleave": (c_int, [c_int]),
        "lm_quantize_rows_mt": (c_int, [c_void_p, c_int, c_void_p, c_void_p, c_int64, c_int64]),
        "lm_can_pack16": (c_int, [c_int]),
        "lm_pack16_bytes": (c_int64, [c_int, c_int64, c_int64]),
        "lm_pack16": (c_int, [c_int, c_void_p, c_void_p, c_int64, c_int64]),
        "lm_interleave": (c_int, [c_int, c_void_p, c_void_p, c_int64, c_int64]),
        "lm_forward_workspace_bytes": (c_size_t, [POINTER(LmModel), POINTER(LmKV), c_int64, c_int]),
        "lm_forward_seqs": (
            c_int,
            [
                c_void_p,
                POINTER(LmModel),
                c_void_p,
                POINTER(LmKV),
                c_void_p,
                c_void_p,
                c_int64,
                c_void_p,
                c_void_p,
                c_size_t,
            ],
        ),
        "lm_forward_residual": (
            c_int,
            [c_void_p, POINTER(LmModel), POINTER(LmKV), c_void_p, c_int64, c_int64, c_void_p, c_size_t],
        ),
        "lm_forward": (
            c_int,
            [
                c_void_p,
                POINTER(LmModel),
                POINTER(LmKV),
                c_void_p,
                c_int64,
                c_int64,
                c_int64,
                c_void_p,
                c_void_p,
                c_size_t,
            ],
        ),
    }
    for name, (restype, argtypes) in sig.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


def available() -> bool:
    try:
        library()
        return True
    except (NativeUnavailable, OSError):
        return False


def default_threads() -> int:
    """Physical cores this process may run on (hyper-threads share a core's memory bandwidth)."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add((topo.joinpath("physical_package_id").read_text(), topo.joinpath("core_id").read_text()))
        except OSError:
            return max(1, len(cpus))
    return max(1, len(cores))


class ThreadPool:
    """Owns a native thread pool; n threads including the caller."""

    def __init__(self, n_threads: int) -> None:
        if not isinstance(n_threads, int) or not 1 <= n_threads <= 1024:
            raise LlametteError(f"thread count must be 1 to 1024, got {n_threads!r}")
        self.n_threads = n_threads
        self.handle = library().lm_pool_create(n_threads)

    def __del__(self) -> None:
        if getattr(self, "handle", None):
            library().lm_pool_free(self.handle)
            self.handle = None


def _ptr(a: np.ndarray | None) -> int | None:
    return None if a is None else a.ctypes.data


# -- kernels, for tests and single ops --------------------------------------------------------------------


def act_row_bytes(wtype: int, k: int) -> int:
    return library().lm_act_row_bytes(int(wtype), k)


def quantize_activations(wtype: int, x: np.ndarray) -> np.ndarray:
    """x (n, k) float32 -> (n, row_bytes) uint8: the activation format ggml pairs with weight type wtype."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, k = x.shape
    rb = act_row_bytes(wtype, k)
    if rb < 0:
        raise LlametteError(f"no activation format for type {wtype} with rows of {k}")
    out = np.zeros((n, rb), np.uint8)
    for i in range(n):
        library().lm_quantize_act(int(wtype), x[i].ctypes.data, out[i].ctypes.data, k)
    return out


def dequantize_rows(wtype: int, raw: np.ndarray, k: int) -> np.ndarray:
    """Rows of a GGUF tensor (rows, bytes per row) -> (rows, k) float32, as the embedding lookup reads them."""
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    block = c_int()
    qk = library().lm_block_size(int(wtype), ctypes.byref(block))
    if qk == 0 or k % qk or raw.shape[1] != k // qk * block.value:
        raise LlametteError(f"dequantize_rows: shapes do not fit (type {wtype}, k {k}, rows {raw.shape})")
    out = np.empty((raw.shape[0], k), np.float32)
    for i in range(raw.shape[0]):
        if library().lm_dequantize_row(int(wtype), raw[i].ctypes.data, out[i].ctypes.data, k):
            raise LlametteError(f"dequantize_rows: type {wtype} not supported")
    return out


def pack16(wtype: int, w: np.ndarray, k: int) -> np.ndarray:
    """W (rows, bytes per row) in GGUF blocks -> the server's 16-row layout (Q4_1, Q8_0, rows % 16 == 0)."""
    lib = library()
    rows = w.shape[0]
    if not lib.lm_can_pack16(int(wtype)) or rows % 16:
        raise LlametteError(f"type {wtype} with {rows} rows has no 16-row layout in this build")
    out = np.empty(lib.lm_pack16_bytes(int(wtype), rows, k), np.uint8)
    if lib.lm_pack16(int(wtype), np.ascontiguousarray(w).ctypes.data, out.ctypes.data, rows, k):
        raise LlametteError(f"type {wtype}: the weights could not be packed")
    return out.reshape(rows, -1)


def can_pack16(wtype: int, rows: int) -> bool:
    return bool(library().lm_can_pack16(int(wtype))) and rows % 16 == 0


def matmul(
    pool: ThreadPool,
    wtype: int,
    w: np.ndarray,
    k: int,
    x: np.ndarray,
    repacked: bool = False,
    interleave: bool = False,
    packed16: bool = False,
) -> np.ndarray:
    """x (n, k) float32 times W^T, W (rows, bytes per row) in its GGUF block layout -> (n, rows) float32.
    repacked: round as llama.cpp's 8-row repacked kernels do (REPACKED_TYPES, rows % 8 == 0).
    interleave: also copy W into the interleaved layout the model uses for it where the build supports that.
    packed16: copy W into the server's 16-row layout and multiply with that (Q4_1, Q8_0)."""
    lib = library()
    block = c_int()
    qk = lib.lm_block_size(int(wtype), ctypes.byref(block))
    w = np.ascontiguousarray(w, dtype=np.uint8)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if qk == 0 or k % qk or w.shape[1] != k // qk * block.value or x.shape[1] != k:
        raise LlametteError(f"matmul: shapes do not fit (type {wtype}, k {k}, weight {w.shape}, x {x.shape})")
    if repacked and (wtype not in REPACKED_TYPES or w.shape[0] % 8):
        raise LlametteError(f"matmul: type {wtype} with {w.shape[0]} rows has no repacked layout")
    y = np.empty((x.shape[0], w.shape[0]), np.float32)
    flags = LM_REPACKED if repacked else 0
    if packed16:
        w, flags = pack16(wtype, w, k), LM_PACK16
    if interleave:
        if not (repacked and lib.lm_can_interleave(int(wtype))):
            raise LlametteError(f"matmul: type {wtype} is not interleaved by this build")
        copy = np.empty_like(w)
        lib.lm_interleave(int(wtype), w.ctypes.data, copy.ctypes.data, w.shape[0], k)
        w, flags = copy, flags | LM_INTERLEAVED
    rc = lib.lm_matmul(pool.handle, int(wtype), flags, w.ctypes.data, w.shape[0], k, x.ctypes.data, x.shape[0],
                       y.ctypes.data)  # fmt: skip
    if rc:
        raise LlametteError(f"matmul failed for type {wtype}")
    return y


# -- the model --------------------------------------------------------------------------------------------


class NativeKVCache:
    """K and V for one sequence, half floats, grown on demand: K (layer)(kv_head, position, head_dim),
    V transposed (layer)(kv_head, head_dim, position) as llama.cpp keeps it."""

    def __init__(self, cfg: ModelConfig, n_ctx: int) -> None:
        self.cfg, self.n_ctx, self.seq_len = cfg, n_ctx, 0
        self.tokens: list[int] = []  # the ids at positions 0..seq_len-1, kept by the generation loop
        self.k: list[np.ndarray] = []
        self.v: list[np.ndarray] = []
        self.struct = LmKV(0, None, None)
        self._resize(0)

    @property
    def capacity(self) -> int:
        return self.struct.capacity

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.k) + sum(a.nbytes for a in self.v)

    def _resize(self, capacity: int) -> None:
        c, keep = self.cfg, self.seq_len
        k = [np.zeros((c.n_kv_heads, capacity, c.head_dim), np.float16) for _ in range(c.n_layers)]
        v = [np.zeros((c.n_kv_heads, c.head_dim, capacity), np.float16) for _ in range(c.n_layers)]
        for new, old in zip(k, self.k, strict=False):
            new[:, :keep] = old[:, :keep]
        for new, old in zip(v, self.v, strict=False):
            new[:, :, :keep] = old[:, :, :keep]
        self.k, self.v = k, v
        self._k_ptrs = (c_void_p * c.n_layers)(*[a.ctypes.data for a in k])
        self._v_ptrs = (c_void_p * c.n_layers)(*[a.ctypes.data for a in v])
        self.struct = LmKV(capacity, self._k_ptrs, self._v_ptrs)

    def reserve(self, n_tokens: int) -> int:
        """Room for n_tokens more positions; returns the first. Raises ContextFullError past n_ctx."""
        start = self.seq_len
        check_room(start, n_tokens, self.n_ctx)
        if start + n_tokens > self.capacity:
            self._resize(grown_capacity(self.capacity, start + n_tokens, self.n_ctx))
        return start

    def truncate(self, n_tokens: int) -> None:
        self.seq_len = min(self.seq_len, max(0, n_tokens))
        del self.tokens[self.seq_len :]

    def clear(self) -> None:
        self.seq_len = 0
        self.tokens = []

    def discard(self, p0: int, p1: int, rotate_k) -> None:
        """Remove positions [p0, p1) and move the later ones down (llama.cpp's context shift): their keys are
        turned back by p1 - p0 positions with rotate_k(k (T, heads, D) float32, delta) -> k."""
        n, end = p1 - p0, self.seq_len
        for k, v in zip(self.k, self.v, strict=True):
            moved = k[:, p1:end].astype(np.float32).transpose(1, 0, 2)  # (T, kv_heads, D)
            k[:, p0 : end - n] = rotate_k(moved, -n).transpose(1, 0, 2).astype(np.float16)
            v[:, :, p0 : end - n] = v[:, :, p1:end].copy()
        self.seq_len = end - n
        del self.tokens[p0:p1]

    def snapshot(self) -> dict:
        """A copy of the filled positions (for save_state)."""
        n = self.seq_len
        return {
            "seq_len": n,
            "tokens": list(self.tokens),
            "k": [a[:, :n].copy() for a in self.k],
            "v": [a[:, :, :n].copy() for a in self.v],
        }

    def restore(self, snap: dict) -> None:
        n = snap["seq_len"]
        self.seq_len = 0
        self.reserve(n)
        for dst, src in zip(self.k, snap["k"], strict=True):
            dst[:, :n] = src
        for dst, src in zip(self.v, snap["v"], strict=True):
            dst[:, :, :n] = src
        self.seq_len = n
        self.tokens = list(snap["tokens"])


def can_interleave(wtype: int) -> bool:
    """Whether this build reads weights of this type from an 8-row interleaved copy (llama.cpp's CPU_REPACK)."""
    return bool(library().lm_can_interleave(int(wtype)))


def weight_layout(name: str, wtype: int, rows: int) -> int:
    """LM_* flags for a model tensor: llama.cpp's repacked rounding where it repacks (REPACKED_TYPES, rows % 8
    == 0; never the embedding table, read by rows even as the tied output), and an interleaved copy where this
    build has one for the type."""
    if wtype not in REPACKED_TYPES or rows % 8 or name == "token_embd.weight":
        return 0
    return LM_REPACKED | (LM_INTERLEAVED if can_interleave(wtype) else 0)


def interleaved_bytes(gguf: GGUFFile) -> int:
    """Bytes of this file's weights the native backend copies into the interleaved layout at load."""
    return sum(t.nbytes for name, t in gguf.tensors.items() if weight_layout(name, t.type, t.shape[0]) & LM_INTERLEAVED)


class NativeLlama:
    """The Llama forward pass in C: llama.cpp's arithmetic, reading the GGUF file's blocks in place."""

    def __init__(
        self,
        cfg: ModelConfig,
        gguf: GGUFFile,
        n_threads: int | None = None,
        flash_attn: bool = False,
        n_ubatch: int = 512,
        batch_layout: bool = False,
        with_output: bool = True,
    ) -> None:
        """flash_attn: llama.cpp's flash-attention arithmetic (its tools' default) instead of its plain path
        (llama-cpp-python's default). n_ubatch: tokens per native call, as llama.cpp's physical batch; longer
        inputs run in batches of that size, which also decides which of llama.cpp's kernels each one matches.
        batch_layout: copy Q4_1 and Q8_0 weights into the 16-row layout whose kernel computes any number of
        sequences with one arithmetic and about half the work per sequence (the server's continuous batching;
        the numbers then differ from llama.cpp's in rounding). with_output=False: only the layers, for
        forward(residual=True) (the CPU part of the torch backend's -ngl split); the output matrix is not loaded."""
        library()
        if not isinstance(n_ubatch, int) or n_ubatch < 1:
            raise LlametteError(f"n_ubatch must be a positive integer, got {n_ubatch!r}")
        self.cfg = cfg
        self.repacked_bytes = 0  # weights copied into an interleaved layout (the rest is read from the file)
        self.flash_attn = bool(flash_attn)
        self.n_ubatch = n_ubatch
        self.with_output = bool(with_output)
        self.batch_layout = bool(batch_layout)
        self.pool = ThreadPool(default_threads() if n_threads is None else n_threads)
        self._keep: list[np.ndarray] = []  # arrays the C structs point into
        present = {spec.name for spec in check_tensors(gguf, cfg)}
        layers = (LmLayer * cfg.n_layers)()
        for i, layer in enumerate(layers):
            p = f"blk.{i}."
            layer.attn_norm = self._floats(gguf, p + "attn_norm.weight")
            layer.ffn_norm = self._floats(gguf, p + "ffn_norm.weight")
            for field, name in (
                ("wq", "attn_q"),
                ("wk", "attn_k"),
                ("wv", "attn_v"),
                ("wo", "attn_output"),
                ("gate", "ffn_gate"),
                ("up", "ffn_up"),
                ("down", "ffn_down"),
            ):
                setattr(layer, field, self._weight(gguf, f"{p}{name}.weight"))
            for field, name in (
                ("bq", "attn_q"),
                ("bk", "attn_k"),
                ("bv", "attn_v"),
                ("bo", "attn_output"),
                ("bgate", "ffn_gate"),
                ("bup", "ffn_up"),
                ("bdown", "ffn_down"),
            ):
                bias = f"{p}{name}.bias"
                setattr(layer, field, self._floats(gguf, bias) if bias in present else None)
        self._layers = layers
        out = "output.weight" if "output.weight" in present else "token_embd.weight"
        freqs = "rope_freqs.weight"
        self.rope_freqs = dequantize(gguf.tensor_bytes(freqs), gguf.tensors[freqs].type) if freqs in present else None
        self.struct = LmModel(
            n_layers=cfg.n_layers, dim=cfg.dim, n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads,
            head_dim=cfg.head_dim, ffn_dim=cfg.ffn_dim, n_vocab=cfg.n_vocab, rope_dims=cfg.rope_dims,
            rms_eps=cfg.rms_eps, rope_base=cfg.rope_base, rope_freq_scale=cfg.rope_freq_scale,
            attn_scale=1.0 / float(np.sqrt(np.float32(cfg.head_dim))),
            rope_freqs=self._floats(gguf, freqs) if freqs in present else None,
            output_norm=self._floats(gguf, "output_norm.weight"),
            token_embd=self._weight(gguf, "token_embd.weight", product=False),
            # without the output, the embedding stands in: it only sizes the workspace, no logits are computed
            output=self._weight(gguf, out if with_output else "token_embd.weight", product=with_output),
            layers=layers,
            flash_attn=int(self.flash_attn), batch_layout=int(self.batch_layout),
        )  # fmt: skip
        self._workspace = np.zeros(0, np.uint8)

    def _weight(self, gguf: GGUFFile, name: str, product: bool = True) -> LmWeight:
        """product: used in matrix products (not only read by rows, as the embedding table is; a tied output
        matrix is the same tensor in both roles, loaded twice)."""
        info, raw = gguf.tensors[name], gguf.tensor_bytes(name)
        flags = weight_layout(name, info.type, info.shape[0])
        if self.batch_layout and product and can_pack16(info.type, info.shape[0]):
            packed = pack16(info.type, raw, info.shape[1])
            self.repacked_bytes += packed.nbytes
            self._keep.append(packed)
            row_bytes = raw.shape[-1]
            if name != "token_embd.weight":  # (the embedding table still reads the file's rows)
                gguf.release(name)
            return LmWeight(packed.ctypes.data, int(info.type), info.shape[0], info.shape[1], row_bytes, LM_PACK16)
        if flags & LM_INTERLEAVED:
            # like llama.cpp's CPU_REPACK: a copy with 8 rows interleaved per block, read in one stream; the
            # file's pages are then dropped from this process
            copy = np.empty(raw.shape, np.uint8)
            rows, k = info.shape[0], info.shape[1]
            rc = library().lm_interleave(int(info.type), raw.ctypes.data, copy.ctypes.data, rows, k)
            if rc:
                raise LlametteError(f"{gguf.path}: tensor {name!r} could not be interleaved (code {rc})")
            raw = copy
            self.repacked_bytes += copy.nbytes
            gguf.release(name)
        self._keep.append(raw)
        return LmWeight(raw.ctypes.data, int(info.type), info.shape[0], info.shape[1], raw.shape[-1], flags)

    def _floats(self, gguf: GGUFFile, name: str) -> int:
        a = np.ascontiguousarray(dequantize(gguf.tensor_bytes(name), gguf.tensors[name].type), dtype=np.float32)
        self._keep.append(a)
        return a.ctypes.data

    @property
    def n_threads(self) -> int:
        return self.pool.n_threads

    def new_cache(self, n_ctx: int) -> NativeKVCache:
        return NativeKVCache(self.cfg, n_ctx)

    def forward(
        self, tokens, cache: NativeKVCache, all_logits: bool = False, hidden: bool = False, residual: bool = False
    ) -> np.ndarray:
        """Run tokens after what the cache holds; logits (T, n_vocab) if all_logits else (1, n_vocab).
        hidden: return the final-normed hidden states (T, dim) instead (llama.cpp's embeddings).
        residual: return the residual stream after the last layer (T, dim), before the output norm (no logits
        are computed: a model holding the first layers of a -ngl split hands this on)."""
        if not self.with_output and not residual:
            raise LlametteError("this model was loaded without its output layer: only forward(residual=True)")
        all_logits = all_logits or hidden
        states = np.empty((len(tokens), self.cfg.dim), np.float32) if hidden or residual else None
        toks = np.ascontiguousarray(tokens, dtype=np.int32).reshape(-1)
        n = len(toks)
        if n == 0:
            raise LlametteError("forward needs at least one token")
        if toks.min() < 0 or toks.max() >= self.cfg.n_vocab:
            bad = int(toks[(toks < 0) | (toks >= self.cfg.n_vocab)][0])
            raise LlametteError(f"token id {bad} is out of range (the model has {self.cfg.n_vocab} tokens)")
        cache.reserve(n)  # fail before computing anything if the context cannot take them all
        logits = np.empty((n if all_logits else 1, self.cfg.n_vocab), np.float32) if not residual else None
        for start in range(0, n, self.n_ubatch):
            chunk = toks[start : start + self.n_ubatch]
            last = start + len(chunk) == n
            n_out = 0 if residual else len(chunk) if all_logits else int(last)  # only the logits asked for
            out = logits[start : start + len(chunk)] if all_logits and not residual else logits
            self._run(chunk, cache, n_out, out)
            if states is not None:  # lm_forward leaves x, then the output-normed rows, at its workspace's start
                d, m = self.cfg.dim, len(chunk)
                at = 0 if residual else m * d
                states[start : start + m] = self._workspace[4 * at : 4 * (at + m * d)].view(np.float32).reshape(m, d)
        return states if states is not None else logits

    def decode_batch(self, tokens, caches: list[NativeKVCache]) -> np.ndarray:
        """One decode step for several sequences: tokens[i] goes after what caches[i] holds. Returns their logits
        (n, n_vocab). Weights are read from memory once for all of them, and row i has the bits forward([tokens[i]],
        caches[i]) gives (the server's continuous batching: a request gives the same text alone or in a crowd)."""
        toks = np.ascontiguousarray(tokens, dtype=np.int32).reshape(-1)
        n = len(toks)
        if n == 0 or n != len(caches):
            raise LlametteError(f"decode_batch needs one token per cache, got {n} tokens for {len(caches)} caches")
        if len({id(c) for c in caches}) != n:
            raise LlametteError("decode_batch: each sequence may appear once per step")
        if toks.min() < 0 or toks.max() >= self.cfg.n_vocab:
            bad = int(toks[(toks < 0) | (toks >= self.cfg.n_vocab)][0])
            raise LlametteError(f"token id {bad} is out of range (the model has {self.cfg.n_vocab} tokens)")
        positions = np.array([c.reserve(1) for c in caches], np.int32)
        largest = max(caches, key=lambda c: c.capacity).struct
        kvs = (ctypes.POINTER(LmKV) * n)(*[ctypes.pointer(c.struct) for c in caches])
        lib = library()
        need = lib.lm_forward_workspace_bytes(self.struct, largest, n, self.pool.n_threads)
        if self._workspace.nbytes < need:
            self._workspace = np.zeros(need, np.uint8)
        logits = np.empty((n, self.cfg.n_vocab), np.float32)
        rc = lib.lm_forward_seqs(
            self.pool.handle, self.struct, kvs, largest, toks.ctypes.data, positions.ctypes.data, n,
            logits.ctypes.data, self._workspace.ctypes.data, self._workspace.nbytes,
        )  # fmt: skip
        if rc != 0:
            raise LlametteError(f"native batched decode failed (code {rc})")
        for c, p in zip(caches, positions, strict=True):
            c.seq_len = int(p) + 1
        return logits

    def _run(self, toks: np.ndarray, cache: NativeKVCache, n_out: int, logits: np.ndarray | None) -> None:
        """n_out logits rows into logits; logits None: the residual stream of every row, left in the workspace."""
        n = len(toks)
        pos0 = cache.reserve(n)
        lib = library()
        need = lib.lm_forward_workspace_bytes(self.struct, cache.struct, n, self.pool.n_threads)
        if self._workspace.nbytes < need:
            self._workspace = np.zeros(need, np.uint8)
        ws = (self._workspace.ctypes.data, self._workspace.nbytes)
        if logits is None:
            rc = lib.lm_forward_residual(self.pool.handle, self.struct, cache.struct, toks.ctypes.data, n, pos0, *ws)
        else:
            rc = lib.lm_forward(self.pool.handle, self.struct, cache.struct, toks.ctypes.data, n, pos0, n_out,
                                logits.ctypes.data, *ws)  # fmt: skip
        if rc != 0:
            raise LlametteError(f"native forward failed (code {rc})")
        cache.seq_len = pos0 + n
