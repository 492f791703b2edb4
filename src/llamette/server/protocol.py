"""Request bodies of the HTTP API (OpenAI and llama.cpp-native), validated before anything reaches the engine.

Unknown fields are accepted and ignored (OpenAI clients send many); known fields of the wrong type or out of
range are a 400 that names the field.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class SamplingFields(BaseModel):
    """Sampler settings shared by every generation route (llama.cpp's names and OpenAI's)."""

    model_config = ConfigDict(extra="ignore", strict=True)  # "0.5" for a number or "yes" for a bool is a 400

    model: str | None = None
    temperature: float = Field(0.8, ge=0.0)
    top_p: float = Field(0.95, ge=0.0, le=1.0)
    top_k: int = 40
    min_p: float = Field(0.05, ge=0.0, le=1.0)
    typical_p: float = Field(1.0, ge=0.0, le=1.0)
    repeat_penalty: float = Field(1.0, gt=0.0)
    repeat_last_n: int = Field(64, ge=-1)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    mirostat: int = Field(0, ge=0, le=2)
    mirostat_tau: float = 5.0
    mirostat_eta: float = Field(0.1, ge=0.0)
    seed: int | None = Field(None, ge=-1, lt=2**32)
    logit_bias: dict[str, float] | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    ignore_eos: bool = False
    n: int = Field(1, ge=1, le=1)

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > 16:
            raise ValueError("at most 16 stop strings")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _bias_keys(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for k in v or {}:
            if not k.lstrip("-").isdigit():
                raise ValueError(f"keys must be token ids, got {k!r}")
        return v


class CompletionBody(SamplingFields):
    prompt: str | list[int] | list[str]
    max_tokens: int | None = Field(16, ge=0)
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    stream_options: dict[str, Any] | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatBody(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=0)
    max_completion_tokens: int | None = Field(None, ge=0)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    stream_options: dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    tools: list[Any] | None = None


class EmbeddingBody(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    input: str | list[str]
    model: str | None = None
    encoding_format: str | None = Field(None, pattern="^(float|base64)$")


class NativeCompletionBody(SamplingFields):
    """llama-server's POST /completion."""

    prompt: str | list[int]
    n_predict: int = Field(-1, ge=-1)
    n_probs: int = Field(0, ge=0, le=20)
    cache_prompt: bool = True


class TokenizeBody(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    content: str
    add_special: bool = False
    with_pieces: bool = False


class DetokenizeBody(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    tokens: list[int]
