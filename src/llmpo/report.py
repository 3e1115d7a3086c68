"""The report of a run: one static HTML page and its PNG plots.

The report says what a run decided and why, from its store alone: the decision
and the guarantee behind it, the leader's evidence against the threshold over
the counted duels, how the duels were spread over pairs against the optimal
proportions, the win rates, the spending, the policies and a few duels to read.
The one idea: the evidence is not taken on trust from the run, it is rebuilt by
replaying the counted duels, in the order the store committed them, through a
fresh copy of the procedure the run used, so the plot shows what the stopping
rule saw.

Everything read from the store is text written by policies, judges and users;
all of it is HTML-escaped, and the page loads nothing from outside its folder
(inline CSS, images by relative path, one inline script allowed by hash).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmpo import __version__
from llmpo import report_plots
from llmpo.experiment import Experiment
from llmpo.stats.pairs import pair_matrix, pairs
from llmpo.stats.procedure import Procedure
from llmpo.runner import build_procedure
from llmpo.store import RunStore

logger = logging.getLogger(__name__)

REPORT_FILE = "index.html"
PLOT_FILES = {
    "evidence": "evidence.png",
    "allocation": "allocation.png",
    "wins": "win-matrix.png",
    "spending": "spending.png",
}
EXAMPLE_DUELS = 5
MAX_RESPONSE_CHARS = 4000
MAX_JUDGE_CHARS = 3000
MAX_ALLOCATION_PAIRS = 20
# Points of the evidence curve: every duel up to these counts, evenly spaced
# beyond. A structured decision refits a logistic model, an unstructured one
# reads a few arrays, hence the different budgets.
MAX_PAIRWISE_POINTS = 5000
MAX_STRUCTURED_POINTS = 150

BEST = {
    "verify": "the policy that beats every other one head to head",
    "assume-winner": "the policy that beats every other one head to head",
    "structured": (
        "the top policy of the Bradley-Terry preference model on the policies' "
        "features"
    ),
}


def default_report_dir(store_path: str | Path) -> Path:
    """``<store folder>/<store stem>-report``: where a run's report goes by default."""
    path = Path(store_path)
    return path.with_name(f"{path.stem}-report")


def write_report(store_path: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write the report of a run: ``index.html`` and its PNG plots.

    The store is opened read-only, so a report can be written while the run
    is still going (it then shows the run as it stands).

    Parameters
    ----------
    store_path : str or Path
        The run store (SQLite file).
    out_dir : str or Path or None
        Folder to write into, created if needed; files of an earlier report
        there are replaced. Default: :func:`default_report_dir`.

    Returns
    -------
    Path
        The ``index.html`` written.

    Raises
    ------
    StoreError
        When the store is missing or is not an llmpo run store.
    InputError
        When the experiment stored in the run is not a valid experiment.
    """
    directory = Path(out_dir) if out_dir is not None else default_report_dir(store_path)
    with RunStore.open(store_path, readonly=True) as store:
        facts = _gather(store)
    directory.mkdir(parents=True, exist_ok=True)
    plots = _draw(facts, directory)
    for key, name in PLOT_FILES.items():
        if key not in plots:
            # A plot of an earlier report that this one does not have.
            (directory / name).unlink(missing_ok=True)
    page = directory / REPORT_FILE
    page.write_text(_page(facts, plots), encoding="utf-8")
    logger.info("report of %s written to %s", store_path, page)
    return page


def guarantee(
    space: str,
    delta: float,
    *,
    decided: bool,
    leader_name: str | None = None,
    p_value: float | None = None,
    evidence: str = "guaranteed",
) -> str:
    """The guarantee of a run's result, in plain sentences (PRODUCT.md).

    Parameters
    ----------
    space : {"verify", "assume-winner", "structured"}
        The experiment's space: it says what "best" means and under which
        assumption the guarantee holds.
    delta : float
        The error probability the run was set up with.
    decided : bool
        Whether the run stopped with a decision.
    leader_name : str or None
        The leader of an undecided run.
    p_value : float or None
        The leader's anytime p-value: the smallest δ at which it would have
        been certified.
    evidence : {"guaranteed", "glr"}
        The structured space's stopping rule; ``glr`` carries no proof.

    Returns
    -------
    str
        Plain text (to be escaped before it goes into HTML).
    """
    best = BEST.get(space, BEST["verify"])
    core = (
        "If the run stops with a decision, the probability that the chosen policy "
        f"is not the best one is at most δ — best meaning {best}"
    )
    if space == "assume-winner":
        core += (
            " — provided such a policy exists: this run assumed one does (space "
            "assume-winner) and did not check it; if no policy beats every other "
            "one, the decision carries no guarantee."
        )
    elif space == "structured" and evidence == "glr":
        return (
            "No guarantee: this run stopped with the generalized likelihood ratio "
            "against the heuristic threshold ln((1 + ln t)/δ) (evidence glr), "
            "which carries no proof. In simulations its error stays near δ when "
            f"the preference model holds. Here δ = {_number(delta)}."
        )
    elif space == "structured":
        core += (
            ". It holds when that model describes the judge's preferences (space "
            "structured); the run did not check that it does."
        )
    else:
        core += "."
    if decided:
        return (
            f"{core} Here δ = {_number(delta)}. This holds however the run was "
            "batched, paused or resumed."
        )
    if leader_name is None:
        return f"No decision yet: no duel has been counted. {core}"
    return (
        f"No decision: no policy was certified at δ = {_number(delta)}. The "
        f"leader is {leader_name}; the smallest δ at which it would have been "
        f"certified is {_p_value(p_value)} (its anytime p-value). {core}"
    )


# ---------------------------------------------------------------------------
# Internals: what the report is made of


@dataclass
class _Evidence:
    """The leader's evidence over counted duels, from a replay."""

    duels: np.ndarray
    log_evidence: np.ndarray
    leaders: np.ndarray
    log_threshold: float
    stopped_at: int | None


@dataclass
class _Facts:
    """Everything the page shows, read from the store and computed once."""

    store_name: str
    run: dict[str, Any]
    experiment: Experiment
    names: list[str]
    summary: dict[str, Any]
    decision: dict[str, Any] | None
    first: np.ndarray
    second: np.ndarray
    outcomes: np.ndarray
    evidence: _Evidence | None
    evidence_note: str | None
    proportions: np.ndarray | None
    proportions_note: str | None
    recorded: tuple[np.ndarray, np.ndarray] | None
    spending: dict[str, np.ndarray]
    heldout: dict[str, Any] | None
    examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def counted(self) -> int:
        return int(self.outcomes.size)


def _gather(store: RunStore) -> _Facts:
    experiment = Experiment.from_json(store.experiment_json)
    names = store.policy_names or experiment.policy_names
    first, second, outcomes = store.outcomes()
    evidence, procedure, evidence_note = _replay(experiment, first, second, outcomes)
    proportions, proportions_note = _proportions(procedure, experiment.space)
    decision = _decision(store, evidence, procedure, names)
    recorded_rows = [
        row for row in store.decisions()
        if row["log_evidence"] is not None and math.isfinite(row["log_evidence"])
    ]
    recorded = None
    if recorded_rows:
        recorded = (
            np.array([row["n_duels"] for row in recorded_rows], dtype=float),
            np.array([row["log_evidence"] for row in recorded_rows], dtype=float),
        )
    duels = store.duels()
    return _Facts(
        store_name=store.path.name,
        run=store.run,
        experiment=experiment,
        names=names,
        summary=store.summary(),
        decision=decision,
        first=first,
        second=second,
        outcomes=outcomes,
        evidence=evidence,
        evidence_note=evidence_note,
        proportions=proportions,
        proportions_note=proportions_note,
        recorded=recorded,
        spending=_spending(store, duels),
        heldout=store.heldout_summary(),
        examples=_examples(store, experiment, duels, decision),
    )


def _replay(
    experiment: Experiment, first: np.ndarray, second: np.ndarray, outcomes: np.ndarray
) -> tuple[_Evidence | None, Procedure | None, str | None]:
    """Replay the counted duels through a fresh procedure; read the evidence."""
    if outcomes.size == 0:
        return None, None, None
    procedure = build_procedure(experiment)
    structured = experiment.space == "structured"
    n = outcomes.size
    budget = MAX_STRUCTURED_POINTS if structured else MAX_PAIRWISE_POINTS
    points = set(np.unique(np.linspace(1, n, min(n, budget)).round().astype(int)))
    duels, levels, leaders = [], [], []
    stopped_at = None
    for t, (i, j, x) in enumerate(
        zip(first.tolist(), second.tolist(), outcomes.tolist()), start=1
    ):
        procedure.record(i, j, x)
        # The structured decision is costly; its stopping point is looked for
        # only at the curve's points, so it may be placed late by one spacing.
        check_stop = stopped_at is None and (not structured or t in points)
        if check_stop and procedure.stopped:
            stopped_at = t
            points.add(t)
        if t in points:
            decision = procedure.settled_decision()
            duels.append(t)
            levels.append(decision.log_evidence)
            leaders.append(-1 if decision.leader is None else decision.leader)
    evidence = _Evidence(
        duels=np.array(duels),
        log_evidence=np.array(levels, dtype=float),
        leaders=np.array(leaders, dtype=np.int64),
        log_threshold=float(procedure.decision().log_threshold),
        stopped_at=stopped_at,
    )
    return evidence, procedure, None


def _proportions(
    procedure: Procedure | None, space: str
) -> tuple[np.ndarray | None, str | None]:
    if procedure is None:
        return None, None
    proportions = procedure.proportions()
    if proportions is None:
        return None, (
            "The optimal proportions are not drawn: the structured procedure "
            "computes them from recorded duels, and there are none yet."
            if space == "structured" else
            "The optimal proportions are not drawn: the procedure has none."
        )
    return np.asarray(proportions, dtype=float), None


def _decision(
    store: RunStore,
    evidence: _Evidence | None,
    procedure: Procedure | None,
    names: list[str],
) -> dict[str, Any] | None:
    """The run's decision: as stored, else the last recorded, else the replay's."""
    text = store.run.get("decision_json")
    if text:
        try:
            decision = json.loads(text)
        except json.JSONDecodeError:
            decision = None
        if isinstance(decision, dict):
            return decision
    rows = store.decisions()
    if rows:
        last = rows[-1]
        return {
            "stopped": bool(last["stopped"]),
            "leader": last["leader"],
            "p_value": last["p_value"],
            "log_evidence": last["log_evidence"],
            "log_threshold": last["log_threshold"],
            "n_duels": last["n_duels"],
            "reason": "last decision recorded by the run",
        }
    if procedure is None or evidence is None:
        return None
    replayed = procedure.settled_decision()
    return {
        "stopped": replayed.stopped,
        "leader": replayed.leader,
        "p_value": replayed.p_value,
        "log_evidence": replayed.log_evidence,
        "log_threshold": replayed.log_threshold,
        "n_duels": int(evidence.duels[-1]) if evidence.duels.size else 0,
        "reason": "replayed: the run recorded no decision",
    }


def _spending(store: RunStore, duels: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Cumulative tokens and cost over finished duels, in completion order.

    Generations of duels still in flight have no place in that order and are
    left out here; the totals of the page include them.
    """
    finished = sorted(
        (duel for duel in duels if duel["seq"] is not None), key=lambda d: d["seq"]
    )
    generation_tokens = np.zeros(len(finished))
    judge_tokens = np.zeros(len(finished))
    cost = np.zeros(len(finished))
    for n, duel in enumerate(finished):
        judge_tokens[n] = duel["judge_prompt_tokens"] + duel["judge_completion_tokens"]
        cost[n] = duel["judge_cost"]
        for side in ("i", "j"):
            if duel[f"response_{side}_id"] is None:
                continue
            generation = store.generation(duel["id"], side)
            if generation is not None:
                generation_tokens[n] += (
                    generation.prompt_tokens + generation.completion_tokens
                )
                cost[n] += generation.cost
    return {
        "duels": np.arange(1, len(finished) + 1),
        "generation_tokens": np.cumsum(generation_tokens),
        "judge_tokens": np.cumsum(judge_tokens),
        "cost": np.cumsum(cost),
    }


def _examples(
    store: RunStore,
    experiment: Experiment,
    duels: list[dict[str, Any]],
    decision: dict[str, Any] | None,
) -> list[dict[str, Any]]:
    """A few duels worth reading: flagged ones, an unparsable one, then recent
    duels of the leader against different rivals, then the most recent."""
    finished = [d for d in duels if d["state"] != "proposed"]
    chosen: list[dict[str, Any]] = []

    def take(duel: dict[str, Any]) -> None:
        if len(chosen) < EXAMPLE_DUELS and all(d["id"] != duel["id"] for d in chosen):
            chosen.append(duel)

    for duel in [d for d in finished if d["flags"]][:2]:
        take(duel)
    for duel in [d for d in finished if d["state"] == "unparsable"][:1]:
        take(duel)
    leader = None if decision is None else decision.get("leader")
    rivals_seen: set[int] = set()
    for duel in reversed(finished):
        if duel["state"] != "done":
            continue
        if leader not in (duel["policy_i"], duel["policy_j"]):
            continue
        rival = duel["policy_j"] if duel["policy_i"] == leader else duel["policy_i"]
        if rival not in rivals_seen:
            rivals_seen.add(rival)
            take(duel)
    for duel in reversed(finished):
        take(duel)
    prompts = {task.id: task.prompt for task in experiment.tasks}
    examples = []
    for duel in sorted(chosen, key=lambda d: d["id"]):
        responses = {}
        for side in ("i", "j"):
            generation = store.generation(duel["id"], side)
            responses[side] = None if generation is None else generation.text
        examples.append(
            dict(duel, prompt=prompts.get(duel["task_id"]), responses=responses)
        )
    return examples


# ---------------------------------------------------------------------------
# Internals: plots


def _draw(facts: _Facts, directory: Path) -> dict[str, Path]:
    """Draw the plots the facts allow; return them by key."""
    plots: dict[str, Path] = {}
    if facts.counted == 0:
        return plots
    names = facts.names
    if facts.evidence is not None:
        evidence = facts.evidence
        plots["evidence"] = report_plots.evidence_plot(
            directory / PLOT_FILES["evidence"],
            evidence.duels,
            evidence.log_evidence,
            evidence.leaders,
            evidence.log_threshold,
            # A point with no leader is marked -1, which indexes this last name.
            names + ["no leader"],
            stopped_at=evidence.stopped_at,
            recorded=facts.recorded,
        )
    labels, shares, wanted, rest = _allocation(facts)
    plots["allocation"] = report_plots.allocation_plot(
        directory / PLOT_FILES["allocation"], labels, shares, wanted, rest=rest
    )
    wins, counts = _win_counts(facts)
    plots["wins"] = report_plots.win_matrix_plot(
        directory / PLOT_FILES["wins"], wins, counts, names
    )
    spending = facts.spending
    if spending["duels"].size:
        plots["spending"] = report_plots.spending_plot(
            directory / PLOT_FILES["spending"],
            spending["duels"],
            spending["generation_tokens"],
            spending["judge_tokens"],
            spending["cost"],
        )
    return plots


def _pair_counts(facts: _Facts) -> np.ndarray:
    k = len(facts.names)
    index = pair_matrix(k)[facts.first, facts.second]
    return np.bincount(index, minlength=k * (k - 1) // 2).astype(float)


def _allocation(facts: _Facts):
    """Labels, shares, proportions and the remainder of the pairs to draw: the
    ``MAX_ALLOCATION_PAIRS`` pairs with the largest share or proportion."""
    k = len(facts.names)
    a, b = pairs(k)
    shares = _pair_counts(facts) / max(facts.counted, 1)
    wanted = facts.proportions
    size = shares if wanted is None else np.maximum(shares, wanted)
    shown = np.flatnonzero(size > 0)
    shown = shown[np.argsort(-size[shown], kind="stable")][:MAX_ALLOCATION_PAIRS]
    shown.sort()
    hidden = np.setdiff1d(np.arange(shares.size), shown)
    rest = None
    if hidden.size and (shares[hidden].sum() > 0 or (
        wanted is not None and wanted[hidden].sum() > 0
    )):
        rest = (
            float(shares[hidden].sum()),
            None if wanted is None else float(wanted[hidden].sum()),
        )
    short = report_plots.short_label
    labels = [
        f"{short(facts.names[a[m]])} vs {short(facts.names[b[m]])}" for m in shown
    ]
    return labels, shares[shown], None if wanted is None else wanted[shown], rest


def _win_counts(facts: _Facts) -> tuple[np.ndarray, np.ndarray]:
    k = len(facts.names)
    wins = np.zeros((k, k))
    counts = np.zeros((k, k))
    np.add.at(wins, (facts.first, facts.second), facts.outcomes)
    np.add.at(wins, (facts.second, facts.first), 1.0 - facts.outcomes)
    np.add.at(counts, (facts.first, facts.second), 1.0)
    np.add.at(counts, (facts.second, facts.first), 1.0)
    return wins, counts


# ---------------------------------------------------------------------------
# Internals: the page

_STYLE = """
*, *::before, *::after { box-sizing: border-box; }
body { margin: 0; background: #f6f7f9; color: #1d2228;
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans",
  "Liberation Sans", sans-serif; overflow-wrap: anywhere; }
main { max-width: 1120px; margin: 0 auto; padding: 24px 20px 48px; }
h1 { font-size: 1.6em; margin: 0 0 4px; }
h2 { font-size: 1.2em; margin: 0 0 10px; }
h3 { font-size: 1em; margin: 0 0 6px; }
section { background: #fff; border: 1px solid #dde1e6; border-radius: 8px;
  padding: 16px 20px; margin: 16px 0; min-width: 0; }
.meta, .caption, .note { color: #57606a; font-size: 0.9em; }
.note { font-style: italic; }
.decision.decided { border-left: 6px solid #1a7f37; }
.decision.undecided { border-left: 6px solid #bf8700; }
.verdict { font-size: 1.35em; margin: 0 0 8px; }
.badge { display: inline-block; padding: 1px 10px; border-radius: 12px;
  font-size: 0.8em; font-weight: 600; vertical-align: middle; color: #fff; }
.decided .badge { background: #1a7f37; }
.undecided .badge { background: #9a6700; }
.guarantee { background: #f3f6fa; border-radius: 6px; padding: 10px 14px; }
.numbers { display: grid; gap: 8px 24px;
  grid-template-columns: repeat(auto-fill, minmax(190px, 1fr)); margin: 10px 0; }
.numbers div { min-width: 0; }
.numbers b { display: block; font-size: 1.15em; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; font-size: 0.92em; }
th, td { border-bottom: 1px solid #e4e7eb; padding: 5px 10px; text-align: left;
  vertical-align: top; }
th { background: #f3f5f7; white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums;
  white-space: nowrap; }
figure { margin: 0; }
img.plot { display: block; max-width: 100%; height: auto; margin: 0 auto; }
pre, .text { white-space: pre-wrap; overflow-wrap: anywhere; word-break: normal;
  margin: 0; font: 13px/1.45 ui-monospace, "DejaVu Sans Mono", "Liberation Mono",
  monospace; }
.text { background: #f6f8fa; border: 1px solid #e4e7eb; border-radius: 6px;
  padding: 8px 10px; max-height: 24em; overflow-y: auto; }
td .text { max-height: 12em; min-width: 16em; max-width: 40em; }
.duel { border-top: 1px solid #e4e7eb; padding-top: 12px; margin-top: 12px; }
.duel:first-of-type { border-top: none; margin-top: 0; padding-top: 0; }
.pair { display: grid; gap: 12px;
  grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); }
.pair > div { min-width: 0; }
.text + .pair { margin-top: 8px; }
.flag { display: inline-block; background: #ffebe9; color: #a40e26;
  border-radius: 10px; padding: 0 8px; font-size: 0.85em; margin-right: 4px; }
details { margin-top: 8px; }
summary { cursor: pointer; color: #0969da; }
td.params { white-space: nowrap; }
footer { color: #57606a; font-size: 0.85em; text-align: center; }
"""

# Marks the page once it has loaded: how many images decoded and whether the
# page fits its window's width. Nothing visible changes; checks can read it.
_SCRIPT = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (image) {
    return image.complete && image.naturalWidth > 0;
  }).length;
  var fits = document.documentElement.scrollWidth <= window.innerWidth;
  document.body.setAttribute("data-images", loaded + "/" + images.length);
  document.body.setAttribute("data-fits-width", fits ? "yes" : "no");
});
"""


def _hash(source: str) -> str:
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


# Only the page's own style and script run, and images come from its folder:
# were a stored text ever to slip through unescaped, it still could not act.
_POLICY = (
    "default-src 'none'; img-src 'self' file:; "
    f"style-src {_hash(_STYLE)}; script-src {_hash(_SCRIPT)}; "
    "base-uri 'none'; form-action 'none'"
)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _page(facts: _Facts, plots: dict[str, Path]) -> str:
    experiment = facts.experiment
    title = experiment.name or Path(facts.store_name).stem
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_POLICY}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>llmpo report: {_e(title)}</title>",
        f"<style>{_STYLE}</style>",
        f"<script>{_SCRIPT}</script>",
        "</head>",
        "<body>",
        "<main>",
        "<header>",
        f"<h1>llmpo report: {_e(title)}</h1>",
        f'<p class="meta">run {_e(facts.run["id"])} · status '
        f'<b>{_e(facts.run["status"])}</b> · started '
        f'{_e(_when(facts.run["created_at"]))}'
        f' · last update {_e(_when(facts.run["updated_at"]))} · '
        f'{len(facts.names)} policies, {len(experiment.tasks)} tasks, judge '
        f'{_e(_judge(experiment))}, space {_e(experiment.space)}</p>',
        "</header>",
        _decision_section(facts),
        _counts_section(facts),
    ]
    if facts.counted == 0:
        parts.append(
            '<section><h2>Evidence, allocation, win rates, spending</h2>'
            '<p class="note">Nothing to show yet: no duel has been counted, so '
            "there is no evidence, allocation or win rate to plot.</p></section>"
        )
    else:
        parts += [
            _evidence_section(facts, plots),
            _allocation_section(facts, plots),
            _wins_section(facts, plots),
            _spending_section(facts, plots),
        ]
    parts += [
        _heldout_section(facts),
        _policies_section(facts),
        _examples_section(facts),
        "</main>",
        f"<footer>Written by llmpo {_e(__version__)} from the run store "
        f"{_e(facts.store_name)}.</footer>",
        "</body>",
        "</html>",
    ]
    return "\n".join(part for part in parts if part) + "\n"


def _decision_section(facts: _Facts) -> str:
    experiment = facts.experiment
    decision = facts.decision or {}
    decided = facts.run["status"] == "decided" and decision.get("leader") is not None
    leader = decision.get("leader")
    leader_name = _name(facts, leader) if leader is not None else None
    p_value = decision.get("p_value")
    if decided:
        headline = (
            f'<span class="badge">DECIDED</span> Decision: <b>{_e(leader_name)}</b> '
            "is the best policy"
        )
    else:
        detail = {
            "undecided": "the run ended without certifying a policy",
            "running": "the run is still going",
            "stopped": "the run was stopped before a decision and can be resumed",
            "failed": "the run failed before a decision",
        }.get(facts.run["status"], f"status {facts.run['status']}")
        if decision.get("stopped"):
            detail = (
                f"the stopping rule fired but the run has not ended (status "
                f"{facts.run['status']})"
            )
        if leader_name is None:
            headline = f'<span class="badge">UNDECIDED</span> Undecided: {_e(detail)}'
        else:
            headline = (
                f'<span class="badge">UNDECIDED</span> Undecided: {_e(detail)}; '
                f"leader <b>{_e(leader_name)}</b>"
            )
    numbers = [
        ("anytime p-value", _p_value(p_value)),
        ("δ (allowed error)", _number(experiment.delta)),
        ("evidence / threshold (nats)",
         f"{_number(decision.get('log_evidence'))} / "
         f"{_number(decision.get('log_threshold'))}"),
        ("counted duels at the decision", _number(decision.get("n_duels"))),
    ]
    if decision.get("reason"):
        numbers.append(("reason", str(decision["reason"])))
    sentence = guarantee(
        experiment.space, experiment.delta, decided=decided,
        leader_name=leader_name, p_value=p_value, evidence=experiment.evidence,
    )
    cells = "".join(f"<div>{_e(label)}<b>{_e(value)}</b></div>"
                    for label, value in numbers)
    css = "decided" if decided else "undecided"
    return (
        f'<section class="decision {css}" id="decision">'
        f'<p class="verdict">{headline}</p>'
        f'<div class="numbers">{cells}</div>'
        f'<p class="guarantee">{_e(sentence)}</p>'
        "</section>"
    )


def _counts_section(facts: _Facts) -> str:
    summary = facts.summary
    states = summary["duels"]
    generation, judge, cost = (
        summary["generation_tokens"], summary["judge_tokens"], summary["cost"]
    )
    generation_total = generation["prompt"] + generation["completion"]
    judge_total = judge["prompt"] + judge["completion"]
    rows = [
        ("duels counted", states["done"], "verdict given; these make the evidence"),
        ("duels unparsable", states["unparsable"],
         "the judge's answer could not be read; kept, never counted"),
        ("duels failed", states["failed"], "a backend or judge error; never counted"),
        ("duels in flight", states["proposed"],
         "proposed and not finished; issued again on resume"),
        ("generation tokens", generation_total,
         f"{generation['prompt']} prompt + {generation['completion']} completion"),
        ("judge tokens", judge_total,
         f"{judge['prompt']} prompt + {judge['completion']} completion"),
        ("tokens in all", generation_total + judge_total, ""),
        ("cost", _money(cost["total"]),
         f"{_money(cost['generation'])} generation + {_money(cost['judge'])} judge"
         + ("" if cost["total"] or facts.experiment.budget.prices
            else " (no prices given)")),
    ]
    body = "".join(
        f'<tr><th scope="row">{_e(label)}</th><td class="num">{_e(value)}</td>'
        f"<td>{_e(note)}</td></tr>"
        for label, value, note in rows
    )
    return (
        '<section id="counts"><h2>The run in numbers</h2>'
        f'<div class="scroll"><table>{body}</table></div></section>'
    )


def _figure(plots: dict[str, Path], key: str, alt: str, caption: str) -> str:
    name = plots[key].name
    return (
        f'<figure><img class="plot" src="{_e(name)}" alt="{_e(alt)}">'
        f'<figcaption class="caption">{_e(caption)}</figcaption></figure>'
    )


def _evidence_section(facts: _Facts, plots: dict[str, Path]) -> str:
    head = '<section id="evidence"><h2>Evidence of the leader over duels</h2>'
    if "evidence" not in plots:
        return f'{head}<p class="note">{_e(facts.evidence_note or "")}</p></section>'
    evidence = facts.evidence
    space = facts.experiment.space
    scale = {
        "verify": "the smallest of the leader's per-rival evidences ln M (it must "
                  "beat every rival)",
        "assume-winner": "the smallest refutation of the other policies",
        "structured": "the smallest evidence against the nulls 'a rival is at "
                      "least as good' under the Bradley-Terry model",
    }[space]
    stop = (
        f" The stopping rule fired at {evidence.stopped_at} counted duels; duels "
        "that landed after it are folded in but do not change the decision."
        if evidence.stopped_at is not None else
        " The evidence never reached the threshold."
    )
    caption = (
        "The counted duels replayed in the order the store committed them through "
        f"a fresh copy of the run's procedure ({space}). The curve is the current "
        f"leader's evidence, {scale}, coloured by which policy led; the run stops "
        f"when it reaches the dashed threshold.{stop}"
    )
    if facts.recorded is not None:
        caption += " Dots: the decisions the run recorded as it went."
    return head + _figure(plots, "evidence", "evidence against the threshold",
                          caption) + "</section>"


def _allocation_section(facts: _Facts, plots: dict[str, Path]) -> str:
    leader = facts.decision.get("leader") if facts.decision else None
    pair_note = (
        f" Only the {MAX_ALLOCATION_PAIRS} pairs with the largest share or "
        "proportion are drawn; the rest are summed in the last bar."
        if len(facts.names) * (len(facts.names) - 1) // 2 > MAX_ALLOCATION_PAIRS
        else ""
    )
    caption = "Share of the counted duels each pair of policies received"
    if facts.proportions is not None:
        caption += (
            ", next to the optimal proportions at the final estimate (the plug-in "
            "win rates): the allocation that certifies the leader with the fewest "
            "duels. Tracking them is what keeps the bill small."
        )
    else:
        caption += "."
    caption += pair_note
    if leader is not None and facts.proportions is not None:
        caption += f" The proportions are those for the leader {_name(facts, leader)}."
    note = (
        f'<p class="note">{_e(facts.proportions_note)}</p>'
        if facts.proportions_note else ""
    )
    return (
        '<section id="allocation"><h2>Allocation against the optimal proportions'
        "</h2>" + _figure(plots, "allocation", "allocation of duels over pairs",
                          caption) + note + "</section>"
    )


def _wins_section(facts: _Facts, plots: dict[str, Path]) -> str:
    caption = (
        "Win rate of the row policy against the column policy over their counted "
        "duels (a tie counts one half), with the number of duels n in each cell; "
        "grey cells were never dueled. An adaptive run duels mostly the pairs "
        "that decide, so many cells rest on few duels."
    )
    if len(facts.names) > report_plots.MAX_ANNOTATED_POLICIES:
        caption += " With this many policies the cells carry colour only."
    return (
        '<section id="wins"><h2>Win rates</h2>'
        + _figure(plots, "wins", "win-rate matrix", caption) + "</section>"
    )


def _spending_section(facts: _Facts, plots: dict[str, Path]) -> str:
    if "spending" not in plots:
        return ""
    caption = (
        "Cumulative tokens, and cost when prices were given, as duels finished "
        "(counted, unparsable or failed). Generations of duels still in flight "
        "are in the totals above, not in this curve."
    )
    return (
        '<section id="spending"><h2>Tokens and cost over time</h2>'
        + _figure(plots, "spending", "tokens and cost over duels", caption)
        + "</section>"
    )


def _heldout_section(facts: _Facts) -> str:
    heldout = facts.heldout
    if heldout is None:
        return ""
    rate = heldout["win_rate"]
    rows = [
        ("chosen policy", heldout["chosen"]),
        ("baseline (default policy)", heldout["baseline"]),
        ("held-out tasks", heldout["tasks"]),
        ("counted", heldout["counted"]),
        ("unparsable / failed", f"{heldout['unparsable']} / {heldout['failed']}"),
        ("wins of the chosen policy", _number(heldout["wins"])),
        ("win rate of the chosen policy", "—" if rate is None else f"{rate:.1%}"),
        ("tokens / cost", f"{heldout['tokens']} / {_money(heldout['cost'])}"),
    ]
    body = "".join(
        f'<tr><th scope="row">{_e(label)}</th><td>{_e(value)}</td></tr>'
        for label, value in rows
    )
    return (
        '<section id="heldout"><h2>Held-out comparison</h2>'
        f'<div class="scroll"><table>{body}</table></div>'
        '<p class="caption">After the decision, the chosen policy against the '
        "default policy on tasks the run never saw, one duel per task. These duels "
        "never count for the decision: they show how it carries over to new "
        "tasks, with no guarantee attached.</p></section>"
    )


def _policies_section(facts: _Facts) -> str:
    rows = []
    for index, spec in enumerate(facts.experiment.policies):
        if spec.backend == "local":
            model = spec.model or "embedded SmolLM2-135M-Instruct"
        else:
            model = spec.model or "—"
        params = [
            f"temperature {spec.temperature:g}",
            f"top_p {spec.top_p:g}",
            f"max_tokens {spec.max_tokens}",
        ]
        if spec.seed is not None:
            params.append(f"seed {spec.seed}")
        if spec.features is not None:
            params.append("features [" + ", ".join(f"{v:g}" for v in spec.features)
                          + "]")
        prompt = spec.system_prompt or "(none)"
        rows.append(
            f'<tr><td class="num">{index}</td><td><b>{_e(spec.name)}</b></td>'
            f"<td>{_e(spec.backend)}</td><td>{_e(model)}</td>"
            f'<td><div class="text">{_e(prompt)}</div></td>'
            f'<td class="params">{"<br>".join(_e(p) for p in params)}</td></tr>'
        )
    return (
        '<section id="policies"><h2>Policies</h2><div class="scroll"><table>'
        "<tr><th>#</th><th>name</th><th>backend</th><th>model</th>"
        "<th>system prompt</th><th>parameters</th></tr>"
        + "".join(rows) + "</table></div></section>"
    )


def _examples_section(facts: _Facts) -> str:
    if not facts.examples:
        return ""
    blocks = [_example(facts, duel) for duel in facts.examples]
    return (
        '<section id="examples"><h2>Example duels</h2>'
        '<p class="caption">Flagged and unparsable duels first, then recent duels '
        "of the leader against different rivals. Responses are shown as written, "
        "as plain text.</p>" + "".join(blocks) + "</section>"
    )


def _example(facts: _Facts, duel: dict[str, Any]) -> str:
    name_i, name_j = _name(facts, duel["policy_i"]), _name(facts, duel["policy_j"])
    state, outcome = duel["state"], duel["outcome"]
    if state == "done":
        if outcome == 1:
            verdict = f"{name_i} wins"
        elif outcome == 0:
            verdict = f"{name_j} wins"
        elif outcome == 0.5:
            verdict = "tie"
        else:
            verdict = f"{name_i} scores {outcome:g} (of 1)"
    elif state == "unparsable":
        verdict = "unparsable: the judge's answer could not be read (not counted)"
    elif state == "failed":
        verdict = f"failed: {duel['error'] or 'no reason stored'} (not counted)"
    else:
        verdict = "in flight"
    order = {
        "ij": f"{name_i}'s response first",
        "ji": f"{name_j}'s response first",
        "both": "both orders, verdicts averaged",
    }.get(duel["order_shown"] or "", duel["order_shown"] or "—")
    flags = "".join(
        f'<span class="flag">{_e(flag)}</span>'
        for flag in (duel["flags"] or "").split(",") if flag
    )
    prompt = duel["prompt"] if duel["prompt"] is not None else "(task not in the pool)"
    sides = []
    for side, name in (("i", name_i), ("j", name_j)):
        text = duel["responses"][side]
        shown = "(no response saved)" if text is None else _clip(text,
                                                                 MAX_RESPONSE_CHARS)
        sides.append(f"<div><h3>{_e(name)}</h3><div class=\"text\">{_e(shown)}</div>"
                     "</div>")
    raw = duel["judge_raw"] or ""
    judge = (
        f"<details><summary>judge's raw output</summary><pre>"
        f"{_e(_clip(raw, MAX_JUDGE_CHARS))}</pre></details>" if raw else ""
    )
    return (
        '<div class="duel">'
        f"<h3>Duel {_e(duel['id'])}: {_e(name_i)} vs {_e(name_j)}, task "
        f"{_e(duel['task_id'])}</h3>"
        f'<p class="meta">verdict: <b>{_e(verdict)}</b> · order shown: '
        f"{_e(order)}{' · flags: ' + flags if flags else ''}</p>"
        f'<div class="text">{_e(prompt)}</div>'
        f'<div class="pair">{"".join(sides)}</div>'
        f"{judge}</div>"
    )


def _judge(experiment: Experiment) -> str:
    judge = experiment.judge
    if judge.kind == "rule":
        return f"rule ({judge.checklist or judge.callable})"
    if judge.kind == "llm":
        model = judge.model or "embedded model"
        return f"llm ({judge.backend} {model}, order {judge.order})"
    if judge.kind == "simulated":
        return f"simulated ({judge.instance or 'instance'})"
    return judge.kind


def _name(facts: _Facts, index: int | None) -> str:
    if index is None:
        return "—"
    return facts.names[index] if 0 <= index < len(facts.names) else f"policy {index}"


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n… ({len(text) - limit} more characters)"


def _number(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "—"
        return f"{value:.4g}"
    return str(value)


def _p_value(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:.3g}"


def _money(value: float) -> str:
    return f"{value:.4f}"


def _when(stamp: str | None) -> str:
    """An ISO timestamp to the second, in UTC."""
    if not stamp:
        return "—"
    return stamp[:19].replace("T", " ") + " UTC"
