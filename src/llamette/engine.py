"""The serving engine: N slots, continuous batching, one thread that owns the model.

Requests wait in a queue until a slot is free. A slot keeps its KV cache between requests, so a new prompt
only evaluates what differs from the slot's previous one (prompt cache; free slots are picked by the longest
common prefix). Each step first evaluates the prompt of at most one newly admitted request (in chunks of
`prefill_chunk` tokens, so running streams never wait long), then decodes one token for every running request
in one batched call: the weights are read once per step for all of them, and a request's tokens are the
same alone or in a crowd (see NativeLlama.decode_batch). A request leaves its slot when it ends, or at the
next step after abort() (a client that disconnected).

Results go to each request's `sink` callback from the engine thread: {"type": "token", ...} events with text
deltas, then one {"type": "done", ...} or {"type": "error", ...}.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llamette.errors import ContextFullError, LlametteError
from llamette.generation import TextStream, common_prefix, reuse_point
from llamette.loader import Model
from llamette.sampling import Sampler, SamplingParams, token_logprobs
from llamette.tokenizer import StreamDecoder


@dataclass
class Request:
    """One generation job and what it has produced so far."""

    prompt_ids: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    max_tokens: int = -1  # -1: until end of text or the slot's context is full
    stop: Sequence[str] = ()
    n_probs: int = 0  # top log-probabilities to report per token (0: none)
    sink: Callable[[dict], None] | None = None
    id: int = field(default_factory=itertools.count().__next__)
    # filled in by the engine
    slot: int = -1
    n_prompt: int = 0
    n_reused: int = 0
    n_generated: int = 0
    t_queued: float = field(default_factory=time.perf_counter)
    t_started: float = 0.0
    t_first: float = 0.0
    t_done: float = 0.0
    aborted: bool = False

    def emit(self, event: dict) -> None:
        if self.sink is not None:
            self.sink(event)


@dataclass
class Slot:
    index: int
    cache: Any
    request: Request | None = None
    sampler: Sampler | None = None
    text: TextStream | None = None
    next_token: int = -1  # sampled, to be evaluated in the next step
    pending_probs: list = field(default_factory=list)
    n_decoded_total: int = 0
    last_used: float = 0.0

    @property
    def busy(self) -> bool:
        return self.request is not None


@dataclass
class Counters:
    """Totals since start, for /metrics."""

    prompt_tokens: int = 0
    prompt_seconds: float = 0.0
    generated_tokens: int = 0
    generate_seconds: float = 0.0
    requests_done: int = 0
    steps: int = 0


class Engine:
    """Owns the model on its own thread; add_request() from any thread."""

    def __init__(self, model: Model, n_slots: int = 4, n_ctx: int = 4096, prefill_chunk: int = 512) -> None:
        if n_slots < 1:
            raise LlametteError(f"the number of slots must be 1 or more, got {n_slots}")
        self.model = model
        self.n_ctx = n_ctx  # per slot
        self.prefill_chunk = prefill_chunk
        self.slots = [Slot(i, model.new_cache(n_ctx)) for i in range(n_slots)]
        self.counters = Counters()
        self._waiting: queue.Queue[Request] = queue.Queue()
        self._calls: queue.Queue[tuple[Callable[[], Any], Future]] = queue.Queue()
        self._deferred: list[Request] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="llamette-engine", daemon=True)
        self.started = time.time()

    # -- control, from any thread ---------------------------------------------------------------------------

    def start(self) -> Engine:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Finish: requests still waiting or running end with an error event."""
        self._stop = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def add_request(self, request: Request) -> Request:
        if not request.prompt_ids:
            raise LlametteError("the prompt is empty")
        if len(request.prompt_ids) >= self.n_ctx:
            raise ContextFullError(
                f"the prompt is {len(request.prompt_ids)} tokens, longer than the context of {self.n_ctx} tokens"
                " per slot"
            )
        request.t_queued = time.perf_counter()
        self._waiting.put(request)
        self._wake.set()
        return request

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run fn on the engine thread between steps (anything else that uses the model, e.g. embeddings)."""
        future: Future = Future()
        self._calls.put((fn, future))
        self._wake.set()
        return future

    def abort(self, request: Request) -> None:
        """Stop a request (its client went away); its slot is free at the next step."""
        request.aborted = True
        self._wake.set()

    @property
    def n_waiting(self) -> int:
        return self._waiting.qsize() + len(self._deferred)

    @property
    def n_running(self) -> int:
        return sum(s.busy for s in self.slots)

    def kv_usage(self) -> tuple[int, int]:
        """(tokens held in all slots' caches, their total capacity in tokens)."""
        return sum(s.cache.seq_len for s in self.slots), len(self.slots) * self.n_ctx

    def kv_bytes(self) -> int:
        return sum(s.cache.nbytes for s in self.slots)

    # -- the engine thread --------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop:
            try:
                self._run_calls()
                self._admit()
                if not any(s.busy for s in self.slots):
                    if not self._calls.empty() or not self._waiting.empty():
                        continue
                    self._wake.wait(0.5)
                    self._wake.clear()
                    continue
                self._step()
            except Exception as e:  # a bug must not leave clients hanging: fail what runs, keep serving
                for s in self.slots:
                    if s.busy:
                        self._finish(s, "error", error=f"internal error: {type(e).__name__}: {e}")
        for s in self.slots:
            if s.busy:
                self._finish(s, "error", error="the server is shutting down")
        for r in self._deferred + list(self._drain()):
            r.emit({"type": "error", "message": "the server is shutting down", "status": 503})
        self._run_calls()

    def _run_calls(self) -> None:
        while True:
            try:
                fn, future = self._calls.get_nowait()
            except queue.Empty:
                return
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as e:  # handed to the caller
                    future.set_exception(e)

    def _drain(self):
        while True:
            try:
                yield self._waiting.get_nowait()
            except queue.Empty:
                return

    def _admit(self) -> None:
        """Move waiting requests into free slots and evaluate their prompts, up to about prefill_chunk prompt
        tokens per step (so running streams wait at most about one chunk's time)."""
        self._deferred.extend(self._drain())
        for r in [r for r in self._deferred if r.aborted]:  # clients that left while waiting
            r.emit({"type": "error", "message": "aborted", "status": 499})
            self._deferred.remove(r)
        budget = self.prefill_chunk
        while self._deferred and budget > 0:
            free = [s for s in self.slots if not s.busy]
            if not free:
                return
            request = self._deferred.pop(0)
            slot = max(free, key=lambda s: (common_prefix(s.cache.tokens, request.prompt_ids), -s.last_used))
            self._start(slot, request)
            budget -= max(request.n_prompt, 1)

    def _start(self, slot: Slot, request: Request) -> None:
        model = self.model
        request.slot, request.t_started = slot.index, time.perf_counter()
        slot.request = request
        try:
            slot.sampler = Sampler(params=request.params, n_vocab=model.config.n_vocab)
        except LlametteError as e:
            self._finish(slot, "error", error=str(e), status=400)
            return
        slot.text = TextStream(StreamDecoder(model.tokenizer), request.stop)
        slot.pending_probs = []
        cache = slot.cache
        ids = request.prompt_ids
        keep = reuse_point(cache.tokens, ids)
        cache.truncate(keep)
        t0 = time.perf_counter()
        logits = None
        for start in range(keep, len(ids), self.prefill_chunk):
            chunk = ids[start : start + self.prefill_chunk]
            logits = model.net.forward(chunk, cache)[-1]
            cache.tokens.extend(chunk)
            if request.aborted:
                self._finish(slot, "abort")
                return
        request.n_prompt, request.n_reused = len(ids) - keep, keep
        self.counters.prompt_tokens += request.n_prompt
        self.counters.prompt_seconds += time.perf_counter() - t0
        request.t_first = time.perf_counter()
        if request.max_tokens == 0:
            self._finish(slot, "length")
            return
        self._take(slot, logits)

    def _step(self) -> None:
        """One batched decode for every running slot, then sample each."""
        running = []
        for s in self.slots:
            if not s.busy:
                continue
            if s.request.aborted:
                self._finish(s, "abort")
            else:
                running.append(s)
        if not running:
            return
        t0 = time.perf_counter()
        tokens = [s.next_token for s in running]
        logits = self.model.net.decode_batch(tokens, [s.cache for s in running])
        for s, t in zip(running, tokens, strict=True):
            s.cache.tokens.append(t)
        self.counters.generate_seconds += time.perf_counter() - t0
        self.counters.steps += 1
        for s, row in zip(running, logits, strict=True):
            self._take(s, row)

    def _take(self, slot: Slot, logits: np.ndarray) -> None:
        """Sample from a slot's logits; emit the text it completes; finish the request or queue the token."""
        request = slot.request
        token = slot.sampler(logits)
        if self.model.tokenizer.is_eog(token):
            self._finish(slot, "stop")
            return
        request.n_generated += 1
        slot.n_decoded_total += 1
        self.counters.generated_tokens += 1
        if request.n_probs:
            slot.pending_probs.append(token_logprobs(self.model.tokenizer, logits, token, request.n_probs))
        delta = slot.text.push(token)
        if slot.text.stopped is not None:
            self._emit_delta(slot, delta)
            self._finish(slot, "stop")
            return
        if delta:
            self._emit_delta(slot, delta)
        if 0 <= request.max_tokens <= request.n_generated:
            self._finish(slot, "length")
        elif slot.cache.seq_len + 1 >= self.n_ctx:
            self._finish(slot, "length")  # the next token would not fit
        else:
            slot.next_token = token

    def _emit_delta(self, slot: Slot, delta: str) -> None:
        probs, slot.pending_probs = slot.pending_probs, []
        slot.request.emit({"type": "token", "text": delta, "logprobs": probs})

    def _finish(self, slot: Slot, reason: str, error: str | None = None, status: int = 500) -> None:
        request = slot.request
        if request is None:
            return
        request.t_done = time.perf_counter()
        if error is not None:
            request.emit({"type": "error", "message": error, "status": status})
        elif reason == "abort":
            request.emit({"type": "error", "message": "aborted", "status": 499})
        else:
            tail = slot.text.flush() if slot.text is not None else ""
            if tail or slot.pending_probs:
                self._emit_delta(slot, tail)
            request.emit({"type": "done", "finish_reason": reason, **timings(request)})
        self.counters.requests_done += 1
        slot.request, slot.sampler, slot.text = None, None, None
        slot.last_used = time.perf_counter()

    # -- views for the server -----------------------------------------------------------------------------

    def slots_view(self) -> list[dict]:
        out = []
        for s in self.slots:
            r = s.request
            out.append({
                "id": s.index,
                "n_ctx": self.n_ctx,
                "is_processing": r is not None,
                "id_task": r.id if r is not None else -1,
                "n_past": s.cache.seq_len,
                "n_prompt_tokens": r.n_prompt + r.n_reused if r is not None else 0,
                "n_decoded": r.n_generated if r is not None else 0,
                "n_decoded_total": s.n_decoded_total,
            })  # fmt: skip
        return out


def timings(request: Request) -> dict:
    """llama-server's timings block for a request."""
    prompt_ms = max(request.t_first - request.t_started, 0.0) * 1e3
    gen_ms = max((request.t_done or time.perf_counter()) - request.t_first, 0.0) * 1e3
    return {
        "prompt_tokens": request.n_prompt + request.n_reused,
        "completion_tokens": request.n_generated,
        "timings": {
            "prompt_n": request.n_prompt,
            "prompt_cached": request.n_reused,
            "prompt_ms": prompt_ms,
            "prompt_per_second": request.n_prompt / prompt_ms * 1e3 if prompt_ms else 0.0,
            "predicted_n": request.n_generated,
            "predicted_ms": gen_ms,
            "predicted_per_second": request.n_generated / gen_ms * 1e3 if gen_ms else 0.0,
            "ttft_ms": max(request.t_first - request.t_queued, 0.0) * 1e3,
        },
    }
