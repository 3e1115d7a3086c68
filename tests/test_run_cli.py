"""The run commands of the command line: run, resume, status, export."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from fake_openai import FakeOpenAIServer
from typer.testing import CliRunner

from llmpo.cli import app

runner = CliRunner()


def simulated_experiment(tmp_path: Path, **changes) -> Path:
    instances = {"instances": [{"name": "three", "kind": "matrix", "preference": [
        [0.5, 0.75, 0.8], [0.25, 0.5, 0.6], [0.2, 0.4, 0.5]]}]}
    (tmp_path / "inst.json").write_text(json.dumps(instances))
    data = {
        "name": "cli",
        "policies": [{"name": name, "backend": "none"} for name in ("a", "b", "c")],
        "tasks": [{"prompt": "first"}, {"prompt": "second"}],
        "judge": {"kind": "simulated", "instance_file": "inst.json"},
        "delta": 0.05,
        "seed": 11,
    }
    data.update(changes)
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_run_prints_the_decision_and_where_the_store_is(tmp_path):
    store = tmp_path / "run.sqlite"
    result = runner.invoke(app, ["run", str(simulated_experiment(tmp_path)),
                                 "--store", str(store)])
    assert result.exit_code == 0, result.output
    assert "decided: a is the best policy at delta = 0.05" in result.output
    assert "anytime p-value" in result.output
    assert str(store) in result.output.replace("\n", "")


def test_run_json_and_status_json_agree(tmp_path):
    store = tmp_path / "run.sqlite"
    ran = runner.invoke(app, ["run", str(simulated_experiment(tmp_path)),
                              "--store", str(store), "--json"])
    assert ran.exit_code == 0, ran.output
    outcome = json.loads(ran.stdout)
    status = runner.invoke(app, ["status", str(store), "--json"])
    assert status.exit_code == 0, status.output
    record = json.loads(status.stdout)
    assert record["status"] == outcome["status"] == "decided"
    assert record["decision"] == outcome["decision"]
    assert record["summary"]["counted"] == outcome["summary"]["counted"]
    wins = record["win_matrix"]["wins"]
    counts = record["win_matrix"]["counts"]
    assert sum(map(sum, counts)) == 2 * record["summary"]["counted"]
    assert wins[0][1] + wins[1][0] == counts[0][1]


def test_status_table_shows_the_win_matrix(tmp_path):
    store = tmp_path / "run.sqlite"
    runner.invoke(app, ["run", str(simulated_experiment(tmp_path)), "--store",
                        str(store)])
    result = runner.invoke(app, ["status", str(store)])
    assert result.exit_code == 0, result.output
    assert "cli: decided, leader a" in result.output
    assert "wins / duels" in result.output


def test_budget_stop_is_reported_undecided_with_its_p_value(tmp_path):
    path = simulated_experiment(tmp_path, budget={"duels": 5})
    result = runner.invoke(app, ["run", str(path), "--store",
                                 str(tmp_path / "run.sqlite"), "--json"])
    outcome = json.loads(result.stdout)
    assert outcome["status"] == "undecided"
    assert outcome["decision"]["reason"] == "budget: duels"
    assert 0 < outcome["decision"]["p_value"] <= 1


@pytest.mark.parametrize("format", ["csv", "parquet"])
def test_export_writes_every_table(tmp_path, format):
    store = tmp_path / "run.sqlite"
    runner.invoke(app, ["run", str(simulated_experiment(tmp_path)), "--store",
                        str(store)])
    out = tmp_path / "out"
    result = runner.invoke(app, ["export", str(store), "--format", format,
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    names = {path.stem for path in out.iterdir()}
    assert {"run", "duels", "decisions", "generations"} <= names
    if format == "csv":
        with (out / "duels.csv").open(newline="") as handle:
            assert len(list(csv.DictReader(handle))) > 10


def test_default_store_goes_under_llmpo_runs(tmp_path, monkeypatch):
    path = simulated_experiment(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["run", str(path), "--json"])
    store = Path(json.loads(result.stdout)["store"])
    assert store.parent == Path("llmpo-runs")
    assert store.name.startswith("cli-") and store.suffix == ".sqlite"
    assert (tmp_path / store).is_file()


def test_bad_experiment_is_one_line_and_exit_2(tmp_path):
    path = simulated_experiment(tmp_path, delta=2)
    result = runner.invoke(app, ["run", str(path), "--store",
                                 str(tmp_path / "run.sqlite")])
    assert result.exit_code == 2
    assert "delta: got 2" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "run.sqlite").exists()


@pytest.mark.parametrize("command", [["status"], ["resume"],
                                     ["export", "--out", "x"]])
def test_missing_store_exits_2_naming_the_path(tmp_path, command):
    missing = tmp_path / "nope.sqlite"
    result = runner.invoke(app, [command[0], str(missing), *command[1:]])
    assert result.exit_code == 2
    assert str(missing) in result.output.replace("\n", "")


def test_existing_store_is_not_overwritten(tmp_path):
    store = tmp_path / "run.sqlite"
    path = simulated_experiment(tmp_path)
    runner.invoke(app, ["run", str(path), "--store", str(store)])
    result = runner.invoke(app, ["run", str(path), "--store", str(store)])
    assert result.exit_code == 2 and "already exists" in result.output


def test_unknown_export_format_is_refused(tmp_path):
    store = tmp_path / "run.sqlite"
    runner.invoke(app, ["run", str(simulated_experiment(tmp_path)), "--store",
                        str(store)])
    result = runner.invoke(app, ["export", str(store), "--format", "xlsx",
                                 "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--format: got 'xlsx'" in result.output


def test_api_key_never_reaches_the_store(tmp_path, monkeypatch):
    secret = "sk-test-very-secret-0123456789"
    monkeypatch.setenv("LLMPO_TEST_KEY", secret)
    with FakeOpenAIServer(latency_s=0.0) as server:
        data = {
            "policies": [
                {"name": name, "backend": "openai", "model": "fake",
                 "base_url": server.base_url, "api_key_env": "LLMPO_TEST_KEY",
                 "system_prompt": prompt}
                for name, prompt in (("good", "GOOD"), ("other", "other"))
            ],
            "tasks": [{"prompt": "Order 12345 is late."}],
            "judge": {"kind": "rule", "checklist": "support"},
            "budget": {"duels": 3},
        }
        path = tmp_path / "experiment.yaml"
        path.write_text(yaml.safe_dump(data))
        store = tmp_path / "run.sqlite"
        result = runner.invoke(app, ["run", str(path), "--store", str(store),
                                     "--json"])
        assert result.exit_code == 0, result.output
    for file in tmp_path.iterdir():
        if file.name.startswith("run.sqlite"):
            assert secret.encode() not in file.read_bytes()
    assert secret not in result.output
    assert b"LLMPO_TEST_KEY" in store.read_bytes()


def test_unset_key_variable_is_refused_before_the_run(tmp_path, monkeypatch):
    monkeypatch.delenv("LLMPO_UNSET_KEY", raising=False)
    data = {
        "policies": [
            {"name": name, "backend": "openai", "model": "m",
             "base_url": "http://127.0.0.1:9/v1", "api_key_env": "LLMPO_UNSET_KEY"}
            for name in ("a", "b")
        ],
        "tasks": [{"prompt": "x"}],
        "judge": {"kind": "rule", "checklist": "support"},
    }
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["run", str(path), "--store",
                                 str(tmp_path / "run.sqlite")])
    assert result.exit_code == 2
    assert "policies[0].api_key_env: got 'LLMPO_UNSET_KEY'" in result.output
    assert not (tmp_path / "run.sqlite").exists()
