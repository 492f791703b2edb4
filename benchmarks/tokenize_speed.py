"""Tokenizer speed on the 300 KB Shakespeare text (the issue's budget: under 1 s).

    python benchmarks/tokenize_speed.py [--vocab FILE.gguf ...] [-r 5]

Times a cold tokenizer (fresh caches) per run. When llama-cpp-python is importable, the same file is
tokenized by llama.cpp in the same run and the ratio printed (ratio > 1: llamette is faster).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from llamette.default_model import default_model_path
from llamette.tokenizer import Tokenizer

TEXT = Path(__file__).resolve().parents[1] / "tests" / "data" / "smollm2" / "shakespeare_eval.txt"


def time_llamette(path: Path, text: str, runs: int) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    Tokenizer.load(path)
    load = time.perf_counter() - t0
    times, n = [], 0
    for _ in range(runs):
        tok = Tokenizer.load(path)  # fresh word/piece caches: the cold cost
        t0 = time.perf_counter()
        n = len(tok.encode(text, parse_special=False))
        times.append(time.perf_counter() - t0)
    return load, statistics.median(times), n


def time_llama_cpp(path: Path, text: str, runs: int) -> float | None:
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
    data = text.encode()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        llm.tokenize(data, add_bos=True, special=False)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--vocab", nargs="*", type=Path, default=[])
    p.add_argument("-r", "--runs", type=int, default=5)
    args = p.parse_args()
    text = TEXT.read_text(encoding="utf-8")
    print(f"text: {TEXT.name}, {len(text.encode()) / 1024:.0f} KiB; median of {args.runs} cold runs")
    print("| vocabulary | load s | tokenize s | tokens | vs 1 s budget | llama.cpp s | ratio |")
    print("|---|---|---|---|---|---|---|")
    for path in [default_model_path(), *args.vocab]:
        load, enc, n = time_llamette(path, text, args.runs)
        ref = time_llama_cpp(path, text, args.runs)
        ratio = f"{ref / enc:.2f}x" if ref else "n/a"
        ref_s = f"{ref:.3f}" if ref else "not installed"
        print(f"| {path.name} | {load:.3f} | {enc:.3f} | {n} | {1.0 / enc:.1f}x | {ref_s} | {ratio} |")


if __name__ == "__main__":
    main()
