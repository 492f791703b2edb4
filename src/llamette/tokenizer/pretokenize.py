r"""Pre-tokenizers of byte-level BPE vocabularies, chosen by the GGUF key `tokenizer.ggml.pre`.

The regexes are llama.cpp's, verbatim (src/llama-vocab.cpp, llm_tokenizer_bpe). Each regex splits every
fragment the previous ones produced; both the matches and the text between them become fragments
(llama.cpp's unicode_regex_split). `\s` means Unicode White_Space, as in llama.cpp's character tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import regex

from llamette.errors import GGUFError


@dataclass(frozen=True)
class PreTokenizer:
    name: str  # the tokenizer.ggml.pre value
    kind: str  # llama.cpp's pre-tokenizer type
    patterns: tuple[str, ...]
    ignore_merges: bool = False  # a word that is already a token skips BPE (Llama 3)
    add_bos: bool = False  # default for tokenizer.ggml.add_bos_token
    clean_spaces: bool = True  # detokenize drops spaces before punctuation (clean_up_tokenization_spaces)

    @cached_property
    def compiled(self) -> list[regex.Pattern]:
        return [regex.compile(_to_python_regex(p)) for p in self.patterns]

    def split(self, text: str) -> list[str]:
        """Split text into words: every regex refines the fragments of the previous one."""
        fragments = [text]
        for rx in self.compiled:
            out: list[str] = []
            for frag in fragments:
                last = 0
                for m in rx.finditer(frag):
                    if m.start() > last:
                        out.append(frag[last : m.start()])
                    if m.end() > m.start():
                        out.append(m.group())
                    last = m.end()
                if last < len(frag):
                    out.append(frag[last:])
            fragments = out
        return fragments


def pre_tokenizer(name: str, path: Path | str = "<metadata>") -> PreTokenizer:
    if not isinstance(name, str) or name not in _NAMES:
        known = ", ".join(sorted(_NAMES))
        raise GGUFError(
            f"{path}: BPE pre-tokenizer '{name}' (tokenizer.ggml.pre) is not supported (supported: {known})"
        )
    kind, flags = _NAMES[name]
    return PreTokenizer(name, kind, _PATTERNS[kind], **flags)


def supported_pre_tokenizers() -> list[str]:
    return sorted(_NAMES)


def _to_python_regex(pattern: str) -> str:
    """llama.cpp's regex dialect -> the `regex` module's: \\s and \\S are Unicode White_Space, and `$`
    outside a character class means end of text (ECMAScript), not also 'before a final newline'."""
    out, i, in_class = [], 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            nxt = pattern[i + 1]
            out.append({"s": r"\p{White_Space}", "S": r"\P{White_Space}"}.get(nxt, c + nxt))
            i += 2
            continue
        if c == "[" and not in_class:
            in_class = True
        elif c == "]" and in_class:
            in_class = False
        elif c == "$" and not in_class:
            c = r"\Z"
        out.append(c)
        i += 1
    return "".join(out)


_LLAMA3 = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
)
_DEEPSEEK3_LLM = (
    r"\p{N}{1,3}",
    r"[一-龥\u3040-\u309f゠-ヿ]+",
    r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
)
_STARCODER = (
    r"\p{N}",
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
)
_GPT2 = (r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",)
_STABLELM2 = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
)
_PORO = (r" ?[^(\s|.,!?\u2026\u3002\uff0c\u3001।۔،)]+",)
_GPT4O = (
    r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
)

# llama.cpp pre-tokenizer type -> its regexes, applied in order
_PATTERNS: dict[str, tuple[str, ...]] = {
    "LLAMA3": _LLAMA3,
    "JAIS2": (
        r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s{512}(?!\S)|\s{256}(?!\S)|\s{128}(?!\S)|\s{64}(?!\S)|\s{32}(?!\S)|\s{16}(?!\S)|\s{8}(?!\S)|\s{4}(?!\S)|\s{1,2}(?!\S)|\s{1}",
    ),
    "DBRX": _LLAMA3,
    "SMAUG": _LLAMA3,
    "DEEPSEEK_LLM": (
        r"[\r\n]",
        r"\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳ\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]+",
        r"\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+",
        r"\s+$",
        r"[一-龥ࠀ-一가-\ud7ff]+",
        r"\p{N}+",
    ),
    "DEEPSEEK3_LLM": _DEEPSEEK3_LLM,
    "HUNYUAN_DENSE": _DEEPSEEK3_LLM,
    "JOYAI_LLM": _DEEPSEEK3_LLM,
    "HY_V4": _DEEPSEEK3_LLM,
    "SPARK2_5": (
        r"\p{N}{1,3}",
        r"[一-龥\u3040-\u309f゠-ヿ]+",
        r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+|[\r\n]|\s+(?!\S)|\s+""",
        r"\p{N}",
    ),
    "YOUTU": (
        r"[가-\ud7a3\u3131-\u318e]+|[\uff01\u2026\u201c\u201d\u2018\u2019\u2014\uff1a\uff1b\uff0c\u3001-\u303f\ufe30-\ufe4f]+|[\u3105-\u312f]+|[一-龥\u3040-\u309f゠-ヿ]+",
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    "DEEPSEEK_CODER": (
        r"[\r\n]",
        r"\s?\p{L}+",
        r"\s?\p{P}+",
        r"[一-龥ࠀ-一가-\ud7ff]+",
        r"\p{N}",
    ),
    "FALCON": (
        r"[\p{P}\$\+<=>\^~\|`]+",
        r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
        r"[0-9][0-9][0-9]",
    ),
    "STARCODER": _STARCODER,
    "REFACT": _STARCODER,
    "COMMAND_R": _STARCODER,
    "SMOLLM": _STARCODER,
    "CODESHELL": _STARCODER,
    "EXAONE": _STARCODER,
    "MINERVA": _STARCODER,
    "MELLUM2": _STARCODER,
    "GPT2": _GPT2,
    "MPT": _GPT2,
    "OLMO": _GPT2,
    "JAIS": _GPT2,
    "TRILLION": _GPT2,
    "GRANITE_DOCLING": _GPT2,
    "STABLELM2": _STABLELM2,
    "QWEN2": _STABLELM2,
    "HUNYUAN": _STABLELM2,
    "SOLAR_OPEN": _STABLELM2,
    "QWEN35": (
        r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    "PORO": _PORO,
    "BLOOM": _PORO,
    "GPT3_FINNISH": _PORO,
    "VIKING": (
        r" ?[^(\s|.,!?\u2026\u3002\uff0c\u3001।۔،)]+",
        r"\p{N}",
    ),
    "TEKKEN": (
        r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    "CHAMELEON": _GPT2,
    "GPT4O": _GPT4O,
    "MINIMAX_M2": _GPT4O,
    "GRANITE_EMB_MULTI": (
        r"[^\r\n\p{L}\p{N}]?((?=[\p{L}\p{M}])([^a-z]))*((?=[\p{L}\p{M}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?((?=[\p{L}\p{M}])([^a-z]))+((?=[\p{L}\p{M}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    "BAILINGMOE": (
        r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+",
    ),
    "SEED_CODER": (
        r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    "UFAKZEKA": (r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",),
    "GROK_2": _STABLELM2,
    "LAGUNA": (
        r"[^\n]+|[\n]+",
        r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    "EXAONE_MOE": (
        r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+",
    ),
    "MINICPM5": (
        r"\p{N}{1,3}",
        r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    "DEFAULT": (
        r"[\p{P}\$\+<=>\^~\|]+",
        r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
        r"\p{N}+",
        r"[0-9][0-9][0-9]",
    ),
}

# tokenizer.ggml.pre -> (type, flags that differ from the defaults)
_NAMES: dict[str, tuple[str, dict[str, bool]]] = {
    "default": ("DEFAULT", {}),
    "minicpm5": ("MINICPM5", {"ignore_merges": True}),
    "llama3": ("LLAMA3", {"ignore_merges": True, "add_bos": True}),
    "llama-v3": ("LLAMA3", {"ignore_merges": True, "add_bos": True}),
    "llama-bpe": ("LLAMA3", {"ignore_merges": True, "add_bos": True}),
    "falcon3": ("LLAMA3", {"ignore_merges": True, "add_bos": True}),
    "falcon-h1": ("LLAMA3", {"ignore_merges": True, "add_bos": True}),
    "pixtral": ("LLAMA3", {"ignore_merges": True, "add_bos": True}),
    "midm-2.0": ("LLAMA3", {"ignore_merges": True, "add_bos": True}),
    "lfm2": ("LLAMA3", {"ignore_merges": True, "add_bos": True}),
    "jina-v5-nano": ("LLAMA3", {"ignore_merges": True, "add_bos": True}),
    "deepseek-llm": ("DEEPSEEK_LLM", {"clean_spaces": False}),
    "deepseek-coder": ("DEEPSEEK_CODER", {"clean_spaces": False}),
    "deepseek-v3": ("DEEPSEEK3_LLM", {"clean_spaces": False}),
    "spark2_5": ("SPARK2_5", {"clean_spaces": False}),
    "youtu": ("YOUTU", {"clean_spaces": False, "ignore_merges": True}),
    "falcon": ("FALCON", {}),
    "mpt": ("MPT", {}),
    "starcoder": ("STARCODER", {}),
    "gpt-2": ("GPT2", {}),
    "phi-2": ("GPT2", {}),
    "jina-es": ("GPT2", {}),
    "jina-de": ("GPT2", {}),
    "gigachat": ("GPT2", {}),
    "jina-v2-es": ("GPT2", {}),
    "jina-v2-de": ("GPT2", {}),
    "a.x-4.0": ("GPT2", {}),
    "mellum": ("GPT2", {}),
    "modern-bert": ("GPT2", {}),
    "jais-2": ("JAIS2", {}),
    "refact": ("REFACT", {}),
    "command-r": ("COMMAND_R", {"clean_spaces": False}),
    "qwen2": ("QWEN2", {"clean_spaces": False}),
    "deepseek-r1-qwen": ("QWEN2", {"clean_spaces": False}),
    "kormo": ("QWEN2", {"clean_spaces": False}),
    "f2llmv2": ("QWEN2", {"clean_spaces": False}),
    "qwen35": ("QWEN35", {"clean_spaces": False}),
    "stablelm2": ("STABLELM2", {}),
    "olmo": ("OLMO", {}),
    "dbrx": ("DBRX", {}),
    "smaug-bpe": ("SMAUG", {}),
    "poro-chat": ("PORO", {"clean_spaces": False}),
    "viking": ("VIKING", {"clean_spaces": False}),
    "jais": ("JAIS", {}),
    "tekken": ("TEKKEN", {"clean_spaces": False, "ignore_merges": True, "add_bos": True}),
    "smollm": ("SMOLLM", {"clean_spaces": False}),
    "codeshell": ("CODESHELL", {}),
    "bloom": ("BLOOM", {}),
    "gpt3-finnish": ("GPT3_FINNISH", {}),
    "exaone": ("EXAONE", {}),
    "exaone4": ("GPT2", {}),
    "exaone-moe": ("EXAONE_MOE", {}),
    "chameleon": ("CHAMELEON", {"add_bos": True, "clean_spaces": False}),
    "minerva-7b": ("MINERVA", {}),
    "megrez": ("QWEN2", {}),
    "gpt-4o": ("GPT4O", {"clean_spaces": False}),
    "llama4": ("GPT4O", {"clean_spaces": False}),
    "kanana2": ("GPT4O", {"clean_spaces": False}),
    "talkie": ("GPT4O", {"clean_spaces": False}),
    "granite-embed-multi-97m": ("GRANITE_EMB_MULTI", {"clean_spaces": False, "ignore_merges": True}),
    "trillion": ("TRILLION", {"clean_spaces": False}),
    "granite-docling": ("GRANITE_DOCLING", {"clean_spaces": False}),
    "bailingmoe": ("BAILINGMOE", {"clean_spaces": False}),
    "bailingmoe2": ("BAILINGMOE", {"clean_spaces": False}),
    "llada-moe": ("BAILINGMOE", {"clean_spaces": False}),
    "seed-coder": ("SEED_CODER", {"clean_spaces": False}),
    "hunyuan": ("HUNYUAN", {"clean_spaces": False}),
    "hunyuan-dense": ("HUNYUAN_DENSE", {"clean_spaces": False}),
    "hy_v4": ("HY_V4", {"clean_spaces": False}),
    "joyai-llm": ("JOYAI_LLM", {"clean_spaces": False}),
    "ufakzeka": ("UFAKZEKA", {"clean_spaces": False}),
    "grok-2": ("GROK_2", {"clean_spaces": False}),
    "laguna": ("LAGUNA", {"clean_spaces": False}),
    "minimax-m2": ("MINIMAX_M2", {"clean_spaces": False}),
    "solar-open": ("SOLAR_OPEN", {"clean_spaces": False}),
    "mellum2": ("MELLUM2", {}),
}
