"""The numerical study behind ``llmpo bench``: methods x instances x delta.

Each cell runs many seeded replications of one method against the simulated
judge of one instance and summarises them next to the fundamental limit
``T* kl(delta, 1-delta)`` (MATH.md §6). Replications are spread over local
processes, or over Ray when asked; results depend only on the seed, not on how
the work was spread.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass

import numpy as np

from llmpo.errors import InputError
from llmpo.stats.instances import Instance
from llmpo.stats.divergence import kl_delta
from llmpo.stats.methods import (
    bound_family,
    make_procedure,
    methods,
    tstar,
)
from llmpo.stats.sampling import check_delta
from llmpo.stats.simulate import simulate

logger = logging.getLogger(__name__)

_CHUNK = 25


@dataclass(frozen=True)
class CellResult:
    """Summary of one (instance, method, delta) cell; ``None`` where a figure
    does not apply. Field names are the keys of ``llmpo bench --json``."""

    instance: str
    method: str
    delta: float
    runs: int
    mean_duels: float
    median_duels: float
    error_rate: float
    undecided_rate: float
    lower_bound: float | None
    ratio: float | None
    overhead_ms: float

    def to_record(self) -> dict:
        """The JSON record of this cell."""
        return asdict(self)


@dataclass(frozen=True)
class _Chunk:
    instance: Instance
    instance_index: int
    method: str
    method_index: int
    delta: float
    delta_index: int
    seed: int
    runs: range
    budget: int | None
    batch: int


@dataclass(frozen=True)
class _ChunkResult:
    key: tuple[int, int, int]
    duels: list[int]
    errors: int
    undecided: int
    seconds: float
    first_counts: np.ndarray | None
    first_run: int


def _run_chunk(chunk: _Chunk) -> _ChunkResult:
    winner = chunk.instance.condorcet_winner
    duels, errors, undecided, seconds = [], 0, 0, 0.0
    first_counts = None
    for run in chunk.runs:
        sequence = np.random.SeedSequence(
            chunk.seed,
            spawn_key=(chunk.instance_index, chunk.method_index, chunk.delta_index, run),
        )
        procedure_seed, judge_seed = sequence.generate_state(2)
        procedure = make_procedure(
            chunk.method, chunk.instance, chunk.delta, int(procedure_seed)
        )
        outcome = simulate(
            procedure,
            chunk.instance,
            np.random.default_rng(int(judge_seed)),
            budget=chunk.budget,
            batch=chunk.batch,
        )
        duels.append(outcome.duels)
        seconds += outcome.seconds
        if outcome.decision.stopped:
            errors += winner is None or outcome.decision.leader != winner
        else:
            undecided += 1
        if run == chunk.runs.start:
            first_counts = outcome.counts
    key = (chunk.instance_index, chunk.method_index, chunk.delta_index)
    return _ChunkResult(key, duels, errors, undecided, seconds, first_counts,
                        chunk.runs.start)


def run_bench(
    instances: Sequence[Instance],
    method_names: Sequence[str],
    deltas: Sequence[float],
    *,
    runs: int,
    seed: int = 0,
    budget: int | None = None,
    batch: int = 1,
    workers: int | None = None,
    use_ray: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[CellResult], dict]:
    """Run the study and return one :class:`CellResult` per cell.

    Parameters
    ----------
    instances : sequence of Instance
    method_names : sequence of str
        Names from :func:`llmpo.stats.methods.methods`.
    deltas : sequence of float
        Error probabilities in (0, 1).
    runs : int
        Replications per cell.
    seed : int
        Master seed; every replication's seeds derive from it and the cell.
    budget : int, optional
        Duel budget per run (undecided when exhausted).
    batch : int
        Duels proposed at once.
    workers : int, optional
        Local processes (default: the number of cores).
    use_ray : bool
        Spread replications over a Ray cluster instead of local processes.
    progress : callable, optional
        Called as ``progress(done_runs, total_runs)``.

    Returns
    -------
    cells : list of CellResult
    allocations : dict
        ``(instance, method, delta) -> counts per pair`` of each cell's first run,
        for the allocation plot.
    """
    known = methods()
    for name in method_names:
        if name not in known:
            raise InputError(
                f"--methods: got {name!r}, expected names among {', '.join(sorted(known))}"
            )
    deltas = [check_delta(d) for d in deltas]
    if runs < 1:
        raise InputError(f"--runs: got {runs}, expected an integer >= 1")
    if batch < 1:
        raise InputError(f"--batch: got {batch}, expected an integer >= 1")
    if budget is not None and budget < 1:
        raise InputError(f"--budget: got {budget}, expected an integer >= 1")
    for name in method_names:
        for instance in instances:
            if name == "oracle" and instance.condorcet_winner is None:
                raise InputError(
                    f"--methods oracle: instance {instance.name!r} has no Condorcet "
                    "winner, so the oracle does not apply; leave it out"
                )

    chunks = [
        _Chunk(instance, ii, method, mi, delta, di, seed,
               range(start, min(start + _CHUNK, runs)), budget, batch)
        for ii, instance in enumerate(instances)
        for mi, method in enumerate(method_names)
        for di, delta in enumerate(deltas)
        for start in range(0, runs, _CHUNK)
    ]
    total = len(instances) * len(method_names) * len(deltas) * runs
    results: list[_ChunkResult] = []
    done = 0
    for result in _execute(chunks, workers, use_ray):
        results.append(result)
        done += len(result.duels)
        if progress is not None:
            progress(done, total)

    cells, allocations = [], {}
    bounds: dict[tuple[str, str], float | None] = {}
    for ii, instance in enumerate(instances):
        for mi, method in enumerate(method_names):
            for di, delta in enumerate(deltas):
                parts = [r for r in results if r.key == (ii, mi, di)]
                parts.sort(key=lambda r: r.first_run)
                duels = np.concatenate([r.duels for r in parts])
                seconds = sum(r.seconds for r in parts)
                # The structured bound costs seconds to minutes: once per
                # instance, scaled by kl(delta, 1-delta) for each delta.
                key = (instance.name, bound_family(method))
                if key not in bounds:
                    bounds[key] = tstar(method, instance)
                bound = None if bounds[key] is None else bounds[key] * kl_delta(delta)
                mean = float(duels.mean())
                cells.append(CellResult(
                    instance=instance.name,
                    method=method,
                    delta=delta,
                    runs=int(duels.size),
                    mean_duels=mean,
                    median_duels=float(np.median(duels)),
                    error_rate=sum(r.errors for r in parts) / duels.size,
                    undecided_rate=sum(r.undecided for r in parts) / duels.size,
                    lower_bound=bound,
                    ratio=None if bound is None else mean / bound,
                    overhead_ms=1000.0 * seconds / max(1, int(duels.sum())),
                ))
                if parts and parts[0].first_counts is not None:
                    allocations[(instance.name, method, delta)] = parts[0].first_counts
    return cells, allocations


def _execute(chunks: list[_Chunk], workers: int | None, use_ray: bool):
    if use_ray:
        from llmpo.scale import ray_map

        yield from ray_map(_run_chunk, chunks)
        return
    workers = workers or os.cpu_count() or 1
    if workers == 1:
        for chunk in chunks:
            yield _run_chunk(chunk)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_run_chunk, chunk) for chunk in chunks]
        for future in as_completed(futures):
            yield future.result()


def format_table(cells: Sequence[CellResult]) -> list[list[str]]:
    """Rows of strings for a terminal table, one per cell."""

    def number(value, digits=1):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        return f"{value:,.{digits}f}"

    return [
        [
            c.instance, c.method, f"{c.delta:g}", str(c.runs), number(c.mean_duels),
            number(c.median_duels, 0), f"{c.error_rate:.3f}", f"{c.undecided_rate:.3f}",
            number(c.lower_bound), number(c.ratio, 2), f"{c.overhead_ms:.3f}",
        ]
        for c in cells
    ]


TABLE_COLUMNS = [
    "instance", "method", "delta", "runs", "mean duels", "median", "error",
    "undecided", "T*·kl(δ,1-δ)", "ratio", "ms/duel",
]
