"""The run store: a real SQLite file that counts each duel once and survives a kill."""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from dataclasses import asdict

import numpy as np
import pytest

from llmpo.backends.base import Generation
from llmpo.errors import StoreError
from llmpo.store import TABLES, RunStore

EXPERIMENT = json.dumps({"policies": [{"name": "a"}, {"name": "b"}, {"name": "c"}]})


@pytest.fixture
def store_path(tmp_path):
    return tmp_path / "runs" / "run.sqlite"


@pytest.fixture
def store(store_path):
    with RunStore.create(store_path, EXPERIMENT, seed=5) as opened:
        yield opened


def play(store: RunStore, i: int, j: int, task: str, seed: int, outcome) -> int:
    duel = store.propose_duel(i, j, task, seed)
    store.save_generation(duel, "i", text=f"reply {i}", prompt_tokens=10,
                          completion_tokens=4, cost=0.01)
    store.save_generation(duel, "j", text=f"reply {j}", prompt_tokens=10,
                          completion_tokens=6, cost=0.01)
    store.complete_duel(duel, outcome, judge_raw="verdict", order_shown="ij",
                        judge_prompt_tokens=30, judge_completion_tokens=1,
                        judge_cost=0.002)
    return duel


def test_created_store_holds_the_run_and_policy_names(store, store_path):
    assert store_path.is_file()
    assert store.status == "running"
    assert store.seed == 5
    assert json.loads(store.experiment_json) == json.loads(EXPERIMENT)
    assert store.policy_names == ["a", "b", "c"]
    assert store.run["llmpo_version"]


def test_create_refuses_to_overwrite(store, store_path):
    with pytest.raises(StoreError, match="already exists"):
        RunStore.create(store_path, EXPERIMENT, seed=1)


def test_reopened_store_keeps_its_duels(store, store_path):
    play(store, 0, 1, "t1", 11, 1.0)
    store.close()
    with RunStore.open(store_path) as again:
        assert again.summary()["counted"] == 1
        assert again.duel(1)["task_id"] == "t1"


def test_readonly_store_reads_and_refuses_writes(store, store_path):
    play(store, 0, 1, "t1", 11, 0.5)
    store.close()
    with RunStore.open(store_path, readonly=True) as reader:
        assert reader.summary()["counted"] == 1
        for write in (
            lambda: reader.propose_duel(0, 1, "t1", 1),
            lambda: reader.log_event("note", "x"),
            lambda: reader.set_status("stopped"),
        ):
            with pytest.raises(StoreError, match="read-only"):
                write()
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader._connection.execute("DELETE FROM duels")


def test_readonly_reader_sees_duels_a_live_writer_commits(store, store_path):
    play(store, 0, 1, "t1", 1, 1.0)
    with RunStore.open(store_path, readonly=True) as reader:
        assert reader.summary()["counted"] == 1
        play(store, 1, 2, "t2", 2, 0.0)
        assert reader.outcomes()[2].tolist() == [1.0, 0.0]


def test_missing_store_is_refused_with_its_path(tmp_path):
    path = tmp_path / "nothing.sqlite"
    with pytest.raises(StoreError, match=f"run store '{path}': no such file"):
        RunStore.open(path)
    assert not path.exists()


def test_sqlite_file_of_another_program_is_refused(tmp_path):
    path = tmp_path / "other.sqlite"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE t (x)")
    connection.close()
    for readonly in (False, True):
        with pytest.raises(StoreError, match="not an llmpo run store"):
            RunStore.open(path, readonly=readonly)


def test_file_that_is_not_sqlite_is_refused(tmp_path):
    path = tmp_path / "notes.sqlite"
    path.write_text("just some text, long enough to look like a header " * 4)
    with pytest.raises(StoreError, match="not an SQLite file"):
        RunStore.open(path)


def test_duel_completed_twice_is_refused_and_counted_once(store):
    duel = play(store, 0, 1, "t1", 11, 1.0)
    with pytest.raises(StoreError, match="already done"):
        store.complete_duel(duel, 0.0)
    i, j, outcome = store.outcomes()
    assert outcome.tolist() == [1.0]
    assert store.duel(duel)["outcome"] == 1.0


def test_failed_duel_cannot_be_completed(store):
    duel = store.propose_duel(1, 2, "t1", 3)
    store.fail_duel(duel, "backend down")
    with pytest.raises(StoreError, match="already failed"):
        store.complete_duel(duel, 1.0)
    assert store.duel(duel)["error"] == "backend down"
    assert store.pending_duels() == []


def test_unparsable_verdict_is_kept_and_not_counted(store):
    duel = store.propose_duel(0, 2, "t1", 3)
    store.complete_duel(duel, None, judge_raw="gibberish")
    assert store.duel(duel)["state"] == "unparsable"
    assert store.duel(duel)["judge_raw"] == "gibberish"
    assert store.outcomes()[2].size == 0


def test_outcome_outside_unit_interval_is_refused(store):
    duel = store.propose_duel(0, 1, "t1", 3)
    with pytest.raises(StoreError, match="expected a number in \\[0, 1\\]"):
        store.complete_duel(duel, 1.5)
    assert store.duel(duel)["state"] == "proposed"


def test_same_policy_on_both_sides_is_refused(store):
    with pytest.raises(StoreError, match="policy_j"):
        store.propose_duel(1, 1, "t1", 3)
    with pytest.raises(StoreError, match="policy_i: got 7"):
        store.propose_duel(7, 1, "t1", 3)


def test_pending_duels_after_a_crash_are_listed_with_their_seeds(store, store_path):
    play(store, 0, 1, "t1", 11, 1.0)
    first = store.propose_duel(2, 0, "t2", 12, batch=3)
    store.save_generation(first, "i", text="paid once")
    second = store.propose_duel(1, 2, "t3", 13)
    store.close()

    with RunStore.open(store_path) as resumed:
        pending = resumed.pending_duels()
        assert [(p.duel_id, p.policy_i, p.policy_j, p.task_id, p.seed, p.batch)
                for p in pending] == [(first, 2, 0, "t2", 12, 3),
                                      (second, 1, 2, "t3", 13, None)]
        assert resumed.generation(first, "i").text == "paid once"
        assert resumed.generation(first, "j") is None
        resumed.complete_duel(first, 0.0)
        assert [p.duel_id for p in resumed.pending_duels()] == [second]


def test_generations_are_persisted_and_returned(store, store_path):
    duel = store.propose_duel(0, 1, "t1", 42)
    generation = Generation("Your order A-1 ships today.", 12, 7, 0.25, 0.003, "smol")
    store.save_generation(duel, "j", **asdict(generation))
    store.close()
    with RunStore.open(store_path) as again:
        assert again.generation(duel, "j") == generation
        assert again.generation(duel, "i") is None
        row = again.duel(duel)
        assert row["response_j_id"] is not None and row["response_i_id"] is None


def test_a_generation_is_saved_once(store):
    duel = store.propose_duel(0, 1, "t1", 42)
    store.save_generation(duel, "i", text="first")
    with pytest.raises(StoreError, match="already has a generation"):
        store.save_generation(duel, "i", text="second")
    assert store.generation(duel, "i").text == "first"


def test_outcomes_come_in_completion_order(store):
    early = store.propose_duel(0, 1, "t1", 1)
    late = store.propose_duel(2, 1, "t2", 2)
    store.complete_duel(late, 0.5)
    store.complete_duel(early, 0.0)
    i, j, outcome = store.outcomes()
    assert i.tolist() == [2, 0] and j.tolist() == [1, 1]
    assert outcome.tolist() == [0.5, 0.0]
    assert i.dtype == np.int64


def test_summary_counts_states_tokens_and_cost(store):
    play(store, 0, 1, "t1", 1, 1.0)
    play(store, 1, 2, "t2", 2, 0.0)
    store.propose_duel(0, 2, "t3", 3)
    summary = store.summary()
    assert summary["duels"] == {"proposed": 1, "done": 2, "unparsable": 0, "failed": 0}
    assert summary["generation_tokens"] == {"prompt": 40, "completion": 20}
    assert summary["judge_tokens"] == {"prompt": 60, "completion": 2}
    assert summary["cost"]["total"] == pytest.approx(0.044)


def test_decisions_status_and_events_are_recorded(store):
    store.record_decision(n_duels=4, leader=2, stopped=False, p_value=0.2,
                          log_evidence=0.5, log_threshold=3.7,
                          proposed_pairs=[(0, 2), (1, 2)])
    store.set_status("decided", {"leader": np.int64(2), "p_value": np.float64(0.01)})
    store.log_event("leader", "c leads")
    decision = store.decisions()[0]
    assert decision["leader"] == 2 and decision["stopped"] == 0
    assert json.loads(decision["proposed_pairs_json"]) == [[0, 2], [1, 2]]
    assert store.status == "decided"
    assert json.loads(store.run["decision_json"]) == {"leader": 2, "p_value": 0.01}
    assert store.events()[0]["message"] == "c leads"
    with pytest.raises(StoreError, match="status: got 'done'"):
        store.set_status("done")


def test_csv_export_reads_back_with_the_same_row_counts(store, tmp_path):
    play(store, 0, 1, "t1", 1, 1.0)
    play(store, 2, 1, "t2", 2, 0.5)
    store.propose_duel(0, 2, "t3", 3)
    store.log_event("note", 'a message, with a comma and "quotes"')
    files = store.export_csv(tmp_path / "csv")
    assert sorted(p.stem for p in files) == sorted(TABLES)
    counts = {}
    for path in files:
        with path.open(newline="") as handle:
            counts[path.stem] = len(list(csv.DictReader(handle)))
    assert counts == {"run": 1, "policies": 3, "duels": 3, "generations": 4,
                      "decisions": 0, "events": 1}
    with (tmp_path / "csv" / "events.csv").open(newline="") as handle:
        assert next(csv.DictReader(handle))["message"].endswith('"quotes"')


def test_parquet_export_reads_back_with_the_same_row_counts(store, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    play(store, 0, 1, "t1", 1, 1.0)
    store.propose_duel(0, 2, "t3", 3)
    store.record_decision(n_duels=1, leader=0, stopped=False, p_value=1.0,
                          log_evidence=0.0, log_threshold=3.0)
    files = store.export_parquet(tmp_path / "parquet")
    tables = {path.stem: pq.read_table(path) for path in files}
    assert {name: t.num_rows for name, t in tables.items()} == {
        "run": 1, "policies": 3, "duels": 2, "generations": 2, "decisions": 1,
        "events": 0}
    duels = tables["duels"].to_pydict()
    assert duels["outcome"] == [1.0, None]
    assert duels["state"] == ["done", "proposed"]


CRASHING_WRITER = textwrap.dedent(
    """
    import sys
    from llmpo.store import RunStore

    store = RunStore.open(sys.argv[1])
    for k in range(100000):
        duel = store.propose_duel(k % 3, (k + 1) % 3, f"t{k}", k)
        store.save_generation(duel, "i", text="x" * 200)
        store.save_generation(duel, "j", text="y" * 200)
        store.complete_duel(duel, (k % 2) * 1.0, judge_raw="r" * 100)
        print(duel, flush=True)
    """
)


def test_store_killed_mid_write_opens_with_completed_duels_intact(store, store_path):
    store.close()
    writer = subprocess.Popen(
        [sys.executable, "-c", CRASHING_WRITER, str(store_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    reported = []
    try:
        while len(reported) < 40:
            line = writer.stdout.readline()
            if not line:
                break
            reported.append(int(line))
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
        writer.stdout.close()
    assert writer.returncode == -signal.SIGKILL
    assert len(reported) == 40

    with RunStore.open(store_path) as after:
        assert after._connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        done = after.duels("done")
        done_ids = {row["id"] for row in done}
        assert set(reported) <= done_ids
        for row in done:
            assert row["outcome"] == (row["seed"] % 2) * 1.0
            assert after.generation(row["id"], "i").text == "x" * 200
            assert after.generation(row["id"], "j").text == "y" * 200
        assert len(after.pending_duels()) <= 1
        i, j, outcome = after.outcomes()
        assert outcome.size == len(done)
        after.complete_duel(after.propose_duel(0, 1, "again", 1), 1.0)
