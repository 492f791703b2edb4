"""GGUF reader: memory-maps the file, parses and validates header, metadata and tensor infos.

Owns the file format only: it never dequantizes, and knows nothing of architectures (see model.config).
Every read is bounds-checked; any problem raises GGUFError naming the file, the field and what was expected.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llamette.errors import GGUFError
from llamette.gguf.constants import (
    GGML_BLOCK_SIZES,
    GGML_MAX_DIMS,
    GGUF_DEFAULT_ALIGNMENT,
    GGUF_MAGIC,
    GGUF_SUPPORTED_VERSIONS,
    GGMLType,
    GGUFValueType,
)

# struct format and size of each scalar value type
_SCALAR_FORMATS: dict[GGUFValueType, str] = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}
_NUMPY_DTYPES: dict[GGUFValueType, str] = {
    GGUFValueType.UINT8: "<u1",
    GGUFValueType.INT8: "<i1",
    GGUFValueType.UINT16: "<u2",
    GGUFValueType.INT16: "<i2",
    GGUFValueType.UINT32: "<u4",
    GGUFValueType.INT32: "<i4",
    GGUFValueType.FLOAT32: "<f4",
    GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "<u8",
    GGUFValueType.INT64: "<i8",
    GGUFValueType.FLOAT64: "<f8",
}
_MAX_ARRAY_NESTING = 4


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives. shape is numpy order (outermost first): ggml's ne reversed."""

    name: str
    type: GGMLType
    shape: tuple[int, ...]
    offset: int  # absolute byte offset in the file
    nbytes: int

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


class _Cursor:
    """Sequential reads over the mapped file; every read checks it stays inside the file."""

    def __init__(self, buf: mmap.mmap, path: Path) -> None:
        self.buf = buf
        self.size = len(buf)
        self.path = path
        self.pos = 0

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise GGUFError(
                f"{self.path}: truncated file: {what} needs {n} bytes at offset {self.pos}, "
                f"but the file ends at {self.size}"
            )

    def scalar(self, vtype: GGUFValueType, what: str) -> Any:
        fmt = _SCALAR_FORMATS[vtype]
        n = struct.calcsize(fmt)
        self.need(n, what)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return value

    def u32(self, what: str) -> int:
        return self.scalar(GGUFValueType.UINT32, what)

    def u64(self, what: str) -> int:
        return self.scalar(GGUFValueType.UINT64, what)

    def string(self, what: str) -> str:
        n = self.u64(f"length of {what}")
        self.need(n, what)
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise GGUFError(f"{self.path}: {what} is not valid UTF-8 ({e.reason} at byte {e.start})") from None

    def value_type(self, what: str) -> GGUFValueType:
        raw = self.u32(f"type of {what}")
        try:
            return GGUFValueType(raw)
        except ValueError:
            valid = ", ".join(f"{t.value} ({t.name})" for t in GGUFValueType)
            raise GGUFError(f"{self.path}: {what} has unknown value type {raw} (expected one of {valid})") from None

    def value(self, vtype: GGUFValueType, what: str, depth: int = 0) -> Any:
        if vtype == GGUFValueType.STRING:
            return self.string(what)
        if vtype != GGUFValueType.ARRAY:
            return self.scalar(vtype, what)
        if depth >= _MAX_ARRAY_NESTING:
            raise GGUFError(f"{self.path}: {what}: arrays nested deeper than {_MAX_ARRAY_NESTING} levels")
        etype = self.value_type(f"elements of {what}")
        count = self.u64(f"length of {what}")
        if etype in _NUMPY_DTYPES:
            dtype = np.dtype(_NUMPY_DTYPES[etype])
            self.need(count * dtype.itemsize, f"{what} ({count} x {etype.name})")
            arr = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos)
            self.pos += count * dtype.itemsize
            return arr
        # strings and nested arrays take at least 8 bytes each: refuse absurd counts before looping
        self.need(count * 8, f"{what} ({count} x {etype.name})")
        if etype == GGUFValueType.STRING:
            return self._string_array(count, what)
        return [self.value(etype, f"{what}[{i}]", depth + 1) for i in range(count)]

    def _string_array(self, count: int, what: str) -> list[str]:
        # the hot path for vocabularies (~100k strings): inline the bounds checks
        buf, size, pos = self.buf, self.size, self.pos
        unpack = struct.Struct("<Q").unpack_from
        out = []
        for i in range(count):
            if pos + 8 > size:
                self.pos = pos
                self.need(8, f"length of {what}[{i}]")
            (n,) = unpack(buf, pos)
            pos += 8
            if pos + n > size:
                self.pos = pos
                self.need(n, f"{what}[{i}]")
            try:
                out.append(buf[pos : pos + n].decode("utf-8"))
            except UnicodeDecodeError as e:
                raise GGUFError(f"{self.path}: {what}[{i}] is not valid UTF-8 ({e.reason})") from None
            pos += n
        self.pos = pos
        return out


class GGUFFile:
    """A memory-mapped GGUF file: `metadata` {key: value}, `tensors` {name: TensorInfo}, zero-copy views.

    Numeric metadata arrays are numpy views into the mapping; scalars are Python values.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._mmap = _map_file(self.path)
        cur = _Cursor(self._mmap, self.path)
        self.version = _read_header(cur)
        n_tensors = cur.u64("tensor count")
        n_kv = cur.u64("metadata count")
        # each metadata entry takes >= 13 bytes and each tensor info >= 32: catch garbage counts early
        cur.need(n_kv * 13 + n_tensors * 32, f"{n_kv} metadata entries and {n_tensors} tensor infos")
        self.metadata: dict[str, Any] = {}
        self.metadata_types: dict[str, GGUFValueType] = {}
        for i in range(n_kv):
            key = cur.string(f"metadata key #{i}")
            if key in self.metadata:
                raise GGUFError(f"{self.path}: metadata key '{key}' appears twice")
            vtype = cur.value_type(f"metadata '{key}'")
            self.metadata[key] = cur.value(vtype, f"metadata '{key}'")
            self.metadata_types[key] = vtype
        self.alignment = self._alignment()
        infos = [_read_tensor_info(cur, i) for i in range(n_tensors)]
        self.data_offset = -(-cur.pos // self.alignment) * self.alignment
        self.tensors: dict[str, TensorInfo] = {}
        for name, qtype, shape, rel_offset in infos:
            if name in self.tensors:
                raise GGUFError(f"{self.path}: tensor '{name}' appears twice")
            self.tensors[name] = self._place_tensor(name, qtype, shape, rel_offset)
        self._check_no_overlap()

    # -- construction helpers -------------------------------------------------------------------

    def _alignment(self) -> int:
        align = self.metadata.get("general.alignment", GGUF_DEFAULT_ALIGNMENT)
        if not isinstance(align, int) or isinstance(align, bool) or align <= 0 or align & (align - 1):
            raise GGUFError(f"{self.path}: general.alignment is {align!r}, expected a power of two")
        return align

    def _place_tensor(self, name: str, qtype: GGMLType, shape: tuple[int, ...], rel: int) -> TensorInfo:
        block_elems, block_bytes = GGML_BLOCK_SIZES[qtype]
        row = shape[-1]
        if row % block_elems:
            raise GGUFError(
                f"{self.path}: tensor '{name}' ({qtype.name}) has rows of {row} elements, "
                f"not a multiple of the {qtype.name} block size {block_elems}"
            )
        if rel % self.alignment:
            raise GGUFError(
                f"{self.path}: tensor '{name}' data offset {rel} is not a multiple of the alignment {self.alignment}"
            )
        n = 1
        for d in shape:
            n *= d
        nbytes = n // block_elems * block_bytes
        start = self.data_offset + rel
        if start + nbytes > len(self._mmap):
            raise GGUFError(
                f"{self.path}: tensor '{name}' ({qtype.name}, shape {list(shape)}) needs bytes "
                f"{start}..{start + nbytes}, past the end of the file ({len(self._mmap)} bytes): "
                "the file is truncated or corrupt"
            )
        return TensorInfo(name, qtype, shape, start, nbytes)

    def _check_no_overlap(self) -> None:
        ordered = sorted(self.tensors.values(), key=lambda t: t.offset)
        for a, b in zip(ordered, ordered[1:], strict=False):
            if b.offset < a.offset + a.nbytes:
                raise GGUFError(f"{self.path}: tensors '{a.name}' and '{b.name}' overlap in the file")

    # -- access ------------------------------------------------------------------------------------

    def tensor_bytes(self, name: str) -> np.ndarray:
        """Raw bytes of a tensor, shaped (*outer dims, bytes per row): a read-only view, no copy."""
        info = self.tensors[name]
        block_elems, block_bytes = GGML_BLOCK_SIZES[info.type]
        row_bytes = info.shape[-1] // block_elems * block_bytes
        flat = np.frombuffer(self._mmap, dtype=np.uint8, count=info.nbytes, offset=info.offset)
        return flat.reshape(*info.shape[:-1], row_bytes)

    @property
    def architecture(self) -> str | None:
        arch = self.metadata.get("general.architecture")
        return arch if isinstance(arch, str) else None

    def release(self, name: str) -> None:
        """Drop a tensor's pages from this process (they stay in the page cache, and come back if read again):
        for data the caller has copied elsewhere, e.g. repacked."""
        if not hasattr(mmap, "MADV_DONTNEED"):
            return
        info = self.tensors[name]
        page = mmap.PAGESIZE
        start = (info.offset + page - 1) // page * page  # whole pages inside the tensor only
        end = (info.offset + info.nbytes) // page * page
        if end > start:
            self._mmap.madvise(mmap.MADV_DONTNEED, start, end - start)

    def close(self) -> None:
        # numpy views may still use the mapping: then it is unmapped when they are gone
        with contextlib.suppress(BufferError):
            self._mmap.close()

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"GGUFFile({str(self.path)!r}, v{self.version}, {len(self.metadata)} keys, {len(self.tensors)} tensors)"


def _map_file(path: Path) -> mmap.mmap:
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise GGUFError(f"{path}: not a GGUF file (the file is empty)")
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except FileNotFoundError:
        raise GGUFError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise GGUFError(f"{path}: is a directory, expected a .gguf file") from None
    except OSError as e:
        raise GGUFError(f"{path}: cannot open: {e.strerror or e}") from None


def _read_header(cur: _Cursor) -> int:
    head = bytes(cur.buf[:4])
    if head != GGUF_MAGIC:
        raise GGUFError(f"{cur.path}: not a GGUF file (starts with {head!r}, expected {GGUF_MAGIC!r})")
    cur.pos = 4
    version = cur.u32("version")
    if version not in GGUF_SUPPORTED_VERSIONS:
        if version & 0xFFFF == 0 and (version >> 24) in GGUF_SUPPORTED_VERSIONS:
            raise GGUFError(f"{cur.path}: big-endian GGUF files are not supported")
        supported = " and ".join(str(v) for v in GGUF_SUPPORTED_VERSIONS)
        raise GGUFError(
            f"{cur.path}: unsupported GGUF version {version} (supported: {supported}); "
            "re-convert the model with a current llama.cpp or llamette"
        )
    return version


def _read_tensor_info(cur: _Cursor, index: int) -> tuple[str, GGMLType, tuple[int, ...], int]:
    name = cur.string(f"name of tensor #{index}")
    what = f"tensor '{name}'"
    n_dims = cur.u32(f"number of dimensions of {what}")
    if not 1 <= n_dims <= GGML_MAX_DIMS:
        raise GGUFError(f"{cur.path}: {what} has {n_dims} dimensions, expected 1 to {GGML_MAX_DIMS}")
    ne = [cur.u64(f"dimension {d} of {what}") for d in range(n_dims)]
    n = 1
    for d in ne:
        if d == 0:
            raise GGUFError(f"{cur.path}: {what} has a zero-length dimension (shape {ne})")
        n *= d
    if n >= 2**62:
        raise GGUFError(f"{cur.path}: {what} has an impossible shape {ne}")
    raw_type = cur.u32(f"type of {what}")
    try:
        qtype = GGMLType(raw_type)
    except ValueError:
        known = ", ".join(t.name for t in GGMLType)
        raise GGUFError(f"{cur.path}: {what} has unknown tensor type {raw_type} (known types: {known})") from None
    offset = cur.u64(f"data offset of {what}")
    return name, qtype, tuple(reversed(ne)), offset
