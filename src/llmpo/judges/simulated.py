"""The simulated judge: verdicts drawn from a known preference model.

It needs no generation and no model, so an experiment on it tests the sampling
and stopping rules against a ground truth (the instance's Condorcet winner or top
policy), and the numerical study runs on it.
"""

from __future__ import annotations

import numpy as np

from llmpo.errors import InputError
from llmpo.judges.base import Verdict
from llmpo.policy import Task
from llmpo.stats.instances import Instance


class SimulatedJudge:
    """Judge a duel of policies ``(i, j)`` by drawing from an instance.

    The outcome is :meth:`Instance.duel` with a NumPy generator seeded from the
    duel's seed: 1 with probability ``p_ij - t_ij/2``, 1/2 with ``t_ij``, else 0.
    The responses are ignored.

    Parameters
    ----------
    instance : Instance
        The preference model; its policies are the experiment's, by index.
    """

    def __init__(self, instance: Instance) -> None:
        self.instance = instance

    async def judge(
        self,
        task: Task,
        i: int,
        j: int,
        response_i: str,
        response_j: str,
        *,
        seed: int,
    ) -> Verdict:
        """Draw the verdict of the duel ``(i, j)``.

        Raises
        ------
        InputError
            When ``i`` or ``j`` is not a policy of the instance, or they are equal.
        """
        n = self.instance.n_policies
        for name, index in (("i", i), ("j", j)):
            if not 0 <= index < n:
                raise InputError(
                    f"simulated judge, policy {name}: got {index}, expected an "
                    f"index in 0..{n - 1} of instance {self.instance.name!r}"
                )
        if i == j:
            raise InputError(
                f"simulated judge: got a duel of policy {i} with itself, "
                "expected two different policies"
            )
        outcome = self.instance.duel(i, j, np.random.default_rng(seed))
        return Verdict(outcome=outcome, raw=f"simulated:{self.instance.name}")
