"""Bradley-Terry fits, the convex program and the exact structured bound."""

from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import expit

from llmpo.errors import InputError
from llmpo.stats import bt, design
from llmpo.stats.instances import load_instances
from llmpo.stats.pairs import pairs
from llmpo.stats.structured_bound import (
    check_model,
    program_value,
    structured_lower_bound,
)

# The benchmark suite lives in shared/, beside the checkout (CI lays it there too).
PUBLIC = Path(__file__).resolve().parents[2] / "shared" / "instances" / "public.json"


def _data(seed, k=6, d=3, ridge_free=False):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(k, d))
    theta = rng.normal(size=d)
    a, b = pairs(k)
    diffs = x[a] - x[b]
    counts = rng.integers(0, 6, size=a.size).astype(float)
    # ties give half outcomes: sums need not be integers
    sums = np.round(counts * expit(diffs @ theta) * 2 * rng.random(a.size)) / 2
    sums = np.minimum(sums, counts)
    return diffs, counts, sums


def _penalised(theta, diffs, counts, sums, ridge):
    return -bt.log_likelihood(theta, diffs, counts, sums) + 0.5 * ridge * theta @ theta


@pytest.mark.parametrize("seed", range(4))
def test_ridge_mle_matches_scipy_minimize(seed):
    diffs, counts, sums = _data(seed)
    theta = bt.fit(diffs, counts, sums, ridge=0.3)
    reference = minimize(
        _penalised, np.zeros(diffs.shape[1]), args=(diffs, counts, sums, 0.3),
        method="BFGS", options={"gtol": 1e-10},
    )
    assert np.allclose(theta, reference.x, atol=1e-5)


def test_ridge_mle_is_finite_on_a_disconnected_comparison_graph():
    k = 4
    x = np.eye(k)
    a, b = pairs(k)
    counts = np.zeros(a.size)
    sums = np.zeros(a.size)
    counts[0], sums[0] = 5, 5  # only 0 vs 1 compared, 0 always wins
    theta = bt.fit(x[a] - x[b], counts, sums, ridge=1e-3)
    assert np.all(np.isfinite(theta)) and theta[0] > theta[1]


@pytest.mark.parametrize("seed", range(4))
def test_halfspace_mle_matches_scipy_with_the_linear_constraint(seed):
    diffs, counts, sums = _data(seed)
    rng = np.random.default_rng(100 + seed)
    direction = rng.normal(size=diffs.shape[1])
    theta = bt.fit_halfspace(diffs, counts, sums, direction, ridge=0.1)
    reference = minimize(
        _penalised, np.zeros(diffs.shape[1]), args=(diffs, counts, sums, 0.1),
        method="SLSQP",
        constraints=[{"type": "ineq", "fun": lambda t: -t @ direction}],
        options={"ftol": 1e-12, "maxiter": 500},
    )
    assert theta @ direction <= 1e-8
    ours = _penalised(theta, diffs, counts, sums, 0.1)
    theirs = _penalised(reference.x, diffs, counts, sums, 0.1)
    assert ours <= theirs + 1e-7
    assert np.allclose(theta, reference.x, atol=1e-4)


def test_halfspace_mle_returns_the_unconstrained_fit_when_it_is_feasible():
    diffs, counts, sums = _data(0)
    free = bt.fit(diffs, counts, sums, ridge=0.1)
    direction = -free  # free @ direction < 0: feasible
    constrained = bt.fit_halfspace(diffs, counts, sums, direction, ridge=0.1)
    assert np.allclose(constrained, free, atol=1e-8)


def test_fit_rejects_mismatched_shapes_and_non_finite_start():
    diffs, counts, sums = _data(0)
    with pytest.raises(InputError, match="counts, sums"):
        bt.fit(diffs, counts[:-1], sums, ridge=1.0)
    with pytest.raises(InputError, match="start"):
        bt.fit(diffs, counts, sums, ridge=1.0, start=[np.nan] * diffs.shape[1])


def _random_model(seed, k, d):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(k, d)), rng.normal(size=d)


def _cvxpy():
    return pytest.importorskip("cvxpy")


@pytest.mark.parametrize("seed", range(3))
def test_fast_program_within_one_percent_of_reference_on_random_instances(seed):
    _cvxpy()
    x, theta = _random_model(seed, 6, 3)
    args = design.program_inputs(x, theta)
    fast, weights = design.solve_program(*args, gamma=1e-4)
    exact, _ = design.solve_program_reference(*args, gamma=1e-4)
    assert abs(weights.sum() - 1) < 1e-9 and weights.min() >= 0
    assert fast <= exact * 1.01 and fast >= exact * 0.999


# bt-features-100 is left to scripts/program_gap.py: its reference takes SCS
# about 25 s.
@pytest.mark.parametrize("name", ["bt-linear-10", "bt-features-27", "arena-20"])
def test_fast_program_within_one_percent_of_reference_on_public_instances(name):
    _cvxpy()
    instance = next(i for i in load_instances(PUBLIC) if i.name == name)
    args = design.program_inputs(instance.features, instance.theta)
    fast, _ = design.solve_program(*args, gamma=1e-6)
    exact, _ = design.solve_program_reference(*args, gamma=1e-6)
    assert exact * 0.999 <= fast <= exact * 1.01


def _inner_brute(x, theta, weights, j, best):
    a, b = pairs(x.shape[0])
    diffs = x[a] - x[b]
    p = expit(diffs @ theta)

    def divergence(lam):
        q = np.clip(expit(diffs @ lam), 1e-12, 1 - 1e-12)
        return weights @ (p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q)))

    y = x[j] - x[best]
    result = minimize(
        divergence, theta, method="SLSQP",
        constraints=[{"type": "ineq", "fun": lambda lam: lam @ y}],
        options={"ftol": 1e-12, "maxiter": 500},
    )
    return result.fun


def _outer_brute(x, theta, weights):
    best = int(np.argmax(x @ theta))
    return min(
        _inner_brute(x, theta, weights, j, best)
        for j in range(x.shape[0]) if j != best
    )


@pytest.mark.parametrize("seed", range(2))
def test_exact_bound_matches_brute_force_on_three_policies(seed):
    x, theta = _random_model(10 + seed, 3, 2)
    tstar, weights = structured_lower_bound(x, theta, tolerance=1e-4)
    assert _outer_brute(x, theta, weights) == pytest.approx(1 / tstar, rel=1e-3)
    grid = np.linspace(0, 1, 41)
    best_grid = max(
        _outer_brute(x, theta, np.array([u, v, 1 - u - v]))
        for u in grid for v in grid if u + v <= 1 + 1e-12
    )
    assert best_grid <= (1 / tstar) * (1 + 1e-3)
    assert best_grid >= (1 / tstar) * 0.97


def test_exact_bound_is_not_beaten_by_random_proportions_on_four_policies():
    x, theta = _random_model(20, 4, 2)
    tstar, weights = structured_lower_bound(x, theta, tolerance=1e-4)
    assert _outer_brute(x, theta, weights) == pytest.approx(1 / tstar, rel=1e-3)
    rng = np.random.default_rng(0)
    for w in rng.dirichlet(np.ones(6), size=30):
        assert _outer_brute(x, theta, w) <= (1 / tstar) * (1 + 1e-3)


def test_program_value_approaches_the_exact_bound_for_small_gaps():
    x, theta = _random_model(30, 4, 2)
    theta = 0.05 * theta
    tstar, _ = structured_lower_bound(x, theta, tolerance=1e-4)
    value, _ = program_value(x, theta, gamma=1e-8)
    assert value == pytest.approx(1 / tstar, rel=0.03)


def test_model_checks_reject_bad_features_and_theta():
    with pytest.raises(InputError, match="features"):
        check_model([[1.0, 2.0], [3.0]], [1.0, 0.0])
    with pytest.raises(InputError, match="theta"):
        check_model([[1.0, 2.0], [3.0, 1.0]], [np.inf, 0.0])
    with pytest.raises(InputError, match="not unique"):
        check_model([[1.0, 0.0], [1.0, 1.0]], [1.0, 0.0])
