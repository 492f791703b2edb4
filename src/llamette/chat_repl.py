"""`llamette chat`: an interactive conversation in the terminal.

Each turn renders the whole conversation with the chat template and evaluates only what the KV cache does
not already hold (the common token prefix is kept), so earlier turns are never evaluated again. Ctrl-C during
a reply stops that reply (what was said so far stays in the conversation); Ctrl-C or Ctrl-D at the prompt
leaves. Replies go to stdout; --perf figures and logs to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from contextlib import contextmanager

from llamette.errors import ContextFullError, LlametteError

HELP = "commands: /clear (new conversation), /system TEXT (set the system message and clear), /exit"


class _Interrupt:
    """Set by Ctrl-C while a reply is generated; checked between tokens so the cache stays consistent."""

    def __init__(self) -> None:
        self.hit = False

    @contextmanager
    def armed(self):
        self.hit = False
        previous = signal.signal(signal.SIGINT, self._handler)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)

    def _handler(self, signum, frame) -> None:
        self.hit = True


def run_chat(args: argparse.Namespace) -> int:
    from llamette.api import chat_tokens
    from llamette.cli import _backend_args, _context_size, _flash_attn, _log, make_sampler
    from llamette.generation import GenerationStats, stream_text
    from llamette.loader import load
    from llamette.tokenizer.chat import model_template

    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (line editing and history for input())
    t0 = time.perf_counter()
    model = load(args.model, **_backend_args(args), flash_attn=_flash_attn(args, default=False))
    n_ctx = _context_size(args.ctx_size, model.config.n_ctx_train)
    tok = model.tokenizer
    template = model_template(model.gguf.metadata, tok, args.chat_template, args.chat_template_file)
    sampler = make_sampler(args, model, n_ctx)
    cache = model.new_cache(n_ctx)
    system = args.system_prompt
    messages = [{"role": "system", "content": system}] if system else []
    seed = "greedy" if sampler.greedy else f"seed {sampler.seed}"
    _log(
        f"loaded {model.path.name} in {time.perf_counter() - t0:.2f} s; context {n_ctx}; chat template "
        f"{template.name}; {seed}\n{HELP}"
    )
    interrupt = _Interrupt()
    out = sys.stdout
    while True:
        try:
            line = input("> ")
        except (EOFError, KeyboardInterrupt):
            out.write("\n")
            return 0
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit", "/bye"):
            return 0
        if text == "/help":
            _log(HELP)
            continue
        if text == "/clear":
            messages = [{"role": "system", "content": system}] if system else []
            _log("(conversation cleared)")
            continue
        if text.startswith("/system"):
            system = text[len("/system") :].strip() or None
            messages = [{"role": "system", "content": system}] if system else []
            _log(f"(system message {'set' if system else 'removed'}; conversation cleared)")
            continue
        if text.startswith("/"):
            _log(f"unknown command {text.split()[0]!r}; {HELP}")
            continue
        messages.append({"role": "user", "content": line})
        stats = GenerationStats()
        reply = []
        with interrupt.armed():  # from here a Ctrl-C ends this reply (checked between tokens), not the program
            try:
                ids = chat_tokens(tok, template, messages)
                for _, piece in stream_text(
                    model, ids, sampler, max_tokens=args.n_predict, cache=cache, stats=stats, reuse_cache=True
                ):
                    reply.append(piece)
                    out.write(piece)
                    out.flush()
                    if interrupt.hit:
                        break
            except ContextFullError as e:
                messages.pop()
                _log(f"error: {e}; /clear starts a new conversation")
                continue
            except LlametteError as e:
                messages.pop()
                _log(f"error: {e}")
                continue
        if interrupt.hit:
            stats.stop_reason = "interrupted"
        out.write("\n")
        out.flush()
        messages.append({"role": "assistant", "content": "".join(reply)})
        if stats.stop_reason == "interrupted":
            _log("(reply stopped)")
        elif stats.stop_reason == "context":
            _log("(context full: /clear starts a new conversation)")
        if args.perf:
            _log(
                f"[perf] prompt: {stats.n_prompt} tokens evaluated ({stats.n_reused} reused from the cache), "
                f"{stats.prompt_tps:.1f} tok/s | reply: {stats.n_generated} tokens, {stats.generate_tps:.1f} tok/s | "
                f"context: {cache.seq_len}/{n_ctx}"
            )
