"""The torch backend on a GPU: tg and pp per model against the memory bandwidth measured in the same run.

Measures the device's copy bandwidth first (a 1 GiB device-to-device copy: bytes read + written per second,
the ceiling a matrix-vector product can reach), then for each model llama-bench's pp512 and tg128 through
`llamette.bench` (the torch backend, every layer on the device, decode steps as CUDA graphs). tg's
bandwidth is weight bytes per token (every matrix once, one embedding row) plus the KV cache read, times
tokens/s; the table gives it as a fraction of the measured copy bandwidth. For one model (`--ngl-model`,
default the 7B Q4_0 file) it also runs -ngl 0, half and all layers.

Models come from make_models.py (benchmarks/models): `tinyllama` and `llama2-7b` (its F16 file then
`llamette quantize`); missing ones are made first, unless --no-make.

    python benchmarks/gpu_bench.py                              # TinyLlama and 7B shapes, Q4_0 Q4_K_M Q8_0 F16
    python benchmarks/gpu_bench.py -m FILE ... -r 3 --json out.json
    python benchmarks/gpu_bench.py -m tests/data/tiny/tiny-random-llama.Q4_0.gguf --device cpu -p 16 -n 8
        (the script's own smoke test on a machine without a GPU)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
MODELS = BENCH_DIR / "models"
SHAPES = {"tinyllama": "tinyllama-1.1b-random", "llama2-7b": "llama2-7b-random"}
TYPES = ["Q4_0", "Q4_K_M", "Q8_0", "F16"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def copy_bandwidth(device: str, nbytes: int = 1 << 30, repeats: int = 20) -> float:
    """Bytes read + written per second by a device-to-device copy (best of repeats), GB/s."""
    import torch

    if device == "cpu":
        nbytes = 1 << 28
    a = torch.empty(nbytes, dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    a.fill_(1)
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        b.copy_(a)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best / 1e9


def make_models(shapes: list[str], types: list[str]) -> list[Path]:
    """The benchmark files for these shapes and types, made with make_models.py where missing (the F16 file
    first; the tinyllama command quantizes Q4_0/Q8_0 with gguf-py, the rest go through llamette quantize)."""
    paths = []
    for shape in shapes:
        stem = SHAPES[shape]
        missing = [t for t in types if not (MODELS / f"{stem}.{t}.gguf").exists()]
        if missing:
            quantized = [t for t in missing if t != "F16"]
            if shape == "tinyllama":
                quantized = [t for t in quantized if t in ("Q4_0", "Q8_0")] or ["Q8_0"]
            subprocess.run(
                [sys.executable, str(BENCH_DIR / "make_models.py"), shape, "--types", *quantized], check=True
            )
            f16 = MODELS / f"{stem}.F16.gguf"
            for t in missing:
                dst = MODELS / f"{stem}.{t}.gguf"
                if not dst.exists():
                    subprocess.run([sys.executable, "-m", "llamette", "quantize", str(f16), str(dst), t], check=True)
        paths += [MODELS / f"{stem}.{t}.gguf" for t in types]
    return paths


def bench_one(path: Path, device: str, ngl: int | None, n_prompt: int, n_gen: int, reps: int) -> dict:
    from llamette.bench import model_summary, run_bench
    from llamette.loader import load

    t0 = time.perf_counter()
    model = load(path, backend="torch", device=device, n_gpu_layers=ngl)
    load_s = time.perf_counter() - t0
    results = run_bench(model, n_prompt, n_gen, reps, progress=log)
    summary = model_summary(model)
    out = {"file": str(path), "model": summary["model"], "weights": summary["weights"], "load_s": load_s,
           "ngl": "all" if ngl is None else ngl}  # fmt: skip
    for r in results:
        out[r.test] = {"mean": r.mean, "std": r.std, "gb_per_s": r.gb_per_s, "bytes_per_token": r.bytes_per_token}
    del model
    import torch

    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def table(rows: list[dict], bandwidth: float) -> str:
    lines = [
        "| model | -ngl | pp t/s | tg t/s | tg GB/s | of measured bandwidth |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        pp = next((v for k, v in r.items() if k.startswith("pp")), None)
        tg = next((v for k, v in r.items() if k.startswith("tg")), None)
        pp_s = f"{pp['mean']:.1f} ± {pp['std']:.1f}" if pp else ""
        tg_s = f"{tg['mean']:.1f} ± {tg['std']:.1f}" if tg else ""
        gbs = f"{tg['gb_per_s']:.0f}" if tg else ""
        frac = f"{100 * tg['gb_per_s'] / bandwidth:.0f} %" if tg else ""
        lines.append(f"| {r['model']} | {r['ngl']} | {pp_s} | {tg_s} | {gbs} | {frac} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--models", nargs="+", type=Path, help="model files (default: made from --shapes/--types)")
    p.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    p.add_argument("--types", nargs="+", default=TYPES)
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("-p", "--n-prompt", type=int, default=512)
    p.add_argument("-n", "--n-gen", type=int, default=128)
    p.add_argument("-r", "--repetitions", type=int, default=3)
    p.add_argument("--ngl-model", type=Path, help="the model for the -ngl 0 / half / all rows (default: 7B Q4_0)")
    p.add_argument("--ngl-gen", type=int, default=32, help="tokens generated in the -ngl rows (the CPU is slow)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        log("error: no CUDA device (use --device cpu for a smoke test)")
        return 1
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    bandwidth = copy_bandwidth(args.device)
    log(f"{name}: copy bandwidth {bandwidth:.0f} GB/s")
    models = args.models or make_models(args.shapes, args.types)
    rows = [bench_one(m, args.device, None, args.n_prompt, args.n_gen, args.repetitions) for m in models]
    ngl_model = args.ngl_model or (MODELS / f"{SHAPES['llama2-7b']}.Q4_0.gguf")
    if args.models and not args.ngl_model:
        ngl_model = args.models[0]
    if ngl_model.exists():
        from llamette.loader import open_model_file

        n_layers = open_model_file(ngl_model)[1].n_layers
        for ngl in (0, n_layers // 2, n_layers + 1):  # n_layers + 1: the output layer too, as llama.cpp
            rows.append(bench_one(ngl_model, args.device, ngl, args.n_prompt, args.ngl_gen, 1))
    print(f"device: {name}; measured copy bandwidth {bandwidth:.0f} GB/s\n")
    print(table(rows, bandwidth))
    if args.json:
        args.json.write_text(json.dumps({"device": name, "bandwidth_gb_s": bandwidth, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
