"""Regenerate seeded_completions.json with llama-cpp-python (needs `pip install llama-cpp-python==0.3.36`,
which builds llama.cpp; never run in CI): python make_seeded_completions.py > seeded_completions.json"""

import json
import sys

from llama_cpp import Llama

from llamette.default_model import default_model_path

CASES = [
    ("The first man to walk on the moon was", 42, {}),
    ("Once upon a time", 7, {}),
    ("Once upon a time", 7, {"top_k": 0, "top_p": 1.0, "min_p": 0.0}),
    ("Once upon a time", 3, {"mirostat_mode": 2}),
    ("Once upon a time", 3, {"mirostat_mode": 1}),
    (
        "List of fruits:",
        11,
        {"repeat_penalty": 1.3, "frequency_penalty": 0.5, "presence_penalty": 0.3, "typical_p": 0.9},
    ),
]

llm = Llama(model_path=str(default_model_path()), n_ctx=512, verbose=False, n_threads=2)
out = []
for prompt, seed, kw in CASES:
    r = llm.create_completion(prompt, max_tokens=40, seed=seed, **kw)
    out.append({"prompt": prompt, "seed": seed, "kw": kw, "text": r["choices"][0]["text"]})
json.dump({"source": "llama-cpp-python 0.3.36, this script", "cases": out}, sys.stdout, indent=1, ensure_ascii=False)
