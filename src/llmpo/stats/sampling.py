"""LLM-PO in the unstructured space: bookkeeping, stopping rules and tracking.

:class:`PairwiseProcedure` keeps the per-pair counts, outcome sums, pending
duels and evidence, and implements both stopping rules of MATH.md §5 (``verify``
and ``assume-winner``); subclasses only choose which pairs to duel.
:class:`LLMPO` tracks the optimal proportions at the plug-in estimate
(MATH.md §4); :class:`Oracle` is told the winner and is the floor the sampling
rule is measured against (MATH.md §6).
"""

from __future__ import annotations

import logging
import math

import numpy as np

from llmpo.errors import InputError
from llmpo.stats.bounds import check_mode, strongest_defeaters
from llmpo.stats.divergence import coin_information
from llmpo.stats.evidence import (
    assume_threshold,
    log_mixture_evidence_pair,
    log_mixture_scale,
    verify_threshold,
)
from llmpo.stats.pairs import pair_matrix, pairs
from llmpo.stats.procedure import Decision, Procedure

logger = logging.getLogger(__name__)

# Information floor for the plug-in proportions: a pair whose estimate sits at
# 1/2 (or on the wrong side of it) gets the weight of a pair with p = 0.51.
_INFORMATION_FLOOR = float(coin_information(0.51))


def check_delta(delta: float) -> float:
    """Return ``delta`` as a float if it lies in (0, 1), else raise InputError."""
    try:
        value = float(delta)
    except (TypeError, ValueError):
        raise InputError(f"delta: got {delta!r}, expected a number in (0, 1)") from None
    if not 0.0 < value < 1.0:
        raise InputError(f"delta: got {delta!r}, expected a number in (0, 1)")
    return value


def check_policies(n_policies: int) -> int:
    """Return ``n_policies`` if it is an integer >= 2, else raise InputError."""
    if isinstance(n_policies, bool) or int(n_policies) != n_policies or n_policies < 2:
        raise InputError(
            f"n_policies: got {n_policies!r}, expected an integer >= 2"
        )
    return int(n_policies)


class PairwiseProcedure(Procedure):
    """Bookkeeping and stopping for procedures over unordered pairs.

    Parameters
    ----------
    n_policies : int
        Number of policies ``K >= 2``.
    delta : float
        Error probability in (0, 1).
    mode : {"verify", "assume-winner"}
        The model class and so the stopping rule (MATH.md §5).

    Notes
    -----
    ``evidence[i, j]`` is ``ln M_ij``, the log e-process for "``i`` beats ``j``";
    ``estimate[i, j]`` is ``p_hat_ij = (S_ij + 1/2) / (N_ij + 1)``. Both are kept
    up to date one pair at a time, so recording a duel costs O(K).
    """

    def __init__(self, n_policies: int, delta: float, mode: str = "verify"):
        self.n_policies = k = check_policies(n_policies)
        self.delta = check_delta(delta)
        self.mode = check_mode(mode)
        self.first, self.second = pairs(k)
        self.pair_index = pair_matrix(k)
        m = self.first.size
        self.counts = np.zeros(m)
        self.sums = np.zeros(m)
        self.pending = np.zeros(m, dtype=np.int64)
        self.evidence = np.zeros((k, k))
        np.fill_diagonal(self.evidence, -np.inf)
        self.estimate = np.full((k, k), 0.5)
        if mode == "verify":
            self.log_threshold = verify_threshold(k, self.delta)
        else:
            self.log_threshold = assume_threshold(self.delta)
        # verify: number of rivals each policy is certified against
        self._certified = np.zeros(k, dtype=np.int64)
        # assume-winner: log of the averaged refutation e-process of each policy
        self._log_rivals = math.log(k - 1)
        self._refutation = np.zeros(k)
        self._n_duels = 0
        self._n_pending = 0
        everyone = np.arange(k)
        self._rivals = [np.delete(everyone, i) for i in range(k)]

    # ---------------------------------------------------------------- interface

    @property
    def n_duels(self) -> int:
        return self._n_duels

    @property
    def n_pending(self) -> int:
        """Duels proposed and not yet recorded or released."""
        return self._n_pending

    def record(self, i: int, j: int, outcome: float) -> None:
        i, j, outcome = self._orient(i, j, outcome)
        pair = self.pair_index[i, j]
        if self.pending[pair] > 0:
            self.pending[pair] -= 1
            self._n_pending -= 1
        self.counts[pair] += 1.0
        self.sums[pair] += outcome
        self._n_duels += 1
        n, s = self.counts[pair], self.sums[pair]
        self.estimate[i, j] = (s + 0.5) / (n + 1.0)
        self.estimate[j, i] = 1.0 - self.estimate[i, j]
        forward, backward = log_mixture_evidence_pair(s, n)
        if self.mode == "verify":
            self._update_certified(i, j, forward)
            self._update_certified(j, i, backward)
        self.evidence[i, j] = forward
        self.evidence[j, i] = backward
        if self.mode == "assume-winner":
            for loser in (i, j):
                column = self.evidence[:, loser]
                top = column.max()
                self._refutation[loser] = (
                    top + math.log(np.exp(column - top).sum()) - self._log_rivals
                )
        self._after_record(i, j)

    def release(self, i: int, j: int) -> None:
        pair = self.pair_index[self._check_pair(i, j)]
        if self.pending[pair] > 0:
            self.pending[pair] -= 1
            self._n_pending -= 1

    def add_pending(self, i: int, j: int) -> None:
        pair = self.pair_index[self._check_pair(i, j)]
        self.pending[pair] += 1
        self._n_pending += 1

    def propose(self, size: int = 1) -> list[tuple[int, int]]:
        if int(size) != size or size < 1:
            raise InputError(f"size: got {size!r}, expected an integer >= 1")
        chosen = []
        for _ in range(int(size)):
            if self.stopped:
                break
            pair = self._next_pair()
            if pair is None:
                break
            self.pending[pair] += 1
            self._n_pending += 1
            chosen.append((int(self.first[pair]), int(self.second[pair])))
        return chosen

    @property
    def stopped(self) -> bool:
        """True once the stopping rule has fired (cheap: kept up to date)."""
        return self._certified_policy() is not None

    def decision(self) -> Decision:
        certified = self._certified_policy()
        leader = certified if certified is not None else self.leader()
        log_evidence = self.leader_evidence(leader)
        if self.mode == "verify":
            p_value = min(1.0, self.n_policies * math.exp(-min(log_evidence, 700.0)))
        else:
            p_value = min(1.0, math.exp(-min(log_evidence, 700.0)))
        return Decision(
            stopped=certified is not None,
            leader=leader,
            p_value=p_value,
            log_evidence=log_evidence,
            log_threshold=self.log_threshold,
        )

    def leader_evidence(self, leader: int) -> float:
        """The leader's evidence on the scale of the threshold: the smallest of
        ``ln M_{leader j}`` (verify) or of the refutations of the others
        (assume-winner)."""
        rivals = self._rivals[leader]
        if self.mode == "verify":
            return float(self.evidence[leader, rivals].min())
        return float(self._refutation[rivals].min())

    def leader(self) -> int:
        """The empirical leader.

        The empirical Condorcet winner of ``p_hat`` when there is one. Otherwise
        the policy least refuted by the evidence (the smallest largest
        ``ln M_ji`` over its rivals in ``verify``, the smallest averaged
        refutation in ``assume-winner``), ties broken by pairs won in ``p_hat``
        and then by the lowest index. Counting pairs won alone can keep a
        policy that is already refuted in the lead while the true winner waits
        with a few unlucky early duels.
        """
        wins = (self.estimate > 0.5).sum(axis=1)
        winners = np.flatnonzero(wins == self.n_policies - 1)
        if winners.size:
            return int(winners[0])
        if self.mode == "verify":
            against = self.evidence.max(axis=0)
        else:
            against = self._refutation
        candidates = np.flatnonzero(against <= against.min() + 1e-12)
        if candidates.size == 1:
            return int(candidates[0])
        return int(candidates[np.argmax(wins[candidates])])

    def proportions(self) -> np.ndarray:
        """Optimal proportions at the plug-in estimate, over pairs."""
        return self._plugin_proportions(self.leader())

    # ---------------------------------------------------------------- internals

    def _next_pair(self) -> int | None:
        raise NotImplementedError

    def _after_record(self, i: int, j: int) -> None:
        """Hook for subclasses, called after every recorded duel."""

    def _check_pair(self, i: int, j: int) -> tuple[int, int]:
        k = self.n_policies
        for name, value in (("i", i), ("j", j)):
            if int(value) != value or not 0 <= value < k:
                raise InputError(
                    f"duel policy {name}: got {value!r}, expected an index in [0, {k})"
                )
        if i == j:
            raise InputError(f"duel: got ({i}, {j}), expected two different policies")
        return (int(i), int(j)) if i < j else (int(j), int(i))

    def _orient(self, i: int, j: int, outcome: float) -> tuple[int, int, float]:
        self._check_pair(i, j)
        x = float(outcome)
        if not 0.0 <= x <= 1.0:
            raise InputError(
                f"duel outcome: got {outcome!r}, expected a number in [0, 1]"
            )
        if i > j:
            return int(j), int(i), 1.0 - x
        return int(i), int(j), x

    def _update_certified(self, i: int, j: int, value: float) -> None:
        before = self.evidence[i, j] >= self.log_threshold
        after = value >= self.log_threshold
        if after != before:
            self._certified[i] += 1 if after else -1

    def _certified_policy(self) -> int | None:
        if self.mode == "verify":
            best = int(np.argmax(self._certified))
            return best if self._certified[best] == self.n_policies - 1 else None
        refuted = self._refutation >= self.log_threshold
        open_ = np.flatnonzero(~refuted)
        if open_.size == 1:
            return int(open_[0])
        if open_.size == 0:
            # Every policy refuted: the assumption is doubtful; name the one
            # with the least evidence against it.
            return int(np.argmin(self._refutation))
        return None

    def _plugin_proportions(self, leader: int) -> np.ndarray:
        """``w*`` of MATH.md §2 at ``p_hat``, with the information floored so
        that pairs at or below 1/2 get the most weight."""
        k = self.n_policies
        w = np.zeros(self.first.size)
        if self.mode == "verify":
            rivals = self._rivals[leader]
            p = np.maximum(self.estimate[leader, rivals], 0.5)
            cost = 1.0 / np.maximum(coin_information(p), _INFORMATION_FLOOR)
            w[self.pair_index[leader, rivals]] = cost / cost.sum()
            return w
        losers = self._rivals[leader]
        defeaters = strongest_defeaters(self.estimate)[losers]
        defeaters = np.where(defeaters < 0, leader, defeaters)
        p = np.maximum(self.estimate[defeaters, losers], 0.5)
        cost = 1.0 / np.maximum(coin_information(p), _INFORMATION_FLOOR)
        np.add.at(w, self.pair_index[defeaters, losers], cost / cost.sum())
        return w


class LLMPO(PairwiseProcedure):
    """The LLM-PO sampling rule: D-tracking of the plug-in optimal proportions.

    Parameters
    ----------
    n_policies, delta, mode :
        As in :class:`PairwiseProcedure`.
    seed : int
        Seeds the start design for large ``K``.
    skip_certified : bool
        Leave out of the tracking the pairs whose evidence has already crossed
        the threshold (their evidence only moves when they are dueled). The
        stopping rule is untouched, so the guarantee is too; it removes the
        duels a pure tracking rule spends on pairs that are already settled.
    forcing : {"sparse", "all"}
        ``"all"`` is textbook D-tracking: every pair with ``N < sqrt(t) - M/2``
        is forced. ``"sparse"`` forces the leader's pairs at the rate
        ``sqrt(s) - (K-1)/2`` (the only pairs that can change the leader or
        ``w*`` while the leader is an empirical Condorcet winner; ``s`` is set
        by ``forcing_clock``) and all pairs at the slower rate
        ``t^(1/3) - M/2``, which keeps every estimate consistent.
    forcing_clock : {"tenure", "duels"}, optional
        The clock ``s`` of the sparse forcing of the leader's pairs.
        ``"duels"``: ``s = t``, every duel so far. ``"tenure"``: ``s`` is the
        number of duels recorded while the current leader led (summed over all
        its spells in the lead). With ``"duels"``, a policy that takes the lead
        late has all its ``K - 1`` pairs forced up to ``sqrt(t) - (K-1)/2``
        duels at once, most of them against weak rivals, before any tracking or
        challenger duel; when that leader is wrong, those duels count for
        nothing. The true winner leads for all but a finite stretch of a run,
        so its tenure grows like ``t`` and its pairs are still forced at rate
        ``sqrt(t)`` in the end. Default ``"tenure"`` in ``verify`` and
        ``"duels"`` in ``assume-winner``, where it has not been measured.
    leader_rule : {"posterior", "refutation"}, optional
        The leader the sampling rule serves (the decision still names
        :meth:`leader`). ``"refutation"``: :meth:`leader`, the empirical
        Condorcet winner or else the least refuted policy. ``"posterior"``: the
        policy most likely to be the Condorcet winner, ``argmax_c sum_j
        ln P(p_cj > 1/2)`` under independent uniform priors (an untried pair
        counts ``ln 1/2``), among the policies not refuted at the threshold
        (:meth:`_sampling_leader`). With many policies, the least refuted
        policy is often one that has met only weak rivals: the winner lost the
        lead to it after a single lost duel, and the wrong leader's tracking
        duels (pairs without the winner) were wasted. Measured on
        bt-features-100 (K = 100, delta = 0.01, 200 runs): 2,985 -> 2,894 mean
        duels, the oracle needing 2,446; the other public instances unchanged
        within noise. Default ``"posterior"`` in ``verify`` and
        ``"refutation"`` in ``assume-winner``, where it has not been measured.
    challenge_every : int, optional
        Every ``challenge_every``-th duel past the start and the forcing tests
        the most credible challenger instead of tracking (see
        :meth:`_challenger_pair`); 0 turns this off. Default 3 in ``verify``
        and 0 in ``assume-winner``, where it has not been measured. A few
        early losses can hide the winner behind a wrong leader for most of a
        run, since only the leader's pairs are tracked; one duel in
        ``challenge_every`` spent on the challenger's refuting pair re-tests
        such losses. Choosing the challenger costs O(K^2) per duel (about
        0.1 ms for K = 100).

    Notes
    -----
    Start: every pair once when ``M <= 4K`` pairs (small ``K``); otherwise a
    random Hamiltonian cycle of ``K`` duels gives a provisional leader, whose
    untried pairs then carry the most weight (their estimate sits at 1/2).
    Batches: pending duels count as done in ``t`` and ``N`` (MATH.md §4).
    """

    def __init__(
        self,
        n_policies: int,
        delta: float,
        mode: str = "verify",
        *,
        seed: int = 0,
        skip_certified: bool = True,
        forcing: str = "sparse",
        rule: str = "evidence",
        challenge_every: int | None = None,
        forcing_clock: str | None = None,
        leader_rule: str | None = None,
    ):
        super().__init__(n_policies, delta, mode)
        if leader_rule is None:
            leader_rule = "posterior" if self.mode == "verify" else "refutation"
        if leader_rule not in ("posterior", "refutation"):
            raise InputError(
                f"leader_rule: got {leader_rule!r}, expected 'posterior' or "
                "'refutation'"
            )
        self.leader_rule = leader_rule
        # ln P(p_ij > 1/2) under the Beta(S+1, N-S+1) posterior of each pair,
        # and its row sums: the log probability that i is the Condorcet winner
        # if the pairs were independent.
        k = self.n_policies
        self._log_posterior = np.full((k, k), -math.log(2.0))
        np.fill_diagonal(self._log_posterior, 0.0)
        self._posterior_sum = self._log_posterior.sum(axis=1)
        if rule not in ("evidence", "tracking"):
            raise InputError(f"rule: got {rule!r}, expected 'evidence' or 'tracking'")
        self.rule = rule
        if challenge_every is None:
            challenge_every = 3 if self.mode == "verify" else 0
        if int(challenge_every) != challenge_every or challenge_every < 0:
            raise InputError(
                f"challenge_every: got {challenge_every!r}, expected an integer >= 0"
            )
        self.challenge_every = int(challenge_every)
        self._tracking_steps = 0
        if forcing not in ("sparse", "all"):
            raise InputError(f"forcing: got {forcing!r}, expected 'sparse' or 'all'")
        self.skip_certified = skip_certified
        self.forcing = forcing
        if forcing_clock is None:
            forcing_clock = "tenure" if self.mode == "verify" else "duels"
        if forcing_clock not in ("tenure", "duels"):
            raise InputError(
                f"forcing_clock: got {forcing_clock!r}, expected 'tenure' or 'duels'"
            )
        self.forcing_clock = forcing_clock
        # Duels recorded while each policy led: the clock of the sparse forcing.
        self._tenure = np.zeros(self.n_policies)
        k, m = self.n_policies, self.first.size
        rng = np.random.default_rng(seed)
        if m <= 4 * k:
            start = rng.permutation(m)
        else:
            cycle = rng.permutation(k)
            start = self.pair_index[cycle, np.roll(cycle, -1)]
        self._start = [int(p) for p in start]
        self._half_rivals = (k - 1) / 2.0
        self._half_pairs = m / 2.0
        # The leader the sampling rule serves, updated after each record.
        self._served = self._sampling_leader()

    def _next_pair(self) -> int | None:
        while self._start:
            pair = self._start.pop(0)
            # A rebuilt procedure (resume) already holds duels of some pairs.
            if self.counts[pair] + self.pending[pair] == 0:
                return pair
        t = self._n_duels + self._n_pending
        n = self.counts + self.pending
        if self.forcing == "all":
            below = np.flatnonzero(n < math.sqrt(t) - self._half_pairs)
            if below.size:
                return int(below[np.argmin(n[below])])
        leader = self._served
        pair, winners, rivals, level = self._targets(leader)
        open_ = level < self.log_threshold
        if self.mode == "verify":
            open_ &= self.evidence[rivals, winners] < self.log_threshold
        if not self.skip_certified:
            open_[:] = True
        if not open_.any():
            return int(np.argmin(n))
        pair, winners, rivals, level = (
            pair[open_], winners[open_], rivals[open_], level[open_]
        )
        if self.forcing == "sparse":
            clock = self._tenure[leader] if self.forcing_clock == "tenure" else t
            lagging = n[pair] < math.sqrt(clock) - self._half_rivals
            if lagging.any():
                candidates = pair[lagging]
                return int(candidates[np.argmin(n[candidates])])
            floor = t ** (1.0 / 3.0) - self._half_pairs
            if floor > 0:
                below = np.flatnonzero(n < floor)
                if below.size:
                    return int(below[np.argmin(n[below])])
        if self.challenge_every:
            self._tracking_steps += 1
            if self._tracking_steps % self.challenge_every == 0:
                duel = self._challenger_pair(leader)
                if duel is not None:
                    return duel
        gain = np.maximum(
            coin_information(np.maximum(self.estimate[winners, rivals], 0.5)),
            _INFORMATION_FLOOR,
        )
        if self.rule == "evidence":
            projected = level + self.pending[pair] * gain
            # Ties (untried pairs above all) go to the rival least refuted so
            # far: a wrong leader then meets the policies that can beat it first.
            tied = np.flatnonzero(projected == projected.min())
            if tied.size == 1:
                return int(pair[tied[0]])
            credible = self._likelihood_refutation()[:, rivals[tied]].max(axis=0)
            return int(pair[tied[np.argmin(credible)]])
        # Track the plug-in proportions within the open pairs: duels spent while
        # another policy led leave no debt that the new leader's pairs repay.
        w = (1.0 / gain) / (1.0 / gain).sum()
        gap = (n[pair].sum() + 1.0) * w - n[pair]
        return int(pair[np.argmax(gap)])

    def _after_record(self, i: int, j: int) -> None:
        # The posterior tail is the evidence less its shared scale (underflow
        # of the tail is handled in the evidence).
        pair = self.pair_index[i, j]
        scale = log_mixture_scale(self.sums[pair], self.counts[pair])
        for x, y in ((i, j), (j, i)):
            value = self.evidence[x, y] - scale
            self._posterior_sum[x] += value - self._log_posterior[x, y]
            self._log_posterior[x, y] = value
        # Only a record moves the sampling leader: found once per duel here.
        self._served = self._sampling_leader()
        if self.forcing_clock == "tenure":
            self._tenure[self._served] += 1.0

    def _sampling_leader(self) -> int:
        """The leader whose pairs the sampling rule duels (see ``leader_rule``).

        ``"posterior"``: the largest ``sum_j ln P(p_cj > 1/2)`` among the
        policies that no rival refutes at the threshold (ties to the lowest
        index), else the least refuted one. A refuted policy is excluded because
        its other pairs, once all tried, can outweigh one lost pair in the sum.
        """
        if self.leader_rule == "refutation":
            return self.leader()
        against = self.evidence.max(axis=0)
        alive = against < self.log_threshold
        if not alive.any():
            return int(np.argmin(against))
        return int(np.argmax(np.where(alive, self._posterior_sum, -np.inf)))

    def _challenger_pair(self, leader: int) -> int | None:
        """The duel that tests the most credible challenger of ``leader``, or
        ``None`` when that challenger is already refuted at the threshold.

        The challenger is the policy other than the leader whose strongest
        refutation ``max_j N_jc c(p_hat_jc)`` (signed: negative where ``c``
        leads ``j``) is smallest; the duel is the pair that refutes it most.
        The likelihood ratio is used rather than ``ln M``, whose price of
        ``(1/2) ln N`` would make the policies dueled most look least refuted.
        """
        refutation = self._likelihood_refutation()
        against = refutation.max(axis=0)
        against[leader] = np.inf
        challenger = int(np.argmin(against))
        if self.mode == "verify":
            settled = self.evidence[:, challenger].max()
        else:
            settled = self._refutation[challenger]
        if settled >= self.log_threshold:
            return None
        refuter = int(np.argmax(refutation[:, challenger]))
        return int(self.pair_index[refuter, challenger])

    def _likelihood_refutation(self) -> np.ndarray:
        """``R[j, c] = N_jc c(p_hat_jc)``, negated where ``p_hat_jc <= 1/2``:
        the log likelihood ratio by which ``j`` refutes ``c``, signed; ``-inf``
        on the diagonal. Pending duels count as done (MATH.md §4), so a batch
        spreads its duels instead of repeating one pair."""
        k = self.n_policies
        n = np.zeros((k, k))
        n[self.first, self.second] = self.counts + self.pending
        n += n.T
        strength = n * coin_information(self.estimate)
        refutation = np.where(self.estimate > 0.5, strength, -strength)
        np.fill_diagonal(refutation, -np.inf)
        return refutation

    def _targets(self, leader: int):
        """The pairs the stopping rule needs for ``leader``: ``(pair, winner,
        rival, level)`` arrays, ``level`` the evidence that must cross the
        threshold. Verify: the leader against each rival. Assume-winner: each
        other policy against its strongest defeater in ``p_hat``."""
        rivals = self._rivals[leader]
        if self.mode == "verify":
            winners = np.full(rivals.size, leader)
            level = self.evidence[leader, rivals]
        else:
            defeaters = strongest_defeaters(self.estimate)[rivals]
            winners = np.where(defeaters < 0, leader, defeaters)
            level = self._refutation[rivals]
        return self.pair_index[winners, rivals], winners, rivals, level


class Oracle(PairwiseProcedure):
    """Told the winner, duels each rival until that pair's evidence crosses the
    ``verify`` threshold, then stops dueling it (MATH.md §6).

    No sampling rule can use fewer duels with this stopping rule, so it is the
    floor the sampling rule of :class:`LLMPO` is judged against.
    """

    def __init__(self, n_policies: int, delta: float, winner: int):
        super().__init__(n_policies, delta, "verify")
        if winner is None or not 0 <= winner < self.n_policies:
            raise InputError(
                f"winner: got {winner!r}, expected a policy index (the oracle "
                "needs an instance with a Condorcet winner)"
            )
        self.winner = int(winner)
        self._rival_pairs = np.delete(self.pair_index[self.winner], self.winner)

    def _next_pair(self) -> int | None:
        open_ = self.evidence[self.winner] < self.log_threshold
        open_pairs = self.pair_index[self.winner][open_ & (np.arange(self.n_policies)
                                                           != self.winner)]
        if open_pairs.size == 0:
            return None
        n = self.counts[open_pairs] + self.pending[open_pairs]
        return int(open_pairs[np.argmin(n)])
