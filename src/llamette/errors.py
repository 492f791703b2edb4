"""The error types llamette raises for bad input; the CLI prints their message without a traceback."""


class LlametteError(Exception):
    """Base class: a problem with what the user gave us (a file, a flag, a prompt), not a bug."""


class GGUFError(LlametteError):
    """A model file that is not valid GGUF, or not a model llamette can run; the message names the field."""


class ContextFullError(LlametteError, ValueError):
    """More tokens than the context (n_ctx) can hold (a ValueError too, as llama-cpp-python raises)."""
