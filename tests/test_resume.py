"""Killing and resuming runs: nothing lost, counted twice or paid twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from fake_openai import FakeOpenAIServer

from llmpo.examples import example_path
from llmpo.executor import stream_seed
from llmpo.experiment import load_experiment
from llmpo.runner import build_procedure, resume_run, start_run
from llmpo.store import RunStore

SLOW_JUDGE = '''
import asyncio


async def judge(task, response_a, response_b):
    # Slow enough that a run can be killed with duels in flight.
    await asyncio.sleep(0.05)
    a, b = "Thank you" in response_a, "Thank you" in response_b
    return 0.5 if a == b else (1.0 if a else 0.0)
'''

POLICIES = {"good": "GOOD agent", "one": "agent one", "two": "agent two"}


def generating_experiment(folder: Path, base_url: str, **changes) -> Path:
    """Three policies behind the fake server and a slow callable judge."""
    (folder / "slow_judge.py").write_text(SLOW_JUDGE)
    data = {
        "name": "resumable",
        "policies": [
            {"name": name, "backend": "openai", "model": "fake", "base_url": base_url,
             "system_prompt": prompt, "max_tokens": 40}
            for name, prompt in POLICIES.items()
        ],
        "tasks": str(example_path().parent / "tasks.jsonl"),
        "judge": {"kind": "rule", "callable": "slow_judge.py:judge"},
        "delta": 0.01,
        "budget": {"duels": 400},
        "concurrency": 4,
        "seed": 5,
    }
    data.update(changes)
    path = folder / "experiment.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def llmpo(*args: str, **options) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "llmpo.cli", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **options,
    )


def wait_for_done_duels(store_path: Path, count: int, process, timeout=60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        if store_path.exists():
            try:
                with RunStore.open(store_path, readonly=True) as store:
                    if store.summary()["duels"]["done"] >= count:
                        return
            except Exception:
                pass
        time.sleep(0.05)
    pytest.fail(f"fewer than {count} duels done within {timeout} s")


@pytest.mark.slow
def test_killed_run_resumes_without_losing_recounting_or_repaying(tmp_path):
    with FakeOpenAIServer(latency_s=0.05) as server:
        experiment_path = generating_experiment(tmp_path, server.base_url)
        experiment = load_experiment(experiment_path)
        prompts = {task.id: task.prompt for task in experiment.task_objects()}
        systems = [policy.system_prompt for policy in experiment.policies]
        store_path = tmp_path / "run.sqlite"

        process = llmpo("run", str(experiment_path), "--store", str(store_path))
        wait_for_done_duels(store_path, 12, process)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        time.sleep(0.2)  # requests already sent reach the server's log

        with RunStore.open(store_path, readonly=True) as store:
            assert store.status == "running"
            before = {d["id"]: d for d in store.duels()}
            in_flight = [d.duel_id for d in store.pending_duels()]
            saved = store._rows("SELECT duel_id, side FROM generations")
        paid = set()
        for row in saved:
            duel = before[row["duel_id"]]
            policy = duel["policy_i"] if row["side"] == "i" else duel["policy_j"]
            paid.add((systems[policy], prompts[duel["task_id"]],
                      stream_seed(duel["seed"], row["side"])))
        assert in_flight, "the kill should leave duels in flight"
        server.requests.clear()

        resumed = llmpo("resume", str(store_path), "--json")
        out, err = resumed.communicate(timeout=120)
        assert resumed.returncode == 0, err
        outcome = json.loads(out)
        requested = [tuple(request) for request in server.requests]

    assert outcome["status"] in ("decided", "undecided")
    saved_in_flight = sum(row["duel_id"] in in_flight for row in saved)
    assert outcome["generations_reused"] == saved_in_flight
    with RunStore.open(store_path, readonly=True) as store:
        after = {d["id"]: d for d in store.duels()}
        generations = store._rows("SELECT duel_id, side FROM generations")
        first, second, outcomes = store.outcomes()
        procedure = build_procedure(experiment)
    # Every duel proposed before the kill was issued again and finished, once.
    assert set(before) <= set(after)
    assert all(after[d]["state"] != "proposed" for d in after)
    assert all(after[d]["state"] == "done" for d in in_flight)
    assert sorted(after) == list(range(1, len(after) + 1))
    seqs = [d["seq"] for d in after.values()]
    assert len(set(seqs)) == len(seqs) == len(after)
    # Same duel, same seed and task after the resume.
    for duel_id, duel in before.items():
        assert (after[duel_id]["seed"], after[duel_id]["task_id"]) == (
            duel["seed"], duel["task_id"])
    # One generation per duel and side; none saved before the kill requested again.
    assert len({(g["duel_id"], g["side"]) for g in generations}) == len(generations)
    assert len(generations) == 2 * len(after)
    assert not paid & set(requested)
    assert len(requested) == len(set(requested))
    # The counted duels rebuild the procedure the run ended with.
    for i, j, x in zip(first, second, outcomes):
        procedure.record(int(i), int(j), float(x))
    assert procedure.n_duels == outcome["summary"]["counted"]


@pytest.mark.slow
def test_interrupted_run_is_stopped_and_resumes_to_the_end(tmp_path):
    with FakeOpenAIServer(latency_s=0.05) as server:
        experiment_path = generating_experiment(tmp_path, server.base_url)
        store_path = tmp_path / "run.sqlite"
        process = llmpo("run", str(experiment_path), "--store", str(store_path))
        wait_for_done_duels(store_path, 8, process)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
        assert process.returncode == 130, err
        assert f"llmpo resume {store_path}" in " ".join(err.split())
        with RunStore.open(store_path, readonly=True) as store:
            assert store.status == "stopped"
            assert store.events()[-1]["kind"] == "stopped"
        outcome = resume_run(store_path)
    assert outcome.status in ("decided", "undecided")
    assert outcome.summary["duels"]["proposed"] == 0


def test_resuming_an_ended_run_changes_nothing(tmp_path):
    instances = {"instances": [{"name": "two", "kind": "matrix",
                                "preference": [[0.5, 0.9], [0.1, 0.5]]}]}
    (tmp_path / "inst.json").write_text(json.dumps(instances))
    data = {"policies": [{"name": "a", "backend": "none"},
                         {"name": "b", "backend": "none"}],
            "tasks": [{"prompt": "x"}],
            "judge": {"kind": "simulated", "instance_file": "inst.json"}}
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(data))
    first = start_run(tmp_path / "experiment.yaml", tmp_path / "run.sqlite")
    again = resume_run(tmp_path / "run.sqlite")
    assert first.status == again.status == "decided"
    assert again.summary["duels"] == first.summary["duels"]
    assert again.decision == first.decision


def test_heldout_comparison_runs_after_a_decision_and_never_counts(tmp_path):
    with FakeOpenAIServer(latency_s=0.0) as server:
        path = generating_experiment(
            tmp_path, server.base_url,
            heldout=str(example_path().parent / "heldout.jsonl"),
            default_policy="one", delta=0.05,
        )
        outcome = start_run(path, tmp_path / "run.sqlite")
    assert outcome.status == "decided"
    assert outcome.decision["leader_name"] == "good"
    heldout = outcome.heldout
    assert heldout["chosen"] == "good" and heldout["baseline"] == "one"
    assert heldout["tasks"] == 12 and heldout["win_rate"] > 0.5
    with RunStore.open(tmp_path / "run.sqlite", readonly=True) as store:
        task_ids = {d["task_id"] for d in store.duels()}
        rows = store.heldout_duels()
        assert not task_ids & {row["task_id"] for row in rows}
        assert {(r["policy_i"], r["policy_j"]) for r in rows} == {(0, 1), (1, 0)}
        assert len(store.outcomes()[2]) == outcome.summary["counted"]
