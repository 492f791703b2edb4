"""Streaming detokenization: token ids in, text deltas out, never splitting a UTF-8 character."""

from __future__ import annotations

import codecs

from llamette.tokenizer.tokenizer import Tokenizer


class StreamDecoder:
    """Feed tokens one at a time; each call returns the text that is now complete.

    Bytes of a character split across tokens (emoji, CJK from byte tokens) are held back until the
    character is whole; invalid sequences become U+FFFD.
    """

    def __init__(self, tokenizer: Tokenizer, special: bool = False) -> None:
        self.tokenizer = tokenizer
        self.special = special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        return self._utf8.decode(self.tokenizer.token_to_piece(token, special=self.special))

    def flush(self) -> str:
        """Whatever is still held back (an unfinished character becomes U+FFFD)."""
        return self._utf8.decode(b"", final=True)
