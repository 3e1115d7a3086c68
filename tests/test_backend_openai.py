"""The OpenAI-compatible backend against a real llama.cpp server, with faults
injected by a proxy in front of it."""

from __future__ import annotations

import asyncio
import logging

import pytest
from faulty_server import ALL_KINDS, FaultyServer

from llmpo.backends.openai_backend import OpenAIBackend, check_prices
from llmpo.backends.registry import Backends
from llmpo.errors import BackendError, InputError
from llmpo.policy import Policy, Task

ORDER = Task("order", "Where is my order 1234?")
FAKE_KEY = "sk-llmpo-FAKE-d41d8cd98f00b204e9800998ecf8427e"
FAST_BACKOFF_S = 0.01


def remote(base_url: str, **options) -> Policy:
    return Policy(
        "remote",
        backend="openai",
        model="smollm2",
        system_prompt="Answer in one short sentence.",
        params={"temperature": 0.7, "max_tokens": 8},
        backend_options={"base_url": base_url, **options},
    )


def generate(backend, policy, task=ORDER, seed=0):
    async def run():
        try:
            return await backend.generate(policy, task, seed=seed)
        finally:
            await backend.aclose()

    return asyncio.run(run())


def test_generates_through_a_real_server_and_counts_tokens(llama_server):
    generation = generate(OpenAIBackend(llama_server), remote(llama_server))

    assert generation.text.strip()
    assert generation.prompt_tokens > 5
    assert 0 < generation.completion_tokens <= 8
    assert generation.latency_s > 0
    assert generation.cost == 0.0


def test_cost_follows_the_price_table_per_million_tokens(llama_server):
    prices = {"smollm2": {"input": 2.0, "output": 10.0}}

    generation = generate(OpenAIBackend(llama_server, prices=prices),
                          remote(llama_server))

    expected = (generation.prompt_tokens * 2.0 + generation.completion_tokens * 10.0)
    assert generation.cost == pytest.approx(expected / 1e6)
    assert generation.cost > 0


def test_half_faulty_endpoint_still_answers_every_request(llama_server):
    with FaultyServer(llama_server, rate=0.5, kinds=ALL_KINDS, seed=3,
                      hang_s=3.0) as proxy:
        backend = OpenAIBackend(proxy.base_url, backoff_s=FAST_BACKOFF_S)
        policy = remote(proxy.base_url, timeout=1.0, max_retries=8)

        async def run():
            try:
                return [await backend.generate(policy, ORDER, seed=s) for s in range(6)]
            finally:
                await backend.aclose()

        generations = asyncio.run(run())

    assert all(g.text.strip() for g in generations)
    assert proxy.total_injected >= 3
    assert proxy.forwarded == 6


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_each_fault_kind_is_retried(llama_server, kind):
    with FaultyServer(llama_server, rate=1.0, kinds=(kind,), hang_s=3.0) as proxy:
        backend = OpenAIBackend(proxy.base_url, backoff_s=FAST_BACKOFF_S)
        with pytest.raises(BackendError) as raised:
            generate(backend, remote(proxy.base_url, timeout=1.0, max_retries=1))

    assert proxy.injected[kind] == 2
    assert "2 attempt(s)" in str(raised.value)


def test_full_fault_rate_ends_in_backend_error_after_max_retries(llama_server):
    with FaultyServer(llama_server, rate=1.0, kinds=("429", "500"), seed=1) as proxy:
        backend = OpenAIBackend(proxy.base_url, backoff_s=FAST_BACKOFF_S)
        with pytest.raises(BackendError) as raised:
            generate(backend, remote(proxy.base_url, max_retries=3))

    assert proxy.total_injected == 4
    assert proxy.forwarded == 0
    assert "HTTP 429" in str(raised.value) or "HTTP 500" in str(raised.value)


def test_client_errors_other_than_429_fail_without_retry(llama_server):
    with FaultyServer(llama_server, rate=1.0, kinds=("400",)) as proxy:
        backend = OpenAIBackend(proxy.base_url, backoff_s=FAST_BACKOFF_S)
        with pytest.raises(BackendError, match="HTTP 400"):
            generate(backend, remote(proxy.base_url, max_retries=5))

    assert proxy.injected["400"] == 1


def test_backoff_grows_exponentially_within_its_jitter_band():
    backend = OpenAIBackend("http://127.0.0.1:9/v1", backoff_s=0.5, max_backoff_s=3.0)

    delays = [backend._delay(attempt, None) for attempt in range(5)]

    for attempt, delay in enumerate(delays):
        ceiling = min(3.0, 0.5 * 2**attempt)
        assert ceiling / 2 <= delay <= ceiling
    assert backend._delay(0, retry_after=2.0) >= 2.0
    asyncio.run(backend.aclose())


def test_unset_api_key_variable_is_an_input_error_naming_it(monkeypatch):
    monkeypatch.delenv("LLMPO_TEST_MISSING_KEY", raising=False)

    with pytest.raises(InputError, match="LLMPO_TEST_MISSING_KEY"):
        OpenAIBackend("http://127.0.0.1:9/v1", api_key_env="LLMPO_TEST_MISSING_KEY")


def test_api_key_never_appears_in_logs_or_errors(llama_server, monkeypatch, caplog):
    monkeypatch.setenv("LLMPO_TEST_KEY", FAKE_KEY)
    caplog.set_level(logging.DEBUG)

    with FaultyServer(llama_server, rate=0.5, kinds=("500", "malformed"),
                      seed=2) as proxy:
        options = {"api_key_env": "LLMPO_TEST_KEY"}
        backend = OpenAIBackend(proxy.base_url, api_key_env="LLMPO_TEST_KEY",
                                backoff_s=FAST_BACKOFF_S)
        generation = generate(backend, remote(proxy.base_url, **options))
        received = proxy.authorizations
    with FaultyServer(llama_server, rate=1.0, kinds=("401",)) as proxy:
        backend = OpenAIBackend(proxy.base_url, api_key_env="LLMPO_TEST_KEY",
                                backoff_s=FAST_BACKOFF_S)
        with pytest.raises(BackendError) as raised:
            generate(backend, remote(proxy.base_url, **options))

    assert generation.text
    assert f"Bearer {FAKE_KEY}" in received
    assert caplog.records
    assert FAKE_KEY not in caplog.text
    error = raised.value
    assert "HTTP 401" in str(error)
    while error is not None:
        assert FAKE_KEY not in str(error) and FAKE_KEY not in repr(error)
        error = error.__cause__ or error.__context__


def test_missing_base_url_is_an_input_error():
    policy = Policy("remote", backend="openai", model="m")

    async def run():
        backends = Backends()
        try:
            await backends.generate(policy, ORDER, seed=0)
        finally:
            await backends.aclose()

    with pytest.raises(InputError, match="base_url"):
        asyncio.run(run())


def test_malformed_price_table_is_an_input_error():
    with pytest.raises(InputError, match="output"):
        check_prices({"m": {"input": 1.0, "output": -2.0}})
    with pytest.raises(InputError, match="prices"):
        Backends(prices={"m": 3.0})


def test_registry_shares_one_client_per_endpoint_and_key(llama_server):
    one = remote(llama_server)
    two = Policy("other", backend="openai", model="smollm2",
                 params={"max_tokens": 4}, backend_options={"base_url": llama_server})
    prices = {"smollm2": {"input": 1.0, "output": 1.0}}

    async def run():
        backends = Backends(prices=prices, backoff_s=FAST_BACKOFF_S)
        try:
            first = await backends.generate(one, ORDER, seed=0)
            second = await backends.generate(two, ORDER, seed=0)
            return first, second, len(backends._openai)
        finally:
            await backends.aclose()

    first, second, clients = asyncio.run(run())

    assert clients == 1
    assert first.cost > 0 and second.cost > 0
