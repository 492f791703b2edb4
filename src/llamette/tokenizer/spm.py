"""SentencePiece-style tokenizer (tokenizer.ggml.model = "llama"), a port of llm_tokenizer_spm_session.

Symbols start as single characters and the adjacent pair whose concatenation is the highest-scoring
token merges first. Characters that end up in no token fall back to byte tokens <0xXX>.

Speed: a merge can only join characters that are neighbours inside some vocabulary token, so the text is
cut wherever two neighbouring characters never appear side by side in any token. No merge crosses a cut,
and merge order within a piece is unchanged, so the pieces tokenize independently (and are cached) with
exactly the result of tokenizing the whole text at once.
"""

from __future__ import annotations

from llamette.tokenizer.merging import encode_pieces, merge_symbols
from llamette.tokenizer.vocab import Vocab


class SPMSession:
    def __init__(self, vocab: Vocab) -> None:
        self.vocab = vocab
        self.token_to_id = vocab.token_to_id
        self.scores = vocab.scores.tolist()
        self._joinable: set[str] | None = None
        self._cache: dict[str, list[int]] = {}
        self._byte_ids = [self._byte_token(b) for b in range(256)]

    def _byte_token(self, b: int) -> int | None:
        t2i = self.token_to_id
        tid = t2i.get(f"<0x{b:02X}>")
        if tid is None and b < 0x80:
            tid = t2i.get(chr(b))
        return tid if tid is not None else self.vocab.special_ids["unk"]

    @property
    def joinable(self) -> set[str]:
        """Every pair of characters that appears side by side in some token."""
        if self._joinable is None:
            self._joinable = {t[i : i + 2] for t in self.vocab.tokens for i in range(len(t) - 1)}
        return self._joinable

    def pair_key(self, a: str, b: str) -> float | None:
        tid = self.token_to_id.get(a + b)
        return None if tid is None else -self.scores[tid]  # highest score merges first

    def encode(self, text: str) -> list[int]:
        """Tokenize text whose spaces are already escaped to U+2581."""
        return encode_pieces(self._pieces(text), self._cache, self.encode_unsplit)

    def _pieces(self, text: str) -> list[str]:
        joinable = self.joinable
        cuts = [i for i in range(1, len(text)) if text[i - 1 : i + 1] not in joinable]
        bounds = [0, *cuts, len(text)]
        return [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]

    def encode_unsplit(self, text: str) -> list[int]:
        """llama.cpp's algorithm on the whole text, without the cut-and-cache speed-up."""
        out: list[int] = []
        for symbol in merge_symbols(list(text), self.pair_key):
            tid = self.token_to_id.get(symbol)
            if tid is not None:
                out.append(tid)
            else:
                out.extend(i for b in symbol.encode("utf-8") if (i := self._byte_ids[b]) is not None)
        return out
