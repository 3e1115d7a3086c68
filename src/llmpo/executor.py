"""The executor: keeps duels in flight and folds verdicts in as they land.

The one idea: the store is written before the statistics are. A duel is
recorded ``proposed`` before anything is spent on it, each generation is saved
the moment it exists, and the verdict is committed before
:meth:`llmpo.stats.procedure.Procedure.record` sees it. A process killed at any
instant therefore leaves a store from which :func:`replay` rebuilds exactly the
evidence the procedure had, and every duel still ``proposed`` can be issued
again with its own seed and task, reusing whatever generation it already paid
for.

Every random choice of a duel (the order of the pair, its task, the generation
and judge seeds) comes from one per-duel seed, itself derived from the run's
seed and the duel's number, so a run is reproducible and a reissued duel is the
same duel. Batches follow MATH.md §4: the procedure counts pending duels as
done when it proposes. The decision is taken when the run stops proposing (the
stopping rule fires, or a budget would be exceeded); duels still in flight then
are awaited and recorded and do not change it (MATH.md §5).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmpo.errors import BackendError, JudgeError, StoreError
from llmpo.judges.base import Judge, Verdict
from llmpo.policy import Policy, Task
from llmpo.stats.procedure import Decision, Procedure
from llmpo.store import PendingDuel, RunStore

logger = logging.getLogger(__name__)

MAX_CONSECUTIVE_FAILURES = 10
"""Failed duels in a row after which the run is given up as ``failed``."""

# Seeds stay below 2**31: llama.cpp reads 2**32 - 1 as "pick a random seed" and
# some servers take the request seed as a signed 32-bit integer.
_SEED_MASK = 0x7FFFFFFF
# Spawn keys that keep the seed streams of the run apart.
_DUEL_STREAM = 1
_HELDOUT_STREAM = 2
_WITHIN_DUEL = {"draw": 0, "i": 1, "j": 2, "judge": 3}


# ---------------------------------------------------------------------------
# Seeds


def duel_seed(run_seed: int, number: int) -> int:
    """Seed of the duel numbered ``number`` (1, 2, ...) in a run seeded ``run_seed``.

    ``SeedSequence(run_seed, spawn_key=(1, number))``: independent streams per
    duel, the same on every machine and on resume.
    """
    sequence = np.random.SeedSequence(int(run_seed), spawn_key=(_DUEL_STREAM, number))
    return int(sequence.generate_state(1)[0]) & _SEED_MASK


def heldout_seed(run_seed: int, index: int) -> int:
    """Seed of the held-out duel on held-out task ``index`` (from 0)."""
    sequence = np.random.SeedSequence(
        int(run_seed), spawn_key=(_HELDOUT_STREAM, index)
    )
    return int(sequence.generate_state(1)[0]) & _SEED_MASK


def stream_seed(seed: int, stream: str) -> int:
    """Seed of one use of a duel's seed: ``"draw"`` (order and task), ``"i"`` and
    ``"j"`` (the two generations) or ``"judge"``."""
    sequence = np.random.SeedSequence(int(seed), spawn_key=(_WITHIN_DUEL[stream],))
    return int(sequence.generate_state(1)[0]) & _SEED_MASK


def draw_duel(seed: int, pair: tuple[int, int], n_tasks: int) -> tuple[int, int, int]:
    """The order ``(i, j)`` of a proposed pair and the index of its task.

    Both are uniform draws from the duel's ``"draw"`` stream: the first policy
    shown is either one with probability 1/2 (so position effects of a judge
    average out), the task is uniform over the pool.
    """
    rng = np.random.default_rng(stream_seed(seed, "draw"))
    a, b = pair
    if rng.random() < 0.5:
        a, b = b, a
    return int(a), int(b), int(rng.integers(n_tasks))


# ---------------------------------------------------------------------------
# What goes in and what comes out


@dataclass(frozen=True)
class Limits:
    """Spending limits of a run; ``None`` means no limit.

    ``duels`` caps the duels proposed (every state: a duel that ends
    unparsable or failed was paid for too); ``tokens`` the generation and judge
    tokens; ``money`` their cost in the price table's currency.
    """

    duels: int | None = None
    tokens: int | None = None
    money: float | None = None


@dataclass(frozen=True)
class Progress:
    """A snapshot of a run, handed to the progress callback.

    Attributes
    ----------
    counted : int
        Duels with a verdict folded into the evidence.
    finished : int
        Duels no longer in flight: counted, unparsable and failed.
    in_flight : int
        Duels issued and not finished.
    tokens : int
        Generation and judge tokens spent so far.
    cost : float
        Money spent so far.
    leader : str or None
        Name of the current leader.
    log_evidence, log_threshold, p_value : float
        The leader's evidence, the level it must reach, and its anytime p-value.
    stopping : str or None
        Why the run stopped proposing, once it has.
    """

    counted: int
    finished: int
    in_flight: int
    tokens: int
    cost: float
    leader: str | None
    log_evidence: float
    log_threshold: float
    p_value: float
    stopping: str | None = None


@dataclass(frozen=True)
class ExecutionResult:
    """How a run of the executor ended.

    Attributes
    ----------
    status : str
        ``decided``, ``undecided`` or ``failed`` (``stopped`` is never returned:
        an interrupted run raises).
    reason : str
        ``"stopping rule"``, ``"budget: duels"``, ``"budget: tokens"``,
        ``"budget: money"``, ``"no duel left to propose"`` or
        ``"N failed duels in a row"``.
    decision : Decision
        The decision taken when the run stopped proposing.
    leader : str or None
        Name of ``decision.leader``.
    generations_requested, generations_reused : int
        Generations asked of a backend in this execution, and generations
        taken from the store instead (saved before a resume).
    """

    status: str
    reason: str
    decision: Decision
    leader: str | None
    generations_requested: int
    generations_reused: int


# ---------------------------------------------------------------------------
# The executor


class Executor:
    """Runs the duels a procedure proposes, ``concurrency`` at a time.

    Parameters
    ----------
    store : RunStore
        The run's store, open for writing.
    procedure : Procedure
        The sampling and stopping rule; on resume, already rebuilt by
        :func:`replay`.
    policies : sequence of Policy
        The policies, by index. A fixed ``seed`` in ``params`` is used for
        every generation of that policy instead of the duel's seed.
    tasks : sequence of Task
        The task pool.
    judge : Judge
        Gives the verdicts.
    backends : object
        Has ``async generate(policy, task, *, seed) -> Generation``; not called
        for policies of backend ``none``.
    seed : int
        The run's seed.
    concurrency : int
        Duels in flight at once.
    batch : int or None
        Largest number of duels asked of the procedure at once (``None``: as
        many as there are free slots).
    limits : Limits
        What the run may spend.
    progress : callable or None
        Called with a :class:`Progress` after every change worth showing. It
        runs in the event loop and should return quickly.
    frozen : Decision or None
        A decision the stopping rule already took (a resumed run killed while
        its last duels were in flight): nothing new is proposed.
    max_consecutive_failures : int
        Failed duels in a row after which the run ends ``failed``.

    Notes
    -----
    Every write to the store goes through one writer thread, in the order it
    was asked for: a commit waits for the disk (the store syncs each one), and
    on the event loop that wait would hold up every duel in flight. A verdict
    reaches the procedure from the writer thread through
    ``loop.call_soon_threadsafe`` right after its commit, and the event loop
    runs such callbacks in the order they were scheduled, so the procedure sees
    verdicts in exactly the store's completion order, the order :func:`replay`
    uses. The procedure itself is only ever touched on the event loop.
    """

    def __init__(
        self,
        store: RunStore,
        procedure: Procedure,
        policies: Sequence[Policy],
        tasks: Sequence[Task],
        judge: Judge,
        backends: Any,
        *,
        seed: int,
        concurrency: int = 4,
        batch: int | None = None,
        limits: Limits = Limits(),
        progress: Callable[[Progress], None] | None = None,
        frozen: Decision | None = None,
        max_consecutive_failures: int = MAX_CONSECUTIVE_FAILURES,
    ):
        self.store = store
        self.procedure = procedure
        self.policies = [_without_seed(policy) for policy in policies]
        self._fixed_seeds = [policy.params.get("seed") for policy in policies]
        self.names = [policy.name for policy in policies]
        self.tasks = list(tasks)
        self._task_by_id = {task.id: task for task in self.tasks}
        self.judge = judge
        self.backends = backends
        self.seed = int(seed)
        self.concurrency = max(1, int(concurrency))
        self.batch = self.concurrency if batch is None else max(1, int(batch))
        self.limits = limits
        self.progress = progress
        self.max_consecutive_failures = max_consecutive_failures
        self.generations_requested = 0
        self.generations_reused = 0

        self._frozen = frozen
        self._reason: str | None = "stopping rule" if frozen is not None else None
        self._decided_at: int | None = None
        self._given_up = False
        self._in_flight: dict[asyncio.Task, PendingDuel] = {}
        self._reissued: set[int] = set()
        self._consecutive_failures = 0
        self._leader: int | None = None
        self._proposals = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer: ThreadPoolExecutor | None = None
        self._write_error: BaseException | None = None
        self._read_store()

    async def run(self, pending: Sequence[PendingDuel] = ()) -> ExecutionResult:
        """Issue ``pending`` duels again, then propose and run duels until the run
        stops; return how it ended.

        Parameters
        ----------
        pending : sequence of PendingDuel
            Duels the store holds as ``proposed`` (a resumed run): issued first,
            with their ids, seeds and tasks, and counted as pending by the
            procedure.

        Raises
        ------
        asyncio.CancelledError, KeyboardInterrupt
            When interrupted: in-flight duels are cancelled and stay
            ``proposed`` in the store, the status becomes ``stopped``.
        LlmpoError
            On an input or store error inside a duel (a missing API key, bad
            decoding parameters, ...): the status becomes ``failed``.
        """
        logger.info(
            "executing: %d duels finished before, %d to issue again, concurrency %d",
            self._finished, len(pending), self.concurrency,
        )
        self._loop = asyncio.get_running_loop()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="llmpo-store")
        try:
            try:
                for duel in pending:
                    self.procedure.add_pending(duel.policy_i, duel.policy_j)
                    self._reissued.add(duel.duel_id)
                    self._issue(duel)
                self._notify()
                while True:
                    await self._propose()
                    if not self._in_flight:
                        break
                    done, _ = await asyncio.wait(
                        self._in_flight, return_when=asyncio.FIRST_COMPLETED
                    )
                    for task in done:
                        self._in_flight.pop(task)
                        # A duel's own failures are handled inside it; what is
                        # raised here (input or store errors) ends the run.
                        task.result()
                    self._raise_write_error()
                    self._notify()
                await self._write(self._raise_write_error)
                self._raise_write_error()
            except (asyncio.CancelledError, KeyboardInterrupt):
                await self._abandon()
                self.store.set_status("stopped")
                self.store.log_event(
                    "stopped", "interrupted; duels in flight stay proposed for resume"
                )
                logger.info("run interrupted; resume it to continue")
                raise
            except BaseException as error:
                await self._abandon()
                self.store.set_status("failed")
                self.store.log_event("failed", f"{type(error).__name__}: {error}")
                raise
        finally:
            self._writer.shutdown(wait=True)
        return self._finish()

    # ------------------------------------------------------------------ proposing

    async def _propose(self) -> None:
        """Fill the free slots with new duels, unless the run stops proposing."""
        if self._reason is not None:
            return
        self._reason = self._stop_reason()
        if self._reason is not None:
            self._fire()
            return
        free = self.concurrency - len(self._in_flight)
        room = min(free, self.batch, self._budget_room())
        if room <= 0:
            return
        pairs = self.procedure.propose(room)
        self._proposals += 1
        decision = self.procedure.settled_decision()
        self._write_later(
            self.store.record_decision,
            n_duels=self.procedure.n_duels,
            leader=decision.leader,
            stopped=decision.stopped,
            p_value=decision.p_value,
            log_evidence=decision.log_evidence,
            log_threshold=decision.log_threshold,
            proposed_pairs=pairs,
        )
        if not pairs:
            if not self._in_flight:
                self._reason = "no duel left to propose"
                self._fire()
            return
        for pair in pairs:
            number = self._next_number
            self._next_number += 1
            seed = duel_seed(self.seed, number)
            i, j, task_index = draw_duel(seed, pair, len(self.tasks))
            task_id = self.tasks[task_index].id
            # Recorded before anything is spent on it: a duel the store does not
            # know of could be paid for and never found again.
            duel_id = await self._write(
                self.store.propose_duel, i, j, task_id, seed, batch=self._proposals
            )
            if duel_id != number:
                raise StoreError(
                    f"run store '{self.store.path}': duel {number} was stored as "
                    f"{duel_id}; another process may be writing this run"
                )
            self._proposed += 1
            self._issue(PendingDuel(duel_id, i, j, task_id, seed, self._proposals))

    def _stop_reason(self) -> str | None:
        """Why the run must stop proposing now, or ``None``."""
        if self.procedure.stopped:
            return "stopping rule"
        if self._consecutive_failures >= self.max_consecutive_failures:
            self._given_up = True
            return f"{self._consecutive_failures} failed duels in a row"
        limits = self.limits
        if limits.duels is not None and self._proposed >= limits.duels:
            return "budget: duels"
        in_flight = len(self._in_flight)
        if limits.tokens is not None and _would_exceed(
            self._tokens, self._per_duel(self._tokens), in_flight, limits.tokens
        ):
            return "budget: tokens"
        if limits.money is not None and _would_exceed(
            self._cost, self._per_duel(self._cost), in_flight, limits.money
        ):
            return "budget: money"
        return None

    def _budget_room(self) -> int:
        """How many more duels fit in the budgets, by the spend per duel so far."""
        room = math.inf
        limits = self.limits
        if limits.duels is not None:
            room = min(room, limits.duels - self._proposed)
        for limit, spent in ((limits.tokens, self._tokens), (limits.money, self._cost)):
            per_duel = self._per_duel(spent)
            if limit is not None and per_duel > 0:
                room = min(
                    room,
                    math.floor((limit - spent) / per_duel) - len(self._in_flight),
                )
        return int(room) if math.isfinite(room) else self.concurrency

    def _per_duel(self, spent: float) -> float:
        # Before the first duel finishes nothing is known of the spend per duel;
        # the first batch is proposed on trust.
        return spent / self._finished if self._finished else 0.0

    def _fire(self) -> None:
        """Take the decision, now that the run stops proposing."""
        if self._frozen is None:
            self._frozen = self.procedure.settled_decision()
        self._decided_at = self.procedure.n_duels
        decision = self._frozen
        self._write_later(
            self.store.record_decision,
            n_duels=self.procedure.n_duels,
            leader=decision.leader,
            stopped=decision.stopped,
            p_value=decision.p_value,
            log_evidence=decision.log_evidence,
            log_threshold=decision.log_threshold,
        )
        self._write_later(
            self.store.log_event,
            "stopping",
            f"{self._reason}: leader {self._name(decision.leader)}, p-value "
            f"{decision.p_value:.4g}, {len(self._in_flight)} duels still in flight",
        )
        logger.info(
            "stops proposing (%s): leader %s, evidence %.2f of %.2f, p-value %.4g",
            self._reason, self._name(decision.leader), decision.log_evidence,
            decision.log_threshold, decision.p_value,
        )

    # ------------------------------------------------------------------ one duel

    def _issue(self, duel: PendingDuel) -> None:
        task = self._loop.create_task(self._play(duel), name=f"duel-{duel.duel_id}")
        self._in_flight[task] = duel

    async def _play(self, duel: PendingDuel) -> None:
        """Generate, judge and record one duel; failures are recorded, not raised."""
        task = self._task_by_id.get(duel.task_id)
        if task is None:
            raise StoreError(
                f"run store '{self.store.path}': duel {duel.duel_id} names task "
                f"{duel.task_id!r}, which is not in the experiment's task pool"
            )
        start = time.perf_counter()
        try:
            response_i, response_j = await self._responses(duel, task)
            verdict = await self.judge.judge(
                task,
                duel.policy_i,
                duel.policy_j,
                response_i,
                response_j,
                seed=stream_seed(duel.seed, "judge"),
            )
        except (BackendError, JudgeError) as error:
            reason = f"{type(error).__name__}: {error}"
            await self._write(self._commit_failure, duel, reason)
            return
        latency_s = time.perf_counter() - start
        await self._write(self._commit_verdict, duel, verdict, latency_s)

    async def _responses(self, duel: PendingDuel, task: Task) -> tuple[str, str]:
        results = await asyncio.gather(
            self._response(duel, task, "i"),
            self._response(duel, task, "j"),
            return_exceptions=True,
        )
        # Both sides run to the end before an error is raised, so a generation
        # that succeeded is saved even when its rival failed.
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results[0], results[1]

    async def _response(self, duel: PendingDuel, task: Task, side: str) -> str:
        index = duel.policy_i if side == "i" else duel.policy_j
        policy = self.policies[index]
        if policy.backend == "none":
            return ""
        if duel.duel_id in self._reissued:
            saved = await self._write(self.store.generation, duel.duel_id, side)
            if saved is not None:
                self.generations_reused += 1
                return saved.text
        fixed = self._fixed_seeds[index]
        seed = int(fixed) if fixed is not None else stream_seed(duel.seed, side)
        self.generations_requested += 1
        generation = await self.backends.generate(policy, task, seed=seed)
        await self._write(
            self.store.save_generation,
            duel.duel_id,
            side,
            **dataclasses.asdict(generation),
        )
        self._tokens += generation.prompt_tokens + generation.completion_tokens
        self._cost += generation.cost
        return generation.text

    def _commit_verdict(self, duel: PendingDuel, verdict: Verdict, latency_s: float):
        """On the writer thread: commit the verdict, then hand it to the loop."""
        self.store.complete_duel(
            duel.duel_id,
            verdict.outcome,
            judge_raw=verdict.raw,
            order_shown=verdict.order,
            flags=verdict.flags,
            judge_prompt_tokens=verdict.prompt_tokens,
            judge_completion_tokens=verdict.completion_tokens,
            judge_cost=verdict.cost,
            latency_s=latency_s,
        )
        # Scheduled even if the duel's task is being cancelled: the procedure
        # must hold every verdict the store holds.
        self._loop.call_soon_threadsafe(self._fold, duel, verdict)

    def _commit_failure(self, duel: PendingDuel, reason: str) -> None:
        """On the writer thread: mark the duel failed, then tell the loop."""
        self.store.fail_duel(duel.duel_id, reason)
        self.store.log_event("duel failed", f"duel {duel.duel_id}: {reason}")
        self._loop.call_soon_threadsafe(self._fold_failure, duel, reason)

    def _fold(self, duel: PendingDuel, verdict: Verdict) -> None:
        """On the loop: fold a committed verdict into the procedure."""
        self._tokens += verdict.prompt_tokens + verdict.completion_tokens
        self._cost += verdict.cost
        self._finished += 1
        self._consecutive_failures = 0
        if verdict.outcome is None:
            self.procedure.release(duel.policy_i, duel.policy_j)
            logger.debug("duel %d: verdict unparsable, not counted", duel.duel_id)
            return
        self.procedure.record(duel.policy_i, duel.policy_j, verdict.outcome)
        self._counted += 1
        self._after_record()

    def _fold_failure(self, duel: PendingDuel, reason: str) -> None:
        self.procedure.release(duel.policy_i, duel.policy_j)
        self._finished += 1
        self._consecutive_failures += 1
        logger.warning("duel %d failed: %s", duel.duel_id, reason)

    def _after_record(self) -> None:
        decision = self.procedure.settled_decision()
        if decision.leader != self._leader:
            logger.info(
                "leader %s -> %s after %d duels (evidence %.2f of %.2f)",
                self._name(self._leader), self._name(decision.leader),
                self.procedure.n_duels, decision.log_evidence, decision.log_threshold,
            )
            self._leader = decision.leader
            self._write_later(
                self.store.record_decision,
                n_duels=self.procedure.n_duels,
                leader=decision.leader,
                stopped=decision.stopped,
                p_value=decision.p_value,
                log_evidence=decision.log_evidence,
                log_threshold=decision.log_threshold,
            )
        if self._reason is None and decision.stopped:
            self._reason = "stopping rule"
            self._fire()

    # ------------------------------------------------------------------ the end

    def _finish(self) -> ExecutionResult:
        reason = self._reason or "no duel left to propose"
        if self._frozen is None:
            self._frozen = self.procedure.settled_decision()
        decision = self._frozen
        if decision.stopped:
            status = "decided"
        elif self._given_up:
            status = "failed"
        else:
            status = "undecided"
        record = decision_record(
            decision,
            self.names,
            reason,
            n_duels=self._decided_at
            if self._decided_at is not None
            else self.procedure.n_duels,
            delta=self.procedure.delta,
        )
        self.store.set_status(status, record)
        self.store.log_event(
            status,
            f"{reason}: leader {self._name(decision.leader)}, p-value "
            f"{decision.p_value:.4g}, {self._counted} duels counted",
        )
        logger.info(
            "run %s (%s): leader %s, p-value %.4g, %d duels counted, %d tokens, "
            "cost %.4g",
            status, reason, self._name(decision.leader), decision.p_value,
            self._counted, self._tokens, self._cost,
        )
        self._notify()
        return ExecutionResult(
            status=status,
            reason=reason,
            decision=decision,
            leader=self._name(decision.leader),
            generations_requested=self.generations_requested,
            generations_reused=self.generations_reused,
        )

    async def _abandon(self) -> None:
        """Cancel the duels in flight and let the writer finish what it holds."""
        tasks = list(self._in_flight)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._in_flight.clear()
        await asyncio.shield(self._loop.run_in_executor(self._writer, _nothing))

    # ------------------------------------------------------------------ the store

    async def _write(self, function: Callable[..., Any], *args: Any, **kwargs: Any):
        """Run a store call on the writer thread and wait for its result."""
        return await self._loop.run_in_executor(
            self._writer, functools.partial(function, *args, **kwargs)
        )

    def _write_later(self, function: Callable[..., Any], *args: Any, **kwargs: Any):
        """Queue a store call on the writer thread without waiting for it; its
        error, if any, ends the run at the next turn of the loop."""
        future = self._loop.run_in_executor(
            self._writer, functools.partial(function, *args, **kwargs)
        )
        future.add_done_callback(self._keep_write_error)

    def _keep_write_error(self, future: asyncio.Future) -> None:
        if not future.cancelled() and future.exception() is not None:
            self._write_error = self._write_error or future.exception()

    def _raise_write_error(self) -> None:
        if self._write_error is not None:
            raise self._write_error

    def _read_store(self) -> None:
        """Counts and spending so far, from the store (non-zero on resume)."""
        summary = self.store.summary()
        states = summary["duels"]
        self._proposed = sum(states.values())
        self._finished = self._proposed - states["proposed"]
        self._counted = states["done"]
        last = max((row["id"] for row in self.store.duels()), default=0)
        self._next_number = last + 1
        self._tokens = sum(summary["generation_tokens"].values()) + sum(
            summary["judge_tokens"].values()
        )
        self._cost = summary["cost"]["total"]
        self._leader = self.procedure.decision().leader if self._counted else None

    def _current_decision(self) -> Decision:
        return self._frozen if self._frozen is not None else self.procedure.decision()

    def _name(self, index: int | None) -> str | None:
        return None if index is None else self.names[index]

    def _notify(self) -> None:
        if self.progress is None:
            return
        decision = self._current_decision()
        self.progress(
            Progress(
                counted=self._counted,
                finished=self._finished,
                in_flight=len(self._in_flight),
                tokens=self._tokens,
                cost=self._cost,
                leader=self._name(decision.leader),
                log_evidence=decision.log_evidence,
                log_threshold=decision.log_threshold,
                p_value=decision.p_value,
                stopping=self._reason,
            )
        )


def _would_exceed(spent: float, per_duel: float, in_flight: int, limit: float) -> bool:
    """Whether one more duel, after those in flight, would pass ``limit``."""
    return spent >= limit or spent + (in_flight + 1) * per_duel > limit


def _nothing() -> None:
    """A no-op for the writer thread: once it ran, every earlier write has."""


# ---------------------------------------------------------------------------
# The held-out comparison


async def play_heldout(
    store: RunStore,
    policies: Sequence[Policy],
    tasks: Sequence[Task],
    judge: Judge,
    backends: Any,
    *,
    chosen: int,
    baseline: int,
    seed: int,
    concurrency: int = 4,
) -> None:
    """Duel the chosen policy against the baseline once on every held-out task.

    Each duel is stored in the store's ``heldout_duels`` table, never with the
    run's duels, so it cannot count for the decision. Tasks that already have a
    held-out duel are skipped, so a resumed run finishes the comparison. The
    order shown is drawn per task from :func:`heldout_seed`, so a judge's
    position bias averages out over the tasks. A held-out duel interrupted
    before it is recorded is played again from the start on resume, its
    generations paid again: they are saved with the duel, not before it.

    Raises
    ------
    LlmpoError
        On input errors (a backend error or a judge error is recorded as a
        ``failed`` held-out duel instead).
    """
    recorded = {row["task_id"] for row in store.heldout_duels()}
    runnable = [_without_seed(policy) for policy in policies]
    fixed_seeds = [policy.params.get("seed") for policy in policies]
    slots = asyncio.Semaphore(max(1, int(concurrency)))

    async def one(index: int, task: Task) -> None:
        async with slots:
            duel = heldout_seed(seed, index)
            rng = np.random.default_rng(stream_seed(duel, "draw"))
            i, j = (chosen, baseline) if rng.random() < 0.5 else (baseline, chosen)
            fields: dict[str, Any] = {}
            tokens = {"generation": 0, "judge": 0}
            cost = 0.0
            start = time.perf_counter()
            try:
                texts = []
                for side, index_ in (("i", i), ("j", j)):
                    policy = runnable[index_]
                    if policy.backend == "none":
                        texts.append("")
                        continue
                    fixed = fixed_seeds[index_]
                    if fixed is None:
                        fixed = stream_seed(duel, side)
                    generation = await backends.generate(policy, task, seed=int(fixed))
                    texts.append(generation.text)
                    tokens["generation"] += (
                        generation.prompt_tokens + generation.completion_tokens
                    )
                    cost += generation.cost
                verdict = await judge.judge(
                    task, i, j, texts[0], texts[1], seed=stream_seed(duel, "judge")
                )
            except (BackendError, JudgeError) as error:
                fields["error"] = f"{type(error).__name__}: {error}"
            else:
                tokens["judge"] = verdict.prompt_tokens + verdict.completion_tokens
                cost += verdict.cost
                fields.update(
                    outcome=verdict.outcome,
                    response_i=texts[0],
                    response_j=texts[1],
                    judge_raw=verdict.raw,
                    order_shown=verdict.order,
                    flags=verdict.flags,
                )
            store.save_heldout_duel(
                task.id,
                chosen=chosen,
                baseline=baseline,
                policy_i=i,
                policy_j=j,
                seed=duel,
                generation_tokens=tokens["generation"],
                judge_tokens=tokens["judge"],
                cost=cost,
                latency_s=time.perf_counter() - start,
                **fields,
            )

    todo = [
        one(index, task) for index, task in enumerate(tasks) if task.id not in recorded
    ]
    if todo:
        logger.info(
            "held-out comparison: %d tasks, %s against %s",
            len(todo), policies[chosen].name, policies[baseline].name,
        )
    await asyncio.gather(*todo)


# ---------------------------------------------------------------------------
# Rebuilding and recording


def replay(procedure: Procedure, store: RunStore) -> Decision | None:
    """Fold the store's counted duels into ``procedure``, in completion order.

    Returns the decision the stopping rule took during the run, if it fired:
    the first point of the replay at which the procedure stops, which is where
    the original run stopped too, because verdicts reached the procedure in the
    order the store committed them.
    """
    first, second, outcomes = store.outcomes()
    frozen = None
    for i, j, outcome in zip(first.tolist(), second.tolist(), outcomes.tolist()):
        procedure.record(i, j, outcome)
        if frozen is None and procedure.stopped:
            frozen = procedure.decision()
    return frozen


def decision_record(
    decision: Decision,
    names: Sequence[str],
    reason: str,
    *,
    n_duels: int | None = None,
    delta: float | None = None,
) -> dict[str, Any]:
    """The decision as the plain dict stored in ``run.decision_json``.

    ``n_duels`` is the number of counted duels the decision was taken on (duels
    that landed after it are stored and counted in the summary, not in it).
    """
    leader = decision.leader
    return {
        "stopped": bool(decision.stopped),
        "leader": leader,
        "leader_name": None if leader is None else names[leader],
        "p_value": _finite(decision.p_value),
        "log_evidence": _finite(decision.log_evidence),
        "log_threshold": _finite(decision.log_threshold),
        "reason": reason,
        "n_duels": None if n_duels is None else int(n_duels),
        "delta": None if delta is None else float(delta),
    }


def _finite(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _without_seed(policy: Policy) -> Policy:
    """The policy without a fixed ``seed`` parameter, which backends do not take
    as a decoding parameter: the executor passes it as the generation seed."""
    if "seed" not in policy.params:
        return policy
    params = {key: value for key, value in policy.params.items() if key != "seed"}
    return dataclasses.replace(policy, params=params)
