"""Rule judges: the support checklist, check by check, and user-function judges."""

from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path

import pytest

import llmpo.examples
from llmpo.errors import InputError, JudgeError
from llmpo.judges.rule import (
    DEFAULT_WEIGHTS,
    CallableJudge,
    ChecklistJudge,
    checklist,
    load_function,
)
from llmpo.policy import Task

EXAMPLE = Path(llmpo.examples.__file__).parent / "support"

LATE = Task(
    id="late",
    prompt="My parcel, order #38852, was due Friday. Where is it?",
    facts={
        "order_id": "38852",
        "refund_allowed": False,
        "credit_allowed": False,
        "next_step": ["courier", "trace"],
        "max_words": 40,
    },
)
RETURNED = Task(
    id="returned",
    prompt="You received my return of order 37741. Where is my $89.00 refund?",
    facts={
        "order_id": "37741",
        "refund_allowed": True,
        "amounts": ["89.00"],
        "next_step": ["business days"],
    },
)
NO_ORDER = Task(id="password", prompt="The reset email never arrives.", facts={})

BEST = "Sorry for the wait. I have asked the courier to trace order 38852 today."


def run(coroutine):
    return asyncio.run(coroutine)


# ------------------------------------------------------------- each check


@pytest.mark.parametrize(
    ("response", "passes"),
    [
        ("Order 38852 is on its way.", True),
        ("Order #38852 is on its way.", True),
        ("Your order is on its way.", False),
        ("Order 3885 is on its way.", False),
    ],
)
def test_order_number_check(response, passes):
    assert checklist(LATE, response)["order_number"] is passes


def test_order_number_check_is_left_out_when_the_task_has_no_order():
    assert "order_number" not in checklist(NO_ORDER, "Try the link again.")


@pytest.mark.parametrize(
    ("response", "passes"),
    [
        ("I will ask the Courier to look for it.", True),
        ("We opened a trace with the carrier.", True),
        ("Please be patient, it will come.", False),
    ],
)
def test_next_step_check(response, passes):
    assert checklist(LATE, response)["next_step"] is passes


@pytest.mark.parametrize(
    ("response", "passes"),
    [
        ("We will refund you in full.", False),
        ("I have issued a refund to your card.", False),
        ("As compensation, here is a voucher.", False),
        ("Enjoy 20% off your next order.", False),
        ("We will add a credit of $10 to your account.", False),
        ("Unfortunately we cannot offer a refund for a late parcel.", True),
        ("I have passed your refund request to the team.", True),
        ("The courier will trace it today.", True),
    ],
)
def test_no_invented_offer_check_when_nothing_is_allowed(response, passes):
    assert checklist(LATE, response)["no_invented_offer"] is passes


@pytest.mark.parametrize(
    ("response", "passes"),
    [
        ("Your refund of $89.00 was issued today.", True),
        ("Your refund of 89 dollars was issued today.", True),
        ("Your refund of $95.00 was issued today.", False),
        ("Your refund was issued, and here is a 10% discount code.", False),
    ],
)
def test_no_invented_offer_check_allows_what_the_facts_allow(response, passes):
    assert checklist(RETURNED, response)["no_invented_offer"] is passes


def test_within_length_check_counts_words():
    assert checklist(LATE, " ".join(["word"] * 40))["within_length"] is True
    assert checklist(LATE, " ".join(["word"] * 41))["within_length"] is False
    assert checklist(LATE, "   ")["within_length"] is False


@pytest.mark.parametrize(
    ("response", "passes"),
    [
        ("Sorry for the delay.", True),
        ("Thank you for waiting.", True),
        ("I apologise for this.", True),
        ("Order 38852 ships today.", False),
    ],
)
def test_acknowledges_check(response, passes):
    assert checklist(LATE, response)["acknowledges"] is passes


@pytest.mark.parametrize(
    ("response", "passes"),
    [
        ("Best regards, [Your Name]", False),
        ("Dear {customer_name}, it ships today.", False),
        ("Regards, <Agent Name>", False),
        ("Contact us at XXXX.", False),
        ("Best regards, Dana from the support team", True),
    ],
)
def test_no_placeholder_check(response, passes):
    assert checklist(LATE, response)["no_placeholder"] is passes


def test_bad_facts_are_refused_naming_the_field():
    task = Task(id="bad", prompt="?", facts={"refund_allowed": "yes"})
    with pytest.raises(InputError, match=r"tasks\[bad\]\.facts\.refund_allowed"):
        checklist(task, "hi")
    task = Task(id="bad", prompt="?", facts={"max_words": 0})
    with pytest.raises(InputError, match="max_words"):
        checklist(task, "hi")


# ------------------------------------------------------------ the judge


def test_higher_checklist_score_wins_in_either_position():
    judge = ChecklistJudge()
    poor = "We will refund you. [Your Name]"
    assert run(judge.judge(LATE, 0, 1, BEST, poor, seed=0)).outcome == 1.0
    assert run(judge.judge(LATE, 0, 1, poor, BEST, seed=0)).outcome == 0.0


def test_equal_scores_are_a_tie():
    judge = ChecklistJudge()
    verdict = run(judge.judge(LATE, 3, 4, BEST, BEST.upper(), seed=0))
    assert verdict.outcome == 0.5


def test_raw_holds_both_checklists_and_scores_as_json():
    verdict = run(ChecklistJudge().judge(LATE, 0, 1, BEST, "ok", seed=0))
    record = json.loads(verdict.raw)
    assert record["i"]["checks"] == checklist(LATE, BEST)
    assert record["j"]["checks"]["order_number"] is False
    assert record["i"]["score"] == sum(DEFAULT_WEIGHTS.values())
    assert record["i"]["score"] > record["j"]["score"]


def test_weights_change_the_verdict():
    brief = "Courier trace opened for 38852."  # no apology
    polite = "Sorry! Courier trace opened."  # no order number
    assert run(ChecklistJudge().judge(LATE, 0, 1, brief, polite, seed=0)).outcome == 1.0
    judge = ChecklistJudge({"order_number": 0.0})
    assert run(judge.judge(LATE, 0, 1, brief, polite, seed=0)).outcome == 0.0


def test_unknown_or_negative_weight_is_refused():
    with pytest.raises(InputError, match="judge.weights.tone"):
        ChecklistJudge({"tone": 1.0})
    with pytest.raises(InputError, match="judge.weights.next_step"):
        ChecklistJudge({"next_step": -1})


# ------------------------------------------------- the bundled task pool


@pytest.mark.parametrize("name", ["tasks.jsonl", "heldout.jsonl"])
def test_bundled_tasks_follow_the_facts_schema(name):
    rows = [json.loads(line) for line in (EXAMPLE / name).read_text().splitlines()]
    assert len(rows) >= (40 if name == "tasks.jsonl" else 12)
    for row in rows:
        assert set(row) == {"id", "prompt", "facts"}
        task = Task(**row)
        checklist(task, "Sorry, I will check.")  # raises on a malformed fact
        assert row["facts"]["next_step"]
        if "order_id" in row["facts"]:
            assert row["facts"]["order_id"] in row["prompt"]


def test_bundled_pools_do_not_overlap():
    ids = {
        name: {json.loads(line)["id"] for line in (EXAMPLE / name).open()}
        for name in ("tasks.jsonl", "heldout.jsonl")
    }
    assert not ids["tasks.jsonl"] & ids["heldout.jsonl"]


# --------------------------------------------------------- callable judges


@pytest.fixture
def judge_file(tmp_path):
    path = tmp_path / "my_judge.py"
    path.write_text(
        textwrap.dedent(
            """
            import asyncio

            def longer(task, a, b):
                return 1.0 if len(a) > len(b) else 0.0

            async def slow_longer(task, a, b):
                await asyncio.sleep(0)
                return 1.0 if len(a) > len(b) else 0.0

            def score(task, a, b):
                return VALUE

            def broken(task, a, b):
                raise ZeroDivisionError("oops")

            VALUE = 0.5
            NOT_CALLABLE = 3
            """
        )
    )
    return path


def test_callable_judge_loads_from_a_file_path(judge_file):
    judge = CallableJudge.from_spec(f"{judge_file}:longer")
    verdict = run(judge.judge(LATE, 0, 1, "long answer", "short", seed=0))
    assert verdict.outcome == 1.0
    assert verdict.order == "ij"


def test_callable_judge_reads_a_relative_path_from_base_dir(judge_file):
    judge = CallableJudge.from_spec("my_judge.py:longer", base_dir=judge_file.parent)
    assert run(judge.judge(LATE, 0, 1, "a", "bb", seed=0)).outcome == 0.0


def test_callable_judge_accepts_async_functions(judge_file):
    judge = CallableJudge.from_spec(f"{judge_file}:slow_longer")
    assert run(judge.judge(LATE, 0, 1, "long answer", "short", seed=0)).outcome == 1.0


def test_callable_judge_loads_from_a_module():
    judge = CallableJudge.from_spec("operator:truth")
    assert judge.function.__name__ == "truth"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon_here", "expected 'package.module:function'"),
        ("operator:", "expected 'package.module:function'"),
        ("llmpo_no_such_module:f", "cannot import module"),
        ("missing_file.py:f", "not found"),
        ("operator:no_such_function", "has no attribute"),
    ],
)
def test_load_errors_name_the_spec(spec, message):
    with pytest.raises(InputError, match=message) as caught:
        load_function(spec)
    assert repr(spec) in str(caught.value)


def test_not_callable_and_broken_files_are_input_errors(judge_file, tmp_path):
    with pytest.raises(InputError, match="NOT_CALLABLE"):
        load_function(f"{judge_file}:NOT_CALLABLE")
    bad = tmp_path / "bad.py"
    bad.write_text("def f(:\n")
    with pytest.raises(InputError, match="SyntaxError"):
        load_function(f"{bad}:f")


@pytest.mark.parametrize("value", [1.5, -0.1, "1", None, float("nan"), True])
def test_value_outside_unit_interval_or_not_a_number_is_unparsable(value):
    judge = CallableJudge(lambda task, a, b: value, name="fixed")
    verdict = run(judge.judge(LATE, 0, 1, "a", "b", seed=0))
    assert verdict.outcome is None
    assert "fixed" in verdict.raw


@pytest.mark.parametrize("value", [0, 0.25, 1])
def test_values_in_the_unit_interval_are_the_outcome(value):
    judge = CallableJudge(lambda task, a, b: value)
    assert run(judge.judge(LATE, 0, 1, "a", "b", seed=0)).outcome == float(value)


def test_function_that_raises_gives_a_judge_error(judge_file):
    judge = CallableJudge.from_spec(f"{judge_file}:broken")
    with pytest.raises(JudgeError, match="ZeroDivisionError"):
        run(judge.judge(LATE, 0, 1, "a", "b", seed=0))
