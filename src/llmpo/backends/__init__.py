"""Backends: what turns a policy and a task into a generation.

``Backends`` routes each policy to the embedded model (``local``) or to an
OpenAI-compatible endpoint (``openai``). The runtimes behind them load on first
use, so importing this package stays cheap.
"""

from llmpo.backends.base import Backend, Generation
from llmpo.backends.local import LocalBackend
from llmpo.backends.openai_backend import OpenAIBackend
from llmpo.backends.registry import KNOWN_BACKENDS, Backends

__all__ = [
    "KNOWN_BACKENDS",
    "Backend",
    "Backends",
    "Generation",
    "LocalBackend",
    "OpenAIBackend",
]
