"""LLM-PO and its baselines on simulated judges: correctness, batches, bad input."""

import math

import numpy as np
import pytest
from scipy.stats import binom

from llmpo.errors import InputError
from llmpo.stats.baselines import Elimination, Knockout, Uniform
from llmpo.stats.bounds import verify_bound
from llmpo.stats.instances import matrix_instance
from llmpo.stats.methods import make_procedure
from llmpo.stats.sampling import LLMPO, Oracle
from llmpo.stats.simulate import simulate

EASY = matrix_instance(
    [[0.5, 0.7, 0.75, 0.8], [0.3, 0.5, 0.6, 0.65], [0.25, 0.4, 0.5, 0.6],
     [0.2, 0.35, 0.4, 0.5]],
    name="easy",
)
# Policy 0 is the winner only by a hair; its other pairs sit exactly on the null.
NEAR_TIE = matrix_instance(
    [[0.5, 0.53, 0.53], [0.47, 0.5, 0.5], [0.47, 0.5, 0.5]], name="near-tie"
)
# No Condorcet winner: every decision is an error. Two pairs sit on the null.
NO_WINNER = matrix_instance(
    [[0.5, 0.65, 0.5], [0.35, 0.5, 0.65], [0.5, 0.35, 0.5]], name="no-winner"
)


def error_count(factory, instance, runs, *, budget, batch=1, seed=0):
    winner = instance.condorcet_winner
    errors = decided = 0
    for run in range(runs):
        procedure = factory(run)
        outcome = simulate(
            procedure, instance, np.random.default_rng([seed, run]),
            budget=budget, batch=batch,
        )
        if outcome.decision.stopped:
            decided += 1
            errors += outcome.decision.leader != winner
    return errors, decided


def binomial_limit(runs, delta):
    """Largest error count compatible with an error rate <= delta (one-sided 1e-4)."""
    return binom.ppf(1 - 1e-4, runs, delta)


@pytest.mark.parametrize("batch", [1, 16])
def test_verify_errs_at_most_delta_without_a_winner(batch):
    runs, delta = 200, 0.2
    errors, _ = error_count(
        lambda r: LLMPO(3, delta, seed=r), NO_WINNER, runs, budget=300, batch=batch
    )
    assert errors <= binomial_limit(runs, delta)


@pytest.mark.parametrize("batch", [1, 16])
def test_verify_errs_at_most_delta_on_a_near_tie(batch):
    runs, delta = 200, 0.2
    errors, _ = error_count(
        lambda r: LLMPO(3, delta, seed=r), NEAR_TIE, runs, budget=300, batch=batch
    )
    assert errors <= binomial_limit(runs, delta)


def test_assume_winner_errs_at_most_delta_when_a_winner_exists():
    runs, delta = 200, 0.2
    errors, _ = error_count(
        lambda r: LLMPO(3, delta, "assume-winner", seed=r), NEAR_TIE, runs, budget=300
    )
    assert errors <= binomial_limit(runs, delta)


def test_a_threshold_without_the_union_over_candidates_would_be_caught():
    """The check above can fail: dropping ln K and half the confidence makes
    the same procedure err far more often than delta allows."""
    runs, delta = 200, 0.2

    def broken(run):
        procedure = LLMPO(3, delta, seed=run)
        procedure.log_threshold = 0.5 * math.log(1 / delta)
        return procedure

    errors, _ = error_count(broken, NO_WINNER, runs, budget=300)
    assert errors > binomial_limit(runs, delta)


@pytest.mark.parametrize(
    "method", ["llmpo", "llmpo-assume", "uniform", "elimination", "knockout", "oracle"]
)
def test_every_method_finds_the_clear_winner(method):
    for run in range(10):
        procedure = make_procedure(method, EASY, 0.01, run)
        outcome = simulate(procedure, EASY, np.random.default_rng(run))
        assert outcome.decision.stopped
        assert outcome.decision.leader == 0
        assert outcome.decision.p_value <= 0.01 or method == "knockout"


def test_llmpo_allocation_follows_the_optimal_proportions():
    """Each rival of the winner is dueled until its evidence crosses, which puts
    duels in inverse proportion to the information, as w* does."""
    instance = matrix_instance(
        [[0.5, 0.56, 0.7, 0.8], [0.44, 0.5, 0.6, 0.6], [0.3, 0.4, 0.5, 0.6],
         [0.2, 0.4, 0.4, 0.5]]
    )
    optimal = verify_bound(instance.preference).proportions
    shares = []
    for run in range(20):
        procedure = LLMPO(4, 0.001, seed=run)
        simulate(procedure, instance, np.random.default_rng(run))
        shares.append(procedure.counts / procedure.counts.sum())
    mean_share = np.mean(shares, axis=0)
    winner_pairs = optimal > 0
    assert mean_share[winner_pairs].sum() > 0.9
    shares = mean_share[winner_pairs] / mean_share[winner_pairs].sum()
    np.testing.assert_allclose(shares, optimal[winner_pairs], atol=0.08)


def test_llmpo_needs_fewer_duels_than_uniform():
    instance = matrix_instance(
        [[0.5, 0.6, 0.7, 0.75, 0.8], [0.4, 0.5, 0.55, 0.6, 0.6],
         [0.3, 0.45, 0.5, 0.55, 0.6], [0.25, 0.4, 0.45, 0.5, 0.55],
         [0.2, 0.4, 0.4, 0.45, 0.5]]
    )
    llmpo = [simulate(LLMPO(5, 0.01, seed=r), instance, np.random.default_rng(r)).duels
             for r in range(15)]
    uniform = [simulate(Uniform(5, 0.01), instance, np.random.default_rng(r)).duels
               for r in range(15)]
    assert np.mean(llmpo) < 0.5 * np.mean(uniform)


def test_pending_duels_spread_a_batch_over_pairs():
    procedure = LLMPO(6, 0.05, seed=0)
    batch = procedure.propose(15)
    assert len(set(batch)) == 15  # the start design: every pair once
    for a, b in batch:
        procedure.record(a, b, 1.0 if a == 0 else 0.5)
    batch = procedure.propose(32)
    assert procedure.n_pending == 32
    assert len(set(batch)) > 1
    for a, b in batch[:10]:
        procedure.release(a, b)
    assert procedure.n_pending == 22


def test_duels_recorded_after_the_stop_do_not_change_the_decision():
    procedure = Oracle(4, 0.05, winner=0)
    rng = np.random.default_rng(0)
    while not procedure.stopped:
        for a, b in procedure.propose(1):
            procedure.record(a, b, EASY.duel(a, b, rng))
    before = procedure.decision()
    assert procedure.propose(5) == []
    procedure.record(1, 2, 1.0)
    assert procedure.decision().leader == before.leader


def test_a_budget_stop_reports_the_leader_and_its_p_value():
    outcome = simulate(LLMPO(3, 0.01, seed=0), NEAR_TIE, np.random.default_rng(0),
                       budget=50)
    assert not outcome.decision.stopped
    assert outcome.duels == 50
    assert outcome.decision.leader in (0, 1, 2)
    assert 0.0 < outcome.decision.p_value <= 1.0


def test_ordered_duels_are_stored_per_unordered_pair():
    one, other = LLMPO(3, 0.1), LLMPO(3, 0.1)
    one.record(2, 0, 1.0)
    other.record(0, 2, 0.0)
    np.testing.assert_array_equal(one.sums, other.sums)
    np.testing.assert_array_equal(one.evidence, other.evidence)


@pytest.mark.parametrize("delta", [0, 1, -0.1, 1.5, "x"])
def test_delta_outside_the_unit_interval_is_refused(delta):
    with pytest.raises(InputError, match="delta"):
        LLMPO(3, delta)


@pytest.mark.parametrize(
    "call, fragment",
    [
        (lambda p: p.record(0, 0, 1.0), "two different policies"),
        (lambda p: p.record(0, 5, 1.0), "index in [0, 3)"),
        (lambda p: p.record(0, 1, 1.5), "outcome"),
        (lambda p: p.propose(0), "size"),
    ],
)
def test_bad_duels_are_refused(call, fragment):
    with pytest.raises(InputError) as error:
        call(LLMPO(3, 0.1))
    assert fragment in str(error.value)


def test_unknown_method_names_the_known_ones():
    with pytest.raises(InputError, match="expected one of .*llmpo"):
        make_procedure("nope", EASY, 0.1, 0)


def test_baselines_refuse_bad_parameters():
    with pytest.raises(InputError, match="epsilon"):
        Knockout(4, 0.1, epsilon=0.7)
    with pytest.raises(InputError, match="n_policies"):
        Elimination(1, 0.1)
    with pytest.raises(InputError, match="winner"):
        Oracle(4, 0.1, winner=None)


def hidden_winner_state(challenge_every):
    """Four policies, the leader 1 ahead of 0 by a hair over 200 duels, while 0's
    only refutation is four early losses in five to 3; no pair is forced."""
    procedure = LLMPO(4, 0.01, seed=0, challenge_every=challenge_every)
    record = {(1, 0): (200, 104), (3, 0): (5, 4), (1, 2): (50, 40),
              (1, 3): (50, 40), (0, 2): (10, 8), (2, 3): (10, 5)}
    for (i, j), (n, wins) in record.items():
        for duel in range(n):
            procedure.record(i, j, 1.0 if duel < wins else 0.0)
    return procedure


def test_the_challenger_step_retests_the_early_losses_of_a_hidden_winner():
    procedure = hidden_winner_state(challenge_every=1)
    assert procedure.leader() == 1
    assert procedure.propose(1) == [(0, 3)]
    # Tracking alone duels the leader's weakest pair and never meets policy 3.
    assert hidden_winner_state(challenge_every=0).propose(1) == [(0, 1)]


def test_a_challenger_refuted_at_the_threshold_is_not_dueled_again():
    procedure = LLMPO(3, 0.01, seed=0, challenge_every=1)
    for _ in range(60):
        procedure.record(0, 1, 1.0)
        procedure.record(0, 2, 1.0)
    procedure.record(1, 2, 1.0)
    assert procedure.leader() == 0
    assert procedure._challenger_pair(0) is None


@pytest.mark.parametrize("value", [-1, 1.5])
def test_a_bad_challenge_period_is_refused(value):
    with pytest.raises(InputError, match="challenge_every"):
        LLMPO(3, 0.1, challenge_every=value)


def new_leader_state(forcing_clock):
    """Four policies: 1 led through 40 duels with 2, then 0 took the lead in its
    last few duels; its pairs hold 6, 3 and 1 duels, short of sqrt(t) - 3/2."""
    procedure = LLMPO(4, 0.01, seed=0, challenge_every=0, forcing_clock=forcing_clock,
                      leader_rule="refutation")
    for duel in range(40):
        procedure.record(1, 2, 1.0 if duel % 5 < 3 else 0.0)
    for i, j, outcome in [(1, 3, 1), (1, 3, 1), (2, 3, 1), (2, 3, 0), (0, 3, 1),
                          (0, 2, 1), (0, 2, 1), (0, 2, 1), (0, 1, 0), (0, 1, 0),
                          (0, 1, 1), (0, 1, 1), (0, 1, 1), (0, 1, 1)]:
        procedure.record(i, j, float(outcome))
    return procedure


def test_a_new_leader_is_forced_on_its_own_tenure_not_on_every_duel():
    procedure = new_leader_state("tenure")
    assert procedure.leader() == 0
    assert procedure._tenure[0] == 6 and procedure._tenure.sum() == procedure.n_duels
    # sqrt(6) - 3/2 < 1: nothing lags, so the tracking duels the leader's
    # weakest pair, the one it leads 4-2.
    assert procedure.propose(1) == [(0, 1)]
    # Counting every duel (sqrt(54) - 3/2 ~ 5.9) forces its least dueled pair.
    assert new_leader_state("duels").propose(1) == [(0, 3)]


def test_the_forcing_clock_defaults_by_mode_and_refuses_unknown_names():
    assert LLMPO(3, 0.1).forcing_clock == "tenure"
    assert LLMPO(3, 0.1, "assume-winner").forcing_clock == "duels"
    with pytest.raises(InputError, match="forcing_clock"):
        LLMPO(3, 0.1, forcing_clock="wall")


def early_loss_state(leader_rule):
    """Six policies: 0 beat 2-5 three times each and lost its one duel with 1,
    whose only duel that was. No pair is forced."""
    procedure = LLMPO(6, 0.01, seed=0, challenge_every=0, leader_rule=leader_rule)
    procedure._start = []
    for j in range(2, 6):
        for _ in range(3):
            procedure.record(0, j, 1.0)
    procedure.record(0, 1, 0.0)
    return procedure


def test_the_sampling_leader_is_the_likeliest_condorcet_winner():
    # 1 is the only policy never beaten, so it is the least refuted, but 0 is
    # far likelier to beat everyone: ln P = ln(1/4) + 4 ln(15/16) against
    # ln(3/4) + 4 ln(1/2).
    procedure = early_loss_state("posterior")
    assert procedure.leader() == 1
    assert procedure._sampling_leader() == 0
    assert procedure.propose(1) == [(0, 1)]
    # The least refuted leader spends its duels on rivals 0 has already beaten.
    old = early_loss_state("refutation")
    assert old._sampling_leader() == 1
    assert 0 not in old.propose(1)[0]


def test_a_policy_refuted_at_the_threshold_cannot_lead_the_sampling():
    procedure = LLMPO(30, 0.01, seed=0, challenge_every=0)
    procedure._start = []
    for j in range(2, 30):
        for _ in range(10):
            procedure.record(0, j, 1.0)
    for _ in range(15):
        procedure.record(1, 0, 1.0)
    assert procedure.evidence[1, 0] >= procedure.log_threshold
    # 0's posterior sum is still the largest, but 1 refutes it.
    assert procedure._posterior_sum[0] > procedure._posterior_sum[1]
    assert procedure._sampling_leader() == 1


def test_the_leader_rule_defaults_by_mode_and_refuses_unknown_names():
    assert LLMPO(3, 0.1).leader_rule == "posterior"
    assert LLMPO(3, 0.1, "assume-winner").leader_rule == "refutation"
    with pytest.raises(InputError, match="leader_rule"):
        LLMPO(3, 0.1, leader_rule="copeland")


def test_the_posterior_sums_are_beta_tails_of_the_recorded_outcomes():
    from scipy.stats import beta

    rng = np.random.default_rng(4)
    procedure = LLMPO(4, 0.01, seed=0)
    procedure._start = []
    for _ in range(300):
        i, j = rng.choice(4, size=2, replace=False)
        procedure.record(int(i), int(j), float(rng.choice([0.0, 0.5, 1.0, 1.0])))
    for _ in range(200000):  # a long pair: the cancellation in the update stays small
        procedure.record(0, 3, 1.0 if rng.random() < 0.5003 else 0.0)
    expected = np.zeros(4)
    for a in range(4):
        for b in range(4):
            if a == b:
                continue
            pair = procedure.pair_index[a, b]
            n, s = procedure.counts[pair], procedure.sums[pair]
            wins = s if a < b else n - s  # sums are stored for the lower index
            expected[a] += (
                beta.logsf(0.5, wins + 1.0, n - wins + 1.0) if n else math.log(0.5)
            )
    np.testing.assert_allclose(procedure._posterior_sum, expected, atol=1e-6)
