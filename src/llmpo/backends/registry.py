"""One object that routes each policy to the backend named in ``policy.backend``.

The executor holds a single :class:`Backends` for a run: the embedded model is
loaded once and shared by every ``local`` policy, and ``openai`` policies that
name the same endpoint and key variable share one client.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from llmpo.backends.base import Generation
from llmpo.backends.local import LocalBackend
from llmpo.backends.openai_backend import (
    DEFAULT_BACKOFF_S,
    OpenAIBackend,
    check_prices,
    client_key,
)
from llmpo.errors import InputError
from llmpo.policy import Policy, Task

logger = logging.getLogger(__name__)

KNOWN_BACKENDS = ("local", "openai", "none")


class Backends:
    """Dispatches generation requests to the backend each policy names.

    Parameters
    ----------
    prices : mapping or None
        Price table ``{model: {"input": p, "output": q}}`` per million tokens,
        used for ``openai`` policies; the embedded model costs nothing.
    backoff_s : float
        Base delay of the ``openai`` retries (see :class:`OpenAIBackend`).

    Raises
    ------
    InputError
        If the price table is malformed.
    """

    def __init__(
        self,
        prices: Mapping[str, Any] | None = None,
        *,
        backoff_s: float = DEFAULT_BACKOFF_S,
    ):
        self.prices = check_prices(prices)
        self.backoff_s = backoff_s
        self._local: LocalBackend | None = None
        self._openai: dict[tuple[str, str | None], OpenAIBackend] = {}

    async def generate(self, policy: Policy, task: Task, *, seed: int) -> Generation:
        """Generate one response to ``task`` under ``policy``.

        Raises
        ------
        InputError
            If ``policy.backend`` is unknown or ``"none"`` (which generates
            nothing), or on the backend's own input errors.
        BackendError
            When the backend fails after its retries.
        """
        if policy.backend == "local":
            if self._local is None:
                self._local = LocalBackend()
            return await self._local.generate(policy, task, seed=seed)
        if policy.backend == "openai":
            return await self._openai_for(policy).generate(policy, task, seed=seed)
        if policy.backend == "none":
            raise InputError(
                f"policies[{policy.name!r}].backend: got 'none', which generates no "
                f"response; expected 'local' or 'openai' when responses are needed "
                f"('none' only goes with the simulated judge)"
            )
        raise InputError(
            f"policies[{policy.name!r}].backend: got {policy.backend!r}, expected "
            f"one of {list(KNOWN_BACKENDS)}"
        )

    async def aclose(self) -> None:
        """Close every client and unload the embedded models."""
        clients, self._openai = list(self._openai.values()), {}
        for client in clients:
            await client.aclose()
        if self._local is not None:
            local, self._local = self._local, None
            await local.aclose()

    # ------------------------------------------------------------------ internals

    def _openai_for(self, policy: Policy) -> OpenAIBackend:
        key = client_key(policy)
        client = self._openai.get(key)
        if client is None:
            base_url, api_key_env = key
            client = OpenAIBackend(
                base_url,
                api_key_env=api_key_env,
                prices=self.prices,
                backoff_s=self.backoff_s,
            )
            logger.debug("new client for %s (key from %s)", base_url,
                         api_key_env or "default")
            self._openai[key] = client
        return client
