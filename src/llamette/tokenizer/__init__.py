"""Tokenizers built from GGUF metadata: SentencePiece-style (llama) and byte-level BPE (gpt2), with
llama.cpp's pre-tokenizers, special-token handling and detokenization."""

from llamette.tokenizer.detokenizer import StreamDecoder
from llamette.tokenizer.tokenizer import Tokenizer
from llamette.tokenizer.vocab import TokenAttr, Vocab

__all__ = ["Tokenizer", "Vocab", "TokenAttr", "StreamDecoder"]
