"""SentencePiece `tokenizer.model` files: a minimal reader and writer of their protobuf (no protobuf package).

Only the fields a Llama vocabulary needs are read or written (sentencepiece_model.proto): the pieces (text,
score, type), the trainer spec's model type, byte fallback and special ids, and the normalizer spec's dummy
prefix. Unknown fields are skipped on reading, as protobuf does.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from llamette.errors import LlametteError

# SentencePiece.Type
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
# TrainerSpec.ModelType
UNIGRAM, BPE = 1, 2

_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5


@dataclass
class SentencePieceModel:
    pieces: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    types: list[int] = field(default_factory=list)
    model_type: int = UNIGRAM
    byte_fallback: bool = False
    unk_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    pad_id: int = -1
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True
    normalizer_name: str = "nmt_nfkc"


class _ProtoError(ValueError):
    pass


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise _ProtoError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _ProtoError("varint longer than 10 bytes")


def _fields(buf: bytes):
    """(field number, wire type, value) of each field of a message: ints, bytes or a raw fixed32."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _ProtoError("field number 0")
        if wire == _VARINT:
            value, pos = _varint(buf, pos)
        elif wire == _FIXED64:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == _LEN:
            n, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + n], pos + n
        elif wire == _FIXED32:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise _ProtoError(f"unsupported wire type {wire}")
        if pos > len(buf):
            raise _ProtoError("truncated field")
        yield number, wire, value


def _int32(v: int) -> int:
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >> 63 else v


def parse(data: bytes, path: Path | str = "tokenizer.model") -> SentencePieceModel:
    """A tokenizer.model's pieces and specs; LlametteError naming the file when it is not a SentencePiece model."""
    first = data[:200].split(b"\n", 1)[0]
    if b" " in first and first.rsplit(b" ", 1)[-1].isdigit():
        raise LlametteError(
            f"{path}: not a SentencePiece model: it looks like a tiktoken BPE file, as Meta ships for Llama 3 "
            "(convert the Hugging Face checkpoint instead)"
        )
    m = SentencePieceModel()
    try:
        for number, wire, value in _fields(data):
            if number == 1 and wire == _LEN:
                piece, score, ptype = "", 0.0, NORMAL
                for n, w, v in _fields(value):
                    if n == 1 and w == _LEN:
                        piece = v.decode("utf-8")
                    elif n == 2 and w == _FIXED32:
                        (score,) = struct.unpack("<f", v)
                    elif n == 3 and w == _VARINT:
                        ptype = v
                m.pieces.append(piece)
                m.scores.append(score)
                m.types.append(ptype)
            elif number == 2 and wire == _LEN:  # TrainerSpec
                for n, w, v in _fields(value):
                    if w != _VARINT:
                        continue
                    if n == 3:
                        m.model_type = v
                    elif n == 35:
                        m.byte_fallback = bool(v)
                    elif n in (40, 41, 42, 43):
                        setattr(m, {40: "unk_id", 41: "bos_id", 42: "eos_id", 43: "pad_id"}[n], _int32(v))
            elif number == 3 and wire == _LEN:  # NormalizerSpec
                for n, w, v in _fields(value):
                    if n == 1 and w == _LEN:
                        m.normalizer_name = v.decode("utf-8", "replace")
                    elif n == 3 and w == _VARINT:
                        m.add_dummy_prefix = bool(v)
                    elif n == 4 and w == _VARINT:
                        m.remove_extra_whitespaces = bool(v)
    except (_ProtoError, UnicodeDecodeError, struct.error) as e:
        raise LlametteError(f"{path}: corrupted SentencePiece model ({e})") from None
    if not m.pieces:
        raise LlametteError(f"{path}: the SentencePiece model has no pieces")
    return m


def load(path: Path) -> SentencePieceModel:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise LlametteError(f"{path}: cannot read: {e.strerror or e}") from None
    return parse(data, path)


def _key(number: int, wire: int) -> bytes:
    return _enc_varint(number << 3 | wire)


def _enc_varint(v: int) -> bytes:
    v &= (1 << 64) - 1  # negative int32 values take ten bytes, as protobuf writes them
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _key(number, _LEN) + _enc_varint(len(payload)) + payload


def serialize(m: SentencePieceModel) -> bytes:
    """The protobuf bytes of a model (what `sentencepiece.SentencePieceProcessor` loads)."""
    out = bytearray()
    for piece, score, ptype in zip(m.pieces, m.scores, m.types, strict=True):
        body = _len_field(1, piece.encode("utf-8")) + _key(2, _FIXED32) + struct.pack("<f", score)
        body += _key(3, _VARINT) + _enc_varint(ptype)
        out += _len_field(1, body)
    trainer = _key(3, _VARINT) + _enc_varint(m.model_type)
    trainer += _key(4, _VARINT) + _enc_varint(len(m.pieces))
    trainer += _key(35, _VARINT) + _enc_varint(int(m.byte_fallback))
    for number, value in ((40, m.unk_id), (41, m.bos_id), (42, m.eos_id), (43, m.pad_id)):
        trainer += _key(number, _VARINT) + _enc_varint(value)
    out += _len_field(2, trainer)
    normalizer = _len_field(1, m.normalizer_name.encode("utf-8"))
    normalizer += _key(3, _VARINT) + _enc_varint(int(m.add_dummy_prefix))
    normalizer += _key(4, _VARINT) + _enc_varint(int(m.remove_extra_whitespaces))
    normalizer += _key(5, _VARINT) + _enc_varint(1)  # escape_whitespaces: spaces become U+2581
    out += _len_field(3, normalizer)
    return bytes(out)
