"""Byte-level BPE (tokenizer.ggml.model = "gpt2"), a port of llama.cpp's llm_tokenizer_bpe_session.

Text is split into words by the vocabulary's pre-tokenizer, each word's UTF-8 bytes are mapped to
GPT-2's printable characters, and merges apply by rank within the word. Words repeat a lot in real
text, so results are cached per word.
"""

from __future__ import annotations

from llamette.tokenizer.merging import encode_pieces, merge_symbols
from llamette.tokenizer.vocab import Vocab


def byte_to_unicode() -> list[str]:
    """GPT-2's map from the 256 byte values to printable characters (bytes_to_unicode in GPT-2's encoder)."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


class BPESession:
    def __init__(self, vocab: Vocab) -> None:
        assert vocab.pre is not None
        self.vocab = vocab
        self.pre = vocab.pre
        self.byte_chars = byte_to_unicode()
        self.ranks: dict[tuple[str, str], int] = {}
        for rank, merge in enumerate(vocab.merges):
            pos = merge.find(" ", 1)  # the first space after the first character separates the pair
            pair = (merge[:pos], merge[pos + 1 :]) if pos != -1 else ("", "")
            self.ranks.setdefault(pair, rank)
        self._cache: dict[str, list[int]] = {}

    def encode(self, text: str) -> list[int]:
        return encode_pieces(self.pre.split(text), self._cache, self._encode_word)

    def _encode_word(self, word: str) -> list[int]:
        encoded = "".join(self.byte_chars[b] for b in word.encode("utf-8"))
        token_to_id = self.vocab.token_to_id
        if self.pre.ignore_merges and encoded in token_to_id:
            return [token_to_id[encoded]]
        out = []
        for symbol in merge_symbols(list(encoded), lambda a, b: self.ranks.get((a, b))):
            tid = token_to_id.get(symbol)
            if tid is not None:
                out.append(tid)
                continue
            # not a token: llama.cpp looks up each UTF-8 byte of the symbol's text on its own
            out.extend(token_to_id[chr(b)] for b in symbol.encode("utf-8") if b < 0x80 and chr(b) in token_to_id)
        return out
