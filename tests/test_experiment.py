"""The experiment file: what it accepts; each refusal is one line naming the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from llmpo.errors import InputError
from llmpo.examples import example_path
from llmpo.experiment import Experiment, load_experiment
from llmpo.policy import Policy, Task

BASE = {
    "name": "tiny",
    "policies": [
        {"name": "a", "system_prompt": "Be brief.", "temperature": 0.2},
        {"name": "b", "system_prompt": "Be kind.", "temperature": 0.9},
    ],
    "tasks": [
        {"id": "t1", "prompt": "Where is order A-1?", "facts": {"order": "A-1"}},
        {"prompt": "Cancel my order."},
    ],
    "judge": {"kind": "rule", "checklist": "support"},
}


def write(tmp_path: Path, data: dict | str, name: str = "experiment.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def with_(**changes) -> dict:
    data = json.loads(json.dumps(BASE))
    data.update(changes)
    return data


def refusal(tmp_path: Path, data: dict | str) -> str:
    path = write(tmp_path, data)
    with pytest.raises(InputError) as caught:
        load_experiment(path)
    message = str(caught.value)
    assert "\n" not in message
    return message


# -- accepted files --------------------------------------------------------------


def test_minimal_experiment_loads_with_defaults(tmp_path):
    experiment = load_experiment(write(tmp_path, BASE))
    assert experiment.delta == 0.05
    assert experiment.space == "verify"
    assert experiment.concurrency == 4
    assert experiment.seed == 0
    assert experiment.budget.duels is None
    assert [t.id for t in experiment.tasks] == ["t1", "1"]


def test_policy_objects_carry_decoding_parameters(tmp_path):
    policies = load_experiment(write(tmp_path, BASE)).policy_objects()
    assert all(isinstance(p, Policy) for p in policies)
    assert policies[1].name == "b"
    assert policies[1].params["temperature"] == 0.9
    assert policies[1].backend == "local" and policies[1].model is None
    assert policies[0].backend_options == {}


def test_task_objects_keep_ids_prompts_and_facts(tmp_path):
    tasks = load_experiment(write(tmp_path, BASE)).task_objects()
    assert tasks[0] == Task("t1", "Where is order A-1?", {"order": "A-1"})


def test_tasks_read_from_jsonl_relative_to_the_experiment_file(tmp_path):
    (tmp_path / "sub").mkdir()
    lines = [
        json.dumps({"id": 7, "prompt": "Hello", "facts": {"order": "B-2"}}),
        "",
        json.dumps({"id": "x", "prompt": "Bye"}),
    ]
    (tmp_path / "sub" / "pool.jsonl").write_text("\n".join(lines) + "\n")
    experiment = load_experiment(write(tmp_path / "sub", with_(tasks="pool.jsonl")))
    assert [t.id for t in experiment.task_objects()] == ["7", "x"]
    assert experiment.task_objects()[0].facts == {"order": "B-2"}


def test_tasks_read_from_csv_with_other_columns_as_facts(tmp_path):
    (tmp_path / "pool.csv").write_text(
        "id,prompt,order,customer\nq1,\"Where is it, please?\",C-3,Ann\nq2,Hi,,Bob\n"
    )
    experiment = load_experiment(write(tmp_path, with_(tasks="pool.csv")))
    tasks = experiment.task_objects()
    facts = {"order": "C-3", "customer": "Ann"}
    assert tasks[0] == Task("q1", "Where is it, please?", facts)
    assert tasks[1].facts == {"customer": "Bob"}


def test_heldout_and_default_policy_are_resolved(tmp_path):
    data = with_(heldout=[{"id": "h1", "prompt": "Late parcel"}], default_policy="b")
    experiment = load_experiment(write(tmp_path, data))
    assert [t.id for t in experiment.heldout_objects()] == ["h1"]
    assert experiment.default_policy_index == 1


def test_json_round_trip_needs_no_original_files(tmp_path):
    (tmp_path / "pool.jsonl").write_text(json.dumps({"id": "p", "prompt": "Hi"}) + "\n")
    (tmp_path / "rubric.txt").write_text("Prefer the reply that quotes the order.")
    data = with_(
        tasks="pool.jsonl",
        judge={"kind": "llm", "rubric_file": "rubric.txt", "order": "both"},
        budget={"duels": 10, "money": 2.5, "prices": {"m": {"input": 1, "output": 2}}},
    )
    experiment = load_experiment(write(tmp_path, data))
    text = experiment.to_json()
    for name in ("pool.jsonl", "rubric.txt", "experiment.yaml"):
        (tmp_path / name).unlink()
    again = Experiment.from_json(text)
    assert again == experiment
    assert again.judge.rubric == "Prefer the reply that quotes the order."
    assert again.task_objects() == [Task("p", "Hi", {})]


def test_stored_experiment_names_the_key_variable_not_a_secret(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-secret-value")
    policies = [
        {"name": "a", "backend": "openai", "model": "m", "api_key_env": "MY_KEY",
         "base_url": "http://127.0.0.1:1/v1", "timeout": 5},
        {"name": "b"},
    ]
    experiment = load_experiment(write(tmp_path, with_(policies=policies)))
    assert "sk-secret-value" not in experiment.to_json()
    assert experiment.policy_objects()[0].backend_options["api_key_env"] == "MY_KEY"


def test_a_pasted_secret_is_refused_and_not_echoed(tmp_path):
    policies = [
        {"name": "a", "backend": "openai", "model": "m", "api_key_env": "sk-abc123!"},
        {"name": "b"},
    ]
    message = refusal(tmp_path, with_(policies=policies))
    assert message.startswith("policies[0].api_key_env:")
    assert "sk-abc123" not in message


def test_simulated_judge_reads_the_named_instance(tmp_path):
    instances = {"instances": [
        {"name": "easy", "kind": "matrix", "preference": [[0.5, 0.8], [0.2, 0.5]]},
        {"name": "three", "kind": "matrix",
         "preference": [[0.5, 0.6, 0.6], [0.4, 0.5, 0.5], [0.4, 0.5, 0.5]]},
    ]}
    (tmp_path / "inst.json").write_text(json.dumps(instances))
    policies = [{"name": "a", "backend": "none"}, {"name": "b", "backend": "none"}]
    judge = {"kind": "simulated", "instance_file": "inst.json", "instance": "easy"}
    experiment = load_experiment(write(tmp_path, with_(policies=policies, judge=judge)))
    assert experiment.judge.load_instance().preference[0, 1] == 0.8
    (tmp_path / "inst.json").unlink()
    assert Experiment.from_json(experiment.to_json()).judge.instance == "easy"


def test_directory_holding_experiment_yaml_is_accepted(tmp_path):
    write(tmp_path, BASE)
    assert load_experiment(tmp_path).name == "tiny"


# -- the bundled example -----------------------------------------------------------


def test_bundled_example_loads_with_its_tasks_and_a_plain_default():
    experiment = load_experiment(example_path())
    assert 6 <= len(experiment.policies) <= 12
    assert len(experiment.task_objects()) >= 40
    assert experiment.default_policy == "plain-t0.2"
    assert experiment.judge.kind == "rule" and experiment.judge.checklist == "support"
    assert all(p.backend == "local" and p.model is None for p in experiment.policies)
    assert experiment.task_objects() and experiment.heldout_objects()
    assert Experiment.from_json(experiment.to_json()) == experiment


def test_unknown_example_is_refused_with_the_known_names():
    with pytest.raises(InputError, match="example: got 'nope', expected one of"):
        example_path("nope")


# -- refusals ------------------------------------------------------------------------


def test_unknown_key_is_refused_with_the_known_keys(tmp_path):
    message = refusal(tmp_path, with_(foo=1))
    assert message.startswith("foo: unknown key, expected one of name, policies")


def test_unknown_key_inside_a_policy_names_its_path(tmp_path):
    policies = [{"name": "a", "temprature": 0.3}, {"name": "b"}]
    message = refusal(tmp_path, with_(policies=policies))
    assert message.startswith("policies[0].temprature: unknown key, expected one of")


def test_wrong_type_names_field_value_and_expectation(tmp_path):
    policies = [{"name": "a"}, {"name": "b", "temperature": "hot"}]
    message = refusal(tmp_path, with_(policies=policies))
    assert message == "policies[1].temperature: got 'hot', expected a number"


def test_boolean_is_not_taken_for_a_number(tmp_path):
    message = refusal(tmp_path, with_(concurrency=True))
    assert message == "concurrency: got True, expected a number"


def test_negative_temperature_is_refused(tmp_path):
    policies = [{"name": "a", "temperature": -1.0}, {"name": "b"}]
    message = refusal(tmp_path, with_(policies=policies))
    assert message == "policies[0].temperature: got -1.0, expected a number >= 0"


def test_missing_task_file_is_refused(tmp_path):
    message = refusal(tmp_path, with_(tasks="nowhere.jsonl"))
    assert message.startswith("tasks: got 'nowhere.jsonl', expected an existing")


def test_malformed_task_file_line_is_refused_with_its_line(tmp_path):
    (tmp_path / "pool.jsonl").write_text('{"prompt": "ok"}\n{"prompt": \n')
    message = refusal(tmp_path, with_(tasks="pool.jsonl"))
    assert message.startswith("tasks: line 2 of 'pool.jsonl' is not valid JSON")


def test_missing_rubric_file_is_refused(tmp_path):
    message = refusal(tmp_path, with_(judge={"kind": "llm", "rubric_file": "r.txt"}))
    assert message.startswith("judge.rubric_file: got 'r.txt', expected an existing")


def test_missing_instance_file_is_refused(tmp_path):
    policies = [{"name": "a", "backend": "none"}, {"name": "b", "backend": "none"}]
    judge = {"kind": "simulated", "instance_file": "inst.json"}
    message = refusal(tmp_path, with_(policies=policies, judge=judge))
    assert message.startswith("judge.instance_file: got 'inst.json', expected an")


def test_instance_of_another_size_is_refused(tmp_path):
    (tmp_path / "inst.json").write_text(json.dumps([
        {"name": "x", "kind": "matrix",
         "preference": [[0.5, 0.6, 0.6], [0.4, 0.5, 0.5], [0.4, 0.5, 0.5]]}
    ]))
    policies = [{"name": "a", "backend": "none"}, {"name": "b", "backend": "none"}]
    judge = {"kind": "simulated", "instance_file": "inst.json"}
    message = refusal(tmp_path, with_(policies=policies, judge=judge))
    assert message.startswith("judge.instance: got an instance of 3 policies, expected")


def test_missing_callable_file_is_refused(tmp_path):
    judge = {"kind": "rule", "callable": "rules.py:score"}
    message = refusal(tmp_path, with_(judge=judge))
    assert message.startswith("judge.callable: got 'rules.py', expected an existing")


def test_fewer_than_two_policies_is_refused(tmp_path):
    message = refusal(tmp_path, with_(policies=[{"name": "a"}]))
    assert message == "policies: got 1 policy, expected at least 2 to compare"


def test_duplicate_policy_names_are_refused(tmp_path):
    message = refusal(tmp_path, with_(policies=[{"name": "a"}, {"name": "a"}]))
    assert message.startswith("policies[1].name: got 'a', expected a unique name")


@pytest.mark.parametrize("delta", [1.5, 0, 1, -0.1])
def test_delta_outside_the_unit_interval_is_refused(tmp_path, delta):
    message = refusal(tmp_path, with_(delta=delta))
    assert message == f"delta: got {float(delta)!r}, expected a number in (0, 1)"


@pytest.mark.parametrize("key, value", [("duels", -5), ("tokens", -1), ("money", -0.5)])
def test_negative_budget_is_refused(tmp_path, key, value):
    budget = {key: value, "prices": {"m": {"input": 1, "output": 1}}}
    message = refusal(tmp_path, with_(budget=budget))
    assert message == f"budget.{key}: got {value!r}, expected a number > 0"


def test_negative_price_is_refused(tmp_path):
    budget = {"money": 1, "prices": {"gpt": {"input": -1, "output": 1}}}
    message = refusal(tmp_path, with_(budget=budget))
    assert message == "budget.prices.gpt.input: got -1, expected a number >= 0"


def test_money_budget_without_prices_is_refused(tmp_path):
    message = refusal(tmp_path, with_(budget={"money": 3}))
    assert message.startswith("budget.prices: missing")


def test_unknown_backend_is_refused(tmp_path):
    policies = [{"name": "a", "backend": "vllm"}, {"name": "b"}]
    message = refusal(tmp_path, with_(policies=policies))
    assert message == (
        "policies[0].backend: got 'vllm', expected 'local', 'openai' or 'none'"
    )


def test_openai_setting_on_a_local_policy_is_refused(tmp_path):
    policies = [{"name": "a", "base_url": "http://x"}, {"name": "b"}]
    message = refusal(tmp_path, with_(policies=policies))
    assert message.startswith("policies[0].base_url: got 'http://x', expected it only")


def test_openai_policy_without_model_is_refused(tmp_path):
    policies = [{"name": "a", "backend": "openai"}, {"name": "b"}]
    message = refusal(tmp_path, with_(policies=policies))
    assert message.startswith("policies[0].model: missing")


def test_missing_local_model_file_is_refused(tmp_path):
    policies = [{"name": "a", "model": "tiny.gguf"}, {"name": "b"}]
    message = refusal(tmp_path, with_(policies=policies))
    assert message.startswith("policies[0].model: got 'tiny.gguf', expected an")


def test_unknown_judge_kind_is_refused(tmp_path):
    message = refusal(tmp_path, with_(judge={"kind": "oracle"}))
    assert message.startswith("judge.kind: got 'oracle', expected one of 'llm', 'rule'")


def test_judge_key_of_another_kind_is_refused(tmp_path):
    message = refusal(tmp_path, with_(judge={"kind": "llm", "checklist": "support"}))
    assert message.startswith("judge.checklist: unknown key, expected one of kind,")


def test_unknown_checklist_is_refused(tmp_path):
    message = refusal(tmp_path, with_(judge={"kind": "rule", "checklist": "legal"}))
    assert message == "judge.checklist: got 'legal', expected one of 'support'"


def test_rule_judge_without_a_rule_is_refused(tmp_path):
    message = refusal(tmp_path, with_(judge={"kind": "rule"}))
    assert message.startswith("judge.checklist: expected exactly one of checklist")


def test_features_of_unequal_length_are_refused(tmp_path):
    policies = [{"name": "a", "features": [1, 0]}, {"name": "b", "features": [1, 0, 1]}]
    message = refusal(tmp_path, with_(policies=policies))
    assert message == "policies[1].features: got 3 numbers, expected 2 like policies[0]"


def test_structured_space_needs_features_on_every_policy(tmp_path):
    policies = [{"name": "a", "features": [1.0]}, {"name": "b"}]
    message = refusal(tmp_path, with_(policies=policies, space="structured"))
    assert message.startswith("policies[1].features: missing")


def test_unknown_space_is_refused(tmp_path):
    message = refusal(tmp_path, with_(space="fast"))
    assert message.startswith("space: got 'fast', expected 'verify'")


def test_empty_task_pool_is_refused(tmp_path):
    message = refusal(tmp_path, with_(tasks=[]))
    assert message == "tasks: got an empty list, expected at least one task"


def test_empty_task_file_is_refused(tmp_path):
    (tmp_path / "pool.jsonl").write_text("\n")
    message = refusal(tmp_path, with_(tasks="pool.jsonl"))
    assert message == "tasks: got an empty list, expected at least one task"


def test_duplicate_task_ids_are_refused(tmp_path):
    tasks = [{"id": "x", "prompt": "a"}, {"id": "x", "prompt": "b"}]
    message = refusal(tmp_path, with_(tasks=tasks))
    assert message.startswith("tasks[1].id: got 'x', expected a unique id")


def test_task_pool_of_the_wrong_type_is_refused(tmp_path):
    message = refusal(tmp_path, with_(tasks=5))
    assert message == "tasks: got 5, expected a list of tasks or a task file name"


def test_task_without_prompt_is_refused(tmp_path):
    message = refusal(tmp_path, with_(tasks=[{"id": "x"}]))
    assert message.startswith("tasks[0].prompt: missing")


def test_default_policy_not_among_the_policies_is_refused(tmp_path):
    message = refusal(tmp_path, with_(default_policy="c"))
    assert message == "default_policy: got 'c', expected one of the policy names (a, b)"


def test_concurrency_below_one_is_refused(tmp_path):
    message = refusal(tmp_path, with_(concurrency=0))
    assert message == "concurrency: got 0, expected a number >= 1"


def test_policy_without_responses_needs_a_simulated_judge(tmp_path):
    policies = [{"name": "a", "backend": "none"}, {"name": "b"}]
    message = refusal(tmp_path, with_(policies=policies))
    assert message.startswith("policies[0].backend: got 'none', expected 'local' or")


def test_yaml_syntax_error_gives_the_line(tmp_path):
    text = "name: x\npolicies:\n  - name: a\n    temperature: [0.2\n"
    message = refusal(tmp_path, text)
    assert "YAML syntax error at line" in message


def test_key_given_twice_is_refused_with_its_line(tmp_path):
    text = "name: x\ndelta: 0.1\ndelta: 0.2\n"
    message = refusal(tmp_path, text)
    assert "line 3" in message and "'delta' given twice" in message


def test_file_that_is_not_a_mapping_is_refused(tmp_path):
    message = refusal(tmp_path, "- a\n- b\n")
    assert "got list, expected a mapping" in message


def test_missing_experiment_file_is_refused(tmp_path):
    with pytest.raises(InputError, match=r"experiment file: got '.*none\.yaml'"):
        load_experiment(tmp_path / "none.yaml")


def test_missing_required_key_is_refused(tmp_path):
    data = with_()
    del data["judge"]
    message = refusal(tmp_path, data)
    assert message.startswith("judge: missing")


def test_structured_evidence_rule_is_chosen_in_the_file(tmp_path):
    from llmpo.runner import build_procedure

    policies = [
        {"name": "a", "system_prompt": "Be brief.", "features": [1.0, 0.0]},
        {"name": "b", "system_prompt": "Be kind.", "features": [0.0, 1.0]},
        {"name": "c", "system_prompt": "Be calm.", "features": [0.0, 0.0]},
    ]
    data = with_(policies=policies, space="structured", evidence="glr")
    experiment = load_experiment(write(tmp_path, data))
    assert experiment.evidence == "glr"
    assert build_procedure(experiment).rule == "glr"
    message = refusal(tmp_path, with_(evidence="hunch"))
    assert message.startswith("evidence:") and "hunch" in message
