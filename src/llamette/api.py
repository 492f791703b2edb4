"""`Llama`: llama-cpp-python's high-level API on llamette, so `from llamette import Llama` is the only change.

Same constructor arguments, methods, defaults and return shapes (OpenAI-style dicts and streaming chunks).
Where llama-cpp-python and llama.cpp's CLI differ (penalties over generated tokens only; no temperature before
mirostat) this class does what llama-cpp-python does, so the same seed gives the same text.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from llamette.errors import LlametteError
from llamette.generation import TextStream, reuse_point
from llamette.sampling import RANDOM_SEED, Sampler, SamplingParams, token_logprobs
from llamette.tokenizer import StreamDecoder
from llamette.tokenizer.chat import ChatTemplate, model_template

LLAMA_DEFAULT_SEED = 0xFFFFFFFF  # llama.cpp's "pick a random seed"
CHAT_FORMAT_ALIASES = {"llama-2": "llama2", "llama-3": "llama3", "mistral-instruct": "mistral"}


@dataclass
class LlamaState:
    """What save_state() captures: the evaluated tokens, their logits and the KV cache."""

    input_ids: np.ndarray
    scores: np.ndarray
    n_tokens: int
    cache: dict
    seed: int


class Llama:
    """A loaded model with one context, used like llama_cpp.Llama."""

    def __init__(
        self,
        model_path: str | None = None,
        *,
        n_ctx: int = 512,
        n_batch: int = 512,
        n_threads: int | None = None,
        seed: int = LLAMA_DEFAULT_SEED,
        logits_all: bool = False,
        embedding: bool = False,
        last_n_tokens_size: int = 64,
        chat_format: str | None = None,
        chat_template_file: str | None = None,
        flash_attn: bool = False,
        verbose: bool = True,
        backend: str | None = None,
        **kwargs: Any,
    ) -> None:
        """n_ctx: context size (0 = the model's own). n_gpu_layers (llama-cpp-python's): with a CUDA GPU, 0
        keeps the model on the CPU backend and N (-1: all) puts the last N layers on the GPU (the torch
        backend, the default there); without a GPU it is ignored. Other options of llama-cpp-python that do
        not apply (use_mmap, ...) are accepted and ignored; verbose reports which."""
        from llamette.kernels import cuda_gpu_present
        from llamette.loader import load

        t0 = time.perf_counter()
        gpu = {}
        if "n_gpu_layers" in kwargs and backend is None and cuda_gpu_present():
            ngl = int(kwargs.pop("n_gpu_layers"))
            backend = "torch" if ngl else "cpu"
            gpu = {"n_gpu_layers": None if ngl < 0 else ngl} if ngl else {}
        self.model = load(model_path, backend=backend, n_threads=n_threads, flash_attn=flash_attn, **gpu)
        self.model_path = str(self.model.path)
        self.verbose = verbose
        self._n_ctx = n_ctx if n_ctx > 0 else self.model.config.n_ctx_train
        self.n_batch = n_batch
        self.logits_all = logits_all
        self.embedding = embedding
        self.last_n_tokens_size = last_n_tokens_size
        self._seed = _seed_value(seed)
        self.metadata = {k: str(v) for k, v in self.model.gguf.metadata.items() if not isinstance(v, (list, tuple))}
        self._cache = self.model.new_cache(self._n_ctx)
        self._scores = np.zeros((0, self.n_vocab()), np.float32)
        self.tokenizer_ = self.model.tokenizer
        self.chat_format = chat_format
        self._chat_template = model_template(
            self.model.gguf.metadata, self.model.tokenizer, CHAT_FORMAT_ALIASES.get(chat_format, chat_format),
            chat_template_file,
        )  # fmt: skip
        if verbose:
            ignored = f"; ignored options: {', '.join(sorted(kwargs))}" if kwargs else ""
            print(
                f"llamette: loaded {self.model.path.name} in {time.perf_counter() - t0:.2f} s, context {self._n_ctx}, "
                f"chat template {self._chat_template.name}{ignored}",
                file=sys.stderr,
            )

    # -- model facts -------------------------------------------------------------------------------------

    def n_ctx(self) -> int:
        return self._n_ctx

    def n_vocab(self) -> int:
        return self.model.config.n_vocab

    def n_embd(self) -> int:
        return self.model.config.dim

    def token_bos(self) -> int:
        return -1 if self.model.tokenizer.bos is None else self.model.tokenizer.bos

    def token_eos(self) -> int:
        return -1 if self.model.tokenizer.eos is None else self.model.tokenizer.eos

    def token_nl(self) -> int:
        ids = self.model.tokenizer.encode("\n", add_special=False)
        return ids[-1] if ids else -1

    @property
    def n_tokens(self) -> int:
        return self._cache.seq_len

    @property
    def input_ids(self) -> np.ndarray:
        return np.array(self._cache.tokens, dtype=np.intc)

    @property
    def _input_ids(self) -> np.ndarray:
        return self.input_ids

    @property
    def scores(self) -> np.ndarray:
        """Logits of the evaluated tokens (n_tokens, n_vocab) with logits_all, else those of the last one."""
        return self._scores

    @property
    def eval_tokens(self) -> list[int]:
        return list(self._cache.tokens)

    def set_seed(self, seed: int) -> None:
        self._seed = _seed_value(seed)

    # -- tokens --------------------------------------------------------------------------------------------

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        """Token ids of UTF-8 text; add_bos adds BOS if the model wants one; special parses control tokens."""
        if isinstance(text, str):
            text = text.encode("utf-8")
        return self.model.tokenizer.encode(text, add_special=add_bos, parse_special=special)

    def detokenize(
        self, tokens: Sequence[int], prev_tokens: Sequence[int] | None = None, special: bool = False
    ) -> bytes:
        tok = self.model.tokenizer
        out = b"".join(tok.token_to_piece(int(t), special=special) for t in tokens)
        if tokens and tokens[0] == tok.bos and out.startswith(b" "):
            out = out[1:]  # llama-cpp-python drops the space SentencePiece puts after BOS
        return out

    # -- low level: eval, sample, generate ------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the evaluated tokens (the next eval starts at position 0)."""
        self._cache.clear()
        self._scores = self._scores[:0]

    def eval(self, tokens: Sequence[int]) -> None:
        """Evaluate tokens after those already evaluated; their logits go to `scores`."""
        tokens = [int(t) for t in tokens]
        if not tokens:
            return
        if self.n_tokens + len(tokens) > self._n_ctx:
            raise ValueError(f"Requested tokens ({self.n_tokens + len(tokens)}) exceed context window of {self._n_ctx}")
        for start in range(0, len(tokens), self.n_batch):
            batch = tokens[start : start + self.n_batch]
            logits = self.model.net.forward(batch, self._cache, all_logits=self.logits_all)
            self._cache.tokens.extend(batch)
            self._scores = np.concatenate([self._scores, logits]) if self.logits_all else logits[-1:].copy()

    def _keep_prefix(self, tokens: list[int]) -> int:
        """Keep what the cache holds of tokens' prefix (generation.reuse_point); returns how many are kept."""
        keep = reuse_point(self._cache.tokens, tokens)
        self._cache.truncate(keep)
        if self.logits_all:
            self._scores = self._scores[:keep]
        return keep

    def _sampler(self, **settings: Any) -> Sampler:
        mirostat = settings.get("mirostat", 0)
        if mirostat and settings.get("temperature", 0.8) > 0:
            settings["temperature"] = 1.0  # llama-cpp-python puts no temperature before mirostat
        seed = settings.pop("seed", None)
        seed = self._seed if seed is None else _seed_value(seed)
        return Sampler(params=SamplingParams(repeat_last_n=self.last_n_tokens_size).updated(**settings), seed=seed,
                       n_vocab=self.n_vocab())  # fmt: skip

    def sample(
        self,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        typical_p: float = 1.0,
        temp: float = 0.80,
        repeat_penalty: float = 1.0,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        mirostat_mode: int = 0,
        mirostat_eta: float = 0.1,
        mirostat_tau: float = 5.0,
        **_: Any,
    ) -> int:
        """One token from the logits of the last evaluated token."""
        if self.n_tokens == 0:
            raise ValueError("sample() needs evaluated tokens: call eval() first")
        sampler = self._sampler(
            top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical_p, temperature=temp,
            repeat_penalty=repeat_penalty, frequency_penalty=frequency_penalty, presence_penalty=presence_penalty,
            mirostat=mirostat_mode, mirostat_eta=mirostat_eta, mirostat_tau=mirostat_tau,
        )  # fmt: skip
        for t in self._cache.tokens[-self.last_n_tokens_size :] if self.last_n_tokens_size > 0 else []:
            sampler.accept(t)
        return sampler.sample(self._scores[-1])

    def generate(
        self,
        tokens: Sequence[int],
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        typical_p: float = 1.0,
        temp: float = 0.80,
        repeat_penalty: float = 1.0,
        reset: bool = True,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        mirostat_mode: int = 0,
        mirostat_tau: float = 5.0,
        mirostat_eta: float = 0.1,
        logit_bias: Mapping[int, float] | None = None,
        seed: int | None = None,
        **_: Any,
    ) -> Iterator[int]:
        """Evaluate tokens (reusing the longest prefix already evaluated when reset) and yield sampled tokens
        forever; the caller stops. Each yielded token is evaluated before the next is sampled."""
        sampler = self._sampler(
            top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical_p, temperature=temp,
            repeat_penalty=repeat_penalty, frequency_penalty=frequency_penalty, presence_penalty=presence_penalty,
            mirostat=mirostat_mode, mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta,
            logit_bias=dict(logit_bias or {}), seed=seed,
        )  # fmt: skip
        tokens = [int(t) for t in tokens]
        if reset and self.n_tokens:
            tokens = tokens[self._keep_prefix(tokens) :]
        while True:
            self.eval(tokens)
            token = sampler(self._scores[-1])
            tokens = [token]
            yield token

    # -- completions -------------------------------------------------------------------------------------

    def __call__(self, prompt: str | list[int] = "", **kwargs: Any):
        return self.create_completion(prompt, **kwargs)

    def create_completion(
        self,
        prompt: str | list[int] = "",
        suffix: str | None = None,
        max_tokens: int | None = 16,
        temperature: float = 0.8,
        top_p: float = 0.95,
        min_p: float = 0.05,
        typical_p: float = 1.0,
        logprobs: int | None = None,
        echo: bool = False,
        stop: str | list[str] | None = None,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        repeat_penalty: float = 1.0,
        top_k: int = 40,
        stream: bool = False,
        seed: int | None = None,
        tfs_z: float = 1.0,
        mirostat_mode: int = 0,
        mirostat_tau: float = 5.0,
        mirostat_eta: float = 0.1,
        model: str | None = None,
        logit_bias: Mapping[int | str, float] | None = None,
        **_: Any,
    ):
        """Complete a prompt: an OpenAI-style text_completion dict, or an iterator of chunks with stream=True."""
        if suffix:
            raise LlametteError("suffix (infill) is not supported for this model")
        prompt_ids = self._prompt_ids(prompt)
        sampler = self._sampler(
            temperature=temperature, top_p=top_p, min_p=min_p, typical_p=typical_p, top_k=top_k,
            repeat_penalty=repeat_penalty, frequency_penalty=frequency_penalty, presence_penalty=presence_penalty,
            mirostat=mirostat_mode, mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta,
            logit_bias=_token_bias(logit_bias), seed=seed,
        )  # fmt: skip
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        run = self._complete(prompt_ids, sampler, max_tokens, stops, logprobs, echo)
        head = {"id": f"cmpl-{uuid.uuid4()}", "object": "text_completion", "created": int(time.time()),
                "model": model or self.model_path}  # fmt: skip
        if stream:
            return self._completion_chunks(head, run)
        return self._completion_result(head, run)

    def _prompt_ids(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            ids = self.tokenize(prompt.encode("utf-8"), add_bos=True, special=True) if prompt else []
            if not ids:
                ids = [self.token_bos()] if self.token_bos() >= 0 else []
        else:
            ids = [int(t) for t in prompt]
        if not ids:
            raise LlametteError("the prompt is empty (and this model adds no BOS token): give some text")
        if len(ids) > self._n_ctx:
            raise ValueError(f"Requested tokens ({len(ids)}) exceed context window of {self._n_ctx}")
        return ids

    def _complete(
        self,
        prompt_ids: list[int],
        sampler: Sampler,
        max_tokens: int | None,
        stops: list[str],
        logprobs: int | None,
        echo: bool,
    ) -> Iterator[dict]:
        """Events: {"text", "tokens": [(id, logprobs entry)]} per released piece, then {"finish": ..., usage}."""
        n_prompt = len(prompt_ids)
        room = self._n_ctx - n_prompt  # prompt + completion fit the context, as in llama-cpp-python
        limit = room if max_tokens is None or max_tokens <= 0 else min(max_tokens, room)
        tok = self.model.tokenizer
        text = TextStream(StreamDecoder(tok), stops)
        want_probs = logprobs is not None
        if echo and want_probs:  # needs the logits of every prompt token
            entries = self._prompt_logprobs(prompt_ids, logprobs)
        else:  # reuse what the cache holds of this prompt
            entries = []
            self.eval(prompt_ids[self._keep_prefix(prompt_ids) :])
        if echo:
            yield {"text": self.detokenize(prompt_ids).decode("utf-8", "replace"), "tokens": entries}
        pending: list = []
        finish = "length"
        n_gen = 0
        while n_gen < limit:
            logits = self._scores[-1]
            token = sampler(logits)
            if tok.is_eog(token):
                finish = "stop"
                break
            n_gen += 1
            if want_probs:
                pending.append((token, _logprob_entry(tok, logits, token, logprobs)))
            delta = text.push(token)
            if text.stopped is not None:
                finish = "stop"
                yield {"text": delta, "tokens": pending}
                pending = []
                break
            if delta:
                yield {"text": delta, "tokens": pending}
                pending = []
            if n_gen < limit:
                self.eval([token])
        tail = text.flush()
        if tail or pending:
            yield {"text": tail, "tokens": pending}
        yield {"finish": finish, "prompt_tokens": n_prompt, "completion_tokens": n_gen}

    def _prompt_logprobs(self, prompt_ids: list[int], n: int | None) -> list:
        """Echo with logprobs: every prompt token's logprob under the tokens before it (the first has none)."""
        self.reset()
        logits = np.empty((0, self.n_vocab()), np.float32)
        for start in range(0, len(prompt_ids), self.n_batch):
            batch = prompt_ids[start : start + self.n_batch]
            logits = np.concatenate([logits, self.model.net.forward(batch, self._cache, all_logits=True)])
            self._cache.tokens.extend(batch)
        self._scores = logits if self.logits_all else logits[-1:].copy()
        tok = self.model.tokenizer
        entries = [(prompt_ids[0], (tok.token_to_piece(prompt_ids[0]).decode("utf-8", "replace"), None, None))]
        for i, t in enumerate(prompt_ids[1:]):
            entries.append((t, _logprob_entry(tok, logits[i], t, n)))
        return entries

    @staticmethod
    def _logprobs_block(events: list[dict], offset0: int = 0) -> dict:
        out = {"tokens": [], "text_offset": [], "token_logprobs": [], "top_logprobs": []}
        offset = offset0
        for ev in events:
            for _, (piece, lp, top) in ev.get("tokens", []):
                out["tokens"].append(piece)
                out["text_offset"].append(offset)
                out["token_logprobs"].append(lp)
                out["top_logprobs"].append(top)
                offset += len(piece)
        return out

    def _completion_result(self, head: dict, run: Iterator[dict]) -> dict:
        events = list(run)
        end = events.pop()
        text = "".join(ev["text"] for ev in events)
        has_probs = any(ev.get("tokens") for ev in events)
        choice = {
            "text": text,
            "index": 0,
            "logprobs": self._logprobs_block(events) if has_probs else None,
            "finish_reason": end["finish"],
        }
        return {**head, "choices": [choice], "usage": _usage(end)}

    def _completion_chunks(self, head: dict, run: Iterator[dict]) -> Iterator[dict]:
        offset = 0
        for ev in run:
            if "finish" in ev:
                yield {**head, "choices": [{"text": "", "index": 0, "logprobs": None, "finish_reason": ev["finish"]}]}
                return
            probs = self._logprobs_block([ev], offset) if ev.get("tokens") else None
            offset += len(ev["text"])
            if ev["text"] or probs:
                yield {**head, "choices": [{"text": ev["text"], "index": 0, "logprobs": probs, "finish_reason": None}]}

    # -- chat ----------------------------------------------------------------------------------------------

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
        return self._chat_template.render(messages, add_generation_prompt=add_generation_prompt)

    def chat_prompt_ids(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        """The tokens of a rendered conversation: special tokens parsed, BOS added unless the template wrote it."""
        return chat_tokens(self.model.tokenizer, self._chat_template, messages)

    def create_chat_completion(
        self,
        messages: Sequence[Mapping[str, Any]],
        temperature: float = 0.2,
        top_p: float = 0.95,
        top_k: int = 40,
        min_p: float = 0.05,
        typical_p: float = 1.0,
        stream: bool = False,
        stop: str | list[str] | None = None,
        seed: int | None = None,
        max_tokens: int | None = None,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        repeat_penalty: float = 1.0,
        mirostat_mode: int = 0,
        mirostat_tau: float = 5.0,
        mirostat_eta: float = 0.1,
        model: str | None = None,
        logit_bias: Mapping[int | str, float] | None = None,
        logprobs: bool | None = None,
        top_logprobs: int | None = None,
        **_: Any,
    ):
        """Answer a conversation: an OpenAI-style chat.completion dict, or chunks with stream=True."""
        unsupported = [k for k in ("tools", "functions", "grammar") if _.get(k)]
        fmt = _.get("response_format")
        if fmt and (not isinstance(fmt, Mapping) or fmt.get("type") != "text"):
            unsupported.append("response_format")
        if unsupported:  # refused rather than ignored: the caller relies on a constraint we would not apply
            raise LlametteError(f"{', '.join(unsupported)}: constrained output is not supported yet")
        prompt_ids = self.chat_prompt_ids(messages)
        n_probs = (top_logprobs or 0) if logprobs else None
        completion = self.create_completion(
            prompt_ids, max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
            typical_p=typical_p, stop=stop, seed=seed, presence_penalty=presence_penalty,
            frequency_penalty=frequency_penalty, repeat_penalty=repeat_penalty, mirostat_mode=mirostat_mode,
            mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta, logit_bias=logit_bias, logprobs=n_probs,
            stream=stream, model=model,
        )  # fmt: skip
        head = {"id": f"chatcmpl-{uuid.uuid4()}", "created": int(time.time()), "model": model or self.model_path}
        if not stream:
            choice = completion["choices"][0]
            return {
                **head,
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": choice["text"]},
                        "logprobs": _chat_logprobs(choice["logprobs"]),
                        "finish_reason": choice["finish_reason"],
                    }
                ],
                "usage": completion["usage"],
            }
        return self._chat_chunks(head, completion)

    @staticmethod
    def _chat_chunks(head: dict, chunks: Iterator[dict]) -> Iterator[dict]:
        head = {**head, "object": "chat.completion.chunk"}

        def chunk(delta: dict, logprobs: dict | None = None, finish: str | None = None) -> dict:
            return {**head, "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]}

        yield chunk({"role": "assistant"})
        for part in chunks:
            c = part["choices"][0]
            if c["finish_reason"] is not None:
                yield chunk({}, finish=c["finish_reason"])
                return
            yield chunk({"content": c["text"]}, _chat_logprobs(c["logprobs"]))

    # -- embeddings ----------------------------------------------------------------------------------------

    def embed(
        self,
        input: str | list[str],
        normalize: bool = True,
        truncate: bool = True,
        return_count: bool = False,
    ):
        """Mean-pooled final hidden states (llama.cpp's pooling "mean"), L2-normalised when normalize.
        A string gives one vector (list of floats), a list of strings a list of vectors."""
        from llamette.embedding import pooled_embedding

        single = isinstance(input, str)
        texts = [input] if single else list(input)
        vectors, total = [], 0
        cache = self.model.new_cache(self._n_ctx)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise LlametteError(f"input[{i}] must be a string, got {type(text).__name__}")
            ids = self.tokenize(text.encode("utf-8"), add_bos=True, special=False) or [max(self.token_bos(), 0)]
            if len(ids) > self._n_ctx:
                if not truncate:
                    raise ValueError(f"Requested tokens ({len(ids)}) exceed context window of {self._n_ctx}")
                ids = ids[: self._n_ctx]
            v = pooled_embedding(self.model, cache, ids, normalize, self.n_batch)
            vectors.append([float(x) for x in v])
            total += len(ids)
        result = vectors[0] if single else vectors
        return (result, total) if return_count else result

    def create_embedding(self, input: str | list[str], model: str | None = None) -> dict:
        vectors, total = self.embed(input, return_count=True)
        if isinstance(input, str):
            vectors = [vectors]
        return {
            "object": "list",
            "data": [{"object": "embedding", "embedding": v, "index": i} for i, v in enumerate(vectors)],
            "model": model or self.model_path,
            "usage": {"prompt_tokens": total, "total_tokens": total},
        }

    # -- state ---------------------------------------------------------------------------------------------

    def save_state(self) -> LlamaState:
        return LlamaState(self.input_ids, self._scores.copy(), self.n_tokens, self._cache.snapshot(), self._seed)

    def load_state(self, state: LlamaState) -> None:
        self._cache.restore(state.cache)
        self._scores = state.scores.copy()
        self._seed = state.seed

    def close(self) -> None:
        """Drop the KV cache (the model's memory goes when the object does)."""
        self._cache.clear()

    def __enter__(self) -> Llama:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def chat_tokens(tokenizer, template: ChatTemplate, messages: Sequence[Mapping[str, Any]]) -> list[int]:
    text = template.render(messages, add_generation_prompt=True)
    has_bos = bool(template.bos_token) and text.startswith(template.bos_token)
    return tokenizer.encode(text, add_special=not has_bos, parse_special=True)


def _seed_value(seed: int | None) -> int:
    if seed is None or seed in (LLAMA_DEFAULT_SEED, RANDOM_SEED):
        return RANDOM_SEED
    if not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise LlametteError(f"seed must be -1 (random) or 0 .. 2^32-1, got {seed!r}")
    return int(seed)


def _token_bias(bias: Mapping[int | str, float] | None) -> dict[int, float]:
    out = {}
    for k, v in (bias or {}).items():
        try:
            out[int(k)] = float(v)
        except (TypeError, ValueError):
            raise LlametteError(f"logit_bias: {k!r}: {v!r} is not token id: number") from None
    return out


def _logprob_entry(tok, logits: np.ndarray, token: int, n: int | None) -> tuple[str, float, dict | None]:
    """(token text, its log-probability, the top n {text: logprob} plus the token itself)."""
    lp = token_logprobs(tok, logits, token, n or 0)
    top = {t["token"]: t["logprob"] for t in lp["top"]} | {lp["token"]: lp["logprob"]} if n else None
    return lp["token"], lp["logprob"], top


def _chat_logprobs(block: dict | None) -> dict | None:
    if not block:
        return None
    content = []
    for piece, lp, top in zip(block["tokens"], block["token_logprobs"], block["top_logprobs"], strict=True):
        tops = [{"token": t, "logprob": p, "bytes": list(t.encode())} for t, p in (top or {}).items()]
        content.append({"token": piece, "logprob": lp, "bytes": list(piece.encode()), "top_logprobs": tops})
    return {"content": content}


def _usage(end: dict) -> dict:
    return {
        "prompt_tokens": end["prompt_tokens"],
        "completion_tokens": end["completion_tokens"],
        "total_tokens": end["prompt_tokens"] + end["completion_tokens"],
    }
