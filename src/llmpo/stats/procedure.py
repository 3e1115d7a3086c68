"""The interface every identification procedure follows.

A procedure is a sampling rule, a stopping rule and a recommendation. The
executor (or the simulator) asks it for duels with :meth:`Procedure.propose`,
runs them, and hands back each outcome with :meth:`Procedure.record`. Duels that
were proposed and not yet recorded are *pending*: the sampling rule counts them
as done so that a batch spreads over pairs, while the evidence and the decision
use completed duels only.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    """What a procedure would say now.

    Parameters
    ----------
    stopped : bool
        True when the stopping rule has fired: ``leader`` is certified at the
        procedure's ``delta``.
    leader : int or None
        The recommended policy (0-based), ``None`` when there is no candidate.
    p_value : float
        Anytime-valid p-value of the statement "``leader`` is the best policy":
        the smallest ``delta`` at which the rule would have stopped for it.
    log_evidence : float
        The leader's evidence in nats, on the scale of ``log_threshold``
        (the smallest of its per-rival evidences, for instance).
    log_threshold : float
        The level ``log_evidence`` must reach for the rule to stop.
    """

    stopped: bool
    leader: int | None
    p_value: float
    log_evidence: float
    log_threshold: float


class Procedure(abc.ABC):
    """Base class of sampling-and-stopping procedures over ``n_policies`` policies.

    Pairs are unordered ``(a, b)`` with ``a < b``; an outcome ``x`` of the ordered
    duel ``(i, j)`` is stored for ``(j, i)`` as ``1 - x``.
    """

    n_policies: int
    delta: float

    @abc.abstractmethod
    def propose(self, size: int = 1) -> list[tuple[int, int]]:
        """Return the next ``size`` duels to launch as pairs ``(a, b)``, ``a < b``.

        Each returned duel becomes pending until it is recorded or released. An
        empty list means the procedure wants no more duels (it has stopped, or
        it has nothing left to ask).
        """

    @abc.abstractmethod
    def record(self, i: int, j: int, outcome: float) -> None:
        """Fold in a completed duel of ``i`` against ``j`` with ``outcome`` in [0, 1].

        Clears one pending duel of the pair when there is one (a duel recorded
        without having been proposed, e.g. replayed from a store, is accepted).
        """

    @abc.abstractmethod
    def release(self, i: int, j: int) -> None:
        """Forget one pending duel of the pair that will never be recorded."""

    @abc.abstractmethod
    def add_pending(self, i: int, j: int) -> None:
        """Count a duel of the pair as pending without proposing it (a duel
        reissued on resume)."""

    @abc.abstractmethod
    def decision(self) -> Decision:
        """The current decision, from completed duels only."""

    def settled_decision(self) -> Decision:
        """The current decision with its evidence as strong as the data allow,
        for a person to read (the end of a run, a report). Procedures whose
        :meth:`decision` keeps stale, conservative bounds between checks
        recompute them here; the others return :meth:`decision`."""
        return self.decision()

    @property
    def stopped(self) -> bool:
        """True once the stopping rule has fired. Subclasses keep it cheap: the
        loop asks after every duel."""
        return self.decision().stopped

    @property
    @abc.abstractmethod
    def n_duels(self) -> int:
        """Number of completed duels folded in."""

    def proportions(self):
        """Optimal proportions at the current estimate, over pairs in
        :func:`llmpo.stats.preference.pair_index` order, or ``None`` when the
        procedure has no such notion."""
        return None
