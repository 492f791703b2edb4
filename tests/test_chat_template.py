"""Chat templates: llama.cpp's built-in formats, the SmolLM2 template against Hugging Face's apply_chat_template,
and templates that try to escape the sandbox."""

from __future__ import annotations

import json

import pytest
from conftest import DATA

from llamette.errors import LlametteError
from llamette.tokenizer.chat import BUILTIN_TEMPLATES, ChatTemplate, template_for

FORMATS = json.loads((DATA / "chat_formats.json").read_text())
CONVERSATION = [
    {"role": "system", "content": "You are a pirate."},
    {"role": "user", "content": "Hello! Who are you?"},
    {"role": "assistant", "content": "Arr, a humble sailor."},
    {"role": "user", "content": "Where is the treasure? <b>&</b> ünïcode"},
]


@pytest.mark.parametrize("name", sorted(FORMATS["rendered"]))
def test_builtin_formats_render_like_llama_cpp(name: str) -> None:
    got = ChatTemplate(BUILTIN_TEMPLATES[name], name).render(FORMATS["conversation"])
    assert got == FORMATS["rendered"][name]


def _hf_render(template: str, messages: list[dict], add_generation_prompt: bool = True) -> str:
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>"))
    hf = PreTrainedTokenizerFast(tokenizer_object=words, bos_token="<|im_start|>", eos_token="<|im_end|>")
    return hf.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt
    )


@pytest.mark.parametrize("with_system", [True, False])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_smollm2_template_renders_like_transformers(
    smollm2_path, with_system: bool, add_generation_prompt: bool
) -> None:
    from llamette.gguf.reader import GGUFFile

    with GGUFFile(smollm2_path) as gguf:
        template = template_for(gguf.metadata, bos_token="<|im_start|>", eos_token="<|im_end|>")
        source = gguf.metadata["tokenizer.chat_template"]
    assert template.name == "tokenizer.chat_template"
    messages = CONVERSATION if with_system else CONVERSATION[1:]
    ours = template.render(messages, add_generation_prompt=add_generation_prompt)
    assert ours == _hf_render(source, messages, add_generation_prompt)
    if not with_system:  # the template's own default system message
        assert ours.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")


def test_hf_helpers_like_transformers() -> None:
    # the helpers real templates use: tojson (no HTML escaping, keeps non-ASCII), strftime_now, loop controls,
    # whitespace control with trim_blocks / lstrip_blocks
    source = (
        "{% for m in messages %}\n  {% if m.role == 'assistant' %}{% continue %}{% endif %}\n"
        "{{ m | tojson }}|{{ m.content | tojson(indent=2) }}\n{% endfor %}"
        "{% if strftime_now('%Y') | length != 4 %}{{ raise_exception('bad year') }}{% endif %}"
    )
    assert ChatTemplate(source).render(CONVERSATION) == _hf_render(source, CONVERSATION)


def test_raise_exception_reaches_the_caller() -> None:
    source = "{% if messages[0].role != 'user' %}{{ raise_exception('Conversation must start with user') }}{% endif %}"
    with pytest.raises(LlametteError, match="Conversation must start with user"):
        ChatTemplate(source).render(CONVERSATION)


ESCAPES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('touch /tmp/llamette-pwned').read() }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ lipsum.__globals__['os'].system('touch /tmp/llamette-pwned') }}",
    "{{ messages.__class__.__base__.__subclasses__() }}",
    "{% set x = messages.append({'role': 'user', 'content': 'injected'}) %}",
    "{{ messages[0].update({'role': 'root'}) }}",
    "{{ (messages | first).content.format.__globals__ }}",
    "{{ raise_exception.__globals__ }}",
]


@pytest.mark.parametrize("source", ESCAPES)
def test_sandbox_escapes_fail(source: str, tmp_path) -> None:
    import os

    with pytest.raises(LlametteError, match="sandbox forbids|failed|undefined"):
        ChatTemplate(source, "evil").render(CONVERSATION)
    assert not os.path.exists("/tmp/llamette-pwned")


@pytest.mark.parametrize(
    "source",
    ["{{ 'x' * 100000000 }}", "{% for i in range(10**9) %}x{% endfor %}", "{{ 2 ** 100000000 }}"],
)
def test_resource_bombs_fail(source: str) -> None:
    with pytest.raises(LlametteError):
        ChatTemplate(source, "bomb").render(CONVERSATION)


def test_template_choice(tmp_path) -> None:
    meta_with = {"tokenizer.chat_template": "{{ messages[0].content }}"}
    assert template_for(meta_with).name == "tokenizer.chat_template"
    assert template_for({}).name == "chatml"  # llama.cpp's fallback
    assert template_for(meta_with, "llama3").name == "llama3"
    assert template_for(meta_with, "{{ 'inline' }}").render([]) == "inline"
    f = tmp_path / "t.jinja"
    f.write_text("from a file: {{ messages | length }}")
    assert template_for(meta_with, file=f).render(CONVERSATION) == "from a file: 4"
    with pytest.raises(LlametteError, match="unknown chat template 'nope'.*chatml"):
        template_for({}, "nope")
    with pytest.raises(LlametteError, match="cannot read"):
        template_for({}, file=tmp_path / "missing.jinja")
    with pytest.raises(LlametteError, match="does not compile"):
        ChatTemplate("{% for %}", "broken")


@pytest.mark.parametrize(
    ("messages", "problem"),
    [
        ("hello", "list"),
        ([{"content": "x"}], r"messages\[0\]\['role'\]"),
        ([{"role": "user", "content": 5}], "must be a string"),
        ([{"role": "user", "content": [{"type": "image_url"}]}], "only text parts"),
        ([["user", "hi"]], r"messages\[0\] must be an object"),
    ],
)
def test_bad_messages_are_named(messages, problem: str) -> None:
    with pytest.raises(LlametteError, match=problem):
        ChatTemplate(BUILTIN_TEMPLATES["chatml"]).render(messages)


def test_openai_text_parts_are_joined() -> None:
    msgs = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    rendered = ChatTemplate(BUILTIN_TEMPLATES["chatml"]).render(msgs)
    assert rendered == "<|im_start|>user\nab<|im_end|>\n<|im_start|>assistant\n"
