"""The ``llmpo`` command line: the only place that writes to the terminal.

Usage errors (bad arguments, bad files, bad values) print one line on standard
error naming what was wrong, and exit with status 2.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from llmpo.errors import InputError, LlmpoError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Pick the best LLM policy by adaptive pairwise duels, with error at most delta.",
)
# Piped output gets a wide console so that tables stay readable in logs.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)

USAGE_ERROR = 2


def fail(message: str, status: int = USAGE_ERROR) -> None:
    """Print one error line and exit with ``status``."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(status)


def _finite(value):
    """JSON-safe number: ``None`` for inf and NaN."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@app.command()
def bound(
    instances: Path = typer.Option(..., "--instances", help="Instances file (JSON)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON records."),
):
    """The fundamental data requirement T* and the optimal proportions of each
    instance, without running anything."""
    from llmpo.stats.bounds import assume_bound, verify_bound
    from llmpo.stats.instances import load_instances

    try:
        loaded = load_instances(instances)
    except InputError as error:
        fail(str(error))
    records = []
    for instance in loaded:
        verify = verify_bound(instance.preference)
        assume = assume_bound(instance.preference)
        record = {
            "instance": instance.name,
            "winner": verify.winner,
            "tstar_verify": _finite(verify.tstar),
            "tstar_assume": _finite(assume.tstar),
            "proportions": None
            if verify.proportions is None
            else [round(float(w), 6) for w in verify.proportions],
            "proportions_assume": None
            if assume.proportions is None
            else [round(float(w), 6) for w in assume.proportions],
        }
        record.update(_structured_bound(instance))
        records.append(record)
    if as_json:
        typer.echo(json.dumps(records, indent=1))
        return
    table = Table(title="Fundamental data requirement T* (duels per unit of ln(1/δ))")
    for column in ("instance", "K", "winner", "T* verify", "T* assume-winner",
                   "T* structured", "1/program value", "top pair"):
        table.add_column(column)
    from llmpo.stats.pairs import pairs

    for instance, record in zip(loaded, records):
        top = "-"
        if record["proportions"] is not None:
            a, b = pairs(instance.n_policies)
            m = max(range(len(a)), key=lambda q: record["proportions"][q])
            top = f"({a[m]},{b[m]}) {record['proportions'][m]:.2f}"
        table.add_row(
            instance.name, str(instance.n_policies), str(record["winner"]),
            _cell(record["tstar_verify"]), _cell(record["tstar_assume"]),
            _cell(record.get("tstar_structured")),
            _cell(None if not record.get("program_value") else 1 / record["program_value"]),
            top,
        )
    console.print(table)


def _cell(value) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _structured_bound(instance) -> dict:
    """``tstar_structured`` and ``program_value`` for BT instances, else nulls."""
    empty = {"tstar_structured": None, "program_value": None}
    if instance.features is None:
        return empty
    from llmpo.stats.structured_bound import program_value, structured_lower_bound

    tstar, _ = structured_lower_bound(instance.features, instance.theta)
    value, _ = program_value(instance.features, instance.theta)
    return {"tstar_structured": _finite(tstar), "program_value": _finite(value)}


@app.command()
def bench(
    instances: Path = typer.Option(..., "--instances", help="Instances file (JSON)."),
    methods: str = typer.Option(
        "llmpo,uniform,elimination,knockout,oracle", "--methods",
        help="Comma-separated methods."),
    delta: list[float] = typer.Option([0.01], "--delta", help="Error probability; repeat."),
    runs: int = typer.Option(200, "--runs", help="Replications per cell."),
    seed: int = typer.Option(0, "--seed", help="Master seed."),
    budget: Optional[int] = typer.Option(None, "--budget", help="Duel budget per run."),
    batch: int = typer.Option(1, "--batch", help="Duels proposed at once."),
    only: Optional[str] = typer.Option(
        None, "--only", help="Comma-separated instance names to keep."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Local processes."),
    use_ray: bool = typer.Option(False, "--ray", help="Spread runs over Ray."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write JSON records."),
    plots: Optional[Path] = typer.Option(None, "--plots", help="Write PNG plots here."),
):
    """The numerical study: methods x instances x delta on simulated judges."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from llmpo.bench import TABLE_COLUMNS, format_table, run_bench
    from llmpo.stats.methods import STRUCTURED
    from llmpo.stats.instances import load_instances

    try:
        loaded = load_instances(instances)
        if only:
            names = [n.strip() for n in only.split(",") if n.strip()]
            unknown = [n for n in names if n not in {i.name for i in loaded}]
            if unknown:
                raise InputError(
                    f"--only: got {unknown[0]!r}, expected instance names among "
                    f"{', '.join(i.name for i in loaded)}"
                )
            loaded = [i for i in loaded if i.name in names]
        method_names = [m.strip() for m in methods.split(",") if m.strip()]
        if not method_names:
            raise InputError("--methods: got nothing, expected at least one method")
        with Progress(
            TextColumn("[bold]bench"), BarColumn(), TextColumn("{task.completed}/{task.total} runs"),
            TimeRemainingColumn(), console=err_console, transient=True,
        ) as bar:
            task = bar.add_task("bench", total=None)

            def progress(done, total):
                bar.update(task, completed=done, total=total)

            cells, allocations = run_bench(
                loaded, method_names, delta, runs=runs, seed=seed, budget=budget,
                batch=batch, workers=workers, use_ray=use_ray, progress=progress,
            )
    except InputError as error:
        fail(str(error))
    table = Table(title=f"llmpo bench ({runs} runs per cell, batch {batch})")
    for column in TABLE_COLUMNS:
        table.add_column(column, justify="left" if column in ("instance", "method") else "right")
    for row in format_table(cells):
        table.add_row(*row)
    console.print(table)
    if any(name.endswith("-glr") for name in method_names):
        console.print(
            "llmpo-structured-glr is the practical rule: the generalized likelihood "
            "ratio against ln((1 + ln t)/δ). It carries no proof; its error rate "
            "above is an empirical check.", highlight=False)
    if any(name in STRUCTURED for name in method_names) and any(
        instance.features is None for instance in loaded
    ):
        console.print(
            "Structured methods model a 'matrix' instance as plain Bradley-Terry "
            "(one-hot features). Where its preferences are not Bradley-Terry the "
            "model is wrong: the guarantee then says nothing, the error rate is "
            "counted against the Condorcet winner, and there is no lower bound.",
            highlight=False)
    if json_out is not None:
        json_out.write_text(json.dumps([c.to_record() for c in cells], indent=1))
        console.print(f"JSON written to {json_out}")
    if plots is not None:
        from llmpo.bench_plots import write_plots

        written = write_plots(cells, allocations, loaded, plots)
        console.print(f"{len(written)} plots written to {plots}")


# ---------------------------------------------------------------------------
# Runs: run, resume, status, export


@app.command()
def run(
    experiment: Optional[Path] = typer.Argument(
        None, help="Experiment YAML file; omitted: the bundled support example."),
    store: Optional[Path] = typer.Option(
        None, "--store",
        help="Run store to create (default ./llmpo-runs/<name>-<UTC time>.sqlite)."),
    as_json: bool = typer.Option(False, "--json", help="Print the outcome as JSON."),
):
    """Start a run: duel the policies until one is certified best or the budget
    is spent, and print the decision."""
    from llmpo.errors import StoreError
    from llmpo.examples import example_path
    from llmpo.runner import start_run

    path = experiment if experiment is not None else example_path()
    started: list[Path] = []
    try:
        with _LiveProgress(enabled=_wants_live(path)) as show:
            outcome = start_run(path, store, progress=show, on_store=started.append)
    except KeyboardInterrupt:
        _interrupted(started[0] if started else None)
    except (InputError, StoreError) as error:
        fail(str(error))
    _print_outcome(outcome, as_json)


@app.command()
def resume(
    run_store: Path = typer.Argument(
        ..., metavar="RUN", help="The run store (.sqlite)."),
    as_json: bool = typer.Option(False, "--json", help="Print the outcome as JSON."),
):
    """Continue a stopped or killed run from its store; duels in flight when it
    stopped are issued again and never counted twice."""
    from llmpo.errors import StoreError
    from llmpo.runner import resume_run

    try:
        with _LiveProgress(enabled=_store_wants_live(run_store)) as show:
            outcome = resume_run(run_store, progress=show)
    except KeyboardInterrupt:
        _interrupted(run_store)
    except (InputError, StoreError) as error:
        fail(str(error))
    _print_outcome(outcome, as_json)


@app.command()
def status(
    run_store: Path = typer.Argument(
        ..., metavar="RUN", help="The run store (.sqlite)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Read a run (read-only, safe while it runs): decision, duels per state,
    spending, win matrix of counted duels, held-out comparison."""
    from llmpo.errors import StoreError

    try:
        record = _status_record(run_store)
    except StoreError as error:
        fail(str(error))
    if as_json:
        typer.echo(json.dumps(record, indent=1))
        return
    _print_status(record)


@app.command()
def report(
    run_store: Path = typer.Argument(
        ..., metavar="RUN", help="The run store (.sqlite)."),
    out: Optional[Path] = typer.Option(
        None, "--out", help="Directory for the report (default: beside the store)."),
):
    """Write the run's HTML report (decision, evidence, allocation, win matrix,
    spending, example duels); safe while the run is going."""
    from llmpo.errors import StoreError
    from llmpo.report import write_report

    try:
        page = write_report(run_store, out)
    except (InputError, StoreError) as error:
        fail(str(error))
    console.print(f"report: {page}", highlight=False)


@app.command()
def export(
    run_store: Path = typer.Argument(
        ..., metavar="RUN", help="The run store (.sqlite)."),
    format: str = typer.Option("csv", "--format", help="csv or parquet."),
    out: Path = typer.Option(..., "--out", help="Directory to write the tables to."),
):
    """Write every table of a run store as CSV or Parquet files."""
    from llmpo.errors import StoreError
    from llmpo.store import RunStore

    writers = {"csv": RunStore.export_csv, "parquet": RunStore.export_parquet}
    if format not in writers:
        fail(f"--format: got {format!r}, expected one of {', '.join(writers)}")
    try:
        with RunStore.open(run_store, readonly=True) as opened:
            files = writers[format](opened, out)
    except StoreError as error:
        fail(str(error))
    for path in files:
        typer.echo(str(path))


class _LiveProgress:
    """A live line on standard error fed by the executor's progress callback."""

    # Without a terminal (CI logs, pipes) a plain line is written this often.
    PLAIN_INTERVAL_S = 15.0

    def __init__(self, enabled: bool = True):
        self.wanted = enabled
        self.enabled = enabled and err_console.is_terminal
        self._live = None
        self._last_plain = 0.0

    def __enter__(self):
        if self.enabled:
            from rich.live import Live

            self._live = Live(
                "starting...", console=err_console, refresh_per_second=4,
                transient=True,
            )
            self._live.__enter__()
        return self

    def __exit__(self, *exc_info):
        if self._live is not None:
            self._live.__exit__(*exc_info)
        return False

    def __call__(self, progress) -> None:
        if self._live is not None:
            self._live.update(_progress_line(progress))
        elif self.wanted:
            import time

            now = time.monotonic()
            if now - self._last_plain >= self.PLAIN_INTERVAL_S:
                self._last_plain = now
                err_console.print(_progress_line(progress), highlight=False)


def _progress_line(progress):
    from rich.text import Text

    evidence = progress.log_evidence
    threshold = progress.log_threshold
    share = 0.0 if not threshold > 0 else min(max(evidence / threshold, 0.0), 1.0)
    bar = "#" * round(share * 20) + "." * (20 - round(share * 20))
    text = Text()
    text.append(f"duels {progress.counted} counted, {progress.in_flight} in flight")
    text.append(f" | tokens {progress.tokens:,} | cost {progress.cost:.4g}")
    text.append(f" | leader {progress.leader or '-'} ")
    text.append(f"[{bar}] evidence {evidence:.2f} / {threshold:.2f}")
    text.append(f" (p = {progress.p_value:.3g})")
    if progress.stopping:
        text.append(f" | stopping: {progress.stopping}", style="bold")
    return text


def _wants_live(experiment_path: Path) -> bool:
    """No live line over a human judge, who reads the same terminal."""
    try:
        from llmpo.experiment import load_experiment

        return load_experiment(experiment_path).judge.kind != "human"
    except LlmpoError:
        return True


def _store_wants_live(path: Path) -> bool:
    try:
        from llmpo.store import RunStore

        with RunStore.open(path, readonly=True) as opened:
            return json.loads(opened.experiment_json)["judge"]["kind"] != "human"
    except (LlmpoError, KeyError, TypeError, ValueError):
        return True


def _interrupted(path: Optional[Path]) -> None:
    where = f"; resume with: llmpo resume {path}" if path is not None else ""
    err_console.print(f"interrupted{where}", highlight=False, soft_wrap=True)
    raise typer.Exit(130)


def _write_report_after(outcome) -> Path | None:
    """Write the run's report; a failure to do so never loses the run."""
    from llmpo.report import write_report

    try:
        return write_report(outcome.store_path)
    except Exception as error:  # the store is safe; only the page is missing
        logging.getLogger(__name__).warning("report not written: %s", error)
        err_console.print(
            f"[yellow]warning:[/] report not written ({error}); "
            f"try: llmpo report {outcome.store_path}", highlight=False)
        return None


def _print_outcome(outcome, as_json: bool) -> None:
    report = _write_report_after(outcome)
    if as_json:
        record = outcome.to_json()
        record["report"] = None if report is None else str(report)
        typer.echo(json.dumps(record, indent=1))
        return
    decision, summary = outcome.decision, outcome.summary
    leader = decision.get("leader_name") or "-"
    delta = decision.get("delta")
    at = f" at delta = {delta:g}" if delta is not None else ""
    if outcome.status == "decided":
        console.print(f"[bold green]decided:[/] {leader} is the best policy{at}",
                      highlight=False)
    else:
        console.print(
            f"[bold yellow]{outcome.status}:[/] no policy certified{at} "
            f"({decision.get('reason')}); leader {leader}", highlight=False)
    console.print(_outcome_table(outcome, summary, decision))
    if report is not None:
        console.print(f"[bold]report[/]     {report}", highlight=False)


def _outcome_table(outcome, summary, decision) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    p_value = decision.get("p_value")
    table.add_row("anytime p-value", "-" if p_value is None else f"{p_value:.4g}")
    evidence, threshold = decision.get("log_evidence"), decision.get("log_threshold")
    if evidence is not None and threshold is not None:
        table.add_row("evidence", f"{evidence:.2f} (threshold {threshold:.2f})")
    states = summary["duels"]
    run_total = sum(states.values())
    table.add_row(
        "duels",
        f"{summary['counted']} counted of {run_total} run "
        f"({states['unparsable']} unparsable, {states['failed']} failed, "
        f"{states['proposed']} in flight)",
    )
    generation = sum(summary["generation_tokens"].values())
    judge = sum(summary["judge_tokens"].values())
    table.add_row(
        "tokens", f"{generation + judge:,} (generation {generation:,}, judge {judge:,})"
    )
    table.add_row("cost", f"{summary['cost']['total']:.4g}")
    table.add_row("held-out", _heldout_line(outcome.heldout, outcome.heldout_note))
    table.add_row("run store", str(outcome.store_path))
    return table


def _heldout_line(heldout, note=None) -> str:
    if heldout is None:
        return note or "none (the experiment has no heldout tasks or default_policy)"
    rate = heldout["win_rate"]
    shown = "-" if rate is None else f"{rate:.2f}"
    return (
        f"{heldout['chosen']} against {heldout['baseline']}: win rate {shown} over "
        f"{heldout['counted']} of {heldout['tasks']} held-out tasks "
        f"({heldout['wins']:g} wins, ties count 1/2)"
    )


def _status_record(path: Path) -> dict:
    """Everything ``llmpo status`` shows, read from the store read-only."""
    import numpy as np

    from llmpo.store import RunStore

    with RunStore.open(path, readonly=True) as opened:
        names = opened.policy_names
        text = opened.run["decision_json"]
        decision = json.loads(text) if text else None
        latest = opened.decisions()[-1:] or [None]
        first, second, outcomes = opened.outcomes()
        summary = opened.summary()
        heldout = opened.heldout_summary()
        experiment = json.loads(opened.experiment_json)
    k = len(names)
    wins = np.zeros((k, k))
    counts = np.zeros((k, k), dtype=int)
    np.add.at(wins, (first, second), outcomes)
    np.add.at(wins, (second, first), 1.0 - outcomes)
    np.add.at(counts, (first, second), 1)
    np.add.at(counts, (second, first), 1)
    last = latest[0]
    if decision is None and last is not None:
        decision = {
            "stopped": bool(last["stopped"]),
            "leader": last["leader"],
            "leader_name": None if last["leader"] is None else names[last["leader"]],
            "p_value": last["p_value"],
            "log_evidence": last["log_evidence"],
            "log_threshold": last["log_threshold"],
            "reason": "so far (the run has not ended)",
            "n_duels": last["n_duels"],
            "delta": experiment.get("delta"),
        }
    return {
        "store": str(path),
        "name": experiment.get("name"),
        "status": summary["status"],
        "decision": decision,
        "summary": summary,
        "policies": names,
        "win_matrix": {"wins": wins.tolist(), "counts": counts.tolist()},
        "heldout": heldout,
    }


def _print_status(record: dict) -> None:
    decision = record["decision"] or {}
    console.print(
        f"[bold]{record['name'] or 'run'}[/]: {record['status']}, leader "
        f"{decision.get('leader_name') or '-'}", highlight=False)
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    if decision:
        p_value = decision.get("p_value")
        table.add_row("decision", f"{decision.get('reason')}, p-value "
                      f"{'-' if p_value is None else f'{p_value:.4g}'}")
    summary = record["summary"]
    table.add_row("duels", ", ".join(f"{n} {state}" for state, n in
                                     summary["duels"].items()))
    tokens = sum(summary["generation_tokens"].values()) + sum(
        summary["judge_tokens"].values())
    table.add_row("spent", f"{tokens:,} tokens, cost {summary['cost']['total']:.4g}")
    table.add_row("held-out", _heldout_line(record["heldout"], "none"))
    table.add_row("run store", record["store"])
    console.print(table)
    names = record["policies"]
    matrix = Table(title="wins / duels (row against column, counted duels)")
    matrix.add_column("")
    for name in names:
        matrix.add_column(name, justify="right")
    wins, counts = record["win_matrix"]["wins"], record["win_matrix"]["counts"]
    for a, name in enumerate(names):
        cells = [
            "" if a == b else f"{wins[a][b]:g}/{counts[a][b]}"
            for b in range(len(names))
        ]
        matrix.add_row(name, *cells)
    console.print(matrix)


def main() -> None:
    """Entry point that turns library errors into one line and a status."""
    # The statistics multiply small matrices: one BLAS thread is faster than
    # several competing for two cores. A user's own setting wins.
    import os

    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    logging.basicConfig(level=logging.WARNING)
    try:
        app()
    except InputError as error:
        fail(str(error))
    except LlmpoError as error:
        fail(str(error), status=1)


if __name__ == "__main__":
    main()
