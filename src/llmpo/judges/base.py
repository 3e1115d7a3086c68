"""The judge interface: a verdict in [0, 1] for the first policy of a duel, or none."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from llmpo.policy import Task


@dataclass(frozen=True)
class Verdict:
    """The verdict of one duel of policies ``(i, j)``.

    Parameters
    ----------
    outcome : float or None
        1 when the response of ``i`` wins, 0 when that of ``j`` wins, 1/2 for a
        tie (or the average of two orders). ``None`` when the judge's answer
        could not be parsed after its retries: such a duel is recorded and never
        counted.
    raw : str
        The judge's raw output (all attempts, both orders), kept for the store.
    order : str
        What the judge was shown: ``"ij"`` (i's response first), ``"ji"``, or
        ``"both"``.
    flags : tuple of str
        Things worth a look, such as ``"injection"`` when a response tried to
        instruct the judge or break its delimiters.
    prompt_tokens, completion_tokens, cost : judge spending.
    """

    outcome: float | None
    raw: str = ""
    order: str = "ij"
    flags: tuple[str, ...] = field(default_factory=tuple)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0


class Judge(Protocol):
    """Compares two responses to one task."""

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
        """Return the verdict of the duel of policy ``i`` against policy ``j``.

        ``i`` and ``j`` are policy indices (a simulated judge needs them; others
        may ignore them). ``seed`` drives any randomness, such as the order
        shown, so that a resumed run repeats the same choices.
        """
        ...
