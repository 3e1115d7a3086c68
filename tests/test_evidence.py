"""The Beta-mixture e-process: its value, its validity, its stability."""

import math

import numpy as np
import pytest
from scipy.integrate import quad
from scipy.stats import binom

from llmpo.stats.divergence import coin_information
from llmpo.stats.evidence import log_mixture_evidence, log_mixture_evidence_pair


def integral(successes, trials):
    value, _ = quad(
        lambda q: q**successes * (1 - q) ** (trials - successes),
        0.5, 1.0, epsabs=0, epsrel=1e-13, limit=200,
    )
    return math.log(2 ** (trials + 1) * value)


@pytest.mark.parametrize(
    "successes, trials",
    [(0, 0), (1, 1), (0, 1), (7, 10), (2.5, 10), (40, 100), (63.5, 100), (300, 500)],
)
def test_closed_form_equals_numerical_integration(successes, trials):
    expected = integral(successes, trials)
    assert log_mixture_evidence(successes, trials) == pytest.approx(expected, abs=1e-8)
    forward, backward = log_mixture_evidence_pair(successes, trials)
    assert forward == pytest.approx(expected, abs=1e-8)
    assert backward == pytest.approx(integral(trials - successes, trials), abs=1e-8)


def test_vectorised_and_scalar_paths_agree():
    rng = np.random.default_rng(0)
    n = rng.integers(0, 5000, size=200).astype(float)
    s = np.floor(rng.uniform(0, 1, size=200) * n * 2) / 2
    vector = log_mixture_evidence(s, n)
    scalar = np.array([log_mixture_evidence_pair(a, b)[0] for a, b in zip(s, n)])
    np.testing.assert_allclose(vector, scalar, rtol=1e-9, atol=1e-7)


@pytest.mark.parametrize("p", [0.4, 0.5, 0.55, 0.6, 0.9])
def test_stable_and_accurate_at_ten_million_duels(p):
    n = 1e7
    s = p * n
    forward, backward = log_mixture_evidence_pair(s, n)
    assert math.isfinite(forward) and math.isfinite(backward)
    assert forward == pytest.approx(log_mixture_evidence(s, n), rel=1e-9, abs=1e-6)
    if p > 0.5:
        # ln M = n c(p) - (1/2) ln n + O(1)
        approx = n * coin_information(p) - 0.5 * math.log(n)
        assert abs(forward - approx) < 5.0
        assert backward < 0


@pytest.mark.parametrize(
    "win, tie",
    [(0.5, 0.0), (0.45, 0.0), (0.3, 0.4), (0.25, 0.5), (0.0, 1.0), (0.4, 0.1)],
)
def test_mean_stays_at_most_one_under_the_null(win, tie):
    """E[M_n] <= 1 when p = win + tie/2 <= 1/2, ties included (Monte Carlo)."""
    rng = np.random.default_rng(7)
    runs, horizon = 40_000, 60
    u = rng.random((runs, horizon))
    x = np.where(u < win, 1.0, np.where(u < win + tie, 0.5, 0.0))
    sums = np.cumsum(x, axis=1)
    n = np.arange(1, horizon + 1)
    values = np.exp(log_mixture_evidence(sums, n[None, :]))
    means = values.mean(axis=0)
    # standard error of the mean at the last step, with a generous 5 sigma band
    stderr = values.std(axis=0) / math.sqrt(runs)
    assert np.all(means <= 1.0 + 5 * stderr + 1e-12)


def test_ville_crossing_rate_under_the_null_is_at_most_alpha():
    """P(exists n <= N : M_n >= 1/alpha) <= alpha, with a binomial bound."""
    rng = np.random.default_rng(11)
    runs, horizon, alpha = 4000, 2000, 0.1
    x = (rng.random((runs, horizon)) < 0.5).astype(float)
    sums = np.cumsum(x, axis=1)
    n = np.arange(1, horizon + 1)
    crossed = (log_mixture_evidence(sums, n[None, :]) >= math.log(1 / alpha)).any(axis=1)
    limit = binom.ppf(1 - 1e-4, runs, alpha)
    assert crossed.sum() <= limit


def test_evidence_grows_when_the_first_policy_is_better():
    rng = np.random.default_rng(3)
    x = (rng.random(3000) < 0.6).astype(float)
    assert log_mixture_evidence(x.sum(), x.size) > math.log(1000)
