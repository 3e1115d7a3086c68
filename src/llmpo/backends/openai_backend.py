"""Any OpenAI-compatible chat endpoint, reached through the official ``openai`` client.

llama.cpp's server, vLLM, Ollama and hosted APIs all speak the same chat
completions protocol; a policy names the endpoint in ``backend_options``. Keys
come from environment variables only, and never appear in a log line or an
error message.

The client's own retries are turned off: this module retries itself, with
exponential backoff and jitter, on rate limits (429), server errors (5xx),
timeouts, broken connections and responses that are not a chat completion, so
that every failure mode is counted and logged the same way whatever the client
version. Other 4xx statuses are mistakes in the request and fail at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Mapping
from typing import Any

from llmpo.backends.base import Generation
from llmpo.backends.local import (
    COMMON_PARAMS,
    LLAMA_PARAMS,
    chat_messages,
    check_seed,
    decoding_params,
)
from llmpo.errors import BackendError, InputError
from llmpo.policy import Policy, Task

logger = logging.getLogger(__name__)

DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"
# Local servers ignore the key, but the client refuses to start without one.
PLACEHOLDER_API_KEY = "not-needed"
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MAX_RETRIES = 5
DEFAULT_BACKOFF_S = 0.5
DEFAULT_MAX_BACKOFF_S = 30.0

BACKEND_OPTIONS = ("base_url", "api_key_env", "timeout", "max_retries")

_REASON_CHARS = 200


class _Retryable(Exception):
    """One failed attempt worth another try; ``reason`` is safe to show."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


def client_key(policy: Policy) -> tuple[str, str | None]:
    """Return ``(base_url, api_key_env)`` of an ``openai`` policy, checked.

    Policies with the same pair share one client (one connection pool).

    Raises
    ------
    InputError
        On an unknown option, a missing or empty ``base_url``, or an
        ``api_key_env`` that is not a non-empty string.
    """
    options = policy.backend_options
    where = f"policies[{policy.name!r}].backend_options"
    unknown = sorted(set(options) - set(BACKEND_OPTIONS))
    if unknown:
        raise InputError(
            f"{where}: got unknown option(s) {unknown}, expected some of "
            f"{list(BACKEND_OPTIONS)}"
        )
    base_url = options.get("base_url")
    if not isinstance(base_url, str) or not base_url.strip():
        raise InputError(
            f"{where}.base_url: got {base_url!r}, expected the URL of an "
            f"OpenAI-compatible endpoint such as 'http://127.0.0.1:8080/v1'"
        )
    api_key_env = options.get("api_key_env")
    if api_key_env is not None and not (isinstance(api_key_env, str) and api_key_env):
        raise InputError(
            f"{where}.api_key_env: got {api_key_env!r}, expected the name of an "
            f"environment variable"
        )
    return base_url.strip(), api_key_env


def resolve_api_key(api_key_env: str | None) -> str:
    """Read the API key from the environment.

    Parameters
    ----------
    api_key_env : str or None
        Name of the variable holding the key. ``None`` means ``OPENAI_API_KEY``
        when it is set, and otherwise a placeholder that local servers accept.

    Returns
    -------
    str
        The key. It must never be logged or put in a message.

    Raises
    ------
    InputError
        If ``api_key_env`` names a variable that is unset or empty.
    """
    if api_key_env is None:
        return os.environ.get(DEFAULT_API_KEY_ENV) or PLACEHOLDER_API_KEY
    key = os.environ.get(api_key_env)
    if not key:
        raise InputError(
            f"backend_options.api_key_env: got {api_key_env!r}, but that environment "
            f"variable is not set; expected it to hold the API key"
        )
    return key


def check_prices(prices: Mapping[str, Any] | None) -> dict[str, dict[str, float]]:
    """Check a price table ``{model: {"input": p, "output": q}}``.

    Prices are in currency units per million tokens, prompt (``input``) and
    completion (``output``).

    Raises
    ------
    InputError
        If the table is not a mapping of that shape with numbers >= 0.
    """
    if prices is None:
        return {}
    if not isinstance(prices, Mapping):
        raise InputError(
            f"prices: got {prices!r}, expected a mapping "
            f"{{model: {{'input': price, 'output': price}}}}"
        )
    checked: dict[str, dict[str, float]] = {}
    for model, entry in prices.items():
        if not isinstance(entry, Mapping) or set(entry) != {"input", "output"}:
            raise InputError(
                f"prices[{model!r}]: got {entry!r}, expected "
                f"{{'input': price, 'output': price}} per million tokens"
            )
        for side in ("input", "output"):
            value = entry[side]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                value >= 0
            ):
                raise InputError(
                    f"prices[{model!r}].{side}: got {value!r}, expected a number >= 0 "
                    f"(per million tokens)"
                )
        checked[str(model)] = {"input": float(entry["input"]),
                               "output": float(entry["output"])}
    return checked


def generation_cost(
    prices: Mapping[str, Mapping[str, float]],
    model: str,
    prompt_tokens: int,
    completion_tokens: int,
) -> float:
    """Cost of one request: ``(prompt * input + completion * output) / 1e6``.

    Returns 0 for a model not in the table.
    """
    entry = prices.get(model)
    if entry is None:
        return 0.0
    return (prompt_tokens * entry["input"] + completion_tokens * entry["output"]) / 1e6


class OpenAIBackend:
    """Generates through one OpenAI-compatible endpoint, with retries.

    Parameters
    ----------
    base_url : str
        Endpoint root, such as ``http://127.0.0.1:8080/v1``.
    api_key_env : str or None
        Environment variable holding the key (see :func:`resolve_api_key`).
    prices : mapping or None
        Price table ``{model: {"input": p, "output": q}}`` per million tokens;
        models not in it cost 0.
    backoff_s : float
        Base delay of the exponential backoff: attempt ``k`` (from 0) waits a
        uniform draw in ``[d/2, d]`` with ``d = min(max_backoff_s,
        backoff_s * 2**k)``, or the server's ``Retry-After`` when longer.
    max_backoff_s : float
        Upper bound of one delay.

    Raises
    ------
    InputError
        If the key's variable is named but unset, or the price table is malformed.

    Notes
    -----
    Per-policy ``backend_options``: ``timeout`` (seconds per attempt, default
    60) and ``max_retries`` (default 5; attempts = retries + 1).
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key_env: str | None = None,
        prices: Mapping[str, Any] | None = None,
        backoff_s: float = DEFAULT_BACKOFF_S,
        max_backoff_s: float = DEFAULT_MAX_BACKOFF_S,
    ):
        self.base_url = base_url
        self.api_key_env = api_key_env
        self.prices = check_prices(prices)
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._api_key = resolve_api_key(api_key_env)
        # Imported here: the client library takes about a second to import, which
        # runs that never reach an endpoint should not pay.
        import openai

        self._errors = openai
        self._client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=self._api_key,
            max_retries=0,
            timeout=DEFAULT_TIMEOUT_S,
        )
        # Jitter only spreads retries in time; it never touches a generation.
        self._jitter = random.Random()

    async def generate(self, policy: Policy, task: Task, *, seed: int) -> Generation:
        """Generate one response to ``task`` under ``policy``, retrying failures.

        Parameters
        ----------
        policy : Policy
            ``model`` is the model name sent to the endpoint (``"default"`` when
            unset, which single-model servers such as llama.cpp's accept);
            ``params`` may hold
            ``temperature``, ``top_p``, ``max_tokens`` (default 128), ``stop``,
            ``presence_penalty``, ``frequency_penalty``, and for llama.cpp-like
            servers ``top_k``, ``min_p``, ``repeat_penalty``.
        task : Task
            Its ``prompt`` is the user message.
        seed : int
            Sent as the request's ``seed``; servers differ in how far they honour
            it.

        Returns
        -------
        Generation
            ``latency_s`` covers every attempt and the waits between them;
            ``cost`` comes from the price table under ``policy.model``.

        Raises
        ------
        InputError
            On bad parameters or options.
        BackendError
            On a 4xx other than 429, or when every attempt failed; the message
            gives the status and a short reason, never the key.
        """
        params = decoding_params(policy, COMMON_PARAMS + LLAMA_PARAMS)
        timeout, max_retries = _attempt_options(policy)
        request: dict[str, Any] = {
            "model": policy.model or "default",
            "messages": chat_messages(policy, task),
            "max_tokens": params.max_tokens,
            "seed": check_seed(seed),
            "timeout": timeout,
        }
        if params.temperature is not None:
            request["temperature"] = params.temperature
        if params.top_p is not None:
            request["top_p"] = params.top_p
        extra_body = {}
        for name, value in params.extra.items():
            if name in LLAMA_PARAMS:
                extra_body[name] = value
            else:
                request[name] = value
        if extra_body:
            request["extra_body"] = extra_body

        start = time.perf_counter()
        generation = await self._with_retries(request, max_retries, policy.name)
        cost = generation_cost(
            self.prices,
            policy.model or generation.model,
            generation.prompt_tokens,
            generation.completion_tokens,
        )
        return Generation(
            text=generation.text,
            prompt_tokens=generation.prompt_tokens,
            completion_tokens=generation.completion_tokens,
            latency_s=time.perf_counter() - start,
            cost=cost,
            model=generation.model or request["model"],
        )

    async def aclose(self) -> None:
        """Close the client's connections."""
        await self._client.close()

    # ------------------------------------------------------------------ internals

    async def _with_retries(
        self, request: dict[str, Any], max_retries: int, policy_name: str
    ) -> Generation:
        attempt = 0
        while True:
            try:
                return await self._attempt(request)
            except _Retryable as failure:
                if attempt >= max_retries:
                    raise BackendError(
                        f"{self.base_url}: no response for policy {policy_name!r} "
                        f"after {attempt + 1} attempt(s); last failure: "
                        f"{failure.reason}"
                    ) from None
                delay = self._delay(attempt, failure.retry_after)
                logger.debug(
                    "attempt %d for policy %r failed (%s); retrying in %.2f s",
                    attempt + 1, policy_name, failure.reason, delay,
                )
            await asyncio.sleep(delay)
            attempt += 1

    async def _attempt(self, request: dict[str, Any]) -> Generation:
        openai = self._errors
        try:
            completion = await self._client.chat.completions.create(**request)
        except openai.APIStatusError as err:
            status = err.status_code
            reason = f"HTTP {status}: {self._redact(_error_message(err))}"
            if status == 429 or status >= 500:
                raise _Retryable(reason, _retry_after(err)) from None
            raise BackendError(f"{self.base_url}: request refused, {reason}") from None
        except openai.APITimeoutError:
            raise _Retryable(f"timed out after {request['timeout']} s") from None
        except openai.APIConnectionError as err:
            cause = type(err.__cause__).__name__ if err.__cause__ else "unknown"
            raise _Retryable(f"connection error ({cause})") from None
        except openai.APIResponseValidationError as err:
            raise _Retryable(f"malformed response (HTTP {err.status_code})") from None
        except ValueError as err:
            # A body that is not JSON, or JSON the client cannot map to its types.
            raise _Retryable(f"malformed response ({type(err).__name__})") from None
        return _read_completion(completion)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        ceiling = min(self.max_backoff_s, self.backoff_s * 2**attempt)
        delay = self._jitter.uniform(ceiling / 2, ceiling)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_backoff_s))
        return delay

    def _redact(self, text: str) -> str:
        if self._api_key and self._api_key != PLACEHOLDER_API_KEY:
            text = text.replace(self._api_key, "[key]")
        return text[:_REASON_CHARS]


def _attempt_options(policy: Policy) -> tuple[float, int]:
    options = policy.backend_options
    where = f"policies[{policy.name!r}].backend_options"
    timeout = options.get("timeout", DEFAULT_TIMEOUT_S)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (
        timeout > 0
    ):
        raise InputError(
            f"{where}.timeout: got {timeout!r}, expected a number of seconds > 0"
        )
    max_retries = options.get("max_retries", DEFAULT_MAX_RETRIES)
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or (
        max_retries < 0
    ):
        raise InputError(
            f"{where}.max_retries: got {max_retries!r}, expected an integer >= 0"
        )
    return float(timeout), max_retries


def _read_completion(completion: Any) -> Generation:
    """Pull text and usage out of a chat completion, or raise ``_Retryable``."""
    choices = getattr(completion, "choices", None)
    if not choices:
        kind = "empty" if not completion else type(completion).__name__
        raise _Retryable(f"malformed response (no choices; got {kind})")
    message = getattr(choices[0], "message", None)
    text = getattr(message, "content", None)
    if not isinstance(text, str):
        raise _Retryable("malformed response (no message content)")
    usage = getattr(completion, "usage", None)
    # Without usage the tokens count as 0, so a token or money budget
    # undercounts requests to servers that leave it out.
    prompt_tokens = getattr(usage, "prompt_tokens", 0) or 0
    completion_tokens = getattr(usage, "completion_tokens", 0) or 0
    return Generation(
        text=text,
        prompt_tokens=int(prompt_tokens),
        completion_tokens=int(completion_tokens),
        latency_s=0.0,
        model=getattr(completion, "model", "") or "",
    )


def _error_message(err: Any) -> str:
    body = err.body
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        if isinstance(inner, Mapping) and isinstance(inner.get("message"), str):
            return inner["message"]
        if isinstance(inner, str):
            return inner
    return err.message


def _retry_after(err: Any) -> float | None:
    value = err.response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
