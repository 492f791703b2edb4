"""Chat templates: a conversation -> the prompt text the model was trained on.

The GGUF's own `tokenizer.chat_template` is Jinja2 written by whoever made the file, so it is untrusted: it
renders in Jinja2's immutable sandbox (no attribute access to Python internals, no mutation of the messages),
with the same environment and helpers as Hugging Face's `apply_chat_template` (trim_blocks, lstrip_blocks,
loop controls, raise_exception, strftime_now, tojson), plus limits on loop and string sizes so a template
cannot exhaust memory. Files without a template fall back to built-in formats written like llama.cpp's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from llamette.errors import LlametteError

# llama.cpp's built-in formats (src/llama-chat.cpp), as templates; BOS is added by tokenization, not here
BUILTIN_TEMPLATES: dict[str, str] = {
    "chatml": (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ),
    # llama.cpp's "llama2": no <<SYS>> block, a system message goes in as plain text
    "llama2": (
        "[INST] {% set ns = namespace(inside=true) %}{% for m in messages %}"
        "{% if not ns.inside %}{% set ns.inside = true %}[INST] {% endif %}"
        "{% if m.role == 'system' %}{{ m.content }}\n"
        "{% elif m.role == 'user' %}{{ m.content }} [/INST]"
        "{% else %}{{ m.content }}</s>{% set ns.inside = false %}{% endif %}{% endfor %}"
    ),
    "llama2-sys": (
        "[INST] {% set ns = namespace(inside=true) %}{% for m in messages %}"
        "{% if not ns.inside %}{% set ns.inside = true %}[INST] {% endif %}"
        "{% if m.role == 'system' %}<<SYS>>\n{{ m.content }}\n<</SYS>>\n\n"
        "{% elif m.role == 'user' %}{{ m.content }} [/INST]"
        "{% else %}{{ m.content }}</s>{% set ns.inside = false %}{% endif %}{% endfor %}"
    ),
    "llama3": (
        "{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n{{ m.content | trim }}<|eot_id|>"
        "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
    ),
    # llama.cpp's "mistral-v1"
    "mistral": (
        "{% set ns = namespace(inside=false) %}{% for m in messages %}"
        "{% if not ns.inside %}{% set ns.inside = true %} [INST] {% endif %}"
        "{% if m.role == 'system' %}{{ m.content }}\n\n"
        "{% elif m.role == 'user' %}{{ m.content }} [/INST]"
        "{% else %} {{ m.content }}</s>{% set ns.inside = false %}{% endif %}{% endfor %}"
    ),
    "zephyr": (
        "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}<|endoftext|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    ),
    # the system message is merged into the next user turn; "assistant" is "model"
    "gemma": (
        "{% set ns = namespace(system='') %}{% for m in messages %}"
        "{% if m.role == 'system' %}{% set ns.system = ns.system + (m.content | trim) %}{% else %}"
        "{% set role = 'model' if m.role == 'assistant' else m.role %}<start_of_turn>{{ role }}\n"
        "{% if ns.system and role != 'model' %}{{ ns.system }}\n\n{% set ns.system = '' %}{% endif %}"
        "{{ m.content | trim }}<end_of_turn>\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
    ),
    "phi3": (
        "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}<|end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    ),
}
DEFAULT_TEMPLATE = "chatml"  # llama.cpp's choice for a file without a template

MAX_OUTPUT_CHARS = 4_000_000  # a rendered prompt longer than this is a template gone wrong
_MAX_SEQUENCE = 1_000_000  # largest string or list a template may build with * or **


def _sandbox():
    """Hugging Face's chat-template environment, in Jinja2's immutable sandbox, with size limits."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

    class ChatSandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**"})

        def unsafe_undefined(self, obj, attribute):
            # jinja would return an Undefined that prints as "": make any reach for internals a hard error
            raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")

        def call_binop(self, context, operator, left, right):
            if operator == "**" and isinstance(right, (int, float)) and abs(right) > 64:
                raise SecurityError(f"exponent {right} is too large for a chat template")
            if operator == "*":
                for seq, times in ((left, right), (right, left)):
                    sized = isinstance(seq, (str, list, tuple)) and isinstance(times, int)
                    if sized and len(seq) * times > _MAX_SEQUENCE:
                        raise SecurityError("a chat template tried to build a string or list that is too long")
            return super().call_binop(context, operator, left, right)

    env = ChatSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.filters["tojson"] = _tojson
    return env


class TemplateRaised(LlametteError):
    """The template called raise_exception(message): it refuses this conversation."""


def _raise_exception(message: str) -> None:
    raise TemplateRaised(f"chat template: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys: bool = False):
    # transformers' tojson: no HTML escaping (jinja's built-in escapes <, >, &, ') and keeps non-ASCII
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class ChatTemplate:
    """A compiled chat template. render(messages) -> prompt text."""

    def __init__(self, source: str, name: str = "template", bos_token: str = "", eos_token: str = "") -> None:
        from jinja2 import TemplateError

        if not isinstance(source, str) or not source.strip():
            raise LlametteError(f"chat template {name!r} is empty")
        self.source, self.name = source, name
        self.bos_token, self.eos_token = bos_token, eos_token
        try:
            self._template = _sandbox().from_string(source)
        except TemplateError as e:
            raise LlametteError(f"chat template {name!r} does not compile: {e}") from None

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        **extra: Any,
    ) -> str:
        """Render a conversation: messages are {"role": ..., "content": ...} dicts (as HF's apply_chat_template);
        extra variables (tools, documents, ...) are passed to the template as they are."""
        from jinja2 import TemplateError
        from jinja2.sandbox import SecurityError

        checked = check_messages(messages)
        try:
            text = self._template.render(
                messages=checked,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                **extra,
            )
        except SecurityError as e:
            raise LlametteError(f"chat template {self.name!r} tried something the sandbox forbids: {e}") from None
        except TemplateRaised:
            raise
        except TemplateError as e:
            raise LlametteError(f"chat template {self.name!r} failed: {e}") from None
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError, RecursionError) as e:
            raise LlametteError(f"chat template {self.name!r} failed: {type(e).__name__}: {e}") from None
        if len(text) > MAX_OUTPUT_CHARS:
            raise LlametteError(f"chat template {self.name!r} produced {len(text)} characters; refusing")
        return text


def check_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Messages as the templates expect them, or an error naming the bad one."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise LlametteError("messages must be a list of {'role': ..., 'content': ...} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise LlametteError(f"messages[{i}] must be an object with 'role' and 'content', got {type(m).__name__}")
        role = m.get("role")
        if not isinstance(role, str) or not role:
            raise LlametteError(f"messages[{i}]['role'] must be a non-empty string, got {role!r}")
        content = m.get("content", "")
        if content is None:
            content = ""
        if isinstance(content, list):  # OpenAI content parts: keep the text ones
            parts = []
            for part in content:
                if not isinstance(part, Mapping) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise LlametteError(f"messages[{i}]['content']: only text parts are supported, got {part!r:.80}")
                parts.append(part["text"])
            content = "".join(parts)
        if not isinstance(content, str):
            raise LlametteError(f"messages[{i}]['content'] must be a string, got {type(content).__name__}")
        out.append({**m, "role": role, "content": content})
    return out


def template_for(
    metadata: Mapping[str, Any],
    choice: str | None = None,
    file: str | os.PathLike | None = None,
    bos_token: str = "",
    eos_token: str = "",
) -> ChatTemplate:
    """The template to use: a file (--chat-template-file), a built-in name or template text (--chat-template),
    else the model's own, else chatml."""
    if file is not None:
        try:
            source = Path(file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise LlametteError(f"{file}: cannot read the chat template: {e}") from None
        return ChatTemplate(source, str(file), bos_token, eos_token)
    if choice:
        if choice in BUILTIN_TEMPLATES:
            return ChatTemplate(BUILTIN_TEMPLATES[choice], choice, bos_token, eos_token)
        if "{{" in choice or "{%" in choice:
            return ChatTemplate(choice, "--chat-template", bos_token, eos_token)
        raise LlametteError(
            f"unknown chat template {choice!r}: choose from {', '.join(BUILTIN_TEMPLATES)} or give Jinja2 text"
        )
    own = metadata.get("tokenizer.chat_template")
    if isinstance(own, str) and own.strip():
        return ChatTemplate(own, "tokenizer.chat_template", bos_token, eos_token)
    return ChatTemplate(BUILTIN_TEMPLATES[DEFAULT_TEMPLATE], DEFAULT_TEMPLATE, bos_token, eos_token)


def model_template(
    metadata: Mapping[str, Any], tokenizer, choice: str | None = None, file: str | os.PathLike | None = None
) -> ChatTemplate:
    """template_for with the model's BOS and EOS texts (the bos_token / eos_token templates print)."""

    def text(token: int | None) -> str:
        return tokenizer.token_to_piece(token).decode("utf-8", "replace") if token is not None else ""

    return template_for(metadata, choice, file, text(tokenizer.bos), text(tokenizer.eos))
