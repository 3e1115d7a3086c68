"""Evidence and procedures of the structured (Bradley-Terry) space."""

import math
import time

import numpy as np
import pytest
from scipy.stats import binom

from llmpo.errors import InputError
from llmpo.stats import bt
from llmpo.stats.instances import bt_instance
from llmpo.stats.pairs import pairs
from llmpo.stats.structured import GOptimalDesign, StructuredEvidence, StructuredLLMPO


def _run(instance, procedure, rng, batch=4, cap=20000):
    while procedure.n_duels < cap:
        proposed = procedure.propose(batch)
        if not proposed:
            break
        for a, b in proposed:
            if rng.random() < 0.5:  # the ordered duel may come either way round
                procedure.record(b, a, instance.duel(b, a, rng))
            else:
                procedure.record(a, b, instance.duel(a, b, rng))
    return procedure.decision()


def test_mixture_lower_bound_is_below_the_integral_and_close_to_it():
    from scipy import integrate

    rng = np.random.default_rng(0)
    diffs = rng.normal(size=(4, 2)) * 0.4
    counts = rng.integers(5, 40, 4).astype(float)
    sums = np.round(counts * (0.4 + 0.2 * rng.random(4)) * 2) / 2
    start = bt.fit(diffs, counts, sums, ridge=1.0)
    rhos = np.array([0.25, 1.0, 4.0])
    bounds = bt.log_mixture_lower_bounds(start, diffs, counts, sums, rhos)
    for rho, bound in zip(rhos, bounds):
        def density(y, x, rho=rho, bound=bound):
            point = np.array([x, y])
            return np.exp(bt.log_likelihood(point, diffs, counts, sums) - bound
                          - 0.5 * rho * point @ point) * rho / (2 * np.pi)

        exact = math.log(integrate.dblquad(density, -10, 10, -10, 10)[0])
        assert 0.0 <= exact < 0.1  # ln(integral) - bound


_FOUR = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.5, -0.5]])


def _crossings(theta, alpha, runs, duels, log_denominator):
    """Runs of ``duels`` random duels of the four policies ``_FOUR`` in which the
    guaranteed numerator over ``log_denominator(diffs, counts, sums)`` reaches
    ``1/alpha`` (checked every other duel)."""
    instance = bt_instance(_FOUR, theta)
    a, b = pairs(4)
    crossings = 0
    for seed in range(runs):
        rng = np.random.default_rng(seed)
        evidence = StructuredEvidence(_FOUR, alpha, "guaranteed", 1.0)
        for step in range(duels):
            pair = int(rng.integers(a.size))
            evidence.record(pair, instance.duel(a[pair], b[pair], rng))
            if step % 2 == 1:
                evidence.refit()
                log_e = evidence.log_numerator() - log_denominator(*evidence._data())
                if log_e >= math.log(1 / alpha):
                    crossings += 1
                    break
    return crossings


def test_mixture_evidence_against_the_true_theta_rarely_crosses():
    # M_n / L_n(theta) is a martingale under theta; Ville bounds the rate at which
    # the lower bound on it ever reaches 1/alpha. (With the ln det price of the
    # mixture left out, 136 of these 150 runs cross.)
    theta = np.array([0.3, -0.2])
    alpha, runs = 0.2, 150
    crossings = _crossings(theta, alpha, runs, 200,
                           lambda *data: bt.log_likelihood(theta, *data))
    # P(Binomial(150, 0.2) > limit) < 0.005: a valid e-process fails this rarely.
    assert crossings <= int(binom.ppf(0.995, runs, alpha))


def test_evidence_against_a_tied_null_rarely_crosses():
    # x_0 and x_1 tied under theta: H_01 holds; Ville bounds the crossing rate.
    direction = _FOUR[0] - _FOUR[1]

    def null_maximum(diffs, counts, sums):
        null = bt.fit_halfspace(diffs, counts, sums, direction, ridge=1e-6)
        return bt.log_likelihood(null, diffs, counts, sums)

    alpha, runs = 0.1, 100
    crossings = _crossings(np.array([0.8, 0.8]), alpha, runs, 120, null_maximum)
    # P(Binomial(100, 0.1) > limit) < 0.005: a valid e-process fails this rarely.
    assert crossings <= int(binom.ppf(0.995, runs, alpha))


def test_structured_llmpo_is_delta_correct_on_a_small_instance():
    rng = np.random.default_rng(7)
    features = rng.normal(size=(5, 2))
    theta = np.array([2.0, 1.0])
    instance = bt_instance(features, theta)
    best = int(np.argmax(features @ theta))
    delta, runs = 0.1, 60
    errors = 0
    for seed in range(runs):
        procedure = StructuredLLMPO(features, delta, seed=seed)
        decision = _run(instance, procedure, np.random.default_rng(1000 + seed))
        assert decision.stopped
        errors += decision.leader != best
    limit = int(binom.ppf(0.995, runs, delta))
    assert errors <= limit


@pytest.mark.parametrize("rule", ["guaranteed", "glr"])
def test_structured_llmpo_names_the_best_policy_with_a_p_value_below_delta(rule):
    rng = np.random.default_rng(3)
    features = rng.normal(size=(8, 3))
    theta = np.array([1.5, -1.0, 0.5])
    instance = bt_instance(features, theta)
    procedure = StructuredLLMPO(features, 0.05, rule=rule, seed=1)
    decision = _run(instance, procedure, np.random.default_rng(5))
    assert decision.stopped and decision.leader == int(np.argmax(features @ theta))
    assert decision.p_value <= 0.05
    assert decision.log_evidence >= decision.log_threshold
    assert procedure.propose(3) == []
    weights = procedure.proportions()
    assert weights is not None and abs(weights.sum() - 1) < 1e-9


def _feed(instance, procedure, n, rng):
    """Propose and record ``n`` duels one at a time, whatever the stopping rule."""
    for _ in range(n):
        (a, b), = procedure.propose(1)
        procedure.record(a, b, instance.duel(a, b, rng))


def test_a_settled_decision_reports_the_weakest_alternatives_exact_evidence():
    rng = np.random.default_rng(21)
    features = rng.normal(size=(12, 3))
    theta = np.array([0.6, -0.3, 0.2])
    instance = bt_instance(features, theta)
    procedure = StructuredLLMPO(features, 1e-12, seed=0)
    _feed(instance, procedure, 250, np.random.default_rng(9))
    plain = procedure.decision()
    assert not plain.stopped
    settled = procedure.settled_decision()
    evidence = procedure.evidence
    diffs, counts, sums = evidence._data()
    level = evidence.log_numerator()
    leader = settled.leader
    exact = min(
        level - bt.log_likelihood(
            bt.fit_halfspace(diffs, counts, sums,
                             evidence.coords[leader] - evidence.coords[j],
                             ridge=1e-6),
            diffs, counts, sums)
        for j in range(12) if j != leader
    )
    # Between checks only stale, conservative bounds stand: far below the data's.
    assert plain.log_evidence < exact - 1.0
    assert settled.log_evidence == pytest.approx(exact, abs=1e-4)
    assert settled.p_value == pytest.approx(min(1.0, math.exp(-exact)), rel=1e-3)
    assert settled.p_value < 0.05 < plain.p_value


@pytest.mark.parametrize("seed", [0, 1])
def test_sampling_counts_reach_the_programs_optimum(seed):
    from llmpo.stats.design import program_inputs, program_objective, solve_program

    rng = np.random.default_rng(11 + seed)
    features = rng.normal(size=(6, 3))
    theta = np.array([1.0, -0.5, 0.3])
    instance = bt_instance(features, theta)
    # A delta this small never stops within the duels fed.
    procedure = StructuredLLMPO(features, 1e-300, seed=seed)
    n = 3000
    _feed(instance, procedure, n, np.random.default_rng(100 + seed))
    program = program_inputs(features, theta)
    optimum, _ = solve_program(*program, gamma=1.0 / n, tolerance=1e-4)
    reached = program_objective(procedure.evidence.counts / n, *program, gamma=1.0 / n)
    uniform = program_objective(np.full(15, 1 / 15), *program, gamma=1.0 / n)
    assert uniform > 2.0 * optimum  # the instance tells a good design from a poor one
    assert reached <= 1.2 * optimum


def test_pairs_with_the_same_difference_share_their_duels():
    # Two factors, of 2 and 3 levels, one-hot: several pairs differ by the same z.
    levels = [(a, b) for a in range(2) for b in range(3)]
    features = np.array(
        [[a == 0, a == 1, b == 0, b == 1, b == 2] for a, b in levels], dtype=float
    )
    instance = bt_instance(features, np.array([0.3, 0.0, 0.4, 0.1, 0.0]))
    procedure = StructuredLLMPO(features, 1e-300, seed=0)
    _feed(instance, procedure, 2000, np.random.default_rng(5))
    first, second = pairs(6)
    groups: dict[tuple, list[int]] = {}
    for pair, z in enumerate(features[first] - features[second]):
        key = max(tuple(z + 0.0), tuple(-z + 0.0))
        groups.setdefault(key, []).append(pair)
    # Groups dueled well above the forced exploration of the spanning design.
    shared = [procedure.evidence.counts[g] for g in groups.values() if len(g) > 1]
    shared = [counts for counts in shared if counts.sum() > 100 * counts.size]
    assert shared
    for counts in shared:
        assert counts.max() - counts.min() <= 1


@pytest.mark.parametrize("design", ["g-optimal", "uniform"])
def test_fixed_design_baseline_stops_on_the_best_policy(design):
    rng = np.random.default_rng(4)
    features = rng.normal(size=(6, 2))
    theta = np.array([2.0, 1.0])
    instance = bt_instance(features, theta)
    procedure = GOptimalDesign(features, 0.05, seed=0, design=design)
    decision = _run(instance, procedure, np.random.default_rng(6))
    assert decision.stopped and decision.leader == int(np.argmax(features @ theta))


def test_a_batch_spreads_over_pairs_and_pending_duels_count_as_done():
    features = np.eye(5)
    procedure = GOptimalDesign(features, 0.05, design="uniform")
    batch = procedure.propose(10)
    assert len(set(batch)) == 10
    for a, b in batch[:5]:
        procedure.release(a, b)
    assert procedure.n_duels == 0


def test_recorded_outcome_of_a_reversed_duel_is_stored_as_its_complement():
    procedure = StructuredLLMPO(np.eye(3), 0.05)
    procedure.record(2, 0, 1.0)
    counts, sums = procedure.evidence.counts, procedure.evidence.sums
    assert counts[1] == 1 and sums[1] == 0.0  # pair (0, 2): 0 lost


def test_structured_llmpo_rejects_bad_inputs_with_named_fields():
    with pytest.raises(InputError, match="features"):
        StructuredLLMPO([[1.0, 2.0], [3.0]], 0.05)
    with pytest.raises(InputError, match="features"):
        StructuredLLMPO([[1.0, np.nan], [3.0, 1.0]], 0.05)
    with pytest.raises(InputError, match=r"features\[0\] and features\[2\]"):
        StructuredLLMPO([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], 0.05)
    with pytest.raises(InputError, match="delta"):
        StructuredLLMPO(np.eye(3), 1.5)
    with pytest.raises(InputError, match="rule"):
        StructuredLLMPO(np.eye(3), 0.05, rule="bayes")
    procedure = StructuredLLMPO(np.eye(3), 0.05)
    with pytest.raises(InputError, match="outcome"):
        procedure.record(0, 1, 2.0)
    with pytest.raises(InputError, match="duel"):
        procedure.record(1, 1, 1.0)
