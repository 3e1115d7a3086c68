"""The human judge: a person reads both responses in the terminal and picks one.

The responses are labelled A and B in an order drawn from the duel's seed, so the
person cannot learn which policy sits on which side. Reading the answer blocks,
so it runs in a worker thread; one duel is shown at a time even when several are
in flight.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import TextIO

import numpy as np
from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from llmpo.errors import JudgeError
from llmpo.judges.base import Verdict
from llmpo.policy import Task

logger = logging.getLogger(__name__)


class HumanJudge:
    """Ask a person which of two responses is better.

    Parameters
    ----------
    ties : bool
        Whether ``t`` (a tie) is an accepted answer.
    input : text stream or None
        Where answers are read, one per line; standard input when ``None``.
    console : rich.console.Console or None
        Where the duel is shown; a console on standard error when ``None``.
    """

    def __init__(
        self,
        *,
        ties: bool = True,
        input: TextIO | None = None,
        console: Console | None = None,
    ) -> None:
        self.ties = bool(ties)
        self.input = input
        self.console = console if console is not None else Console(stderr=True)
        self._one_at_a_time = asyncio.Lock()

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
        """Show the duel, read ``a``, ``b`` or ``t`` and return the verdict for ``i``.

        Any other answer is refused and asked again. ``raw`` holds every line
        typed, refused ones included.

        Raises
        ------
        JudgeError
            When the input ends before an accepted answer.
        """
        rng = np.random.default_rng(seed)
        shown = "ij" if rng.random() < 0.5 else "ji"
        response_a, response_b = (
            (response_i, response_j) if shown == "ij" else (response_j, response_i)
        )
        async with self._one_at_a_time:
            choice, typed = await asyncio.to_thread(
                self._ask, task, response_a, response_b
            )
        if choice == "t":
            outcome = 0.5
        else:
            outcome = 1.0 if (choice == "a") == (shown == "ij") else 0.0
        return Verdict(outcome=outcome, raw="\n".join(typed), order=shown)

    # ---------------------------------------------------------------- internals

    def _ask(
        self, task: Task, response_a: str, response_b: str
    ) -> tuple[str, list[str]]:
        """Show the duel and read lines until one is an accepted answer."""
        # Text objects, not strings: a response's square brackets must not be
        # read as rich markup.
        self.console.print(Panel(Text(task.prompt), title=f"Task {task.id}"))
        self.console.print(Panel(Text(response_a), title="A"))
        self.console.print(Panel(Text(response_b), title="B"))
        accepted = ("a", "b", "t") if self.ties else ("a", "b")
        question = (
            "Which is better? a / b / t (tie): " if self.ties
            else "Which is better? a / b: "
        )
        stream = self.input if self.input is not None else sys.stdin
        typed: list[str] = []
        while True:
            self.console.print(question, end="", markup=False)
            line = stream.readline()
            if not line:
                raise JudgeError(
                    f"human judge, task {task.id}: input ended before an answer "
                    f"(expected one of {', '.join(accepted)})"
                )
            answer = line.strip().lower()
            typed.append(line.rstrip("\n"))
            if answer in accepted:
                return answer, typed
            self.console.print(
                f"Please answer {' or '.join(accepted)}.", markup=False
            )
