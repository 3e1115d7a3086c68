"""`llmpo bound` and `llmpo bench`: their output, and one clear line for bad input."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from llmpo.cli import app

runner = CliRunner()

INSTANCES = {
    "instances": [
        {"name": "easy-3", "kind": "matrix",
         "preference": [[0.5, 0.7, 0.8], [0.3, 0.5, 0.6], [0.2, 0.4, 0.5]]},
        {"name": "cycle-3", "kind": "matrix",
         "preference": [[0.5, 0.7, 0.3], [0.3, 0.5, 0.7], [0.7, 0.3, 0.5]]},
        {"name": "bt-3", "kind": "bt", "features": [[1, 0], [0, 1], [0, 0]],
         "theta": [1.0, 0.5]},
    ]
}


@pytest.fixture
def instances_file(tmp_path):
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(INSTANCES))
    return path


def write(tmp_path, records):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"instances": records}))
    return path


def test_bound_json_has_the_documented_keys(instances_file):
    result = runner.invoke(app, ["bound", "--instances", str(instances_file), "--json"])
    assert result.exit_code == 0, result.output
    records = json.loads(result.output)
    assert [r["instance"] for r in records] == ["easy-3", "cycle-3", "bt-3"]
    for key in ("instance", "winner", "tstar_verify", "tstar_assume", "proportions",
                "tstar_structured", "program_value"):
        assert key in records[0]
    assert records[0]["winner"] == 0
    assert records[0]["tstar_verify"] > 0
    assert sum(records[0]["proportions"]) == pytest.approx(1.0, abs=1e-5)
    assert records[1]["winner"] is None and records[1]["tstar_verify"] is None
    assert records[0]["tstar_structured"] is None


def test_bench_reports_every_cell_as_json(instances_file, tmp_path):
    out = tmp_path / "bench.json"
    result = runner.invoke(app, [
        "bench", "--instances", str(instances_file), "--only", "easy-3,cycle-3",
        "--methods", "llmpo,uniform", "--delta", "0.1", "--delta", "0.05",
        "--runs", "6", "--seed", "3", "--budget", "3000", "--workers", "1",
        "--json", str(out),
    ])
    assert result.exit_code == 0, result.output
    records = json.loads(out.read_text())
    assert len(records) == 2 * 2 * 2
    keys = {"instance", "method", "delta", "runs", "mean_duels", "median_duels",
            "error_rate", "undecided_rate", "lower_bound", "ratio", "overhead_ms"}
    assert all(set(r) == keys for r in records)
    easy = [r for r in records if r["instance"] == "easy-3"]
    assert all(r["error_rate"] == 0 and r["ratio"] > 0.5 for r in easy)
    cycle = [r for r in records if r["instance"] == "cycle-3"]
    assert all(r["lower_bound"] is None and r["ratio"] is None for r in cycle)
    assert "easy-3" in result.output


def test_structured_methods_run_a_matrix_instance_as_plain_bradley_terry(
    instances_file, tmp_path
):
    out = tmp_path / "bench.json"
    result = runner.invoke(app, [
        "bench", "--instances", str(instances_file), "--only", "easy-3,bt-3",
        "--methods", "llmpo-structured", "--delta", "0.1", "--runs", "3",
        "--seed", "3", "--budget", "3000", "--workers", "1", "--json", str(out),
    ])
    assert result.exit_code == 0, result.output
    records = {r["instance"]: r for r in json.loads(out.read_text())}
    # easy-3 has no features: one-hot, the model may be wrong, so no bound.
    assert records["easy-3"]["lower_bound"] is None
    assert records["easy-3"]["undecided_rate"] < 1.0
    assert records["bt-3"]["lower_bound"] > 0
    assert "one-hot" in " ".join(result.output.split())


def test_bench_is_reproducible_for_a_seed(instances_file, tmp_path):
    outputs = []
    for workers in ("1", "2"):
        out = tmp_path / f"bench-{workers}.json"
        result = runner.invoke(app, [
            "bench", "--instances", str(instances_file), "--only", "easy-3",
            "--methods", "llmpo", "--runs", "30", "--seed", "9", "--workers", workers,
            "--json", str(out),
        ])
        assert result.exit_code == 0, result.output
        outputs.append(json.loads(out.read_text())[0]["mean_duels"])
    assert outputs[0] == outputs[1]


def test_bench_writes_plots(instances_file, tmp_path):
    result = runner.invoke(app, [
        "bench", "--instances", str(instances_file), "--only", "easy-3",
        "--methods", "llmpo,oracle", "--delta", "0.1", "--delta", "0.01", "--runs", "4",
        "--workers", "1", "--plots", str(tmp_path / "plots"),
    ])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert names == ["easy-3-allocation.png", "easy-3-duels.png"]


@pytest.mark.parametrize(
    "records, fragment",
    [
        ([{"name": "x", "kind": "matrix", "preference": [[0.5, 0.6, 0.7], [0.4, 0.5, 0.5]]}],
         "square"),
        ([{"name": "x", "kind": "matrix", "preference": [[0.5, 1.3], [-0.3, 0.5]]}],
         "probability in [0, 1]"),
        ([{"name": "x", "kind": "matrix", "preference": [[0.5, 0.6], [0.6, 0.5]]}],
         "expected 1"),
        ([{"name": "x", "kind": "cube"}], "expected 'matrix' or 'bt'"),
        ([{"name": "x", "kind": "bt", "features": [[1, 0], [0]], "theta": [1, 2]}],
         "features"),
    ],
)
def test_bad_instances_get_one_line_and_status_2(tmp_path, records, fragment):
    path = write(tmp_path, records)
    for command in (["bound", "--instances", str(path)],
                    ["bench", "--instances", str(path), "--runs", "1"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2
        assert fragment in result.output
        assert result.output.strip().count("\n") == 0


@pytest.mark.parametrize(
    "arguments, fragment",
    [
        (["--delta", "1.5"], "delta"),
        (["--delta", "0"], "delta"),
        (["--methods", "llmpo,bogus"], "'bogus'"),
        (["--runs", "0"], "--runs"),
        (["--only", "nothere"], "--only"),
        (["--methods", "oracle", "--only", "cycle-3"], "oracle"),
    ],
)
def test_bad_bench_arguments_get_one_line_and_status_2(instances_file, arguments, fragment):
    result = runner.invoke(
        app, ["bench", "--instances", str(instances_file), "--workers", "1", *arguments]
    )
    assert result.exit_code == 2
    assert fragment in result.output


def test_a_missing_file_exits_2_from_the_installed_command(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "llmpo.cli", "bound", "--instances",
         str(tmp_path / "missing.json")],
        capture_output=True, text=True,
    )
    assert completed.returncode == 2
    assert "missing.json" in completed.stderr
    assert "expected an existing file" in completed.stderr
