"""The embedded model, run for real: generation, determinism, model checks."""

from __future__ import annotations

import asyncio
import logging
import shutil

import pytest

from llmpo.backends.local import (
    SMOLLM_FILE,
    SMOLLM_SHA256,
    LocalBackend,
    chat_messages,
    file_sha256,
    verify_sha256,
)
from llmpo.backends.registry import Backends
from llmpo.errors import BackendError, InputError
from llmpo.policy import Policy, Task

ORDER = Task("order", "Where is my order 1234? It was due on Monday.")
REFUND = Task("refund", "My kettle arrived broken. Can I get a refund?")
WARM = Policy(
    "warm",
    system_prompt="You are a friendly support agent. Answer in one sentence.",
    params={"temperature": 0.9, "max_tokens": 16},
)


@pytest.fixture(scope="module")
def backend():
    local = LocalBackend()
    yield local
    asyncio.run(local.aclose())


def generate(backend, policy, task, seed):
    return asyncio.run(backend.generate(policy, task, seed=seed))


def test_generates_text_with_token_counts_and_file_name(backend, smollm_path):
    generation = generate(backend, WARM, ORDER, seed=1)

    assert generation.text.strip()
    assert generation.prompt_tokens > 10
    assert 0 < generation.completion_tokens <= 16
    assert generation.latency_s > 0
    assert generation.cost == 0.0
    assert generation.model == SMOLLM_FILE == smollm_path.name


def test_same_policy_task_and_seed_give_identical_text_after_other_requests(backend):
    first = generate(backend, WARM, ORDER, seed=5)
    generate(backend, WARM, REFUND, seed=9)
    generate(backend, Policy("cold", params={"max_tokens": 8}), ORDER, seed=5)
    second = generate(backend, WARM, ORDER, seed=5)
    third = generate(backend, WARM, ORDER, seed=5)

    assert second.text == first.text
    assert third.text == first.text
    assert second.completion_tokens == first.completion_tokens


def test_different_seeds_give_different_text_at_positive_temperature(backend):
    texts = {generate(backend, WARM, ORDER, seed=seed).text for seed in range(4)}

    assert len(texts) >= 3


def test_concurrent_requests_are_serialised_and_match_sequential_ones(backend):
    seeds = [11, 12, 13]
    sequential = [generate(backend, WARM, REFUND, seed=s).text for s in seeds]

    async def together():
        return await asyncio.gather(
            *(backend.generate(WARM, REFUND, seed=s) for s in seeds)
        )

    concurrent = [g.text for g in asyncio.run(together())]

    assert concurrent == sequential


def test_max_tokens_bounds_the_completion(backend):
    short = Policy("short", params={"temperature": 0.0, "max_tokens": 3})

    generation = generate(backend, short, REFUND, seed=0)

    assert generation.completion_tokens <= 3


def test_model_load_is_logged_at_info(caplog):
    fresh = LocalBackend()
    with caplog.at_level(logging.INFO, logger="llmpo.backends.local"):
        generate(fresh, Policy("tiny", params={"max_tokens": 2}), ORDER, seed=0)
    asyncio.run(fresh.aclose())

    loads = [r for r in caplog.records if "loaded model" in r.getMessage()]
    assert len(loads) == 1 and loads[0].levelno == logging.INFO
    assert SMOLLM_FILE in loads[0].getMessage()


def test_checksum_mismatch_names_path_and_both_hashes(smollm_path, tmp_path):
    copy = tmp_path / SMOLLM_FILE
    shutil.copyfile(smollm_path, copy)
    with open(copy, "r+b") as handle:
        handle.seek(4096)
        byte = handle.read(1)
        handle.seek(4096)
        handle.write(bytes([byte[0] ^ 0xFF]))
    got = file_sha256(copy)

    with pytest.raises(BackendError) as raised:
        verify_sha256(copy, SMOLLM_SHA256)

    message = str(raised.value)
    assert got != SMOLLM_SHA256
    assert str(copy.resolve()) in message
    assert got in message and SMOLLM_SHA256 in message


def test_embedded_model_file_has_the_pinned_checksum(smollm_path):
    assert verify_sha256(smollm_path, SMOLLM_SHA256) == smollm_path
    assert file_sha256(smollm_path) == SMOLLM_SHA256


def test_missing_model_path_is_an_input_error(backend, tmp_path):
    missing = tmp_path / "nowhere.gguf"
    policy = Policy("lost", model=str(missing), params={"max_tokens": 4})

    with pytest.raises(InputError, match="nowhere.gguf"):
        generate(backend, policy, ORDER, seed=0)


def test_file_that_is_not_gguf_is_an_input_error(backend, tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a model at all" * 100)
    policy = Policy("junk", model=str(junk), params={"max_tokens": 4})

    with pytest.raises(InputError, match="junk.gguf"):
        generate(backend, policy, ORDER, seed=0)


def test_model_named_by_path_generates_like_the_default(backend, smollm_path):
    by_path = Policy("path", model=str(smollm_path), params=WARM.params,
                     system_prompt=WARM.system_prompt)

    assert generate(backend, by_path, ORDER, seed=3).text == generate(
        backend, WARM, ORDER, seed=3
    ).text


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": "16"}, "max_tokens"),
        ({"beam_width": 3}, "beam_width"),
    ],
)
def test_bad_decoding_parameters_are_input_errors_naming_the_field(
    backend, params, field
):
    with pytest.raises(InputError, match=field):
        generate(backend, Policy("bad", params=params), ORDER, seed=0)


def test_system_message_is_left_out_when_the_system_prompt_is_empty():
    assert chat_messages(Policy("plain"), ORDER) == [
        {"role": "user", "content": ORDER.prompt}
    ]
    assert chat_messages(WARM, ORDER)[0] == {
        "role": "system", "content": WARM.system_prompt
    }


def test_registry_routes_local_policies_to_the_embedded_model():
    async def run():
        backends = Backends()
        try:
            return await backends.generate(WARM, ORDER, seed=5)
        finally:
            await backends.aclose()

    assert asyncio.run(run()).model == SMOLLM_FILE


@pytest.mark.parametrize("name", ["none", "vllm"])
def test_registry_refuses_backends_that_cannot_generate(name):
    async def run():
        backends = Backends()
        try:
            await backends.generate(Policy("p", backend=name), ORDER, seed=0)
        finally:
            await backends.aclose()

    with pytest.raises(InputError) as raised:
        asyncio.run(run())

    message = str(raised.value)
    assert repr(name) in message
    assert "'local'" in message and "'openai'" in message
