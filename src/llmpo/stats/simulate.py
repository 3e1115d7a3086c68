"""Running a procedure against a simulated judge.

The loop the executor runs against real judges, stripped to arrays: propose a
batch, let every duel of it land, fold each outcome in, and stop when the rule
fires or the duel budget is spent. Duels of a batch that land after the rule
fired are recorded and paid for, and do not change the decision.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from llmpo.stats.instances import Instance
from llmpo.stats.procedure import Decision, Procedure


@dataclass(frozen=True)
class Outcome:
    """How one simulated run ended.

    ``duels`` counts every duel paid for (those in flight when the rule fired
    included); ``seconds`` is the compute time spent in the procedure and the
    simulated judge; ``counts`` is the number of completed duels per pair.
    """

    decision: Decision
    duels: int
    seconds: float
    counts: np.ndarray | None


def simulate(
    procedure: Procedure,
    instance: Instance,
    rng: np.random.Generator,
    *,
    budget: int | None = None,
    batch: int = 1,
) -> Outcome:
    """Run ``procedure`` against duels drawn from ``instance`` until it stops.

    Parameters
    ----------
    procedure : Procedure
        A fresh procedure over ``instance.n_policies`` policies.
    instance : Instance
        The simulated judge.
    rng : numpy.random.Generator
        Source of the duel outcomes.
    budget : int, optional
        Largest number of duels to launch; the run is undecided if the rule
        has not fired by then.
    batch : int
        Duels proposed and launched at once.

    Returns
    -------
    Outcome
    """
    start = time.perf_counter()
    spent = 0
    stopped = False
    while not stopped:
        size = batch if budget is None else min(batch, budget - spent)
        if size <= 0:
            break
        proposal = procedure.propose(size)
        if not proposal:
            break
        spent += len(proposal)
        first = np.fromiter((a for a, _ in proposal), dtype=np.int64)
        second = np.fromiter((b for _, b in proposal), dtype=np.int64)
        outcomes = instance.duels(first, second, rng)
        for a, b, x in zip(first.tolist(), second.tolist(), outcomes.tolist()):
            procedure.record(a, b, x)
        stopped = procedure.stopped
    decision = procedure.settled_decision()
    counts = getattr(procedure, "counts", None)
    return Outcome(
        decision=decision,
        duels=spent,
        seconds=time.perf_counter() - start,
        counts=None if counts is None else np.array(counts, dtype=float),
    )
