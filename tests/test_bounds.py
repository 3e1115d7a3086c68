"""The closed-form lower bounds against a direct numerical solution of the max-min."""

import itertools

import numpy as np
import pytest
from scipy.optimize import linprog

from llmpo.errors import InputError
from llmpo.stats.bounds import assume_bound, condorcet_winner, verify_bound
from llmpo.stats.divergence import coin_information
from llmpo.stats.pairs import pairs


def random_preference(rng, k):
    p = np.full((k, k), 0.5)
    a, b = pairs(k)
    values = rng.uniform(0.2, 0.8, size=a.size)
    p[a, b] = values
    p[b, a] = 1 - values
    return p


def numerical_max_min(p, mode):
    """sup_w inf_{Q in Alt} sum_ab w_ab kl(p_ab, q_ab), by brute force.

    An alternative is a tournament (a sign for every pair); reaching it from P
    costs w_ab c(p_ab) for every pair whose sign flips (the nearest q is 1/2).
    The outer problem over the simplex is then a linear program."""
    k = p.shape[0]
    a, b = pairs(k)
    winner = condorcet_winner(p)
    cost = coin_information(p[a, b])
    cuts = []
    for signs in itertools.product([False, True], repeat=a.size):
        flipped = np.array(signs)
        beats = np.zeros((k, k), dtype=bool)
        first_wins = (p[a, b] > 0.5) ^ flipped
        beats[a, b] = first_wins
        beats[b, a] = ~first_wins
        np.fill_diagonal(beats, True)
        champions = np.flatnonzero(beats.all(axis=1))
        if mode == "verify":
            alternative = winner not in champions
        else:
            alternative = champions.size == 1 and champions[0] != winner
        if alternative:
            cuts.append(np.where(flipped, cost, 0.0))
    m = a.size
    # variables (w_1..w_m, z); maximise z s.t. z <= cut . w, sum w = 1
    objective = np.zeros(m + 1)
    objective[-1] = -1.0
    a_ub = np.hstack([-np.array(cuts), np.ones((len(cuts), 1))])
    result = linprog(
        objective,
        A_ub=a_ub,
        b_ub=np.zeros(len(cuts)),
        A_eq=np.hstack([np.ones((1, m)), np.zeros((1, 1))]),
        b_eq=[1.0],
        bounds=[(0, None)] * m + [(None, None)],
    )
    return 1.0 / result.x[-1]


@pytest.mark.parametrize("mode", ["verify", "assume-winner"])
def test_closed_form_tstar_equals_numerical_max_min(mode):
    rng = np.random.default_rng(1)
    checked = 0
    while checked < 12:
        k = int(rng.integers(3, 5))
        p = random_preference(rng, k)
        winner = condorcet_winner(p)
        if winner is None:
            continue
        bound = verify_bound(p) if mode == "verify" else assume_bound(p)
        numerical = numerical_max_min(p, mode)
        assert bound.tstar == pytest.approx(numerical, rel=1e-6)
        # the closed-form proportions attain the optimum of the inner problem
        a, b = pairs(k)
        info = bound.proportions * coin_information(p[a, b])
        if mode == "verify":
            worst = min(
                info[m] for m in range(a.size) if winner in (a[m], b[m])
            )
        else:
            worst = np.inf
            for j in range(k):
                if j == winner:
                    continue
                defeated = [
                    m for m in range(a.size)
                    if (a[m] == j and p[a[m], b[m]] < 0.5)
                    or (b[m] == j and p[a[m], b[m]] > 0.5)
                ]
                worst = min(worst, sum(info[m] for m in defeated))
        assert 1.0 / worst == pytest.approx(numerical, rel=1e-6)
        checked += 1


def test_assume_winner_never_needs_more_than_verify():
    rng = np.random.default_rng(2)
    for _ in range(50):
        p = random_preference(rng, 5)
        if condorcet_winner(p) is None:
            continue
        assert assume_bound(p).tstar <= verify_bound(p).tstar + 1e-9


def test_no_condorcet_winner_gives_infinite_requirement():
    p = np.array([[0.5, 0.7, 0.3], [0.3, 0.5, 0.7], [0.7, 0.3, 0.5]])
    bound = verify_bound(p)
    assert bound.winner is None and bound.tstar == np.inf and bound.proportions is None


def test_verify_proportions_favour_the_closest_rival():
    p = np.array([[0.5, 0.55, 0.8], [0.45, 0.5, 0.6], [0.2, 0.4, 0.5]])
    bound = verify_bound(p)
    assert bound.winner == 0
    assert bound.proportions[0] > 10 * bound.proportions[1]
    assert bound.proportions[2] == 0


@pytest.mark.parametrize(
    "matrix, fragment",
    [
        ([[0.5, 0.6, 0.7], [0.4, 0.5, 0.5]], "square"),
        ([[0.5, 1.2], [-0.2, 0.5]], "probability in [0, 1]"),
        ([[0.5, 0.6], [0.5, 0.5]], "expected 1"),
        ([[0.5, float("nan")], [0.5, 0.5]], "probability"),
    ],
)
def test_bad_preference_matrix_is_refused_with_a_clear_message(matrix, fragment):
    with pytest.raises(InputError, match="preference") as error:
        verify_bound(matrix)
    assert fragment in str(error.value)
