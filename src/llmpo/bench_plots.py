"""PNG plots of a ``llmpo bench`` study: duels against delta, and allocations."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from llmpo.bench import CellResult
from llmpo.stats.bounds import verify_bound
from llmpo.stats.instances import Instance


def write_plots(
    cells: Sequence[CellResult],
    allocations: dict,
    instances: Sequence[Instance],
    directory: Path,
) -> list[Path]:
    """Write one duels-against-delta plot per instance and one allocation plot
    per instance (the first ``llmpo`` run against the optimal proportions).

    Returns the paths written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for instance in instances:
        mine = [c for c in cells if c.instance == instance.name]
        if not mine:
            continue
        figure, axes = plt.subplots(figsize=(6.4, 4.2), dpi=110)
        for method in dict.fromkeys(c.method for c in mine):
            rows = sorted((c for c in mine if c.method == method), key=lambda c: c.delta)
            axes.plot([c.delta for c in rows], [c.mean_duels for c in rows],
                      marker="o", label=method)
        bounds = sorted(
            {(c.delta, c.lower_bound) for c in mine
             if c.lower_bound is not None and c.method in ("llmpo", "oracle", "uniform",
                                                            "elimination", "knockout")}
        )
        if bounds:
            axes.plot([d for d, _ in bounds], [b for _, b in bounds], "k--",
                      label="T*·kl(δ,1−δ)")
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.invert_xaxis()
        axes.set_xlabel("δ")
        axes.set_ylabel("mean duels")
        axes.set_title(f"{instance.name}: duels to a decision")
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=8)
        figure.tight_layout()
        path = directory / f"{instance.name}-duels.png"
        figure.savefig(path)
        plt.close(figure)
        written.append(path)

        keys = [k for k in allocations if k[0] == instance.name and k[1] == "llmpo"]
        optimal = verify_bound(instance.preference).proportions
        if keys and optimal is not None:
            counts = allocations[min(keys, key=lambda k: k[2])]
            share = counts / max(counts.sum(), 1.0)
            shown = np.flatnonzero((optimal > 0) | (share > 0.01))
            figure, axes = plt.subplots(figsize=(6.4, 4.2), dpi=110)
            x = np.arange(shown.size)
            axes.bar(x - 0.2, optimal[shown], width=0.4, label="optimal w*")
            axes.bar(x + 0.2, share[shown], width=0.4, label="llmpo (one run)")
            from llmpo.stats.pairs import pairs

            a, b = pairs(instance.n_policies)
            axes.set_xticks(x, [f"{a[m]}-{b[m]}" for m in shown], rotation=60, fontsize=7)
            axes.set_ylabel("share of duels")
            axes.set_title(f"{instance.name}: allocation against the optimal proportions")
            axes.legend(fontsize=8)
            figure.tight_layout()
            path = directory / f"{instance.name}-allocation.png"
            figure.savefig(path)
            plt.close(figure)
            written.append(path)
    return written
