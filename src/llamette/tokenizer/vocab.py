"""The vocabulary stored in GGUF metadata: token texts, scores, attributes, special ids and flags.

Mirrors llama.cpp's llama_vocab::impl::load (src/llama-vocab.cpp): the same defaults per tokenizer model,
the same auto-detection of end-of-generation tokens by their text, the same special-token list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum, IntFlag
from pathlib import Path
from typing import Any

import numpy as np

from llamette.errors import GGUFError
from llamette.tokenizer.pretokenize import PreTokenizer, pre_tokenizer


class TokenType(IntEnum):
    """tokenizer.ggml.token_type values (llama.cpp's llama_token_type)."""

    UNDEFINED = 0
    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


class TokenAttr(IntFlag):
    """llama.cpp's llama_token_attr."""

    UNDEFINED = 0
    UNKNOWN = 1 << 0
    UNUSED = 1 << 1
    NORMAL = 1 << 2
    CONTROL = 1 << 3
    USER_DEFINED = 1 << 4
    BYTE = 1 << 5
    NORMALIZED = 1 << 6
    LSTRIP = 1 << 7
    RSTRIP = 1 << 8


_TYPE_TO_ATTR = {
    TokenType.UNDEFINED: TokenAttr.UNDEFINED,
    TokenType.NORMAL: TokenAttr.NORMAL,
    TokenType.UNKNOWN: TokenAttr.UNKNOWN,
    TokenType.CONTROL: TokenAttr.CONTROL,
    TokenType.USER_DEFINED: TokenAttr.USER_DEFINED,
    TokenType.UNUSED: TokenAttr.UNUSED,
    TokenType.BYTE: TokenAttr.BYTE,
}

SPECIAL_ATTRS = TokenAttr.CONTROL | TokenAttr.USER_DEFINED | TokenAttr.UNKNOWN

TOKENIZER_MODELS = {"llama": "SentencePiece (SPM)", "gpt2": "byte-level BPE"}

# texts that end generation (llama.cpp's list, restricted to what Llama-family vocabularies use)
_EOG_TEXTS = {
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<｜end▁of▁sentence｜>",
}
_EOT_TEXTS = (
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
)
# FIM pad / repo / file-separator tokens also end generation in llama.cpp
_FIM_EOG_TEXTS = {
    "<|fim_pad|>",
    "<fim-pad>",
    "<fim_pad>",
    "<PAD>",
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
    "<|file_sep|>",
}

_SPECIAL_ID_KEYS = {
    "bos": "tokenizer.ggml.bos_token_id",
    "eos": "tokenizer.ggml.eos_token_id",
    "eot": "tokenizer.ggml.eot_token_id",
    "eom": "tokenizer.ggml.eom_token_id",
    "unk": "tokenizer.ggml.unknown_token_id",
    "sep": "tokenizer.ggml.seperator_token_id",  # sic: llama.cpp's spelling
    "pad": "tokenizer.ggml.padding_token_id",
}


@dataclass
class Vocab:
    model: str  # "llama" (SPM) or "gpt2" (BPE)
    tokens: list[str]
    scores: np.ndarray  # (n_vocab,) float32
    attrs: list[TokenAttr]
    merges: list[str]
    pre: PreTokenizer | None  # BPE only
    special_ids: dict[str, int | None]  # bos eos eot eom unk sep pad
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool
    clean_spaces: bool
    token_to_id: dict[str, int] = field(default_factory=dict)
    eog_ids: frozenset[int] = frozenset()
    special_tokens: list[int] = field(default_factory=list)  # split out of text first, longest first

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    @property
    def bos(self) -> int | None:
        return self.special_ids["bos"]

    @property
    def eos(self) -> int | None:
        return self.special_ids["eos"]

    @classmethod
    def from_metadata(cls, meta: dict[str, Any], path: Path | str = "<metadata>") -> Vocab:
        model = meta.get("tokenizer.ggml.model")
        if model is None:
            raise GGUFError(f"{path}: no tokenizer in this file (metadata 'tokenizer.ggml.model' is missing)")
        if model not in TOKENIZER_MODELS:
            known = ", ".join(f"{k} ({v})" for k, v in TOKENIZER_MODELS.items())
            raise GGUFError(f"{path}: tokenizer model '{model}' is not supported (supported: {known})")
        tokens = meta.get("tokenizer.ggml.tokens")
        if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
            raise GGUFError(f"{path}: metadata 'tokenizer.ggml.tokens' is missing or not a list of strings")
        n = len(tokens)
        tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
        scores = _numeric_array(meta, "tokenizer.ggml.scores", n, path, default=0.0).astype(np.float32)
        types = _numeric_array(meta, "tokenizer.ggml.token_type", n, path, default=TokenType.NORMAL)
        attrs = [_TYPE_TO_ATTR.get(int(t), TokenAttr.UNDEFINED) for t in types]

        pre_name = meta.get("tokenizer.ggml.pre", "default") if model == "gpt2" else None
        pre = pre_tokenizer(pre_name, path) if pre_name is not None else None
        merges: list[str] = []
        if model == "gpt2":
            merges = meta.get("tokenizer.ggml.merges")
            if not isinstance(merges, list) or not all(isinstance(m, str) for m in merges):
                raise GGUFError(f"{path}: metadata 'tokenizer.ggml.merges' is missing (a BPE vocabulary needs it)")

        if model == "llama":
            ids: dict[str, int | None] = {"bos": 1, "eos": 2, "unk": 0}
            add_bos, add_eos, add_space_prefix, clean_spaces = True, False, True, False
        else:
            ids = {"bos": 11, "eos": 11, "unk": None}
            add_bos, add_eos, add_space_prefix = pre.add_bos, False, False
            clean_spaces = pre.clean_spaces
        ids = {k: ids.get(k) for k in _SPECIAL_ID_KEYS}
        for k, key in _SPECIAL_ID_KEYS.items():
            if ids[k] is not None and ids[k] >= n:
                ids[k] = None
            value = meta.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < n:
                ids[k] = value
        add_bos = _bool(meta, "tokenizer.ggml.add_bos_token", add_bos, path)
        add_eos = _bool(meta, "tokenizer.ggml.add_eos_token", add_eos, path)
        add_space_prefix = _bool(meta, "tokenizer.ggml.add_space_prefix", add_space_prefix, path)

        vocab = cls(model, tokens, scores, attrs, merges, pre, ids, add_bos, add_eos, add_space_prefix, clean_spaces)
        vocab.token_to_id = {t: i for i, t in enumerate(tokens)}
        vocab._detect_special(meta)
        return vocab

    def _detect_special(self, meta: dict[str, Any]) -> None:
        """EOT/EOM and end-of-generation tokens by text, the special-token list, per-model strip flags."""
        ids, attrs = self.special_ids, self.attrs
        eog: set[int] = set()
        for text, i in self.token_to_id.items():
            if ids["eot"] is None and text in _EOT_TEXTS:
                ids["eot"] = i
                attrs[i] |= TokenAttr.CONTROL
            if ids["eom"] is None and text == "<|eom_id|>":
                ids["eom"] = i
                attrs[i] |= TokenAttr.CONTROL
            if text in _EOG_TEXTS or text in _FIM_EOG_TEXTS:
                eog.add(i)
                attrs[i] |= TokenAttr.CONTROL
        eog.update(i for i in (ids["eos"], ids["eot"], ids["eom"]) if i is not None)
        self.eog_ids = frozenset(eog)
        special = [i for i, a in enumerate(attrs) if a & SPECIAL_ATTRS]
        self.special_tokens = sorted(special, key=lambda i: -len(self.tokens[i]))
        # Phi-3 vocabularies strip whitespace after their special tokens (llama.cpp sets this by model name)
        name = str(meta.get("general.name", "")).lower()
        if "phi-3" in name or "phi3" in name:
            for i in self.special_tokens:
                attrs[i] |= TokenAttr.RSTRIP
            for text, flag in (("</s>", True), ("<unk>", False), ("<s>", False), ("<|endoftext|>", False)):
                if text in self.token_to_id:
                    i = self.token_to_id[text]
                    attrs[i] = attrs[i] | TokenAttr.RSTRIP if flag else attrs[i] & ~TokenAttr.RSTRIP


def _numeric_array(meta: dict[str, Any], key: str, n: int, path: Path | str, default: float) -> np.ndarray:
    value = meta.get(key)
    if value is None:
        return np.full(n, default)
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "iuf":
        raise GGUFError(f"{path}: metadata '{key}' should be a numeric array")
    if len(value) < n:
        raise GGUFError(f"{path}: metadata '{key}' has {len(value)} entries, fewer than the {n} tokens")
    return value[:n]


def _bool(meta: dict[str, Any], key: str, default: bool, path: Path | str) -> bool:
    value = meta.get(key, default)
    if not isinstance(value, (bool, np.bool_)):
        raise GGUFError(f"{path}: metadata '{key}' is {value!r}, expected true or false")
    return bool(value)
