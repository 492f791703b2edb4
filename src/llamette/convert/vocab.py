"""Tokenizer files -> GGUF tokenizer metadata, as llama.cpp's convert_hf_to_gguf.py writes it.

- SentencePiece (`tokenizer.model`) -> tokenizer.ggml.model "llama": pieces, scores and token types
  (_create_vocab_sentencepiece), with added_tokens.json and tokenizer_config.json's added_tokens_decoder.
- Byte-level BPE (`tokenizer.json`) -> "gpt2": tokens, types, merges, and tokenizer.ggml.pre chosen by the
  hash of the tokenization of llama.cpp's check text (get_vocab_base_pre).
- Special tokens, add_bos/add_eos and the chat template as gguf-py's SpecialVocab finds them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from llamette.convert import spm
from llamette.convert.common import Log, VocabMeta, read_json
from llamette.convert.pre_hashes import CHKTXT, PRE_BY_HASH
from llamette.errors import LlametteError
from llamette.gguf.constants import GGUFValueType as V

# llama_token_type
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

SPECIAL_TYPES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")
_ID_KEYS = {
    "bos": "tokenizer.ggml.bos_token_id",
    "eos": "tokenizer.ggml.eos_token_id",
    "unk": "tokenizer.ggml.unknown_token_id",
    "sep": "tokenizer.ggml.seperator_token_id",  # sic: llama.cpp's spelling
    "pad": "tokenizer.ggml.padding_token_id",
    "cls": "tokenizer.ggml.cls_token_id",
    "mask": "tokenizer.ggml.mask_token_id",
}


def looks_special(text: str) -> bool:
    """ModelBase.does_token_look_special."""
    if text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]"):
        return True
    if (text.startswith("<|") and text.endswith("|>")) or (text.startswith("<｜") and text.endswith("｜>")):
        return True
    return text.startswith("<unused") and text.endswith(">")


def _optional_json(path: Path) -> dict[str, Any] | None:
    return read_json(path) if path.is_file() else None


class SpecialVocab:
    """gguf-py's SpecialVocab for the Llama family: special ids, add_*_token flags, merges and chat template."""

    def __init__(self, model_dir: Path, n_vocab: int, load_merges: bool, log: Log) -> None:
        self.dir, self.n_vocab, self.log = model_dir, n_vocab, log
        self.ids: dict[str, int] = {}
        self.add: dict[str, bool] = {}
        self.merges: list[str] = []
        self.chat_template: str | list | None = None
        tok_json = _optional_json(model_dir / "tokenizer.json")
        self.config = _optional_json(model_dir / "tokenizer_config.json") or {}
        if tok_json is not None and load_merges:
            self.merges = _merges(tok_json, model_dir / "tokenizer.json")
        self._from_tokenizer_files(tok_json)
        self._from_config_json()

    def set_id(self, typ: str, tid: Any) -> None:
        if isinstance(tid, bool) or not isinstance(tid, int) or typ in self.ids:
            return
        if tid < 0:
            raise LlametteError(f"{self.dir}: invalid id {tid} for the {typ} token")
        if tid < self.n_vocab:
            self.ids[typ] = tid
        else:
            self.log(f"warning: {typ} token id {tid} is out of the vocabulary (< {self.n_vocab}), ignored")

    def _from_tokenizer_files(self, tok_json: dict[str, Any] | None) -> None:
        cfg = self.config
        added = (tok_json or {}).get("added_tokens") or []
        special = {t: _content(cfg.get(f"{t}_token")) for t in SPECIAL_TYPES}
        if not special["bos"] and special["cls"]:
            special["bos"] = special["cls"]
        if not special["eos"] and special["sep"]:
            special["eos"] = special["sep"]
        post = (tok_json or {}).get("post_processor") or {}
        for proc in post.get("processors", [post]) if post else []:
            kind = proc.get("type")
            if kind == "ByteLevel":
                self.add.setdefault("bos", False)
                self.add.setdefault("eos", False)
            elif kind == "TemplateProcessing":
                single = proc.get("single") or []
                if len(single) > 1:
                    first = single[0].get("SpecialToken", {}).get("id")
                    last = single[-1].get("SpecialToken", {}).get("id")
                    if first:
                        if not special["bos"]:
                            special["bos"] = first
                        self.add["bos"] = first in (special["bos"], special["cls"])
                    if last:
                        if not special["eos"]:
                            special["eos"] = last
                        self.add["eos"] = last == special["eos"]
        template = cfg.get("chat_template")
        if template is None:
            jinja, js = self.dir / "chat_template.jinja", self.dir / "chat_template.json"
            if jinja.is_file():
                template = jinja.read_text(encoding="utf-8")
            elif js.is_file():
                template = read_json(js).get("chat_template")
        if template is None or isinstance(template, (str, list)):
            self.chat_template = template
        else:
            self.log("warning: tokenizer_config.json's chat_template is neither a string nor a list, ignored")
        for typ in SPECIAL_TYPES:
            flag = cfg.get(f"add_{typ}_token")
            if isinstance(flag, bool) and typ not in self.add:
                self.add[typ] = flag
            content = special[typ]
            if content:
                self.set_id(typ, next((t.get("id") for t in added if t.get("content") == content), None))

    def _from_config_json(self) -> None:
        cfg = _optional_json(self.dir / "config.json") or {}
        for typ in SPECIAL_TYPES:
            self.set_id(typ, cfg.get(f"{typ}_token_id"))

    def entries(self, out: VocabMeta) -> None:
        if self.merges:
            out.add("tokenizer.ggml.merges", V.ARRAY, self.merges)
        for typ, tid in self.ids.items():
            out.add(_ID_KEYS[typ], V.UINT32, tid)
        for typ, flag in self.add.items():
            if typ in ("bos", "eos", "sep"):
                out.add(f"tokenizer.ggml.add_{typ}_token", V.BOOL, flag)
        if isinstance(self.chat_template, str):
            out.add("tokenizer.chat_template", V.STRING, self.chat_template)
        elif isinstance(self.chat_template, list):
            names = []
            for entry in self.chat_template:
                name, text = entry.get("name"), entry.get("template")
                if not isinstance(name, str) or not isinstance(text, str):
                    continue
                name = "".join(c if c.isalnum() else "_" for c in name)
                if name == "default":
                    out.add("tokenizer.chat_template", V.STRING, text)
                else:
                    names.append(name)
                    out.add(f"tokenizer.chat_template.{name}", V.STRING, text)
            if names:
                out.add("tokenizer.chat_templates", V.ARRAY, names)


def _content(entry: Any) -> str | None:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict) and isinstance(entry.get("content"), str):
        return entry["content"]
    return None


def _merges(tok_json: dict[str, Any], path: Path) -> list[str]:
    merges = (tok_json.get("model") or {}).get("merges") or []
    if merges and isinstance(merges[0], str):
        return list(merges)
    if merges and isinstance(merges[0], list):
        # the pair format (transformers >= 4.45): a space inside a token is written as U+0120, as gguf-py does
        return [
            " ".join("".join(chr(ord(c) + 256) if c == " " else c for c in part) for part in pair) for pair in merges
        ]
    if merges:
        raise LlametteError(f"{path}: model.merges has an unknown format")
    return []


# -- SentencePiece ------------------------------------------------------------------------------------------


def spm_tokens(
    model: spm.SentencePieceModel, n_vocab: int, model_dir: Path, log: Log
) -> tuple[list[str], list[float], list[int]]:
    """_create_vocab_sentencepiece: pieces padded to n_vocab, then added_tokens.json and added_tokens_decoder."""
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    scores = [-10000.0] * n_vocab
    types = [UNUSED] * n_vocab
    for i, (piece, score, ptype) in enumerate(zip(model.pieces, model.scores, model.types, strict=True)):
        if i >= n_vocab:
            log(f"warning: ignoring SentencePiece tokens from id {i}: the vocabulary has {n_vocab} rows")
            break
        tokens[i], scores[i] = piece, float(score)
        types[i] = {spm.UNKNOWN: UNKNOWN, spm.CONTROL: CONTROL, spm.UNUSED: UNUSED, spm.BYTE: BYTE}.get(ptype, NORMAL)
    added_file = model_dir / "added_tokens.json"
    if added_file.is_file():
        for text, tid in read_json(added_file).items():
            if not isinstance(tid, int) or not 0 <= tid < n_vocab:
                log(f"warning: {added_file}: ignoring token {text!r} with id {tid!r}")
                continue
            tokens[tid], scores[tid], types[tid] = text, -1000.0, USER_DEFINED
    cfg_file = model_dir / "tokenizer_config.json"
    decoder = (_optional_json(cfg_file) or {}).get("added_tokens_decoder") or {}
    for key, data in decoder.items():
        tid, text = int(key), data.get("content")
        if not isinstance(text, str) or not 0 <= tid < n_vocab:
            log(f"warning: {cfg_file}: ignoring added token {key}")
            continue
        if data.get("special") or looks_special(text):
            types[tid] = CONTROL
        else:
            text = text.replace("\u2581", " ")  # pre-normalize user-defined spaces
            types[tid] = USER_DEFINED
        tokens[tid], scores[tid] = text, -1000.0
    return tokens, scores, types


def spm_vocab(model_file: Path, n_vocab: int, model_dir: Path, log: Log) -> VocabMeta:
    model = spm.load(model_file)
    tokens, scores, types = spm_tokens(model, n_vocab, model_dir, log)
    out = VocabMeta(n_tokens=len(tokens))
    cfg = _optional_json(model_dir / "tokenizer_config.json") or {}
    if isinstance(cfg.get("add_prefix_space"), bool):
        out.add("tokenizer.ggml.add_space_prefix", V.BOOL, cfg["add_prefix_space"])
    out.add("tokenizer.ggml.model", V.STRING, "llama")
    out.add("tokenizer.ggml.pre", V.STRING, "default")
    out.add("tokenizer.ggml.tokens", V.ARRAY, tokens)
    out.add("tokenizer.ggml.scores", V.ARRAY, _f32(scores))
    out.add("tokenizer.ggml.token_type", V.ARRAY, _i32(types))
    special = SpecialVocab(model_dir, len(tokens), load_merges=False, log=log)
    # a bare SentencePiece model (Meta's layout) still knows its special ids
    for typ, tid in (("bos", model.bos_id), ("eos", model.eos_id), ("unk", model.unk_id), ("pad", model.pad_id)):
        if 0 <= tid < len(tokens):
            special.set_id(typ, tid)
    special.entries(out)
    return out


# -- byte-level BPE -----------------------------------------------------------------------------------------


def _is_byte_level(tok_json: dict[str, Any]) -> bool:
    def walk(node: Any) -> bool:
        if isinstance(node, dict):
            return node.get("type") == "ByteLevel" or any(walk(v) for v in node.values())
        if isinstance(node, list):
            return any(walk(v) for v in node)
        return False

    return walk(tok_json.get("pre_tokenizer")) or walk(tok_json.get("decoder"))


def bpe_tokens(tok_json: dict[str, Any], n_vocab: int, path: Path) -> tuple[list[str], list[int]]:
    """get_vocab_base: the vocabulary with added tokens, CONTROL / USER_DEFINED by their flags, gaps padded."""
    model = tok_json.get("model") or {}
    vocab = model.get("vocab")
    if not isinstance(vocab, dict):
        raise LlametteError(f"{path}: model.vocab is missing")
    reverse: dict[int, str] = {}
    for text, tid in vocab.items():
        reverse[tid] = text
    added = {}
    for t in tok_json.get("added_tokens") or []:
        if isinstance(t.get("id"), int) and isinstance(t.get("content"), str):
            reverse[t["id"]] = t["content"]
            added[t["content"]] = t
    if reverse and max(reverse) >= n_vocab:
        raise LlametteError(
            f"{path}: token id {max(reverse)} is outside the model's vocabulary of {n_vocab} (config.json vocab_size)"
        )
    tokens, types = [], []
    for i in range(n_vocab):
        text = reverse.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif text in added:
            if added[text].get("special") or looks_special(text):
                types.append(CONTROL)
            else:
                text = text.replace("\u2581", " ")
                types.append(USER_DEFINED)
            tokens.append(text)
        else:
            tokens.append(text)
            types.append(NORMAL)
    return tokens, types


def detect_pre(tokenizer_file: Path, bos_id: int | None) -> tuple[str, str]:
    """(tokenizer.ggml.pre, chkhsh): get_vocab_base_pre, with the `tokenizers` package doing the tokenization."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise LlametteError(
            "converting a byte-level BPE tokenizer needs the `tokenizers` package: pip install tokenizers"
        ) from None
    try:
        tok = Tokenizer.from_file(str(tokenizer_file))
    except Exception as e:  # tokenizers raises its own Exception subclass
        raise LlametteError(f"{tokenizer_file}: the tokenizers package cannot load it: {e}") from None
    ids = tok.encode(CHKTXT).ids
    candidates = [ids]
    if bos_id is not None:  # transformers may add (or not) the BOS token that tokenizer.json's post-processor does
        candidates.append(ids[1:] if ids[:1] == [bos_id] else [bos_id, *ids])
    hashes = [hashlib.sha256(str(c).encode()).hexdigest() for c in candidates]
    for h in hashes:
        if h in PRE_BY_HASH:
            return PRE_BY_HASH[h], h
    raise LlametteError(
        f"{tokenizer_file}: the BPE pre-tokenizer was not recognized (chkhsh {hashes[0]}): llama.cpp's "
        "convert_hf_to_gguf.py does not know this tokenizer either"
    )


def bpe_vocab(tokenizer_file: Path, n_vocab: int, model_dir: Path, log: Log) -> VocabMeta:
    tok_json = read_json(tokenizer_file)
    model = tok_json.get("model") or {}
    if model.get("type", "BPE") != "BPE":
        raise LlametteError(
            f"{tokenizer_file}: tokenizer model {model.get('type')!r} is not supported (byte-level BPE, or a "
            "SentencePiece tokenizer.model)"
        )
    if not _is_byte_level(tok_json):
        raise LlametteError(
            f"{tokenizer_file}: a BPE tokenizer that is not byte-level (SentencePiece-style): the conversion needs "
            "its tokenizer.model"
        )
    tokens, types = bpe_tokens(tok_json, n_vocab, tokenizer_file)
    special = SpecialVocab(model_dir, len(tokens), load_merges=True, log=log)
    if not special.merges:
        raise LlametteError(f"{tokenizer_file}: model.merges is missing (a BPE vocabulary needs it)")
    pre, chkhsh = detect_pre(tokenizer_file, special.ids.get("bos"))
    log(f"BPE pre-tokenizer: {pre} (chkhsh {chkhsh})")
    from llamette.tokenizer.pretokenize import supported_pre_tokenizers

    if pre not in supported_pre_tokenizers():
        log(f"warning: llamette cannot tokenize with the '{pre}' pre-tokenizer yet (llama.cpp can)")
    out = VocabMeta(n_tokens=len(tokens))
    cfg = special.config
    if isinstance(cfg.get("add_prefix_space"), bool):
        out.add("tokenizer.ggml.add_space_prefix", V.BOOL, cfg["add_prefix_space"])
    out.add("tokenizer.ggml.model", V.STRING, "gpt2")
    out.add("tokenizer.ggml.pre", V.STRING, pre)
    out.add("tokenizer.ggml.tokens", V.ARRAY, tokens)
    out.add("tokenizer.ggml.token_type", V.ARRAY, _i32(types))
    special.entries(out)
    return out


def hf_vocab(model_dir: Path, n_vocab: int, log: Log) -> VocabMeta:
    """LlamaModel.set_vocab: SentencePiece when tokenizer.model exists, else byte-level BPE from tokenizer.json."""
    if (model_dir / "tokenizer.model").is_file():
        out = spm_vocab(model_dir / "tokenizer.model", n_vocab, model_dir, log)
    elif (model_dir / "tokenizer.json").is_file():
        out = bpe_vocab(model_dir / "tokenizer.json", n_vocab, model_dir, log)
    else:
        raise LlametteError(f"{model_dir}: no tokenizer (tokenizer.model or tokenizer.json)")
    if n_vocab == 49152:  # llama.cpp: granite (and SmolLM) small models add no BOS
        out.add("tokenizer.ggml.add_bos_token", V.BOOL, False)
    return out


def _f32(values: list[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def _i32(values: list[int]) -> np.ndarray:
    return np.asarray(values, dtype=np.int32)
