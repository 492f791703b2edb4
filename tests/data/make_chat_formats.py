"""Regenerate chat_formats.json: llama.cpp's own rendering of its built-in chat formats
(llama_chat_apply_template, through llama-cpp-python 0.3.36's low-level binding; never run in CI):
python make_chat_formats.py > chat_formats.json"""

import ctypes
import json
import sys

import llama_cpp

CONVERSATION = [
    ("system", "You are terse."),
    ("user", "Hello!"),
    ("assistant", " Hi there. "),
    ("user", "What is 2+2?"),
]
NAMES = {"chatml": "chatml", "llama2": "llama2", "llama2-sys": "llama2-sys", "llama3": "llama3",
         "mistral": "mistral-v1", "zephyr": "zephyr", "gemma": "gemma", "phi3": "phi3"}  # fmt: skip

msgs = (llama_cpp.llama_chat_message * len(CONVERSATION))(
    *[llama_cpp.llama_chat_message(role.encode(), content.encode()) for role, content in CONVERSATION]
)
out = {"conversation": [{"role": r, "content": c} for r, c in CONVERSATION], "rendered": {}}
for ours, theirs in NAMES.items():
    buf = ctypes.create_string_buffer(8192)
    n = llama_cpp.llama_chat_apply_template(theirs.encode(), msgs, len(CONVERSATION), True, buf, len(buf))
    assert n > 0, theirs
    out["rendered"][ours] = buf.raw[:n].decode()
json.dump(out, sys.stdout, indent=1)
