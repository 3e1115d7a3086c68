"""Starting and resuming runs: from an experiment file or a run store to a decision.

A run is one execution of an experiment, recorded in one SQLite store. This
module wires the parts together (policies, tasks, judge, backends, procedure,
store, :class:`llmpo.executor.Executor`) and adds what happens around the
duels: the default store path, rebuilding a killed or stopped run from its
store, and the held-out comparison after a decision. Everything a resumed run
needs is in the store: the resolved experiment (tasks and rubric inlined,
secrets only as variable names), the counted duels and the duels in flight.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from llmpo.backends.registry import Backends
from llmpo.errors import InputError, StoreError
from llmpo.executor import (
    ExecutionResult,
    Executor,
    Limits,
    Progress,
    decision_record,
    play_heldout,
    replay,
)
from llmpo.experiment import Experiment, load_experiment
from llmpo.judges.factory import build_judge
from llmpo.stats.procedure import Decision, Procedure
from llmpo.stats.sampling import LLMPO
from llmpo.stats.structured import StructuredLLMPO
from llmpo.store import RunStore

logger = logging.getLogger(__name__)

DEFAULT_RUNS_DIR = Path("llmpo-runs")
FINAL_STATUSES = ("decided", "undecided")


@dataclass(frozen=True)
class RunOutcome:
    """What ``llmpo run`` and ``llmpo resume`` report once a run ends.

    Attributes
    ----------
    store_path : Path
        The run store.
    status : str
        ``decided``, ``undecided`` or ``failed``.
    decision : dict
        The stored decision: ``leader``, ``leader_name``, ``stopped``,
        ``p_value``, ``log_evidence``, ``log_threshold``, ``reason``,
        ``n_duels``, ``delta``.
    summary : dict
        :meth:`llmpo.store.RunStore.summary` of the store.
    heldout : dict or None
        :meth:`llmpo.store.RunStore.heldout_summary`, or ``None`` when there
        was no held-out comparison.
    heldout_note : str or None
        Why there is no held-out comparison, when there could have been one.
    generations_requested, generations_reused : int
        Generations asked of a backend in this process, and generations taken
        from the store instead.
    """

    store_path: Path
    status: str
    decision: dict[str, Any]
    summary: dict[str, Any]
    heldout: dict[str, Any] | None
    heldout_note: str | None = None
    generations_requested: int = 0
    generations_reused: int = 0

    def to_json(self) -> dict[str, Any]:
        """The outcome as a JSON-ready dict."""
        return {
            "store": str(self.store_path),
            "status": self.status,
            "decision": self.decision,
            "summary": self.summary,
            "heldout": self.heldout,
            "heldout_note": self.heldout_note,
            "generations_requested": self.generations_requested,
            "generations_reused": self.generations_reused,
        }


ProgressCallback = Callable[[Progress], None]


def start_run(
    experiment_path: str | Path,
    store_path: str | Path | None = None,
    *,
    progress: ProgressCallback | None = None,
    on_store: Callable[[Path], None] | None = None,
) -> RunOutcome:
    """Run an experiment from its file to a decision.

    Parameters
    ----------
    experiment_path : str or Path
        The experiment's YAML file (or a directory holding ``experiment.yaml``).
    store_path : str or Path or None
        Where to create the run store; default
        ``./llmpo-runs/<experiment name>-<UTC timestamp>.sqlite``.
    progress : callable or None
        Called with a :class:`llmpo.executor.Progress` as the run advances.
    on_store : callable or None
        Called with the store's path once it exists, before any duel: the
        place to resume from if the run is interrupted.

    Returns
    -------
    RunOutcome

    Raises
    ------
    InputError
        When the experiment is invalid or names a key variable that is not set
        (before the store is created).
    StoreError
        When ``store_path`` exists already.
    KeyboardInterrupt
        When interrupted; the store is left ``stopped`` and can be resumed.
    """
    experiment = load_experiment(experiment_path)
    check_secrets(experiment)
    name = experiment.name or _experiment_stem(Path(experiment_path))
    path = Path(store_path) if store_path is not None else default_store_path(name)
    store = RunStore.create(path, experiment.to_json(), experiment.seed)
    try:
        store.log_event(
            "started",
            f"{name}: {len(experiment.policies)} policies, {len(experiment.tasks)} "
            f"tasks, judge {experiment.judge.kind}, delta {experiment.delta}",
        )
        logger.info("run of %s started, store %s", name, path)
        if on_store is not None:
            on_store(path)
        return _execute(store, experiment, progress=progress)
    finally:
        store.close()


def resume_run(
    store_path: str | Path,
    *,
    progress: ProgressCallback | None = None,
) -> RunOutcome:
    """Continue a stopped, killed or failed run from its store.

    The procedure is rebuilt by replaying the counted duels in the order they
    were committed; duels still ``proposed`` are issued again with their ids,
    seeds and tasks, reusing their saved generations, before anything new is
    proposed. A run that already ended ``decided`` or ``undecided`` is not
    continued (only its held-out comparison is finished, if it was cut short).

    Parameters
    ----------
    store_path : str or Path
        The run store.
    progress : callable or None
        As in :func:`start_run`.

    Returns
    -------
    RunOutcome

    Raises
    ------
    StoreError
        When the store is missing or is not an llmpo run store.
    InputError
        When the stored experiment names a key variable that is not set.
    KeyboardInterrupt
        When interrupted again; the store stays resumable.
    """
    path = Path(store_path)
    store = RunStore.open(path)
    try:
        experiment = Experiment.from_json(store.experiment_json)
        check_secrets(experiment)
        store.log_event("resumed", f"status was {store.status}")
        logger.info("resuming run %s (status %s)", path, store.status)
        return _execute(store, experiment, progress=progress)
    finally:
        store.close()


def default_store_path(name: str, directory: Path = DEFAULT_RUNS_DIR) -> Path:
    """``<directory>/<name>-<UTC timestamp>.sqlite``, a path no file has yet."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "run"
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = directory / f"{safe}-{stamp}.sqlite"
    counter = 1
    while path.exists():
        counter += 1
        path = directory / f"{safe}-{stamp}-{counter}.sqlite"
    return path


def build_procedure(experiment: Experiment) -> Procedure:
    """The sampling and stopping procedure of the experiment's ``space``.

    ``verify`` and ``assume-winner``: :class:`llmpo.stats.sampling.LLMPO`;
    ``structured``: ``llmpo.stats.structured.StructuredLLMPO`` on the policies'
    features.

    """
    n_policies = len(experiment.policies)
    if experiment.space in ("verify", "assume-winner"):
        return LLMPO(
            n_policies, experiment.delta, experiment.space, seed=experiment.seed
        )
    features = np.array([policy.features for policy in experiment.policies], float)
    return StructuredLLMPO(
        features, experiment.delta, rule=experiment.evidence, seed=experiment.seed
    )


def check_secrets(experiment: Experiment) -> None:
    """Refuse to start when a key variable an ``openai`` part names is not set.

    Checked before anything is spent, so a run does not fail at its first
    duel. The key itself is read and dropped, never stored or shown.

    Raises
    ------
    InputError
        Naming the field and the variable.
    """
    from llmpo.backends.openai_backend import resolve_api_key

    named = [
        (f"policies[{index}].api_key_env", policy.api_key_env)
        for index, policy in enumerate(experiment.policies)
        if policy.backend == "openai"
    ]
    judge = experiment.judge
    if judge.kind == "llm" and judge.backend == "openai":
        named.append(("judge.api_key_env", judge.api_key_env))
    for field, variable in named:
        try:
            resolve_api_key(variable)
        except InputError:
            raise InputError(
                f"{field}: got {variable!r}, but that environment variable is not "
                "set; expected it to hold the API key"
            ) from None


# ---------------------------------------------------------------------------
# Internals


def _execute(
    store: RunStore, experiment: Experiment, *, progress: ProgressCallback | None
) -> RunOutcome:
    """Run (or finish) the run of ``store`` in a fresh event loop."""
    return asyncio.run(_execute_async(store, experiment, progress))


async def _execute_async(
    store: RunStore, experiment: Experiment, progress: ProgressCallback | None
) -> RunOutcome:
    prices = {
        model: price.model_dump() for model, price in experiment.budget.prices.items()
    }
    backends = Backends(prices)
    try:
        judge = build_judge(experiment.judge, backends)
        policies = experiment.policy_objects()
        result: ExecutionResult | None = None
        if store.status not in FINAL_STATUSES:
            procedure = build_procedure(experiment)
            frozen = replay(procedure, store)
            pending = store.pending_duels()
            store.set_status("running")
            executor = Executor(
                store,
                procedure,
                policies,
                experiment.task_objects(),
                judge,
                backends,
                seed=experiment.seed,
                concurrency=experiment.concurrency,
                batch=experiment.batch,
                limits=Limits(
                    duels=experiment.budget.duels,
                    tokens=experiment.budget.tokens,
                    money=experiment.budget.money,
                ),
                progress=progress,
                frozen=frozen,
            )
            result = await executor.run(pending)
        decision = _stored_decision(store)
        note = await _heldout(store, experiment, policies, judge, backends, decision)
    finally:
        await backends.aclose()
    return RunOutcome(
        store_path=store.path,
        status=store.status,
        decision=decision,
        summary=store.summary(),
        heldout=store.heldout_summary(),
        heldout_note=note,
        generations_requested=0 if result is None else result.generations_requested,
        generations_reused=0 if result is None else result.generations_reused,
    )


async def _heldout(
    store: RunStore,
    experiment: Experiment,
    policies: list,
    judge: Any,
    backends: Backends,
    decision: dict[str, Any],
) -> str | None:
    """Play the held-out comparison of the chosen policy (or, undecided, the leader)
    against the default policy; return why not, if not."""
    tasks = experiment.heldout_objects()
    baseline = experiment.default_policy_index
    if not tasks or baseline is None:
        return None
    if store.status not in ("decided", "undecided"):
        return "no held-out comparison: the run did not finish"
    chosen = decision.get("leader")
    if chosen is None:
        return "no held-out comparison: no chosen policy"
    if chosen == baseline:
        return "no held-out comparison: the chosen policy is the default policy"
    await play_heldout(
        store,
        policies,
        tasks,
        judge,
        backends,
        chosen=chosen,
        baseline=baseline,
        seed=experiment.seed,
        concurrency=experiment.concurrency,
    )
    return None


def _stored_decision(store: RunStore) -> dict[str, Any]:
    text = store.run["decision_json"]
    if text:
        return json.loads(text)
    decisions = store.decisions()
    if not decisions:
        raise StoreError(f"run store '{store.path}': holds no decision yet")
    last = decisions[-1]
    names = store.policy_names
    decision = Decision(
        stopped=bool(last["stopped"]),
        leader=last["leader"],
        p_value=last["p_value"] if last["p_value"] is not None else 1.0,
        log_evidence=last["log_evidence"] or 0.0,
        log_threshold=last["log_threshold"] or 0.0,
    )
    return decision_record(decision, names, "last recorded decision")


def _experiment_stem(path: Path) -> str:
    """A name for an unnamed experiment: its file's stem, or its folder's name
    when the file is the conventional ``experiment.yaml``."""
    path = path.expanduser()
    if path.is_dir():
        return path.resolve().name
    if path.stem == "experiment":
        return path.resolve().parent.name
    return path.stem
