"""Policies and tasks: the two kinds of value an experiment is made of.

Both are plain frozen values. Their identity in a run is their position in the
experiment (policy index, task index); storage keeps that identity, not the value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Policy:
    """One way to run an LLM.

    Parameters
    ----------
    name : str
        Unique name within the experiment.
    backend : str
        Name of the backend that generates for it (``local``, ``openai``, or
        ``none`` when a simulated judge needs no generation).
    model : str or None
        Model identifier for the backend: a GGUF path for ``local`` (``None`` is
        the embedded SmolLM2 model), a model name for ``openai``.
    system_prompt : str
        System message sent before the task.
    params : dict
        Decoding parameters: ``temperature``, ``top_p``, ``max_tokens``, ...
    features : tuple of float or None
        Feature vector for the structured space.
    backend_options : dict
        Backend settings that are not decoding parameters (``base_url``,
        ``api_key_env``, ``timeout``, ...). Never a secret itself.
    """

    name: str
    backend: str = "local"
    model: str | None = None
    system_prompt: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    features: tuple[float, ...] | None = None
    backend_options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Task:
    """One input from the task pool.

    Parameters
    ----------
    id : str
        Stable identifier, unique in the pool.
    prompt : str
        The user message (for instance a customer's message).
    facts : dict
        Optional reference facts a judge may check against (order number, ...).
    """

    id: str
    prompt: str
    facts: dict[str, Any] = field(default_factory=dict)
