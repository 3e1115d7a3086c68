"""The human judge, driven through text streams instead of a terminal."""

from __future__ import annotations

import asyncio
import io

import pytest
from rich.console import Console

from llmpo.errors import JudgeError
from llmpo.judges.human import HumanJudge
from llmpo.policy import Task

TASK = Task(id="late", prompt="Order 38852 is late. Where is it?")
REPLY_I = "I asked the courier to trace 38852 [today]."
REPLY_J = "Be patient."


def duel(answers, *, seed=0, ties=True):
    """Run one duel with ``answers`` typed; return the verdict and the screen."""
    screen = io.StringIO()
    judge = HumanJudge(
        ties=ties,
        input=io.StringIO(answers),
        console=Console(file=screen, width=100, color_system=None),
    )
    verdict = asyncio.run(judge.judge(TASK, 0, 1, REPLY_I, REPLY_J, seed=seed))
    return verdict, screen.getvalue()


def seed_showing(order):
    for seed in range(100):
        if duel("t\n", seed=seed)[0].order == order:
            return seed
    raise RuntimeError(f"no seed below 100 shows order {order}")


def test_screen_shows_the_task_and_both_replies_labelled_a_and_b():
    verdict, screen = duel("a\n", seed=seed_showing("ij"))
    assert TASK.prompt in screen
    assert screen.index(REPLY_I) < screen.index(REPLY_J)
    assert " A " in screen and " B " in screen
    # Square brackets in a reply are shown as typed, not read as markup.
    assert "[today]" in screen


@pytest.mark.parametrize(
    ("order", "answer", "outcome"),
    [
        ("ij", "a", 1.0),
        ("ij", "b", 0.0),
        ("ji", "a", 0.0),
        ("ji", "b", 1.0),
        ("ji", "t", 0.5),
    ],
)
def test_answer_is_mapped_back_to_i_through_the_order_shown(order, answer, outcome):
    verdict, screen = duel(f"{answer}\n", seed=seed_showing(order))
    assert verdict.order == order
    assert verdict.outcome == outcome
    first = REPLY_I if order == "ij" else REPLY_J
    second = REPLY_J if order == "ij" else REPLY_I
    assert screen.index(first) < screen.index(second)


def test_the_order_shown_depends_on_the_seed():
    orders = {duel("t\n", seed=seed)[0].order for seed in range(20)}
    assert orders == {"ij", "ji"}


def test_other_answers_are_asked_again_and_kept_in_raw():
    verdict, screen = duel("x\n\nA or B\n B \n", seed=seed_showing("ij"))
    assert verdict.outcome == 0.0
    assert screen.count("Please answer") == 3
    assert verdict.raw.splitlines() == ["x", "", "A or B", " B "]


def test_tie_is_refused_when_ties_are_not_allowed():
    verdict, screen = duel("t\na\n", seed=seed_showing("ij"), ties=False)
    assert verdict.outcome == 1.0
    assert "Please answer a or b" in screen


def test_input_ending_without_an_answer_is_a_judge_error():
    with pytest.raises(JudgeError, match="input ended"):
        duel("maybe\n")
