"""The backend interface shared by the embedded model and OpenAI-compatible servers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from llmpo.policy import Policy, Task


@dataclass(frozen=True)
class Generation:
    """One response generated under a policy for a task.

    ``cost`` is in the currency of the experiment's price table (0 when no price
    is known); ``latency_s`` is wall time of the request, retries included.
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    cost: float = 0.0
    model: str = ""


class Backend(Protocol):
    """Generates responses. Implementations must be safe to call concurrently
    from one asyncio event loop (serialising internally where the runtime is not
    thread-safe)."""

    async def generate(
        self, policy: Policy, task: Task, *, seed: int
    ) -> Generation:
        """Generate one response to ``task`` under ``policy``.

        The same policy, task and seed give the same text where the runtime
        allows it (always for the embedded model). Raises
        :class:`llmpo.errors.BackendError` when retries are exhausted.
        """
        ...

    async def aclose(self) -> None:
        """Release connections and models."""
        ...
