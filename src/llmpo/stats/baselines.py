"""Baselines measured against LLM-PO under the same duel accounting (MATH.md §7).

- :class:`Uniform`: round robin over all pairs, the ``verify`` stopping rule.
- :class:`Elimination`: successive elimination over pairs with anytime-valid
  evidence (in the spirit of SAVAGE, Urvoy et al. 2013): a policy leaves as soon
  as some policy is shown to beat it; the last one standing is recommended.
- :class:`Knockout`: a single-elimination tournament (in the spirit of the PAC
  knockout of Falahatgar et al. 2017): each match runs until one side's evidence
  crosses the match threshold, or until the PAC sample size for an ``epsilon``
  gap, whichever comes first.

Elimination and knockout assume that a Condorcet winner exists: on an instance
without one they still name a policy, and that decision is an error.
"""

from __future__ import annotations

import math

import numpy as np

from llmpo.errors import InputError
from llmpo.stats.procedure import Decision
from llmpo.stats.sampling import PairwiseProcedure


class Uniform(PairwiseProcedure):
    """Round robin over all pairs with the ``verify`` stopping rule."""

    def __init__(self, n_policies: int, delta: float):
        super().__init__(n_policies, delta, "verify")

    def _next_pair(self) -> int | None:
        return int(np.argmin(self.counts + self.pending))


class Elimination(PairwiseProcedure):
    """Successive elimination of policies shown to be beaten.

    Policy ``j`` is eliminated once some ``i`` has ``ln M_ij >= ln((K-1)/delta)``.
    The best policy is eliminated only if one of its ``K - 1`` null e-processes
    crosses ``(K-1)/delta``, so with probability at most ``delta``. Pairs of
    policies still in play whose question is open are dueled in round robin.
    """

    def __init__(self, n_policies: int, delta: float):
        super().__init__(n_policies, delta, "verify")
        self.log_threshold = math.log((self.n_policies - 1) / self.delta)
        self.active = np.ones(self.n_policies, dtype=bool)

    @property
    def stopped(self) -> bool:
        return int(self.active.sum()) <= 1

    def _after_record(self, i: int, j: int) -> None:
        for loser in (i, j):
            if self.evidence[:, loser].max() >= self.log_threshold:
                self.active[loser] = False

    def _next_pair(self) -> int | None:
        both = self.active[self.first] & self.active[self.second]
        open_ = both & (self.evidence[self.first, self.second] < self.log_threshold)
        open_ &= self.evidence[self.second, self.first] < self.log_threshold
        candidates = np.flatnonzero(open_)
        if candidates.size == 0:
            return None
        n = self.counts[candidates] + self.pending[candidates]
        return int(candidates[np.argmin(n)])

    def decision(self) -> Decision:
        survivors = np.flatnonzero(self.active)
        leader = int(survivors[0]) if survivors.size == 1 else self.leader()
        refutation = self.evidence.max(axis=0)
        log_evidence = float(np.delete(refutation, leader).min())
        p_value = min(
            1.0, (self.n_policies - 1) * math.exp(-min(log_evidence, 700.0))
        )
        return Decision(
            stopped=survivors.size == 1,
            leader=leader,
            p_value=p_value,
            log_evidence=log_evidence,
            log_threshold=self.log_threshold,
        )


class Knockout(PairwiseProcedure):
    """Single-elimination tournament with sequential matches.

    Parameters
    ----------
    n_policies, delta :
        As elsewhere.
    epsilon : float
        Gap the PAC cap is sized for: a match stops after
        ``ceil(ln(2R/delta) / (2 epsilon^2))`` duels at the latest (Hoeffding),
        ``R = ceil(log2 K)`` rounds, and the empirically better side advances.
    seed : int
        Seeds the bracket and coin flips on tied matches.

    Notes
    -----
    The best policy plays at most ``R`` matches; it loses one only if the
    opponent's e-process crosses ``2R/delta`` or, at the cap, the empirical
    mean errs (probability ``delta/(2R)`` each when its gap is at least
    ``epsilon``), so the error is at most ``delta`` on instances whose winner
    beats everyone by ``epsilon``.
    """

    def __init__(self, n_policies: int, delta: float, *, epsilon: float = 0.05,
                 seed: int = 0):
        super().__init__(n_policies, delta, "verify")
        if not 0.0 < epsilon < 0.5:
            raise InputError(f"epsilon: got {epsilon!r}, expected a number in (0, 0.5)")
        self._rng = np.random.default_rng(seed)
        self._rounds = max(1, math.ceil(math.log2(self.n_policies)))
        self.log_threshold = math.log(2 * self._rounds / self.delta)
        self.cap = math.ceil(self.log_threshold / (2 * epsilon**2))
        self._players = [int(p) for p in self._rng.permutation(self.n_policies)]
        self._match_winner: dict[int, int] = {}
        self._winner_evidence: list[float] = []
        self._matches = self._pair_up()

    @property
    def stopped(self) -> bool:
        return len(self._players) == 1

    def _pair_up(self) -> list[int]:
        players = self._players
        return [
            int(self.pair_index[players[k], players[k + 1]])
            for k in range(0, len(players) - 1, 2)
        ]

    def _resolve(self, pair: int) -> int | None:
        a, b = int(self.first[pair]), int(self.second[pair])
        if self.evidence[a, b] >= self.log_threshold:
            return a
        if self.evidence[b, a] >= self.log_threshold:
            return b
        if self.counts[pair] >= self.cap:
            mean = self.sums[pair] / self.counts[pair]
            if mean == 0.5:
                return a if self._rng.random() < 0.5 else b
            return a if mean > 0.5 else b
        return None

    def _after_record(self, i: int, j: int) -> None:
        pair = int(self.pair_index[i, j])
        if pair not in self._matches or pair in self._match_winner:
            return
        winner = self._resolve(pair)
        if winner is None:
            return
        self._match_winner[pair] = winner
        loser = i + j - winner
        self._winner_evidence.append(float(self.evidence[winner, loser]))
        if all(m in self._match_winner for m in self._matches):
            advancing = []
            players = self._players
            for k in range(0, len(players) - 1, 2):
                m = int(self.pair_index[players[k], players[k + 1]])
                advancing.append(self._match_winner[m])
            if len(players) % 2:
                advancing.append(players[-1])
            self._players = advancing
            self._matches = self._pair_up() if len(advancing) > 1 else []

    def _next_pair(self) -> int | None:
        open_ = [m for m in self._matches if m not in self._match_winner]
        if not open_:
            return None
        open_arr = np.array(open_)
        n = self.counts[open_arr] + self.pending[open_arr]
        return int(open_arr[np.argmin(n)])

    def decision(self) -> Decision:
        if self.stopped:
            leader = self._players[0]
            return Decision(True, leader, self.delta,
                            min(self._winner_evidence, default=0.0), self.log_threshold)
        return Decision(False, self.leader(), 1.0, 0.0, self.log_threshold)
