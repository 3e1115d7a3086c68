"""Reliability: under faults and kills, the store says exactly what happened.

Three promises are pinned down here. A run whose backends and judge fail one
request in five still ends, and every verdict it counted is one the judge's raw
answer actually gives (none guessed, none from an unparsable answer, none
counted twice). A run killed with SIGKILL at any instant and resumed loses no
duel, counts none twice and pays for no saved generation again. And the same
holds in front of a real llama.cpp server.

The helpers :class:`JudgingFakeServer`, :func:`run_faulty_experiment` and
:func:`audit_store` are shared with ``test_security.py`` and
``scripts/faults_demo.py``.
"""

from __future__ import annotations

import functools
import json
import math
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml
from fake_openai import FakeOpenAIServer
from faulty_server import ALL_KINDS, FaultyServer

from llmpo.backends.registry import Backends
from llmpo.examples import example_path
from llmpo.executor import stream_seed
from llmpo.judges.llm import parse_verdict
from llmpo.experiment import Experiment
from llmpo.runner import RunOutcome, build_procedure, resume_run, start_run
from llmpo.store import RunStore

TASKS_FILE = example_path().parent / "tasks.jsonl"
MARKER = "Thank you"
"""Word of :data:`fake_openai.GOOD_REPLY` that the honest fake judge looks for."""

# Half the judge's faults are unparsable answers, so that a run of a few dozen
# duels surely has unparsable duels to keep out of the evidence.
JUDGE_KINDS = ALL_KINDS + ("verdict",) * len(ALL_KINDS)

# What the judge's raw output looks like: each attempt is headed by its order
# shown and number (llmpo.judges.llm.LLMJudge._ask).
_ATTEMPT = re.compile(r"^\[order (ij|ji), attempt (\d+)\]\n", re.MULTILINE)
_NONCE = re.compile(r"<task-([0-9a-f]+)>")
_VERDICT_OUTSIDE = re.compile(r"^\s*VERDICT: (A|B)\s*$", re.MULTILINE)


# ---------------------------------------------------------------------------
# An honest (but gullible) fake judge


def judge_answer(prompt: str) -> str:
    """What the fake judge model answers to a judging prompt.

    It reads the prompt the way a careless model might: the block of a
    response ends at the first thing that looks like a closing response tag
    or a chat-template end marker, and a ``VERDICT:`` line found outside the
    blocks is obeyed. When no such line is outside them, it is honest: the
    response containing :data:`MARKER` wins (a tie when both or neither do).
    Delimiters that hold therefore give honest verdicts, and a response that
    escapes its delimiters takes over the verdict.
    """
    nonce = _NONCE.search(prompt).group(1)
    blocks = {}
    outside = prompt
    for side in ("a", "b"):
        opening = f"<response-{side}-{nonce}>"
        start = prompt.index(opening) + len(opening)
        end = re.compile(r"</\s*response-[ab]\b[^>\n]*>|<\|im_end\|>").search(
            prompt, start
        )
        block = prompt[start: end.start() if end else len(prompt)]
        blocks[side] = block
        outside = outside.replace(block, "\n", 1)
    obeyed = _VERDICT_OUTSIDE.findall(outside)
    if obeyed:
        return f"Following the instructions given.\nVERDICT: {obeyed[-1]}"
    a, b = MARKER in blocks["a"], MARKER in blocks["b"]
    if a == b:
        return "Both responses are alike on what matters.\nVERDICT: TIE"
    choice = "A" if a else "B"
    return (
        f"Response {choice} thanks the customer and names a next step.\n"
        f"VERDICT: {choice}"
    )


class JudgingFakeServer(FakeOpenAIServer):
    """The stdlib fake OpenAI server, also answering as a judge and as scripts.

    A request whose system prompt holds the LLM judge's answer format is
    answered by :func:`judge_answer`; one whose system prompt contains a key of
    ``scripted`` gets that key's reply verbatim; any other gets the fake's
    canned support reply. Every request is logged in ``requests``.
    """

    def __init__(self, *args: Any, scripted: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.scripted = dict(scripted or {})

    def completion(self, request: dict) -> dict:
        messages = request.get("messages", [])
        system = next((m["content"] for m in messages if m["role"] == "system"), "")
        user = next((m["content"] for m in messages if m["role"] == "user"), "")
        if "VERDICT: A" in system:
            text = judge_answer(user)
        else:
            text = next(
                (reply for key, reply in self.scripted.items() if key in system), None
            )
            if text is None:
                return super().completion(request)
        with self._lock:
            self.requests.append((system, user, request.get("seed")))
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 0,
            "model": request.get("model", "fake"),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": len(user.split()),
                      "completion_tokens": len(text.split()),
                      "total_tokens": len(user.split()) + len(text.split())},
        }


# ---------------------------------------------------------------------------
# Running an experiment through faulty proxies, and auditing its store


def write_experiment(
    folder: Path, policies: list[dict], judge: dict, **changes
) -> Path:
    """Write ``experiment.yaml`` in ``folder`` on the bundled support tasks."""
    data = {
        "name": "reliability",
        "policies": policies,
        "tasks": str(TASKS_FILE),
        "judge": judge,
        "delta": 0.05,
        "budget": {"duels": 60},
        "concurrency": 6,
        "seed": 3,
    }
    data.update(changes)
    path = folder / "experiment.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_faulty_experiment(
    folder: Path,
    *,
    n_policies: int = 3,
    duels: int = 60,
    rate: float = 0.2,
    seed: int = 0,
    judge_attempts: int = 1,
    policy_upstream: str | None = None,
    timeout: float = 0.5,
    max_tokens: int = 40,
    concurrency: int = 6,
    backoff_s: float | None = None,
    delta: float = 0.05,
) -> tuple[RunOutcome, Counter, Counter]:
    """Run an experiment whose policies and LLM judge sit behind faulty proxies.

    The policies generate through a :class:`FaultyServer` (429, 500, hang,
    malformed, truncated) in front of ``policy_upstream`` (default: a
    :class:`JudgingFakeServer`); the judge asks the fake through a second
    proxy that also returns unparsable verdicts. Hangs last twice ``timeout``,
    so the client gives up first. ``backoff_s``, when given, replaces the
    backends' base delay between retries (the retries themselves are the real
    ones), to keep a test short.

    Returns
    -------
    outcome, policy_faults, judge_faults
        The run's outcome and the faults each proxy injected, by kind.
    """
    with JudgingFakeServer(latency_s=0.01) as fake:
        upstream = policy_upstream or fake.base_url
        with FaultyServer(upstream, rate, ALL_KINDS, seed=seed,
                          hang_s=2 * timeout) as policy_proxy, \
                FaultyServer(fake.base_url, rate, JUDGE_KINDS, seed=seed + 1,
                             hang_s=1.0) as judge_proxy:
            names = ["good"] + [f"plain-{k}" for k in range(1, n_policies)]
            prompts = ["GOOD agent: reply in one short sentence."] + [
                f"Agent {k}: reply in one short sentence." for k in range(1, n_policies)
            ]
            policies = [
                {"name": name, "backend": "openai", "model": "fake",
                 "base_url": policy_proxy.base_url, "system_prompt": prompt,
                 "max_tokens": max_tokens, "timeout": timeout}
                for name, prompt in zip(names, prompts)
            ]
            judge = {"kind": "llm", "backend": "openai", "model": "fake-judge",
                     "base_url": judge_proxy.base_url, "timeout": 0.5,
                     "max_attempts": judge_attempts}
            path = write_experiment(
                folder, policies, judge, budget={"duels": duels},
                concurrency=concurrency, seed=seed, delta=delta,
            )
            backends = Backends if backoff_s is None else functools.partial(
                Backends, backoff_s=backoff_s
            )
            with mock.patch("llmpo.runner.Backends", backends):
                outcome = start_run(path, folder / "run.sqlite")
            injected = Counter(policy_proxy.injected), Counter(judge_proxy.injected)
    return (outcome, *injected)


def said_by_judge(judge_raw: str) -> list[tuple[str, str | None]]:
    """Each attempt of a judge's raw output: ``(order shown, choice or None)``."""
    heads = list(_ATTEMPT.finditer(judge_raw))
    attempts = []
    for k, head in enumerate(heads):
        end = heads[k + 1].start() if k + 1 < len(heads) else len(judge_raw)
        text = judge_raw[head.end(): end]
        attempts.append((head.group(1), parse_verdict(text)))
    return attempts


def audit_store(path: Path) -> dict[str, Any]:
    """Check a finished run's store against itself; return the counts.

    Returns
    -------
    dict
        ``states`` (duels per state), ``proposed`` (duels ever proposed),
        ``counted`` (length of ``outcomes()``), ``done_rows``, ``duplicates``
        (duel ids, finishing seqs or (duel, side) generations seen twice),
        ``invented`` (counted duels whose outcome the judge's raw output does
        not give, or that the honest judge would not give on the stored
        responses), ``dropped`` (unparsable duels whose raw output holds a
        verdict), ``not_done_counted`` (whether ``outcomes()`` differs from
        the ``done`` rows in finishing order: something else was counted),
        ``decision_replayed`` (whether the stored decision is what the first
        ``n_duels`` counted duels give), ``retried`` (duels flagged
        ``retried``), ``failed_reasons`` (failed duels by the kind of their
        last failure).
    """
    with RunStore.open(path, readonly=True) as store:
        duels = store.duels()
        first, second, outcomes = store.outcomes()
        generations = store._rows("SELECT duel_id, side, text FROM generations")
        experiment = Experiment.from_json(store.experiment_json)
        decision = json.loads(store.run["decision_json"])
    ids = [d["id"] for d in duels]
    seqs = [d["seq"] for d in duels if d["seq"] is not None]
    sides = [(g["duel_id"], g["side"]) for g in generations]
    texts = {(g["duel_id"], g["side"]): g["text"] for g in generations}
    duplicates = (len(ids) - len(set(ids)) + len(seqs) - len(set(seqs))
                  + len(sides) - len(set(sides)))

    done = sorted((d for d in duels if d["state"] == "done"), key=lambda d: d["seq"])
    counted = list(zip(first.tolist(), second.tolist(), outcomes.tolist()))
    from_rows = [(d["policy_i"], d["policy_j"], d["outcome"]) for d in done]
    not_done_counted = counted != from_rows

    invented = 0
    for duel in done:
        attempts = said_by_judge(duel["judge_raw"] or "")
        if not attempts or any(choice is not None for _, choice in attempts[:-1]):
            invented += 1
            continue
        shown, choice = attempts[-1]
        if choice is None or shown != duel["order_shown"]:
            invented += 1
            continue
        said = 0.5 if choice == "TIE" else float((choice == "A") == (shown == "ij"))
        has_i = MARKER in texts.get((duel["id"], "i"), "")
        has_j = MARKER in texts.get((duel["id"], "j"), "")
        honest = 0.5 if has_i == has_j else float(has_i)
        if said != duel["outcome"] or honest != duel["outcome"]:
            invented += 1
    dropped = sum(
        any(choice is not None for _, choice in said_by_judge(d["judge_raw"] or ""))
        for d in duels if d["state"] == "unparsable"
    )
    # The decision was taken on the first n_duels counted duels: replaying them
    # from the store must give it again, or the run counted something the
    # store does not hold as done.
    procedure = build_procedure(experiment)
    counted_then = counted[: decision["n_duels"]]
    for i, j, x in counted_then:
        procedure.record(i, j, x)
    replayed = procedure.decision()
    decision_replayed = (
        len(counted_then) == decision["n_duels"]
        and replayed.leader == decision["leader"]
        and math.isclose(replayed.log_evidence, decision["log_evidence"] or 0.0,
                         rel_tol=1e-9, abs_tol=1e-9)
    )
    failed_reasons = Counter(
        _failure_kind(d["error"] or "") for d in duels if d["state"] == "failed"
    )
    states = Counter(d["state"] for d in duels)
    return {
        "states": {state: states.get(state, 0)
                   for state in ("proposed", "done", "unparsable", "failed")},
        "proposed": len(duels),
        "counted": len(counted),
        "done_rows": len(done),
        "duplicates": duplicates,
        "invented": invented,
        "dropped": dropped,
        "not_done_counted": not_done_counted,
        "decision_replayed": decision_replayed,
        "retried": sum("retried" in (d["flags"] or "").split(",") for d in duels),
        "failed_reasons": failed_reasons,
    }


def _failure_kind(error: str) -> str:
    match = re.search(r"last failure: (HTTP \d+|timed out|connection error|malformed)",
                      error)
    return match.group(1) if match else error.split(":")[0]


def assert_store_keeps_its_word(audit: dict[str, Any]) -> None:
    assert audit["states"]["proposed"] == 0
    assert audit["duplicates"] == 0
    assert audit["invented"] == 0
    assert audit["dropped"] == 0
    assert not audit["not_done_counted"]
    assert audit["counted"] == audit["done_rows"] == audit["states"]["done"]
    assert audit["decision_replayed"]


# ---------------------------------------------------------------------------
# Faults


def test_run_through_one_fault_in_five_counts_only_verdicts_the_judge_gave(tmp_path):
    outcome, policy_faults, judge_faults = run_faulty_experiment(
        tmp_path, duels=48, seed=11, backoff_s=0.05
    )
    assert outcome.status in ("decided", "undecided")
    assert outcome.decision["reason"] in ("stopping rule", "budget: duels")
    audit = audit_store(outcome.store_path)
    assert_store_keeps_its_word(audit)
    # Faults were injected on both sides, and the judge's unparsable answers
    # became unparsable duels rather than guesses.
    assert sum(policy_faults.values()) > 0 and sum(judge_faults.values()) > 0
    assert len(policy_faults) >= 3
    assert judge_faults["verdict"] > 0
    assert audit["states"]["unparsable"] > 0
    assert audit["states"]["done"] > audit["states"]["unparsable"]
    assert outcome.summary["counted"] == audit["done_rows"]


@pytest.mark.slow
def test_faulty_proxy_in_front_of_a_real_llama_server(tmp_path, llama_server):
    outcome, policy_faults, judge_faults = run_faulty_experiment(
        tmp_path, n_policies=2, duels=4, seed=4, policy_upstream=llama_server,
        timeout=5.0, max_tokens=8, concurrency=2,
    )
    assert outcome.status in ("decided", "undecided")
    audit = audit_store(outcome.store_path)
    assert_store_keeps_its_word(audit)
    assert audit["proposed"] == 4
    assert sum(policy_faults.values()) + sum(judge_faults.values()) > 0
    with RunStore.open(outcome.store_path, readonly=True) as store:
        texts = [row["text"] for row in store._rows("SELECT text FROM generations")]
        models = {row["model"] for row in store._rows("SELECT model FROM generations")}
    # The responses came from the real model, not from a canned fault body.
    assert texts and all("a reply cut short" not in text for text in texts)
    assert models and "injected" not in models


# ---------------------------------------------------------------------------
# kill -9 and resume

SLOW_RULE = '''
import asyncio


async def judge(task, response_a, response_b):
    # Slow enough that a kill lands with duels in flight.
    await asyncio.sleep(0.03)
    a, b = "Thank you" in response_a, "Thank you" in response_b
    return 0.5 if a == b else (1.0 if a else 0.0)
'''

KILLS = 10
KILL_SEED = 20240611
BUDGET = 24


def _llmpo(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "llmpo.cli", *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def _wait_for_progress(path: Path, process: subprocess.Popen, done: int,
                       timeout: float = 60.0) -> None:
    """Wait until the store can be opened and holds ``done`` finished duels (or
    the process ended)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return
        if path.exists():
            try:
                with RunStore.open(path, readonly=True) as store:
                    finished = store._row(
                        "SELECT COUNT(*) AS n FROM duels WHERE state != 'proposed'"
                    )["n"]
                if finished >= done:
                    return
            except Exception:
                # The file exists before its first transaction commits.
                pass
        time.sleep(0.02)
    raise AssertionError(f"{path}: {done} duels not finished within {timeout} s")


def _saved_requests(path: Path, systems: list[str], prompts: dict[str, str]) -> set:
    """The request of every generation the store holds: (system, prompt, seed)."""
    with RunStore.open(path, readonly=True) as store:
        duels = {d["id"]: d for d in store.duels()}
        rows = store._rows("SELECT duel_id, side FROM generations")
    saved = set()
    for row in rows:
        duel = duels[row["duel_id"]]
        policy = duel["policy_i"] if row["side"] == "i" else duel["policy_j"]
        saved.add((systems[policy], prompts[duel["task_id"]],
                   stream_seed(duel["seed"], row["side"])))
    return saved


def _kill_and_resume(folder: Path, server: JudgingFakeServer, number: int) -> dict:
    """One round: run, SIGKILL at a random instant, maybe kill a resume too,
    resume to the end; check the store and the server's request log."""
    rng = random.Random(KILL_SEED + number)
    (folder / "slow_rule.py").write_text(SLOW_RULE)
    tag = f"[round {number}]"
    systems = [f"{tag} GOOD agent", f"{tag} agent one", f"{tag} agent two"]
    policies = [
        {"name": f"p{k}", "backend": "openai", "model": "fake",
         "base_url": server.base_url, "system_prompt": system, "max_tokens": 40}
        for k, system in enumerate(systems)
    ]
    path = write_experiment(
        folder, policies, {"kind": "rule", "callable": "slow_rule.py:judge"},
        delta=0.001, budget={"duels": BUDGET}, concurrency=4, seed=100 + number,
    )
    prompts = {}
    for line in TASKS_FILE.read_text().splitlines():
        record = yaml.safe_load(line)
        prompts[record["id"]] = record["prompt"]
    store_path = folder / "run.sqlite"

    def mine() -> list[tuple]:
        with server._lock:
            return [r for r in server.requests if r[0].startswith(tag)]

    # After each kill: what was saved, and how much of the log came before.
    snapshots = []

    def kill(process: subprocess.Popen, done: int) -> None:
        # A random instant: once `done` duels are finished, plus a little.
        _wait_for_progress(store_path, process, done)
        time.sleep(rng.uniform(0.0, 0.1))
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stderr.close()
        # Requests the killed process had sent reach the server's log.
        time.sleep(0.15)
        snapshots.append((len(mine()), _saved_requests(store_path, systems, prompts)))

    kill(_llmpo("run", str(path), "--store", str(store_path)),
         rng.randint(0, BUDGET - 6))
    with RunStore.open(store_path, readonly=True) as store:
        before = {d["id"]: (d["seed"], d["task_id"]) for d in store.duels()}
        finished = sum(d["state"] != "proposed" for d in store.duels())
        killed_status = store.status
    if rng.random() < 0.3:
        kill(_llmpo("resume", str(store_path)),
             rng.randint(finished, max(finished, BUDGET - 4)))
    if number % 5 == 0:
        resumed = _llmpo("resume", str(store_path), "--json")
        _, err = resumed.communicate(timeout=120)
        assert resumed.returncode == 0, err
    else:
        # In this process: a CLI process costs about 2 s of CPU to start and to
        # write its report, which ten rounds on two shared cores cannot afford.
        resume_run(store_path)

    requested = mine()
    audit_rows = {}
    with RunStore.open(store_path, readonly=True) as store:
        after = {d["id"]: d for d in store.duels()}
        first, _, outcomes = store.outcomes()
        audit_rows["status"] = store.status
        n_generations = len(store._rows("SELECT id FROM generations"))
        sides = {(g["duel_id"], g["side"])
                 for g in store._rows("SELECT duel_id, side FROM generations")}
    assert audit_rows["status"] in ("decided", "undecided"), (number, killed_status)
    # No duel lost: every duel proposed before the kill is still there, the same
    # duel, and finished; ids run 1..N without a gap.
    assert set(before) <= set(after)
    assert all((after[d]["seed"], after[d]["task_id"]) == before[d] for d in before)
    assert all(d["state"] in ("done", "unparsable", "failed") for d in after.values())
    assert sorted(after) == list(range(1, len(after) + 1))
    # None counted twice.
    done = [d for d in after.values() if d["state"] == "done"]
    seqs = [d["seq"] for d in after.values()]
    assert len(outcomes) == len(done) == len(first)
    assert len(set(seqs)) == len(seqs)
    assert n_generations == len(sides)
    # No generation saved before a kill was asked for again after it.
    for position, saved in snapshots:
        again = saved & set(requested[position:])
        assert not again, (number, sorted(again)[:2])
    return {"killed_with": len(before), "duels": len(after), "kills": len(snapshots)}


@pytest.mark.slow
def test_ten_kills_at_random_instants_lose_repeat_and_repay_nothing(tmp_path):
    with JudgingFakeServer(latency_s=0.03) as server:
        folders = [tmp_path / f"round-{k}" for k in range(KILLS)]
        for folder in folders:
            folder.mkdir()
        # Two rounds at a time: each is mostly waiting on its subprocesses.
        with ThreadPoolExecutor(2) as pool:
            rounds = list(pool.map(
                lambda k: _kill_and_resume(folders[k], server, k), range(KILLS)
            ))
    # The kills landed at different points: some runs were cut short early,
    # and some resumes were killed as well.
    assert len({r["killed_with"] for r in rounds}) >= 3
    assert any(r["killed_with"] < r["duels"] for r in rounds)
    assert any(r["kills"] == 2 for r in rounds)
