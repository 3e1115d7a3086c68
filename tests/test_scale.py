"""Ray gives the numerical study the same figures as local processes."""

import json

import pytest
from typer.testing import CliRunner

from llmpo.cli import app

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'llmpo[ray]'")


def test_bench_on_ray_matches_local_processes(tmp_path):
    instances = tmp_path / "instances.json"
    instances.write_text(json.dumps({"instances": [
        {"name": "easy-3", "kind": "matrix",
         "preference": [[0.5, 0.7, 0.8], [0.3, 0.5, 0.6], [0.2, 0.4, 0.5]]},
    ]}))
    figures = []
    for extra in (["--workers", "1"], ["--ray"]):
        out = tmp_path / f"bench-{len(figures)}.json"
        result = CliRunner().invoke(app, [
            "bench", "--instances", str(instances), "--methods", "llmpo,uniform",
            "--runs", "30", "--seed", "5", "--json", str(out), *extra,
        ])
        assert result.exit_code == 0, result.output
        figures.append([(r["method"], r["mean_duels"], r["error_rate"])
                        for r in json.loads(out.read_text())])
    assert figures[0] == figures[1]
