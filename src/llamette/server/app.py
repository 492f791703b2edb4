"""The HTTP server: OpenAI-compatible routes, llama-server's native routes, and the web page.

Every route talks to the Engine (one thread owns the model). A request gets an asyncio queue fed from the
engine thread; streaming responses are server-sent events ending with `data: [DONE]`. A client that goes away
aborts its request, which frees its slot at the next engine step.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from llamette import __version__
from llamette.engine import Engine
from llamette.engine import Request as EngineRequest
from llamette.errors import ContextFullError, LlametteError
from llamette.sampling import SamplingParams
from llamette.server.protocol import (
    ChatBody,
    CompletionBody,
    DetokenizeBody,
    EmbeddingBody,
    NativeCompletionBody,
    SamplingFields,
    TokenizeBody,
)
from llamette.tokenizer.chat import ChatTemplate

PUBLIC_PATHS = {"/health", "/", "/index.html"}  # the page holds no data; it asks for the key and sends it
DEFAULT_MAX_BODY = 8 << 20


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code


def error_body(status: int, message: str, kind: str = "invalid_request_error", param=None, code=None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code if code is not None else status}}


class ServerState:
    """What the routes share: the engine, the model's facts, the chat template, settings."""

    def __init__(self, engine: Engine, template: ChatTemplate, alias: str, api_key: str | None, metrics: bool) -> None:
        self.engine, self.template, self.alias = engine, template, alias
        self.model = engine.model
        self.api_key, self.metrics = api_key, metrics
        self.started = time.time()
        self.outbox: Outbox | None = None


def create_app(
    engine: Engine,
    template: ChatTemplate,
    alias: str,
    api_key: str | None = None,
    metrics: bool = False,
    max_body: int = DEFAULT_MAX_BODY,
) -> FastAPI:
    state = ServerState(engine, template, alias, api_key, metrics)
    app = FastAPI(title="llamette", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.llamette = state

    @app.middleware("http")
    async def auth_and_size(request: Request, call_next):
        if api_key and request.url.path not in PUBLIC_PATHS:
            given = request.headers.get("authorization", "")
            if given != f"Bearer {api_key}":
                return JSONResponse(error_body(401, "invalid or missing API key (Authorization: Bearer KEY)",
                                               "authentication_error"), status_code=401)  # fmt: skip
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > max_body):
            return JSONResponse(error_body(413, f"request body larger than {max_body} bytes"), status_code=413)
        if request.method == "POST" and length is None:  # a chunked body could be any size
            return JSONResponse(error_body(411, "a Content-Length header is required"), status_code=411)
        return await call_next(request)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, e: ApiError):
        return JSONResponse(error_body(e.status, e.message, e.kind, e.param, e.code), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            message, where = f"the body is not valid JSON: {first.get('ctx', {}).get('error', '')}", None
        elif where:
            message = f"{where}: {message}"
        return JSONResponse(error_body(400, message, param=where or None), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException):
        return JSONResponse(error_body(e.status_code, str(e.detail)), status_code=e.status_code)

    @app.exception_handler(LlametteError)
    async def _llamette(_: Request, e: LlametteError):
        code = "context_length_exceeded" if isinstance(e, ContextFullError) else None
        return JSONResponse(error_body(400, str(e), code=code), status_code=400)

    # -- pages and facts ----------------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse)
    @app.get("/index.html", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(resources.files("llamette.server").joinpath("static/index.html").read_text("utf-8"))

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    @app.get("/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": alias, "object": "model", "created": int(state.started),
                                            "owned_by": "llamette", "meta": model_meta(state)}]}  # fmt: skip

    @app.get("/props")
    async def props() -> dict:
        return {
            "default_generation_settings": {**SamplingParams().__dict__, "n_ctx": engine.n_ctx},
            "total_slots": len(engine.slots),
            "model_alias": alias,
            "model_path": str(state.model.path),
            "chat_template": template.source,
            "n_ctx": engine.n_ctx,
            "build_info": f"llamette {__version__}",
            "stats": live_stats(state),
        }

    @app.get("/stats")
    async def stats() -> dict:
        return live_stats(state)

    @app.get("/slots")
    async def slots() -> list:
        return engine.slots_view()

    @app.get("/metrics")
    async def prometheus() -> Response:
        if not metrics:
            raise ApiError(501, "metrics are off: start the server with --metrics", "not_supported_error")
        return PlainTextResponse(prometheus_text(state), media_type="text/plain; version=0.0.4")

    # -- tokens -----------------------------------------------------------------------------------------

    @app.post("/tokenize")
    async def tokenize(body: TokenizeBody) -> dict:
        tok = state.model.tokenizer
        ids = tok.encode(body.content, add_special=body.add_special, parse_special=True)
        if body.with_pieces:
            return {"tokens": [{"id": i, "piece": tok.token_to_piece(i).decode("utf-8", "replace")} for i in ids]}
        return {"tokens": ids}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeBody) -> dict:
        n = state.model.config.n_vocab
        bad = [t for t in body.tokens if not 0 <= t < n]
        if bad:
            raise ApiError(400, f"token id {bad[0]} is out of range (the model has {n} tokens)", param="tokens")
        return {"content": state.model.tokenizer.detokenize(body.tokens).decode("utf-8", "replace")}

    # -- generation ---------------------------------------------------------------------------------------

    @app.post("/v1/completions")
    @app.post("/completions")
    async def completions(body: CompletionBody, http: Request):
        check_model(state, body.model)
        ids = prompt_tokens(state, body.prompt)
        if body.echo:
            raise ApiError(400, "echo is not supported by this server", param="echo")
        req = make_request(state, body, ids, body.max_tokens, body.logprobs or 0)
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": alias}  # fmt: skip
        events = submit(state, req)
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            return sse(completion_chunks(head, events, req, body.logprobs, include_usage), state, req)
        text, probs, done = await collect(events, http, state, req)
        lp = completion_logprobs(probs) if body.logprobs is not None else None
        choice = {"text": text, "index": 0, "logprobs": lp, "finish_reason": done["finish_reason"]}
        return {**head, "choices": [choice], "usage": usage(done), "timings": done["timings"]}

    @app.post("/v1/chat/completions")
    @app.post("/chat/completions")
    async def chat(body: ChatBody, http: Request):
        check_model(state, body.model)
        if body.tools or (body.response_format and body.response_format.get("type") not in (None, "text")):
            raise ApiError(400, "tools and response_format (constrained output) are not supported yet")
        from llamette.api import chat_tokens

        messages = [m.model_dump(exclude_none=True) for m in body.messages]
        ids = chat_tokens(state.model.tokenizer, template, messages)
        limit = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        n_probs = (body.top_logprobs or 1) if body.logprobs else 0
        req = make_request(state, body, ids, limit, n_probs)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": alias}
        events = submit(state, req)
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            return sse(chat_chunks(head, events, req, body.logprobs, include_usage), state, req)
        text, probs, done = await collect(events, http, state, req)
        choice = {"index": 0, "message": {"role": "assistant", "content": text},
                  "logprobs": chat_logprobs(probs, body.top_logprobs or 0) if body.logprobs else None,
                  "finish_reason": done["finish_reason"]}  # fmt: skip
        return {**head, "object": "chat.completion", "choices": [choice], "usage": usage(done),
                "timings": done["timings"]}  # fmt: skip

    @app.post("/completion")
    async def native_completion(body: NativeCompletionBody, http: Request):
        ids = prompt_tokens(state, body.prompt)
        req = make_request(state, body, ids, body.n_predict, body.n_probs)
        events = submit(state, req)
        if body.stream:
            return sse(native_chunks(events, req), state, req, done_marker=False)
        text, probs, done = await collect(events, http, state, req)
        return {"content": text, "stop": True, "stop_type": done["finish_reason"], "model": alias,
                "tokens_predicted": done["completion_tokens"], "tokens_evaluated": done["prompt_tokens"],
                "timings": done["timings"], "completion_probabilities": probs or None}  # fmt: skip

    @app.post("/v1/embeddings")
    @app.post("/embeddings")
    async def embeddings(body: EmbeddingBody) -> dict:
        check_model(state, body.model)
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts:
            raise ApiError(400, "input is empty", param="input")
        vectors, total = await asyncio.wrap_future(engine.call(lambda: embed_texts(state, texts)))
        if body.encoding_format == "base64":  # little-endian float32, as OpenAI sends them
            import base64

            import numpy as np

            vectors = [base64.b64encode(np.asarray(v, "<f4").tobytes()).decode() for v in vectors]
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
        return {"object": "list", "model": alias, "data": data,
                "usage": {"prompt_tokens": total, "total_tokens": total}}  # fmt: skip

    return app


# -- helpers ---------------------------------------------------------------------------------------------


def check_model(state: ServerState, name: str | None) -> None:
    names = {state.alias, state.model.path.name, str(state.model.path)}
    if name and name not in names:
        raise ApiError(404, f"The model `{name}` does not exist (this server has `{state.alias}`)",
                       param="model", code="model_not_found")  # fmt: skip


def prompt_tokens(state: ServerState, prompt: str | list) -> list[int]:
    tok = state.model.tokenizer
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        if len(prompt) > 1:
            raise ApiError(400, "one prompt per request (a list of several is not supported)", param="prompt")
        prompt = prompt[0]
    if isinstance(prompt, str):
        ids = tok.encode(prompt, add_special=True, parse_special=True)
    else:
        ids = [int(t) for t in prompt]
        bad = [t for t in ids if not 0 <= t < state.model.config.n_vocab]
        if bad:
            raise ApiError(400, f"prompt token {bad[0]} is out of range", param="prompt")
    if not ids and tok.bos is not None:
        ids = [tok.bos]
    if not ids:
        raise ApiError(400, "the prompt is empty", param="prompt")
    if len(ids) >= state.engine.n_ctx:
        raise ApiError(400, f"the prompt is {len(ids)} tokens, longer than the context of {state.engine.n_ctx} "
                       "tokens per slot", param="prompt", code="context_length_exceeded")  # fmt: skip
    return ids


def make_request(state: ServerState, body: SamplingFields, ids: list[int], limit: int | None, n_probs: int):
    bias: dict[int, float] = {int(k): float(v) for k, v in (body.logit_bias or {}).items()}
    if body.ignore_eos:
        bias.update({t: float("-inf") for t in state.model.tokenizer.eog_ids})
    params = SamplingParams(
        temperature=body.temperature, top_k=body.top_k, top_p=body.top_p, min_p=body.min_p,
        typical_p=body.typical_p, repeat_penalty=body.repeat_penalty,
        repeat_last_n=state.engine.n_ctx if body.repeat_last_n == -1 else body.repeat_last_n,
        frequency_penalty=body.frequency_penalty, presence_penalty=body.presence_penalty, mirostat=body.mirostat,
        mirostat_tau=body.mirostat_tau, mirostat_eta=body.mirostat_eta, logit_bias=bias,
        seed=-1 if body.seed is None else body.seed,
    )  # fmt: skip
    try:
        params.validate(state.model.config.n_vocab)
    except LlametteError as e:
        raise ApiError(400, str(e)) from None
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    return EngineRequest(ids, params, -1 if limit is None else limit, stops, n_probs)


class Outbox:
    """Events from the engine thread to the event loop: one loop wake-up per batch of events (a decode step
    gives one event per running request), not one per event."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.items: list = []
        self.lock = threading.Lock()
        self.scheduled = False

    def put(self, queue: asyncio.Queue, event: dict) -> None:
        with self.lock:
            self.items.append((queue, event))
            if self.scheduled:
                return
            self.scheduled = True
        self.loop.call_soon_threadsafe(self.flush)

    def flush(self) -> None:
        with self.lock:
            items, self.items, self.scheduled = self.items, [], False
        for queue, event in items:
            queue.put_nowait(event)


def submit(state: ServerState, req: EngineRequest) -> asyncio.Queue:
    loop = asyncio.get_running_loop()
    if state.outbox is None or state.outbox.loop is not loop:
        state.outbox = Outbox(loop)
    outbox = state.outbox
    events: asyncio.Queue = asyncio.Queue()
    req.sink = lambda ev: outbox.put(events, ev)
    state.engine.add_request(req)
    return events


async def collect(events: asyncio.Queue, http: Request, state: ServerState, req: EngineRequest):
    """Wait for a whole answer; a client that goes away aborts it."""
    text, probs = [], []
    while True:
        try:
            ev = await asyncio.wait_for(events.get(), 0.25)
        except asyncio.TimeoutError:
            if await http.is_disconnected():
                state.engine.abort(req)
                raise ApiError(499, "client closed the request") from None
            continue
        if ev["type"] == "token":
            text.append(ev["text"])
            probs.extend(ev["logprobs"])
        elif ev["type"] == "done":
            return "".join(text), probs, ev
        else:
            raise ApiError(ev.get("status", 500), ev["message"], "server_error")


def sse(chunks: AsyncIterator[dict], state: ServerState, req: EngineRequest, done_marker: bool = True):
    async def body() -> AsyncIterator[str]:
        try:
            async for chunk in chunks:  # a dict, or JSON text already (the per-token fast path)
                text = chunk if isinstance(chunk, str) else json.dumps(chunk, ensure_ascii=False)
                yield f"data: {text}\n\n"
            if done_marker:
                yield "data: [DONE]\n\n"
        finally:  # the client went away (or we are done): free the slot
            state.engine.abort(req)

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip


async def events_of(events: asyncio.Queue) -> AsyncIterator[dict]:
    """The engine's events; token events already waiting are merged into one (a client that reads slower than
    the model writes gets fewer, larger chunks instead of falling further behind)."""
    while True:
        ev = await events.get()
        while ev["type"] == "token" and not events.empty():
            nxt = events.get_nowait()
            if nxt["type"] != "token":
                yield ev
                ev = nxt
                break
            ev = {"type": "token", "text": ev["text"] + nxt["text"], "logprobs": ev["logprobs"] + nxt["logprobs"]}
        yield ev
        if ev["type"] != "token":
            return


def _json_prefix(head: dict, rest: str) -> str:
    """JSON text of head with more members to follow: '{..., ' + rest."""
    return json.dumps(head, ensure_ascii=False)[:-1] + ", " + rest


async def completion_chunks(head, events, req, logprobs, include_usage) -> AsyncIterator[dict | str]:
    prefix = _json_prefix(head, '"choices": [{"text": ')
    async for ev in events_of(events):
        if ev["type"] == "token" and logprobs is None:
            text = json.dumps(ev["text"], ensure_ascii=False)
            yield f'{prefix}{text}, "index": 0, "logprobs": null, "finish_reason": null}}]}}'
        elif ev["type"] == "token":
            lp = completion_logprobs(ev["logprobs"])
            yield {**head, "choices": [{"text": ev["text"], "index": 0, "logprobs": lp, "finish_reason": None}]}
        elif ev["type"] == "done":
            yield {**head, "choices": [{"text": "", "index": 0, "logprobs": None,
                                        "finish_reason": ev["finish_reason"]}], "timings": ev["timings"]}  # fmt: skip
            if include_usage:
                yield {**head, "choices": [], "usage": usage(ev)}
        else:
            yield {"error": error_body(ev.get("status", 500), ev["message"], "server_error")["error"]}


async def chat_chunks(head, events, req, logprobs, include_usage) -> AsyncIterator[dict | str]:
    head = {**head, "object": "chat.completion.chunk"}
    prefix = _json_prefix(head, '"choices": [{"index": 0, "delta": {"content": ')

    def chunk(delta, finish=None, lp=None, **extra):
        return {**head, "choices": [{"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish}], **extra}

    yield chunk({"role": "assistant", "content": ""})
    async for ev in events_of(events):
        if ev["type"] == "token" and not logprobs:
            text = json.dumps(ev["text"], ensure_ascii=False)
            yield f'{prefix}{text}}}, "logprobs": null, "finish_reason": null}}]}}'
        elif ev["type"] == "token":
            yield chunk({"content": ev["text"]}, lp=chat_logprobs(ev["logprobs"], 0))
        elif ev["type"] == "done":
            yield chunk({}, ev["finish_reason"], timings=ev["timings"])
            if include_usage:
                yield {**head, "choices": [], "usage": usage(ev)}
        else:
            yield {"error": error_body(ev.get("status", 500), ev["message"], "server_error")["error"]}


async def native_chunks(events, req) -> AsyncIterator[dict]:
    async for ev in events_of(events):
        if ev["type"] == "token":
            yield {"content": ev["text"], "stop": False}
        elif ev["type"] == "done":
            yield {"content": "", "stop": True, "stop_type": ev["finish_reason"], "timings": ev["timings"],
                   "tokens_predicted": ev["completion_tokens"], "tokens_evaluated": ev["prompt_tokens"]}  # fmt: skip
        else:
            yield {"error": error_body(ev.get("status", 500), ev["message"], "server_error")["error"]}


def usage(done: dict) -> dict:
    p, c = done["prompt_tokens"], done["completion_tokens"]
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def completion_logprobs(probs: list[dict]) -> dict:
    offsets, at = [], 0
    for p in probs:
        offsets.append(at)
        at += len(p["token"])
    return {
        "tokens": [p["token"] for p in probs],
        "token_logprobs": [p["logprob"] for p in probs],
        "top_logprobs": [{t["token"]: t["logprob"] for t in p["top"]} for p in probs],
        "text_offset": offsets,
    }


def chat_logprobs(probs: list[dict], n_top: int) -> dict:
    return {"content": [
        {"token": p["token"], "logprob": p["logprob"], "bytes": list(p["token"].encode()),
         "top_logprobs": [{"token": t["token"], "logprob": t["logprob"], "bytes": list(t["token"].encode())}
                          for t in p["top"][:n_top]]}
        for p in probs
    ]}  # fmt: skip


def embed_texts(state: ServerState, texts: list[str]) -> tuple[list[list[float]], int]:
    """Mean-pooled, L2-normalised final hidden states; runs on the engine thread."""
    from llamette.embedding import pooled_embedding

    model, engine = state.model, state.engine
    cache = model.new_cache(engine.n_ctx)
    vectors, total = [], 0
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text:
            raise ApiError(400, f"input[{i}] must be a non-empty string", param="input")
        ids = model.tokenizer.encode(text, add_special=True, parse_special=False)
        if len(ids) > engine.n_ctx:
            raise ApiError(400, f"input[{i}] is {len(ids)} tokens, longer than the context of {engine.n_ctx}",
                           param="input", code="context_length_exceeded")  # fmt: skip
        vectors.append([float(x) for x in pooled_embedding(model, cache, ids)])
        total += len(ids)
    return vectors, total


def model_meta(state: ServerState) -> dict:
    cfg = state.model.config
    return {"n_vocab": cfg.n_vocab, "n_ctx_train": cfg.n_ctx_train, "n_embd": cfg.dim,
            "size": state.model.path.stat().st_size}  # fmt: skip


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def live_stats(state: ServerState) -> dict:
    engine, c = state.engine, state.engine.counters
    used, capacity = engine.kv_usage()
    return {
        "rss_bytes": rss_bytes(),
        "kv_cache_tokens": used,
        "kv_cache_capacity": capacity,
        "kv_cache_bytes": engine.kv_bytes(),
        "requests_processing": engine.n_running,
        "requests_deferred": engine.n_waiting,
        "prompt_tokens_total": c.prompt_tokens,
        "tokens_predicted_total": c.generated_tokens,
        "prompt_tokens_seconds": c.prompt_tokens / c.prompt_seconds if c.prompt_seconds else 0.0,
        "predicted_tokens_seconds": c.generated_tokens / c.generate_seconds if c.generate_seconds else 0.0,
        "uptime_seconds": time.time() - state.started,
    }


def prometheus_text(state: ServerState) -> str:
    s = live_stats(state)
    c = state.engine.counters
    rows = [
        ("prompt_tokens_total", "counter", "Number of prompt tokens processed.", s["prompt_tokens_total"]),
        ("prompt_seconds_total", "counter", "Prompt process time", c.prompt_seconds),
        ("tokens_predicted_total", "counter", "Number of generation tokens processed.", s["tokens_predicted_total"]),
        ("tokens_predicted_seconds_total", "counter", "Predict process time", c.generate_seconds),
        ("requests_total", "counter", "Requests finished.", c.requests_done),
        ("prompt_tokens_seconds", "gauge", "Average prompt throughput in tokens/s.", s["prompt_tokens_seconds"]),
        ("predicted_tokens_seconds", "gauge", "Average generation throughput in tokens/s.",
         s["predicted_tokens_seconds"]),
        ("kv_cache_usage_ratio", "gauge", "KV-cache usage. 1 means 100 percent usage.",
         s["kv_cache_tokens"] / s["kv_cache_capacity"] if s["kv_cache_capacity"] else 0.0),
        ("kv_cache_tokens", "gauge", "KV-cache tokens.", s["kv_cache_tokens"]),
        ("requests_processing", "gauge", "Number of requests processing.", s["requests_processing"]),
        ("requests_deferred", "gauge", "Number of requests deferred.", s["requests_deferred"]),
        ("process_resident_memory_bytes", "gauge", "Resident memory of the server process.", s["rss_bytes"]),
    ]  # fmt: skip
    out = []
    for name, kind, help_text, value in rows:
        out += [f"# HELP llamacpp:{name} {help_text}", f"# TYPE llamacpp:{name} {kind}", f"llamacpp:{name} {value}"]
    return "\n".join(out) + "\n"


def run_server(app: FastAPI, host: str, port: int, log_level: str = "warning") -> None:
    """Serve until SIGINT/SIGTERM: then stop accepting, let running requests finish (10 s at most), exit."""
    import contextlib
    import signal

    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            # uvicorn's, without re-raising the signal after the graceful shutdown: the command then ends
            # normally (engine stopped, exit status 0)
            previous = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for s, handler in previous.items():
                    signal.signal(s, handler)

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=10,
                            access_log=False)  # fmt: skip
    Server(config).run()
