"""Loading a model file: GGUF -> config, tokenizer and forward pass, validated before any compute."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from llamette.cache import KVCache
from llamette.default_model import default_model_path
from llamette.errors import GGUFError
from llamette.gguf.reader import GGUFFile
from llamette.model.config import ModelConfig
from llamette.model.reference import ReferenceLlama
from llamette.model.weights import check_tensors, load_weights
from llamette.tokenizer import Tokenizer


@dataclass
class Model:
    """A loaded model: its file, hyper-parameters, tokenizer and forward pass."""

    path: Path
    gguf: GGUFFile
    config: ModelConfig
    tokenizer: Tokenizer
    net: ReferenceLlama

    def new_cache(self, n_ctx: int | None = None) -> KVCache:
        """An empty KV cache; n_ctx defaults to the context length the model was trained for."""
        return self.net.new_cache(n_ctx or self.config.n_ctx_train)


def resolve_model_path(path: str | os.PathLike | None) -> Path:
    return Path(path) if path is not None else default_model_path()


def open_model_file(path: str | os.PathLike | None) -> tuple[GGUFFile, ModelConfig]:
    """Open and validate a model file (metadata and tensor table), without loading weights."""
    gguf = GGUFFile(resolve_model_path(path))
    config = ModelConfig.from_gguf(gguf)
    check_tensors(gguf, config)
    return gguf, config


def load_tokenizer(path: str | os.PathLike | None) -> Tokenizer:
    """Only the vocabulary: enough to tokenize, for any GGUF file that carries one."""
    with GGUFFile(resolve_model_path(path)) as gguf:
        return Tokenizer.from_gguf(gguf)


def load(path: str | os.PathLike | None = None) -> Model:
    """Load a GGUF model (the default model when path is None) for the numpy reference backend."""
    gguf, config = open_model_file(path)
    tokenizer = Tokenizer.from_gguf(gguf)
    if tokenizer.n_vocab > config.n_vocab:
        raise GGUFError(
            f"{gguf.path}: the tokenizer has {tokenizer.n_vocab} tokens but the embedding only {config.n_vocab} rows"
        )
    net = ReferenceLlama(config, load_weights(gguf, config))
    return Model(gguf.path, gguf, config, tokenizer, net)
