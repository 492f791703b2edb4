"""Writing GGUF v3 files, one tensor at a time (memory stays bounded whatever the file size).

The header, metadata and tensor table are written first, from the tensors' declared types and shapes; the
data follows in the same order, each tensor aligned. Output goes to a temporary file next to the target that
replaces it only when every tensor was written: a failed run leaves nothing behind.
"""

from __future__ import annotations

import os
import struct
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llamette.errors import GGUFError
from llamette.gguf.constants import GGML_BLOCK_SIZES, GGUF_DEFAULT_ALIGNMENT, GGMLType, GGUFValueType
from llamette.gguf.constants import tensor_nbytes as _elements_nbytes

_SCALAR_FORMATS = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H", GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i", GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q", GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}  # fmt: skip
_NUMPY_VALUE_TYPES = {
    np.dtype(np.uint8): GGUFValueType.UINT8, np.dtype(np.int8): GGUFValueType.INT8,
    np.dtype(np.uint16): GGUFValueType.UINT16, np.dtype(np.int16): GGUFValueType.INT16,
    np.dtype(np.uint32): GGUFValueType.UINT32, np.dtype(np.int32): GGUFValueType.INT32,
    np.dtype(np.float32): GGUFValueType.FLOAT32, np.dtype(np.bool_): GGUFValueType.BOOL,
    np.dtype(np.uint64): GGUFValueType.UINT64, np.dtype(np.int64): GGUFValueType.INT64,
    np.dtype(np.float64): GGUFValueType.FLOAT64,
}  # fmt: skip


@dataclass
class TensorSpec:
    """A tensor to write: shape in numpy order (outermost first), as the reader reports it."""

    name: str
    type: GGMLType
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.type, self.shape)


def tensor_nbytes(qtype: GGMLType, shape: Sequence[int]) -> int:
    """Bytes of a tensor of this shape, refusing rows that are not whole blocks."""
    if shape and shape[-1] % GGML_BLOCK_SIZES[GGMLType(qtype)][0]:
        raise GGUFError(f"a row of {shape[-1]} values is not a whole number of {GGMLType(qtype).name} blocks")
    return _elements_nbytes(GGMLType(qtype), int(np.prod(shape, dtype=np.int64)) if shape else 1)


def _string(s: str) -> bytes:
    raw = s.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def _value(vtype: GGUFValueType, value: Any) -> bytes:
    if vtype == GGUFValueType.STRING:
        return _string(value)
    if vtype == GGUFValueType.ARRAY:
        etype, items = array_type(value)
        head = struct.pack("<IQ", int(etype), len(items))
        if isinstance(items, np.ndarray):
            return head + np.ascontiguousarray(items).astype(items.dtype.newbyteorder("<")).tobytes()
        return head + b"".join(_value(etype, v) for v in items)
    return struct.pack(_SCALAR_FORMATS[vtype], value)


def array_type(value: Any) -> tuple[GGUFValueType, Any]:
    """The element type of a metadata array as the reader returns it (numpy array, list of str or lists)."""
    if isinstance(value, np.ndarray):
        if value.dtype not in _NUMPY_VALUE_TYPES:
            raise GGUFError(f"metadata array of {value.dtype} cannot be written")
        return _NUMPY_VALUE_TYPES[value.dtype], value
    items = list(value)
    if all(isinstance(v, str) for v in items):
        return GGUFValueType.STRING, items
    if all(isinstance(v, (list, np.ndarray)) for v in items):
        return GGUFValueType.ARRAY, items
    raise GGUFError("metadata array with mixed element types cannot be written")


class GGUFWriter:
    """with GGUFWriter(path, metadata, tensors) as w: w.write(name, data) for each tensor, in order."""

    def __init__(
        self,
        path: str | os.PathLike,
        metadata: Iterable[tuple[str, GGUFValueType, Any]],
        tensors: Sequence[TensorSpec],
        alignment: int = GGUF_DEFAULT_ALIGNMENT,
    ) -> None:
        self.path = Path(path)
        self.tensors = list(tensors)
        self.alignment = alignment
        self._next = 0
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".partial", dir=self.path.parent or ".")
        self._tmp = Path(tmp)
        self._f = os.fdopen(fd, "wb")
        try:
            self._write_header(list(metadata))
        except BaseException:
            self.abort()
            raise

    def _write_header(self, metadata: list[tuple[str, GGUFValueType, Any]]) -> None:
        out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(self.tensors), len(metadata)))
        for key, vtype, value in metadata:
            out += _string(key) + struct.pack("<I", int(vtype)) + _value(vtype, value)
        offset = 0
        for t in self.tensors:
            out += _string(t.name) + struct.pack("<I", len(t.shape))
            out += b"".join(struct.pack("<Q", d) for d in reversed(t.shape))  # ggml's ne order: innermost first
            out += struct.pack("<IQ", int(t.type), offset)
            offset += -(-t.nbytes // self.alignment) * self.alignment
        out += b"\0" * (-len(out) % self.alignment)
        self._f.write(out)

    def write(self, name: str, data: np.ndarray | bytes) -> None:
        """The next tensor's bytes (its whole data, or successive pieces via write_part)."""
        self.write_part(name, data, last=True)

    def write_part(self, name: str, data: np.ndarray | bytes, last: bool) -> None:
        if self._next >= len(self.tensors) or self.tensors[self._next].name != name:
            expected = self.tensors[self._next].name if self._next < len(self.tensors) else "nothing more"
            raise GGUFError(f"{self.path}: tensor {name!r} written out of order (expected {expected})")
        raw = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
        self._f.write(raw)
        self._written = getattr(self, "_written", 0) + len(raw)
        if last:
            spec = self.tensors[self._next]
            if self._written != spec.nbytes:
                raise GGUFError(f"{self.path}: tensor {name!r} has {self._written} bytes, expected {spec.nbytes}")
            self._f.write(b"\0" * (-self._written % self.alignment))
            self._written = 0
            self._next += 1

    def close(self) -> None:
        """Finish: the file appears under its name only if every tensor was written."""
        if self._next != len(self.tensors):
            self.abort()
            raise GGUFError(f"{self.path}: only {self._next} of {len(self.tensors)} tensors were written")
        self._f.close()
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self._tmp, 0o666 & ~umask)  # mkstemp makes it private; a model file is as readable as any other
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        if not self._f.closed:
            self._f.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> GGUFWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
