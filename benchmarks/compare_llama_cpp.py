"""llamette next to llama.cpp (llama-cpp-python) in the same run, alternating, with ratios.

Both engines run llama-bench's method: pp = one batch of n random tokens into an empty cache, tg = n random
tokens decoded one at a time from an empty cache, tokens/s = n / seconds. Each engine lives in its own worker
process that loads the model once and answers JSON lines on stdin/stdout ({"test": "pp", "n": 512, "seed": 1}
-> {"seconds": 1.23}): llamette under this interpreter (llamette.bench's timing functions), llama.cpp under the
llama-cpp-python venv's interpreter through the low-level C API (llama_decode on llama_batch_get_one batches,
no Python in the timed loop beyond one ctypes call per batch). After one warm-up of each test per engine, each
repetition runs llamette pp, llama.cpp pp, llamette tg, llama.cpp tg, swapping which engine goes first every
repetition; only one engine computes at any moment, and both get the same random tokens.

    python benchmarks/compare_llama_cpp.py                      # the default model, pp512 and tg128
    python benchmarks/compare_llama_cpp.py --suite issue3 -r 5  # the issue's five models
    python benchmarks/compare_llama_cpp.py -m a.gguf b.gguf -p 128 -n 64 -o json

The llama.cpp side runs under --llama-python, else $LLAMA_CPP_PYTHON, else benchmarks/.venv-llama-cpp/bin/python
(created, with llama-cpp-python built from source into it, when missing).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

BENCH_DIR = Path(__file__).resolve().parent
MODELS_DIR = BENCH_DIR / "models"
LLAMA_VENV = BENCH_DIR / ".venv-llama-cpp"
LLAMA_CPP_PYTHON_SPEC = "llama-cpp-python==0.3.36"  # the llama.cpp commit the test fixtures come from
ENGINES = ("llamette", "llama.cpp")
N_BATCH = 512  # llama.cpp's n_batch = n_ubatch, as llama-bench runs it
NOISE_NOTE = "ratios from the same run; the machine is noisy (±25 % between runs)"
BUSY_CPUS = 0.2  # CPUs used outside the measuring worker that mark a measurement as disturbed


@dataclass
class Row:
    """One model to measure: a label, its file (None: llamette's default model), pp and tg sizes, and the
    llama.cpp numbers the issue measured with llama-bench on this machine (test name -> t/s)."""

    label: str
    path: Path | None
    n_prompt: int
    n_gen: int
    issue: dict[str, float] = field(default_factory=dict)
    make_cmd: str = ""


def issue3_suite() -> list[Row]:
    """The issue's table: SmolLM2-135M in three types, the TinyLlama-1.1B-shape random model in two."""
    smol = "python benchmarks/make_models.py smollm2"
    tiny = "python benchmarks/make_models.py tinyllama"
    sm, tl = "smollm2-135m-instruct", "tinyllama-1.1b-random"
    return [
        Row("SmolLM2-135M Q4_1 (default model)", None, 512, 128, {"tg128": 149, "pp512": 383}),
        Row("SmolLM2-135M Q8_0", MODELS_DIR / f"{sm}.Q8_0.gguf", 512, 128, {"tg128": 164, "pp512": 961}, smol),
        Row("SmolLM2-135M Q4_0", MODELS_DIR / f"{sm}.Q4_0.gguf", 512, 128, {"tg128": 221, "pp512": 1489}, smol),
        Row("TinyLlama-shape Q4_0", MODELS_DIR / f"{tl}.Q4_0.gguf", 128, 128, {"tg128": 55, "pp128": 255}, tiny),
        Row("TinyLlama-shape Q8_0", MODELS_DIR / f"{tl}.Q8_0.gguf", 128, 128, {"tg128": 32, "pp128": 130}, tiny),
    ]


SUITES: dict[str, Callable[[], list[Row]]] = {"issue3": issue3_suite}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class BenchError(Exception):
    """A problem to report in one line (plus a worker's stderr) and exit non-zero on."""


# -- workers: the child side ---------------------------------------------------------------------------------


def serve(load: Callable[[], tuple[dict[str, Any], Callable[[str, int, int], float]]]) -> int:
    """A worker's main loop: load the model, say ready, then answer one JSON line per request line.

    The protocol gets a private copy of stdout and fd 1 is pointed at stderr, so whatever the engine prints
    (llama.cpp's C code included) cannot corrupt the replies. EOF on stdin ends the worker, so it cannot
    outlive its parent waiting for a request."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    info, run = load()

    def send(obj: dict[str, Any]) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    send({"ready": True, "info": info})
    for line in sys.stdin:
        req = json.loads(line)
        if req.get("cmd") == "quit":
            break
        try:
            send({"seconds": run(req["test"], int(req["n"]), int(req["seed"]))})
        except Exception as e:  # reported to the parent, which stops the run
            send({"error": f"{type(e).__name__}: {e}"})
    return 0


def random_token_list(n_vocab: int, bos: int | None, n: int, seed: int) -> list[int]:
    """llamette.bench.random_tokens for any engine: n uniform ids, the first one BOS when the model adds BOS."""
    import numpy as np

    tokens = [int(t) for t in np.random.default_rng(seed).integers(0, n_vocab, n)]
    if bos is not None and tokens:
        tokens[0] = bos
    return tokens


def llamette_worker(model_path: str, n_threads: int, flash_attn: bool) -> Callable[[], tuple[dict[str, Any], Any]]:
    """llamette.load once, then llamette.bench's time_prompt / time_generation (what `llamette bench` runs)."""

    def load() -> tuple[dict[str, Any], Callable[[str, int, int], float]]:
        import numpy as np

        import llamette
        from llamette.bench import model_summary, random_tokens, time_generation, time_prompt

        model = llamette.load(model_path, n_threads=n_threads, flash_attn=flash_attn)
        summary = model_summary(model)
        info = {
            "version": llamette.__version__,
            "backend": summary["backend"],
            "n_threads": summary["n_threads"],
            "model": summary["model"],
            "size_bytes": summary["size_bytes"],
            "n_params": summary["n_params"],
        }

        def run(test: str, n: int, seed: int) -> float:
            tokens = random_tokens(model, n, np.random.default_rng(seed))
            return time_prompt(model, tokens) if test == "pp" else time_generation(model, tokens)

        return info, run

    return load


def llama_cpp_worker(
    model_path: str, n_threads: int, n_ctx: int, flash_attn: bool
) -> Callable[[], tuple[dict[str, Any], Any]]:
    """llama-cpp-python's low-level API, mirroring llama-bench's test_prompt / test_gen: the KV cache cleared
    before each run (outside the timing), pp in n_batch chunks, tg one token per llama_decode, synchronized."""

    def load() -> tuple[dict[str, Any], Callable[[str, int, int], float]]:
        import llama_cpp as L

        L.llama_backend_init()
        mparams = L.llama_model_default_params()
        mparams.n_gpu_layers = 0
        model = L.llama_model_load_from_file(model_path.encode(), mparams)
        if not model:
            raise RuntimeError(f"llama.cpp could not load {model_path}")
        cparams = L.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = N_BATCH
        cparams.n_ubatch = N_BATCH
        cparams.n_seq_max = 1
        cparams.n_threads = n_threads
        cparams.n_threads_batch = n_threads
        cparams.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else L.LLAMA_FLASH_ATTN_TYPE_DISABLED
        cparams.no_perf = True
        ctx = L.llama_init_from_model(model, cparams)
        if not ctx:
            raise RuntimeError("llama.cpp could not create a context")
        vocab = L.llama_model_get_vocab(model)
        n_vocab = L.llama_vocab_n_tokens(vocab)
        bos = L.llama_vocab_bos(vocab) if L.llama_vocab_get_add_bos(vocab) else None
        mem = L.llama_get_memory(ctx)
        info = {
            "version": L.__version__,
            "n_threads": n_threads,
            "n_ctx": L.llama_n_ctx(ctx),
            "system_info": L.llama_print_system_info().decode(errors="replace").strip(),
        }

        def decode(arr: Any, n: int) -> None:
            rc = L.llama_decode(ctx, L.llama_batch_get_one(arr, n))
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc}")

        def run(test: str, n: int, seed: int) -> float:
            tokens = random_token_list(n_vocab, bos, n, seed)
            step = N_BATCH if test == "pp" else 1
            batches = [tokens[i : i + step] for i in range(0, n, step)]
            # ctypes arrays made before the clock starts; llama_batch_get_one only points into them
            arrays = [((L.llama_token * len(b))(*b), len(b)) for b in batches]
            L.llama_memory_clear(mem, True)
            t0 = time.perf_counter()
            for arr, k in arrays:
                decode(arr, k)
                if test == "tg":
                    L.llama_synchronize(ctx)
            L.llama_synchronize(ctx)
            return time.perf_counter() - t0

        return info, run

    return load


# -- workers: the parent side --------------------------------------------------------------------------------


class Worker:
    """A worker process for one engine and one model: started, asked for timings, always stopped."""

    def __init__(self, engine: str, cmd: list[str], timeout: float) -> None:
        self.engine = engine
        self.timeout = timeout
        self.stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True, env=env
        )
        _LIVE.append(self)  # stopped at exit whatever happens from here on
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.info: dict[str, Any] = self._reply()["info"]

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def stderr_tail(self, n_chars: int = 4000) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")[-n_chars:]

    def _reply(self) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=self.timeout)
        except queue.Empty:
            raise BenchError(f"the {self.engine} worker gave no answer in {self.timeout:.0f} s") from None
        if line is None:
            rc = self.proc.wait()
            raise BenchError(f"the {self.engine} worker exited (exit status {rc}); its stderr:\n{self.stderr_tail()}")
        reply = json.loads(line)
        if "error" in reply:
            raise BenchError(f"the {self.engine} worker failed: {reply['error']}\nits stderr:\n{self.stderr_tail()}")
        return reply

    def seconds(self, test: str, n: int, seed: int) -> tuple[float, float | None]:
        """The worker's timing of one run, and how many CPUs everything else used meanwhile (None: unknown)."""
        assert self.proc.stdin is not None
        busy0, own0, t0 = cpu_ticks(), cpu_ticks(self.proc.pid), time.perf_counter()
        try:
            self.proc.stdin.write(json.dumps({"test": test, "n": n, "seed": seed}) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # it died: _reply reports how
        seconds = float(self._reply()["seconds"])
        busy1, own1, wall = cpu_ticks(), cpu_ticks(self.proc.pid), time.perf_counter() - t0
        if None in (busy0, own0, busy1, own1):
            return seconds, None
        other = (busy1 - busy0) - (own1 - own0)  # type: ignore[operator]
        return seconds, max(other, 0) / CLK_TCK / wall

    def close(self) -> None:
        """Ask it to quit; kill it if it does not within a few seconds."""
        if self in _LIVE:
            _LIVE.remove(self)
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


_LIVE: list[Worker] = []
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_ticks(pid: int | None = None) -> int | None:
    """Busy CPU time in clock ticks from /proc (Linux; None elsewhere): the whole machine's, steal time
    included, or one process's with all its threads."""
    try:
        if pid is None:
            with open("/proc/stat") as f:
                user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
            return user + nice + system + irq + softirq + steal
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()  # from field 3 (state) on
        return int(fields[11]) + int(fields[12])  # utime, stime
    except (OSError, ValueError, IndexError):
        return None


def _close_all() -> None:
    while _LIVE:
        _LIVE.pop().close()


def start_worker(engine: str, python: str, model: Path, args: argparse.Namespace, n_ctx: int) -> Worker:
    cmd = [python, str(Path(__file__).resolve()), "--worker", engine, "-m", str(model), "-t", str(args.threads)]
    cmd += ["--n-ctx", str(n_ctx), "-fa", args.flash_attn]
    log(f"  starting the {engine} worker ({python})")
    return Worker(engine, cmd, args.timeout)


# -- the measurement -----------------------------------------------------------------------------------------


@dataclass
class Result:
    """One model x one test: tokens/s samples of each engine, in the order measured."""

    label: str
    file: str
    test: str
    issue: float | None
    samples: dict[str, list[float]] = field(default_factory=lambda: {e: [] for e in ENGINES})
    other_cpus: dict[str, list[float | None]] = field(default_factory=lambda: {e: [] for e in ENGINES})

    def mean(self, engine: str) -> float:
        return statistics.fmean(self.samples[engine])

    def std(self, engine: str) -> float:
        s = self.samples[engine]
        return statistics.stdev(s) if len(s) > 1 else 0.0

    @property
    def ratio(self) -> float:
        return self.mean("llamette") / self.mean("llama.cpp")

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"model": self.label, "file": self.file, "test": self.test}
        for e in ENGINES:
            d[e] = {
                "mean_ts": self.mean(e),
                "std_ts": self.std(e),
                "samples_ts": self.samples[e],
                "other_cpus": self.other_cpus[e],  # CPUs busy outside the worker during each sample
            }
        d["ratio"] = self.ratio
        d["issue_llama_cpp_ts"] = self.issue
        return d


def measure(row: Row, path: Path, python: str, args: argparse.Namespace) -> tuple[list[Result], dict[str, Any]]:
    """Both workers for one model: warm-up, then the alternating repetitions."""
    tests = [(f"pp{row.n_prompt}", "pp", row.n_prompt), (f"tg{row.n_gen}", "tg", row.n_gen)]
    tests = [t for t in tests if t[2] > 0]
    log(f"{row.label}: {path}")
    workers = {
        "llamette": start_worker("llamette", sys.executable, path, args, row.n_prompt + row.n_gen),
        "llama.cpp": start_worker("llama.cpp", python, path, args, row.n_prompt + row.n_gen),
    }
    results = [Result(row.label, str(path), name, row.issue.get(name)) for name, _, _ in tests]

    def one(engine: str, kind: str, n: int, seed: int, what: str) -> tuple[float, float | None]:
        """One timed run; repeated (up to --retries times) while other processes were busy during it."""
        for attempt in range(args.retries + 1):
            dt, other = workers[engine].seconds(kind, n, seed)
            busy = other is not None and other > BUSY_CPUS
            note = f" (other processes used {other:.2f} CPUs)" if busy else ""
            again = busy and attempt < args.retries
            log(f"  {what} {engine}: {n / dt:.1f} t/s{note}{', again' if again else ''}")
            time.sleep(args.settle)  # let this engine's spinning threads go to sleep before the next run
            if not again:
                break
        return n / dt, other

    try:
        for engine in ENGINES:
            for name, kind, n in tests:
                one(engine, kind, n, args.seed, f"warm-up {name}")
        for r in range(args.repetitions):
            order = ENGINES if r % 2 == 0 else ENGINES[::-1]
            for (name, kind, n), res in zip(tests, results, strict=True):
                seed = args.seed + 1 + r  # the same tokens for both engines
                for engine in order:
                    ts, other = one(engine, kind, n, seed, f"rep {r + 1}/{args.repetitions} {name}")
                    res.samples[engine].append(ts)
                    res.other_cpus[engine].append(other)
        info = {e: w.info for e, w in workers.items()}
    finally:
        for w in workers.values():
            w.close()
    return results, info


# -- output -------------------------------------------------------------------------------------------------


def fmt_ts(res: Result, engine: str) -> str:
    return f"{res.mean(engine):.2f} ± {res.std(engine):.2f}"


def format_markdown(results: list[Result], meta: dict[str, Any]) -> str:
    lines = [
        "| model | test | llamette t/s | llama.cpp t/s | llamette / llama.cpp | llama.cpp (issue table) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        issue = f"{r.issue:g}" if r.issue is not None else ""
        lines.append(
            f"| {r.label} | {r.test} | {fmt_ts(r, 'llamette')} | {fmt_ts(r, 'llama.cpp')} | {r.ratio:.2f} | {issue} |"
        )
    lines.append("")
    lines.append(
        f"threads: {meta['threads']}, flash attention: {meta['flash_attn']}, "
        f"repetitions: {meta['repetitions']} (after one warm-up of each test); "
        f"llamette {meta['llamette_version']} ({meta['llamette_backend']} backend), "
        f"llama-cpp-python {meta['llama_cpp_version']}; {NOISE_NOTE}."
    )
    disturbed = sum(1 for r in results for e in ENGINES for o in r.other_cpus[e] if o is not None and o > BUSY_CPUS)
    if disturbed:
        total = sum(len(r.samples[e]) for r in results for e in ENGINES)
        lines.append(
            f"warning: {disturbed} of {total} measurements overlapped other load (> {BUSY_CPUS} CPUs busy outside "
            "the measuring engine, after retries); their numbers are low."
        )
    return "\n".join(lines) + "\n"


# -- the llama-cpp-python interpreter ----------------------------------------------------------------------


def llama_python(args: argparse.Namespace) -> str:
    """--llama-python, else $LLAMA_CPP_PYTHON, else benchmarks/.venv-llama-cpp (created when missing)."""
    given = args.llama_python or os.environ.get("LLAMA_CPP_PYTHON")
    if given:
        if not Path(given).exists():
            raise BenchError(f"{given}: no such interpreter (from --llama-python or LLAMA_CPP_PYTHON)")
        if not _has_llama_cpp(Path(given)):
            raise BenchError(f"{given} cannot import llama_cpp (pip install llama-cpp-python into its environment)")
        return given
    python = LLAMA_VENV / "bin" / "python"
    if not python.exists() or not _has_llama_cpp(python):
        log(f"creating {LLAMA_VENV} with {LLAMA_CPP_PYTHON_SPEC}: pip builds llama.cpp from source (~10 minutes)")
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(LLAMA_VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", LLAMA_CPP_PYTHON_SPEC]
        if subprocess.run(pip).returncode != 0 or not _has_llama_cpp(python):
            raise BenchError(f"pip could not install {LLAMA_CPP_PYTHON_SPEC} into {LLAMA_VENV}")
    return str(python)


def _has_llama_cpp(python: Path) -> bool:
    probe = [str(python), "-c", "import llama_cpp"]
    return subprocess.run(probe, capture_output=True).returncode == 0


# -- main -------------------------------------------------------------------------------------------------


def resolve_rows(args: argparse.Namespace) -> list[Row]:
    """The suite's rows and/or one row per -m file; -p/-n given on the command line override the suite's."""
    rows: list[Row] = SUITES[args.suite]() if args.suite else []
    known: dict[Path, Row] = {}  # -m files that are suite files get the suite's label and issue numbers
    for r in issue3_suite():
        with contextlib.suppress(BenchError):  # no default model installed: nothing to match
            known[(r.path or default_model()).resolve()] = r
    for m in args.model or []:
        path = Path(m)
        ref = known.get(path.resolve())
        rows.append(Row(ref.label if ref else path.name, path, 512, 128, ref.issue if ref else {}))
    if not rows:
        rows = [issue3_suite()[0]]
    for r in rows:
        r.n_prompt = args.n_prompt if args.n_prompt is not None else r.n_prompt
        r.n_gen = args.n_gen if args.n_gen is not None else r.n_gen
    return rows


def default_model() -> Path:
    try:
        from llamette.default_model import default_model_path
        from llamette.errors import LlametteError
    except ImportError as e:
        raise BenchError(f"llamette is not importable from {sys.executable}: {e}") from None
    try:
        return default_model_path()
    except LlametteError as e:
        raise BenchError(str(e)) from None


def check_paths(rows: list[Row]) -> list[Path]:
    paths, missing = [], []
    for r in rows:
        path = r.path if r.path is not None else default_model()
        if not path.is_file():
            why = [r.label] if r.label != path.name else []
            why += [f"made by: {r.make_cmd}"] if r.make_cmd else []
            missing.append(f"{path}" + (f" ({'; '.join(why)})" if why else ""))
        paths.append(path)
    if missing:
        raise BenchError("missing model files:\n  " + "\n  ".join(missing))
    return paths


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model", nargs="+", help="GGUF files (default: llamette's default model)")
    p.add_argument("--suite", choices=list(SUITES), help="issue3: the issue's five models with its llama.cpp numbers")
    p.add_argument("-p", "--n-prompt", type=int, help="pp size (default 512; the suite's own per model)")
    p.add_argument("-n", "--n-gen", type=int, help="tg size (default 128)")
    p.add_argument("-t", "--threads", type=int, default=2)
    p.add_argument("-r", "--repetitions", type=int, default=5)
    p.add_argument("--llama-python", help="python with llama-cpp-python (default: $LLAMA_CPP_PYTHON or a venv here)")
    p.add_argument("-o", "--output", choices=["md", "json"], default="md")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--settle", type=float, default=0.2, help="seconds of quiet between measurements (default 0.2)")
    p.add_argument("--timeout", type=float, default=900, help="seconds to wait for one worker answer")
    p.add_argument(
        "--retries",
        type=int,
        default=2,
        help=f"repeat a measurement up to this many times while other processes use > {BUSY_CPUS} CPUs (default 2)",
    )
    p.add_argument(
        "-fa",
        "--flash-attn",
        choices=["on", "off"],
        default="on",
        help="flash attention in both engines (default on: what llama-bench's auto picks on a CPU)",
    )
    p.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    p.add_argument("--n-ctx", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is None:
        for name in ("threads", "repetitions"):
            if getattr(args, name) < 1:
                p.error(f"--{name} must be at least 1")
        if (args.n_prompt or 0) < 0 or (args.n_gen or 0) < 0:
            p.error("-p and -n cannot be negative")
    return args


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker == "llamette":
        return serve(llamette_worker(args.model[0], args.threads, args.flash_attn == "on"))
    if args.worker == "llama.cpp":
        return serve(llama_cpp_worker(args.model[0], args.threads, args.n_ctx, args.flash_attn == "on"))

    atexit.register(_close_all)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        rows = resolve_rows(args)
        paths = check_paths(rows)
        python = llama_python(args)
        results: list[Result] = []
        info: dict[str, Any] = {}
        for row, path in zip(rows, paths, strict=True):
            res, info = measure(row, path, python, args)
            results += res
    except BenchError as e:
        log(f"error: {e}")
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        _close_all()

    meta = {
        "threads": args.threads,
        "flash_attn": args.flash_attn,
        "repetitions": args.repetitions,
        "llamette_version": info["llamette"]["version"],
        "llamette_backend": info["llamette"]["backend"],
        "llama_cpp_version": info["llama.cpp"]["version"],
    }
    if args.output == "json":
        doc = {
            **meta,
            "method": "llama-bench's pp/tg, alternating engines in one run; t/s = tokens / seconds",
            "note": NOISE_NOTE,
            "llama_cpp_python": python,
            "llama_cpp_system_info": info["llama.cpp"]["system_info"],
            "results": [r.as_dict() for r in results],
        }
        sys.stdout.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(format_markdown(results, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
