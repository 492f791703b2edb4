"""Tokenizer: text <-> token ids with llama.cpp's exact behaviour, built from GGUF metadata.

Owns special-token splitting, BOS/EOS, the SPM space prefix and detokenization (llama_vocab::impl::
tokenize / token_to_piece / detokenize); the merge algorithms live in spm.py and bpe.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from llamette.errors import LlametteError
from llamette.gguf.reader import GGUFFile
from llamette.tokenizer.bpe import BPESession, byte_to_unicode
from llamette.tokenizer.spm import SPMSession
from llamette.tokenizer.vocab import TokenAttr, Vocab

_SPACE_ESCAPE = "\u2581"  # SentencePiece's visible space
_C_SPACES = " \t\n\v\f\r"  # what C's isspace() strips next to LSTRIP/RSTRIP special tokens


class Tokenizer:
    def __init__(self, vocab: Vocab) -> None:
        self.vocab = vocab
        self._session = SPMSession(vocab) if vocab.model == "llama" else BPESession(vocab)
        self._pieces = [self._render(i) for i in range(vocab.n_tokens)]  # with special tokens shown

    @classmethod
    def from_gguf(cls, gguf: GGUFFile) -> Tokenizer:
        return cls(Vocab.from_metadata(gguf.metadata, gguf.path))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        with GGUFFile(Path(path)) as gguf:
            return cls.from_gguf(gguf)

    # -- properties -----------------------------------------------------------------------------

    @property
    def n_vocab(self) -> int:
        return self.vocab.n_tokens

    @property
    def bos(self) -> int | None:
        return self.vocab.bos

    @property
    def eos(self) -> int | None:
        return self.vocab.eos

    @property
    def eog_ids(self) -> frozenset[int]:
        """Tokens that end generation (EOS, EOT, <|im_end|>, ...)."""
        return self.vocab.eog_ids

    @property
    def add_bos(self) -> bool:
        return self.vocab.add_bos

    def is_eog(self, token: int) -> bool:
        return token in self.vocab.eog_ids

    # -- text -> ids ------------------------------------------------------------------------------

    def encode(self, text: str | bytes, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Token ids for text. add_special adds BOS/EOS as the model asks; parse_special turns the text of
        control tokens (e.g. "<|im_start|>") into those tokens instead of tokenizing it as plain text."""
        text = _as_text(text)
        vocab = self.vocab
        out: list[int] = []
        if add_special and vocab.add_bos and vocab.bos is not None:
            out.append(vocab.bos)
        is_spm = vocab.model == "llama"
        prev_special = True  # SPM: a space is prefixed at the start and after each special token
        for fragment in self._split_special(text, parse_special) if text else []:
            if isinstance(fragment, int):
                out.append(fragment)
                prev_special = True
            elif is_spm:
                prefix = " " if vocab.add_space_prefix and prev_special else ""
                out.extend(self._session.encode((prefix + fragment).replace(" ", _SPACE_ESCAPE)))
                prev_special = False
            else:
                out.extend(self._session.encode(fragment))
        if add_special and vocab.add_eos and vocab.eos is not None:
            out.append(vocab.eos)
        return out

    def _split_special(self, text: str, parse_special: bool) -> list[str | int]:
        """Cut the text of special tokens out of the text, longest tokens first (tokenizer_st_partition).

        Without parse_special only user-defined tokens are cut out; control tokens stay plain text.
        """
        vocab = self.vocab
        fragments: list[str | int] = [text]
        for tid in vocab.special_tokens:
            attr = vocab.attrs[tid]
            if not parse_special and attr & (TokenAttr.CONTROL | TokenAttr.UNKNOWN):
                continue
            token = vocab.tokens[tid]
            if token not in text:
                continue
            out: list[str | int] = []
            for frag in fragments:
                if isinstance(frag, int) or token not in frag:
                    out.append(frag)
                    continue
                parts = frag.split(token)
                for j, part in enumerate(parts):
                    if j > 0:
                        out.append(tid)
                        if attr & TokenAttr.RSTRIP:
                            part = part.lstrip(_C_SPACES)
                    if j < len(parts) - 1 and attr & TokenAttr.LSTRIP:
                        part = part.rstrip(_C_SPACES)
                    if part:
                        out.append(part)
            fragments = out
        return fragments

    # -- ids -> text ------------------------------------------------------------------------------

    def token_to_piece(self, token: int, special: bool = True) -> bytes:
        """The bytes a token stands for. With special=False, control tokens render as nothing."""
        self._check_id(token)
        if not special and self.vocab.attrs[token] & (TokenAttr.CONTROL | TokenAttr.UNKNOWN):
            return b""
        return self._pieces[token]

    def detokenize(self, tokens: Iterable[int], remove_special: bool = False, unparse_special: bool = False) -> bytes:
        """llama.cpp's llama_detokenize: join pieces, drop the SPM prefix space and, for vocabularies
        that ask for it, the spaces tokenizers put before punctuation."""
        vocab = self.vocab
        tokens = list(tokens)
        remove_space = vocab.add_space_prefix
        if remove_special and vocab.add_bos and tokens and tokens[0] == vocab.bos:
            remove_space = False
            tokens = tokens[1:]
        if remove_special and vocab.add_eos and tokens and tokens[-1] == vocab.eos:
            tokens = tokens[:-1]
        out = bytearray()
        for tok in tokens:
            piece = self.token_to_piece(tok, special=unparse_special)
            if remove_space and piece.startswith(b" "):
                piece = piece[1:]
            remove_space = False
            out += piece
        return _clean_up_spaces(bytes(out)) if vocab.clean_spaces else bytes(out)

    def decode(self, tokens: Sequence[int], special: bool = False) -> str:
        """Text of a token sequence (invalid UTF-8 replaced), as llama.cpp prints it."""
        return self.detokenize(tokens, remove_special=not special, unparse_special=special).decode(
            "utf-8", errors="replace"
        )

    def _check_id(self, token: int) -> None:
        if not 0 <= token < self.vocab.n_tokens:
            raise LlametteError(f"token id {token} is out of range (the vocabulary has {self.vocab.n_tokens} tokens)")

    def _render(self, token: int) -> bytes:
        """token_to_piece with special=True (llama.cpp caches exactly this)."""
        vocab = self.vocab
        text, attr = vocab.tokens[token], vocab.attrs[token]
        if attr & (TokenAttr.UNKNOWN | TokenAttr.CONTROL | TokenAttr.USER_DEFINED):
            return text.encode("utf-8")
        if attr & TokenAttr.NORMAL:
            if vocab.model == "llama":
                return text.replace(_SPACE_ESCAPE, " ").encode("utf-8")
            return _byte_decode(text)
        if attr & TokenAttr.BYTE:
            try:
                return bytes([int(text[3:5], 16)])
            except ValueError:
                return b""
        return b""


_BYTE_OF_CHAR = {c: b for b, c in enumerate(byte_to_unicode())}


def _byte_decode(text: str) -> bytes:
    """GPT-2 printable characters back to the bytes they stand for (llama_decode_text)."""
    try:
        return bytes(_BYTE_OF_CHAR[c] for c in text)
    except KeyError:
        out = bytearray()
        for c in text:
            if c in _BYTE_OF_CHAR:
                out.append(_BYTE_OF_CHAR[c])
            else:  # llama.cpp's marker for a character outside the byte map
                out += b"[UNK_BYTE_0x" + c.encode("utf-8").hex().encode() + text.encode("utf-8") + b"]"
        return bytes(out)


def _clean_up_spaces(text: bytes) -> bytes:
    """llama.cpp's clean_spaces passes, ported literally (in place, as in llama_vocab::impl::detokenize):
    drop the space in " ?", " !", " .", " ,"; turn " ' " into "'"; drop it in " 's", " 'm", " 're", " 've"."""
    t = bytearray(text)
    total, n = len(t), min(len(t), 1)
    for i in range(1, total):
        if t[i - 1] == 0x20 and t[i] in b"?!.,":
            n -= 1
        t[n] = t[i]
        n += 1
    total, n, i = n, min(n, 1), 1
    while i < total:
        x = t[i]
        if x == 0x27 and i + 1 < total and t[i - 1] == 0x20 and t[i + 1] == 0x20:
            n -= 1
            i += 1
            t[i] = 0  # the space after is dropped too
        t[n] = x
        n += 1
        i += 1
    total, n = n, min(n, 1)
    for i in range(1, total):
        x = t[i]
        if (
            t[i - 1] == 0x20
            and x == 0x27
            and i + 1 < total
            and (t[i + 1] in b"sm" or (i + 2 < total and t[i + 1 : i + 3] in (b"re", b"ve")))
        ):
            n -= 1
        t[n] = x
        n += 1
    return bytes(t[:n])


def _as_text(text: str | bytes) -> str:
    if isinstance(text, bytes):
        return text.decode("utf-8", errors="replace")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates (e.g. from undecodable command-line bytes)
        text = text.encode("utf-8", errors="replace").decode("utf-8")
    return text
