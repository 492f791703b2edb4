"""Aggregate generation speed of `llamette serve` with 1, 4 and 8 concurrent greedy streams (continuous batching).

    python benchmarks/serve_concurrency.py [-m MODEL] [-n TOKENS] [-r REPEATS] [--streams 1,4,8]

Starts a server, then for each stream count sends that many streaming completions at once (distinct prompts,
--ignore-eos so every stream generates exactly TOKENS tokens) and measures total generated tokens / wall time
from the first request sent to the last token received. The counts take turns within each repeat, so a slow
spell of the machine hits all of them; each repeat's ratio to the first count is computed within the repeat,
and the table gives means and standard deviations over the repeats.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

WORDS = [
    "Rivers",
    "Mountains",
    "Winter",
    "Summer",
    "Coffee",
    "Dogs",
    "Cats",
    "Birds",
    "Trees",
    "Oceans",
    "Stars",
    "Books",
    "Cars",
    "Trains",
    "Apples",
    "Gardens",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stream_one(url: str, prompt: str, n: int) -> int:
    body = {"prompt": prompt, "max_tokens": n, "temperature": 0, "ignore_eos": True, "stream": True}
    got = 0
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=300) as r:
        for line in r.iter_lines():
            # the client shares the 2 cores with the server: parse only the last chunk (it has the token count)
            if line.startswith("data: {") and '"finish_reason": null' not in line:
                got = json.loads(line[6:])["timings"]["predicted_n"]
    return got


def run(url: str, streams: int, n: int) -> float:
    prompts = [f"{WORDS[i % len(WORDS)]} are" for i in range(streams)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(streams) as pool:
        total = sum(pool.map(lambda p: stream_one(url, p, n), prompts))
    return total / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", help="GGUF file (default: the default model)")
    ap.add_argument("-n", "--tokens", type=int, default=128, help="tokens per stream (default: 128)")
    ap.add_argument("-r", "--repeats", type=int, default=3, help="runs per stream count (default: 3)")
    ap.add_argument("--streams", default="1,4,8", help="stream counts (default: 1,4,8)")
    ap.add_argument("-t", "--threads", type=int, help="server threads (default: physical cores)")
    ap.add_argument("--no-batch-layout", action="store_true", help="llama.cpp arithmetic")
    args = ap.parse_args()
    counts = [int(x) for x in args.streams.split(",")]
    port = free_port()
    cmd = [sys.executable, "-m", "llamette", "serve", "--port", str(port), "-np", str(max(counts)),
           "-c", str(max(counts) * (args.tokens + 64))]  # fmt: skip
    cmd += ["-m", args.model] if args.model else []
    cmd += ["-t", str(args.threads)] if args.threads else []
    cmd += ["--no-batch-layout"] if args.no_batch_layout else []
    server = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        run(url, 1, 16)  # warm up
        rates: dict[int, list[float]] = {s: [] for s in counts}
        for _ in range(args.repeats):
            for streams in counts:
                rates[streams].append(run(url, streams, args.tokens))

        def stats(xs: list[float]) -> str:
            return f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.2f}"

        print(f"| streams | aggregate tok/s | per stream | vs {counts[0]} stream(s), same repeat |")
        print("|---:|---:|---:|---:|")
        for streams in counts:
            xs = rates[streams]
            ratios = [x / b for x, b in zip(xs, rates[counts[0]], strict=True)]
            mean = statistics.mean(xs)
            sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
            print(f"| {streams} | {mean:.1f} ± {sd:.1f} | {mean / streams:.1f} | {stats(ratios)}x |")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)


if __name__ == "__main__":
    main()
