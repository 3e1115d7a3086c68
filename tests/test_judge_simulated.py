"""The simulated judge draws verdicts with the instance's probabilities."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from llmpo.errors import InputError
from llmpo.judges.simulated import SimulatedJudge
from llmpo.policy import Task
from llmpo.stats.instances import matrix_instance

TASK = Task(id="any", prompt="")
PREFERENCE = [[0.5, 0.7, 0.6], [0.3, 0.5, 0.55], [0.4, 0.45, 0.5]]
TIES = [[0.0, 0.2, 0.0], [0.2, 0.0, 0.5], [0.0, 0.5, 0.0]]


def outcomes(judge, i, j, n):
    async def draw():
        return [
            (await judge.judge(TASK, i, j, "", "", seed=seed)).outcome
            for seed in range(n)
        ]

    return np.array(asyncio.run(draw()))


def within_binomial_bound(count, n, p):
    """|count - n p| within 4.5 standard deviations: fails by chance < 1e-5."""
    return abs(count - n * p) <= 4.5 * np.sqrt(n * p * (1 - p))


@pytest.mark.parametrize(("i", "j"), [(0, 1), (1, 0), (0, 2), (1, 2), (2, 1)])
def test_win_tie_loss_frequencies_match_the_instance(i, j):
    instance = matrix_instance(PREFERENCE, TIES, name="three")
    n = 4000
    drawn = outcomes(SimulatedJudge(instance), i, j, n)
    p, t = PREFERENCE[i][j], TIES[i][j]
    assert set(np.unique(drawn)) <= {0.0, 0.5, 1.0}
    for value, probability in ((1.0, p - t / 2), (0.5, t), (0.0, 1 - p - t / 2)):
        count = int((drawn == value).sum())
        if probability == 0:
            assert count == 0
        else:
            assert within_binomial_bound(count, n, probability), (value, count)


def test_same_seed_gives_the_same_verdict_and_raw_names_the_instance():
    judge = SimulatedJudge(matrix_instance(PREFERENCE, name="three"))
    first = asyncio.run(judge.judge(TASK, 0, 1, "", "", seed=11))
    again = asyncio.run(judge.judge(TASK, 0, 1, "", "", seed=11))
    assert first == again
    assert "three" in first.raw


def test_verdict_follows_instance_duel_with_a_generator_seeded_from_the_seed():
    instance = matrix_instance(PREFERENCE, TIES, name="three")
    judge = SimulatedJudge(instance)
    for seed in range(50):
        expected = instance.duel(1, 2, np.random.default_rng(seed))
        verdict = asyncio.run(judge.judge(TASK, 1, 2, "", "", seed=seed))
        assert verdict.outcome == expected


@pytest.mark.parametrize(("i", "j"), [(0, 3), (-1, 1), (1, 1)])
def test_policies_outside_the_instance_are_refused(i, j):
    judge = SimulatedJudge(matrix_instance(PREFERENCE, name="three"))
    with pytest.raises(InputError, match="simulated judge"):
        asyncio.run(judge.judge(TASK, i, j, "", "", seed=0))
