"""GGUF reader: agrees with gguf-py on real files; every malformed file gives one clear GGUFError."""

from __future__ import annotations

import contextlib
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
from conftest import TINY_TYPES, tiny_path

from llamette.errors import GGUFError
from llamette.gguf import GGMLType, GGUFFile


def _same_value(a, b) -> bool:
    if isinstance(a, np.ndarray):
        return np.array_equal(a, np.asarray(b))
    if isinstance(a, float):
        return a == pytest.approx(float(b))
    return a == b


@pytest.mark.parametrize("qtype", TINY_TYPES)
def test_matches_gguf_py_on_fixtures(qtype: str) -> None:
    path = tiny_path(qtype)
    ref = gguf.GGUFReader(path)
    with GGUFFile(path) as f:
        for key, field in ref.fields.items():
            if key.startswith("GGUF."):
                continue
            assert _same_value(f.metadata[key], field.contents()), key
        assert len(f.tensors) == len(ref.tensors)
        for t in ref.tensors:
            info = f.tensors[t.name]
            assert info.type == GGMLType(int(t.tensor_type))
            assert info.shape == tuple(int(d) for d in reversed(t.shape))
            assert info.nbytes == t.n_bytes
            assert np.array_equal(f.tensor_bytes(t.name).ravel(), t.data.view(np.uint8).ravel())


def test_default_model_reads_zero_copy(smollm2_path: Path) -> None:
    f = GGUFFile(smollm2_path)
    assert f.architecture == "llama"
    assert len(f.metadata["tokenizer.ggml.tokens"]) == 49152
    view = f.tensor_bytes("token_embd.weight")
    assert view.shape == (49152, 576 // 32 * 34)
    assert not view.flags["OWNDATA"] and not view.flags["WRITEABLE"]  # a view into the mapping


# -- malformed files -----------------------------------------------------------------------------------------


@pytest.fixture
def small_gguf(tmp_path: Path) -> Path:
    """A valid little file: a few keys of different types and two tensors."""
    path = tmp_path / "small.gguf"
    w = gguf.GGUFWriter(path, "llama")
    w.add_uint32("test.count", 7)
    w.add_string("test.name", "small")
    w.add_array("test.list", [1, 2, 3])
    w.add_tensor("a.weight", np.arange(64, dtype=np.float32).reshape(2, 32))
    w.add_tensor("b.weight", np.ones(32, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _expect_error(path: Path, *fragments: str) -> str:
    with pytest.raises(GGUFError) as info:
        GGUFFile(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_small_file_reads(small_gguf: Path) -> None:
    f = GGUFFile(small_gguf)
    assert f.metadata["test.count"] == 7 and f.metadata["test.name"] == "small"
    assert list(f.metadata["test.list"]) == [1, 2, 3]
    assert f.tensors["a.weight"].shape == (2, 32)
    assert np.array_equal(f.tensor_bytes("a.weight").view(np.float32).ravel(), np.arange(64))


def test_not_gguf(tmp_path: Path) -> None:
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    _expect_error(empty, "not a GGUF file", "empty")
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is a text file\n")
    _expect_error(text, "not a GGUF file", "b'hell'")
    noise = tmp_path / "noise.bin"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    _expect_error(noise, "not a GGUF file")
    _expect_error(tmp_path / "missing.gguf", "no such file")
    _expect_error(tmp_path, "is a directory")


def test_every_truncation_is_reported(small_gguf: Path, tmp_path: Path) -> None:
    data = small_gguf.read_bytes()
    cut = tmp_path / "cut.gguf"
    for n in list(range(1, 200)) + list(range(200, len(data), 7)):
        cut.write_bytes(data[:n])
        with pytest.raises(GGUFError) as info:
            GGUFFile(cut)
        msg = str(info.value)
        assert "truncated" in msg or "past the end of the file" in msg or "not a GGUF file" in msg, (n, msg)


def test_versions(small_gguf: Path, tmp_path: Path) -> None:
    data = bytearray(small_gguf.read_bytes())
    for version, fragment in ((1, "unsupported GGUF version 1"), (4, "unsupported GGUF version 4")):
        data[4:8] = struct.pack("<I", version)
        (tmp_path / "v.gguf").write_bytes(data)
        _expect_error(tmp_path / "v.gguf", fragment, "supported: 2 and 3")


def test_big_endian(tmp_path: Path) -> None:
    path = tmp_path / "be.gguf"
    w = gguf.GGUFWriter(path, "llama", endianess=gguf.GGUFEndian.BIG)
    w.add_tensor("a.weight", np.ones(32, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    _expect_error(path, "big-endian")


def _field_offset(data: bytes, name: bytes) -> int:
    """Offset just after a length-prefixed string (a key or a tensor name)."""
    pos = data.index(name)
    assert struct.unpack_from("<Q", data, pos - 8)[0] == len(name)
    return pos + len(name)


def test_unknown_value_type(small_gguf: Path, tmp_path: Path) -> None:
    data = bytearray(small_gguf.read_bytes())
    at = _field_offset(data, b"test.count")
    data[at : at + 4] = struct.pack("<I", 99)
    (tmp_path / "x.gguf").write_bytes(data)
    _expect_error(tmp_path / "x.gguf", "'test.count'", "unknown value type 99")


def test_unknown_tensor_type(small_gguf: Path, tmp_path: Path) -> None:
    data = bytearray(small_gguf.read_bytes())
    at = _field_offset(data, b"a.weight") + 4 + 2 * 8  # n_dims, then 2 dims
    assert struct.unpack_from("<I", data, at)[0] == GGMLType.F32
    data[at : at + 4] = struct.pack("<I", 99)
    (tmp_path / "x.gguf").write_bytes(data)
    _expect_error(tmp_path / "x.gguf", "'a.weight'", "unknown tensor type 99")


def test_tensor_offsets(small_gguf: Path, tmp_path: Path) -> None:
    data = bytearray(small_gguf.read_bytes())
    at = _field_offset(data, b"b.weight") + 4 + 8 + 4  # n_dims, 1 dim, type
    for offset, fragment in (
        (1 << 40, "past the end of the file"),
        (4, "not a multiple of the alignment"),
        (0, "overlap"),
    ):
        data[at : at + 8] = struct.pack("<Q", offset)
        (tmp_path / "x.gguf").write_bytes(data)
        _expect_error(tmp_path / "x.gguf", fragment)


def test_bad_dims_and_counts(small_gguf: Path, tmp_path: Path) -> None:
    data = bytearray(small_gguf.read_bytes())
    dims_at = _field_offset(data, b"a.weight")
    bad = bytearray(data)
    bad[dims_at : dims_at + 4] = struct.pack("<I", 7)
    (tmp_path / "x.gguf").write_bytes(bad)
    _expect_error(tmp_path / "x.gguf", "7 dimensions")
    bad = bytearray(data)
    bad[dims_at + 4 : dims_at + 12] = struct.pack("<Q", 0)
    (tmp_path / "x.gguf").write_bytes(bad)
    _expect_error(tmp_path / "x.gguf", "zero-length dimension")
    bad = bytearray(data)
    bad[8:16] = struct.pack("<Q", 1 << 50)  # tensor count
    (tmp_path / "x.gguf").write_bytes(bad)
    _expect_error(tmp_path / "x.gguf", "truncated")


def test_metadata_problems(tmp_path: Path) -> None:
    path = tmp_path / "align.gguf"
    w = gguf.GGUFWriter(path, "llama")
    w.add_uint32("general.alignment", 24)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    _expect_error(path, "general.alignment", "power of two")
    two = tmp_path / "two.gguf"
    w = gguf.GGUFWriter(two, "llama")
    w.add_uint32("test.a", 1)
    w.add_uint32("test.b", 2)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    data = bytearray(two.read_bytes())
    at = data.index(b"test.b")
    data[at : at + 6] = b"test.a"  # now two keys share a name
    (tmp_path / "dup.gguf").write_bytes(data)
    _expect_error(tmp_path / "dup.gguf", "'test.a' appears twice")
    data = bytearray(path.read_bytes())
    at = data.index(b"general.alignment")
    data[at] = 0xFF  # invalid UTF-8 in a key
    (tmp_path / "utf.gguf").write_bytes(data)
    _expect_error(tmp_path / "utf.gguf", "not valid UTF-8")


def test_random_corruption_never_escapes(tmp_path: Path) -> None:
    """Flip bytes anywhere in the header and metadata: the reader either loads or raises GGUFError."""
    data = tiny_path("Q4_0").read_bytes()
    header_end = 12672  # where tensor data starts in this file
    rng = np.random.default_rng(1234)
    bad = tmp_path / "bad.gguf"
    for _ in range(300):
        corrupt = bytearray(data[: header_end + 4096])
        for pos in rng.integers(0, header_end, rng.integers(1, 4)):
            corrupt[pos] = rng.integers(0, 256)
        bad.write_bytes(corrupt)
        with contextlib.suppress(GGUFError):
            GGUFFile(bad).close()
