"""The executor and the runner: decisions, budgets, unparsable and failed duels,
seeds, the embedded model, and concurrency."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from fake_openai import FakeOpenAIServer

from llmpo.errors import JudgeError
from llmpo.examples import example_path
from llmpo.executor import Executor, draw_duel, duel_seed, replay
from llmpo.experiment import load_experiment
from llmpo.judges.base import Verdict
from llmpo.judges.simulated import SimulatedJudge
from llmpo.runner import build_procedure, start_run
from llmpo.stats.instances import matrix_instance
from llmpo.store import RunStore

PREFERENCE = [[0.5, 0.75, 0.8], [0.25, 0.5, 0.6], [0.2, 0.4, 0.5]]


def simulated_experiment(tmp_path: Path, **changes) -> Path:
    """A three-policy experiment on a simulated judge whose winner is policy 'a'."""
    instances = {"instances": [{"name": "three", "kind": "matrix",
                                "preference": PREFERENCE}]}
    (tmp_path / "inst.json").write_text(json.dumps(instances))
    data = {
        "name": "sim",
        "policies": [{"name": name, "backend": "none"} for name in "abc"],
        "tasks": [{"prompt": "first"}, {"prompt": "second"}],
        "judge": {"kind": "simulated", "instance_file": "inst.json"},
        "delta": 0.05,
        "concurrency": 4,
        "seed": 3,
    }
    data.update(changes)
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_simulated_run_decides_the_condorcet_winner(tmp_path):
    outcome = start_run(simulated_experiment(tmp_path), tmp_path / "run.sqlite")
    assert outcome.status == "decided"
    assert outcome.decision["leader_name"] == "a"
    assert outcome.decision["p_value"] <= 0.05
    with RunStore.open(tmp_path / "run.sqlite", readonly=True) as store:
        assert store.pending_duels() == []
        assert store.summary()["counted"] == len(store.duels("done"))
        assert store.decisions()[-1]["stopped"] == 1


def test_decision_is_taken_when_the_rule_fires_and_later_duels_do_not_change_it(
    tmp_path,
):
    outcome = start_run(
        simulated_experiment(tmp_path, concurrency=16), tmp_path / "run.sqlite"
    )
    with RunStore.open(tmp_path / "run.sqlite", readonly=True) as store:
        procedure = build_procedure(load_experiment(tmp_path / "experiment.yaml"))
        frozen = replay(procedure, store)
        counted = store.summary()["counted"]
    assert frozen is not None and frozen.leader == outcome.decision["leader"]
    assert frozen.p_value == pytest.approx(outcome.decision["p_value"])
    assert outcome.decision["n_duels"] <= counted


def test_budget_stop_leaves_the_run_undecided_with_a_p_value(tmp_path):
    path = simulated_experiment(tmp_path, budget={"duels": 9})
    outcome = start_run(path, tmp_path / "run.sqlite")
    assert outcome.status == "undecided"
    assert outcome.decision["reason"] == "budget: duels"
    assert 0.05 < outcome.decision["p_value"] <= 1.0
    assert outcome.decision["leader_name"] in ("a", "b", "c")
    assert sum(outcome.summary["duels"].values()) == 9


def test_same_seed_gives_the_same_duels(tmp_path):
    tables = []
    for name in ("one", "two"):
        folder = tmp_path / name
        folder.mkdir()
        start_run(simulated_experiment(folder, concurrency=1), folder / "run.sqlite")
        with RunStore.open(folder / "run.sqlite", readonly=True) as store:
            tables.append([
                (d["policy_i"], d["policy_j"], d["task_id"], d["seed"], d["outcome"])
                for d in store.duels()
            ])
    assert tables[0] == tables[1]
    seed = duel_seed(3, 1)
    assert tables[0][0][3] == seed
    i, j, task = draw_duel(seed, (min(tables[0][0][:2]), max(tables[0][0][:2])), 2)
    assert (i, j, str(task)) == tables[0][0][:3]


class FlakyJudge:
    """A simulated judge with injected faults: from a seeded draw per duel, an
    unparsable verdict at ``unparsable`` rate, a JudgeError at ``failing``."""

    def __init__(self, inner, unparsable=0.0, failing=0.0):
        self.inner, self.unparsable, self.failing = inner, unparsable, failing
        self.calls = 0

    async def judge(self, task, i, j, response_i, response_j, *, seed):
        self.calls += 1
        draw = np.random.default_rng([seed, 99]).random()
        if draw < self.failing:
            raise JudgeError("injected judge failure")
        if draw < self.failing + self.unparsable:
            return Verdict(outcome=None, raw="not a verdict")
        return await self.inner.judge(task, i, j, response_i, response_j, seed=seed)


def run_executor(tmp_path, judge, **options):
    experiment = load_experiment(simulated_experiment(tmp_path))
    store = RunStore.create(tmp_path / "run.sqlite", experiment.to_json(), 3)
    procedure = build_procedure(experiment)
    executor = Executor(
        store, procedure, experiment.policy_objects(), experiment.task_objects(),
        judge, None, seed=3, **options,
    )
    return store, procedure, asyncio.run(executor.run())


def test_unparsable_verdicts_are_stored_and_never_counted(tmp_path):
    instance = matrix_instance(PREFERENCE, name="three")
    judge = FlakyJudge(SimulatedJudge(instance), unparsable=0.3)
    store, procedure, result = run_executor(tmp_path, judge, concurrency=4)
    summary = store.summary()
    assert result.status == "decided"
    assert summary["duels"]["unparsable"] > 5
    assert procedure.n_duels == summary["counted"] == len(store.outcomes()[2])
    assert judge.calls == sum(summary["duels"].values())
    assert procedure.n_pending == 0
    for duel in store.duels("unparsable"):
        assert duel["outcome"] is None and duel["judge_raw"] == "not a verdict"
    store.close()


def test_failed_duels_are_recorded_and_the_run_goes_on(tmp_path):
    instance = matrix_instance(PREFERENCE, name="three")
    judge = FlakyJudge(SimulatedJudge(instance), failing=0.2)
    store, procedure, result = run_executor(tmp_path, judge, concurrency=4)
    failed = store.duels("failed")
    assert result.status == "decided" and failed
    assert all("injected judge failure" in duel["error"] for duel in failed)
    assert procedure.n_duels == store.summary()["counted"]
    store.close()


def test_too_many_failures_in_a_row_fail_the_run(tmp_path):
    instance = matrix_instance(PREFERENCE, name="three")
    judge = FlakyJudge(SimulatedJudge(instance), failing=1.0)
    store, _, result = run_executor(tmp_path, judge, concurrency=2)
    assert result.status == "failed" and store.status == "failed"
    assert result.reason.endswith("failed duels in a row")
    assert len(store.duels("failed")) <= 11
    store.close()


def test_progress_reports_counts_leader_and_evidence(tmp_path):
    seen = []
    start_run(simulated_experiment(tmp_path), tmp_path / "run.sqlite",
              progress=seen.append)
    assert seen[-1].counted > 0 and seen[-1].in_flight == 0
    assert seen[-1].leader == "a" and seen[-1].stopping == "stopping rule"
    assert seen[-1].log_evidence >= seen[-1].log_threshold
    assert 1 <= max(p.in_flight for p in seen) <= 4


@pytest.mark.slow
def test_embedded_model_and_checklist_judge_run_stores_generations(tmp_path):
    support = example_path().parent
    tasks = [json.loads(line) for line in
             (support / "tasks.jsonl").read_text().splitlines()[:3]]
    policy = {"backend": "local", "max_tokens": 24, "temperature": 0.7}
    data = {
        "name": "tiny",
        "policies": [
            {"name": "plain", "system_prompt": "You are a helpful assistant.",
             **policy},
            {"name": "support", "system_prompt": "You are a support agent. Quote the "
             "order number and give one next step.", **policy},
            {"name": "terse", "system_prompt": "Answer in one sentence.", **policy},
        ],
        "tasks": tasks,
        "judge": {"kind": "rule", "checklist": "support"},
        "budget": {"duels": 4},
        "concurrency": 2,
        "seed": 1,
    }
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(data))
    outcome = start_run(path, tmp_path / "run.sqlite")
    assert outcome.status in ("decided", "undecided")
    assert outcome.generations_requested == 8
    with RunStore.open(tmp_path / "run.sqlite", readonly=True) as store:
        duels = store.duels()
        generations = store._rows("SELECT * FROM generations")
        assert len(duels) == 4 and all(d["state"] == "done" for d in duels)
        assert len(generations) == 8
        assert len({(g["duel_id"], g["side"]) for g in generations}) == 8
        assert all(g["text"] and g["completion_tokens"] <= 24 for g in generations)
        assert all(json.loads(d["judge_raw"])["i"]["checks"] for d in duels)
        assert outcome.summary["generation_tokens"]["completion"] > 0


def fake_server_experiment(folder: Path, base_url: str, concurrency: int,
                           duels: int) -> Path:
    """Four policies behind the fake server, one of them better, checklist judge."""
    def policy(name, prompt):
        return {"name": name, "backend": "openai", "model": "fake",
                "base_url": base_url, "system_prompt": prompt, "max_tokens": 40}
    data = {
        "name": f"concurrency-{concurrency}",
        "policies": [policy("good", "GOOD agent"), policy("one", "agent one"),
                     policy("two", "agent two"), policy("three", "agent three")],
        "tasks": str(example_path().parent / "tasks.jsonl"),
        "judge": {"kind": "rule", "checklist": "support"},
        "budget": {"duels": duels},
        "concurrency": concurrency,
        "seed": 0,
    }
    path = folder / f"experiment-{concurrency}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_duels_in_flight_overlap_their_latency(tmp_path):
    latency, duels = 0.05, 24
    with FakeOpenAIServer(latency_s=latency) as server:
        # A first run loads and warms the client code for both timed runs.
        start_run(fake_server_experiment(tmp_path, server.base_url, 2, 2),
                  tmp_path / "warm.sqlite")
        walls, overlap = {}, {}
        for concurrency in (1, 16):
            path = fake_server_experiment(tmp_path, server.base_url, concurrency,
                                          duels)
            server.max_in_flight = 0
            begin = time.perf_counter()
            outcome = start_run(path, tmp_path / f"run-{concurrency}.sqlite")
            walls[concurrency] = time.perf_counter() - begin
            overlap[concurrency] = server.max_in_flight
            assert sum(outcome.summary["duels"].values()) == duels
    # Serial: one duel at a time (its two generations may overlap), at least
    # one round trip per duel. Sixteen duels in flight: their requests wait on
    # the server together (counted by the server, not timed, so a loaded
    # machine does not decide the test).
    assert overlap[1] <= 2
    assert walls[1] >= duels * latency
    assert overlap[16] >= 8
