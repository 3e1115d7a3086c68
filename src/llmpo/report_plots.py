"""PNG plots of a run's report: evidence, allocation, win rates, spending.

Each function takes plain arrays (no store, no experiment) and writes one PNG.
Figures are drawn on matplotlib's Agg canvas directly, without pyplot, so that
writing a report neither needs a display nor changes the backend of the
process that calls it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

DPI = 110
# Leaders beyond this many share one grey: a legend with more entries is not read.
MAX_LEADER_COLOURS = 8
# Cells are annotated with rate and count only while they stay legible.
MAX_ANNOTATED_POLICIES = 12
# Policy names are written on the matrix axes up to this many policies.
MAX_NAMED_POLICIES = 40
LABEL_CHARS = 22
MAX_RECORDED_DOTS = 80


def evidence_plot(
    path: Path,
    duels: np.ndarray,
    log_evidence: np.ndarray,
    leaders: np.ndarray,
    log_threshold: float,
    names: Sequence[str],
    *,
    stopped_at: int | None = None,
    recorded: tuple[np.ndarray, np.ndarray] | None = None,
) -> Path:
    """Plot the leader's evidence against the threshold over counted duels.

    Parameters
    ----------
    path : Path
        PNG file to write.
    duels : ndarray of int, shape (n,)
        Number of counted duels at each point.
    log_evidence : ndarray, shape (n,)
        The leader's evidence (nats) at each point; non-finite values are gaps.
    leaders : ndarray of int, shape (n,)
        The leader at each point; each segment is coloured by its leader.
    log_threshold : float
        The level the evidence must reach for the run to stop.
    names : sequence of str
        Policy names by index.
    stopped_at : int or None
        Counted duels when the stopping rule fired, drawn as a vertical line.
    recorded : (ndarray, ndarray) or None
        ``(duels, log_evidence)`` of the decisions the run recorded, drawn as
        dots over the replayed curve.

    Returns
    -------
    Path
        ``path``.
    """
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D

    figure, axes = _figure(7.6, 4.0)
    x = np.asarray(duels, dtype=float)
    y = np.where(np.isfinite(log_evidence), log_evidence, np.nan)
    leaders = np.asarray(leaders, dtype=np.int64)
    colour_of = _leader_colours(leaders)
    handles = []
    if x.size >= 2:
        points = np.column_stack([x, y])
        segments = np.stack([points[:-1], points[1:]], axis=1)
        colours = [colour_of.get(int(leader), "#9a9a9a") for leader in leaders[1:]]
        axes.add_collection(LineCollection(segments, colors=colours, linewidths=1.8))
    elif x.size == 1:
        axes.plot(x, y, "o", color=colour_of.get(int(leaders[0]), "#9a9a9a"))
    for leader, colour in colour_of.items():
        handles.append(
            Line2D([], [], color=colour, lw=2, label=short_label(names[leader]))
        )
    if len(set(leaders.tolist())) > len(colour_of):
        handles.append(Line2D([], [], color="#9a9a9a", lw=2, label="other leaders"))
    axes.axhline(log_threshold, color="#b2182b", ls="--", lw=1.2)
    handles.append(Line2D([], [], color="#b2182b", ls="--", lw=1.2,
                          label=f"threshold {log_threshold:.2f}"))
    if stopped_at is not None:
        axes.axvline(stopped_at, color="#333333", ls=":", lw=1.2)
        handles.append(Line2D([], [], color="#333333", ls=":", lw=1.2,
                              label=f"stopped at {stopped_at} duels"))
    if recorded is not None and len(recorded[0]):
        # A few dozen dots show agreement; one per decision would hide the curve.
        every = max(1, len(recorded[0]) // MAX_RECORDED_DOTS)
        axes.plot(recorded[0][::every], recorded[1][::every], ".", color="#222222",
                  ms=3, zorder=3)
        handles.append(Line2D([], [], color="#222222", marker=".", ls="",
                              label="recorded by the run"))
    finite = y[np.isfinite(y)]
    low = min(0.0, float(finite.min())) if finite.size else 0.0
    high = max(log_threshold, float(finite.max())) if finite.size else log_threshold
    # A margin on the right keeps a stop at the last duel visible.
    axes.set_xlim(0, 1.03 * max(float(x.max()) if x.size else 1.0, 1.0))
    axes.set_ylim(low - 0.05 * (high - low + 1), high + 0.12 * (high - low + 1))
    axes.set_xlabel("counted duels")
    axes.set_ylabel("leader's evidence (nats)")
    axes.grid(True, alpha=0.3)
    axes.legend(handles=handles, fontsize=8, loc="upper left", framealpha=0.9)
    return _save(figure, path)


def allocation_plot(
    path: Path,
    labels: Sequence[str],
    shares: np.ndarray,
    proportions: np.ndarray | None,
    *,
    rest: tuple[float, float | None] | None = None,
) -> Path:
    """Bar chart of the share of duels per pair next to the optimal proportions.

    Parameters
    ----------
    path : Path
        PNG file to write.
    labels : sequence of str
        One label per pair shown (such as ``"a vs b"``).
    shares : ndarray, shape (m,)
        Share of the counted duels each pair received.
    proportions : ndarray, shape (m,), or None
        Optimal proportions of the same pairs; ``None`` draws the shares alone.
    rest : (float, float or None) or None
        Share and proportion of the pairs not shown, drawn as one last bar.

    Returns
    -------
    Path
        ``path``.
    """
    labels = [short_label(label, 2 * LABEL_CHARS + 4) for label in labels]
    shares = np.asarray(shares, dtype=float)
    wanted = None if proportions is None else np.asarray(proportions, dtype=float)
    if rest is not None:
        labels.append("all other pairs")
        shares = np.append(shares, rest[0])
        if wanted is not None:
            wanted = np.append(wanted, rest[1] or 0.0)
    m = len(labels)
    figure, axes = _figure(7.6, max(2.4, 0.9 + 0.32 * m))
    position = np.arange(m)
    height = 0.4 if wanted is not None else 0.7
    offset = height / 2 if wanted is not None else 0.0
    axes.barh(position - offset, shares, height=height, color="#2166ac",
              label="share of counted duels")
    if wanted is not None:
        axes.barh(position + offset, wanted, height=height, color="#f4a582",
                  label="optimal proportions at the final estimate")
    axes.set_yticks(position)
    axes.set_yticklabels(labels, fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel("fraction of duels")
    axes.set_xlim(0, max(1e-9, float(shares.max()),
                         0.0 if wanted is None else float(wanted.max())) * 1.15)
    axes.grid(True, axis="x", alpha=0.3)
    axes.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2,
                frameon=False)
    return _save(figure, path)


def win_matrix_plot(
    path: Path, wins: np.ndarray, counts: np.ndarray, names: Sequence[str]
) -> Path:
    """Heat map of the win rate of each row policy against each column policy.

    Parameters
    ----------
    path : Path
        PNG file to write.
    wins : ndarray, shape (K, K)
        ``wins[i, j]``: sum of the outcomes of ``i`` against ``j`` (ties 1/2).
    counts : ndarray, shape (K, K)
        ``counts[i, j]``: counted duels of the pair, symmetric.
    names : sequence of str
        Policy names by index.

    Returns
    -------
    Path
        ``path``.

    Notes
    -----
    Cells of pairs never dueled are left grey. With more than
    ``MAX_ANNOTATED_POLICIES`` policies the cells carry colour only.
    """
    k = len(names)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(counts > 0, wins / np.maximum(counts, 1), np.nan)
    size = min(11.0, max(4.6, 0.75 * k + 2.6))
    figure, axes = _figure(size + 1.2, size)
    colours = _colormap()
    image = axes.imshow(np.ma.masked_invalid(rate), cmap=colours, vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04,
                    label="win rate of the row policy")
    if k <= MAX_NAMED_POLICIES:
        labels = [short_label(name) for name in names]
    else:
        labels = [str(index) for index in range(k)]
    step = max(1, k // MAX_NAMED_POLICIES)
    ticks = np.arange(0, k, step)
    axes.set_xticks(ticks)
    axes.set_yticks(ticks)
    axes.set_xticklabels([labels[t] for t in ticks], rotation=40, ha="right",
                         fontsize=8)
    axes.set_yticklabels([labels[t] for t in ticks], fontsize=8)
    axes.set_xlabel("against (column)")
    axes.set_ylabel("policy (row)")
    if k <= MAX_ANNOTATED_POLICIES:
        font = 8 if k <= 8 else 6.5
        for i in range(k):
            for j in range(k):
                if i == j:
                    continue
                if counts[i, j] == 0:
                    text, colour = "n=0", "#555555"
                else:
                    value = rate[i, j]
                    text = f"{value:.2f}\nn={int(counts[i, j])}"
                    colour = "white" if abs(value - 0.5) > 0.3 else "#111111"
                axes.text(j, i, text, ha="center", va="center", fontsize=font,
                          color=colour)
    return _save(figure, path)


def spending_plot(
    path: Path,
    duels: np.ndarray,
    generation_tokens: np.ndarray,
    judge_tokens: np.ndarray,
    cost: np.ndarray,
) -> Path:
    """Cumulative tokens (and cost, when any) over finished duels.

    Parameters
    ----------
    path : Path
        PNG file to write.
    duels : ndarray of int, shape (n,)
        Finished duels (counted, unparsable or failed), in completion order.
    generation_tokens, judge_tokens, cost : ndarray, shape (n,)
        Cumulative sums at each finished duel.

    Returns
    -------
    Path
        ``path``.
    """
    has_cost = bool(np.any(np.asarray(cost) > 0))
    if has_cost:
        # Cost is often proportional to tokens; on one axis the curves would
        # hide each other, so cost gets its own panel below.
        figure = _canvas(7.6, 5.4)
        axes, money = figure.subplots(
            2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2]}
        )
    else:
        figure, axes = _figure(7.6, 3.6)
    axes.plot(duels, generation_tokens, color="#2166ac", lw=1.6,
              label="generation tokens")
    axes.plot(duels, judge_tokens, color="#4dac26", lw=1.6, label="judge tokens")
    axes.plot(duels, np.asarray(generation_tokens) + np.asarray(judge_tokens),
              color="#333333", lw=1.2, ls="--", label="all tokens")
    axes.set_ylabel("cumulative tokens")
    axes.set_xlim(0, max(float(np.max(duels)) if len(duels) else 1.0, 1.0))
    axes.set_ylim(bottom=0)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8, loc="upper left", framealpha=0.9)
    bottom = axes
    if has_cost:
        money.plot(duels, cost, color="#b2182b", lw=1.6)
        money.set_ylabel("cumulative cost")
        money.set_ylim(bottom=0)
        money.grid(True, alpha=0.3)
        bottom = money
    bottom.set_xlabel("finished duels (in completion order)")
    return _save(figure, path)


def short_label(text: str, limit: int = LABEL_CHARS) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis, for axis labels."""
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------------------
# Internals


def _canvas(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _figure(width: float, height: float):
    figure = _canvas(width, height)
    return figure, figure.add_subplot()


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, format="png")
    return path


def _colormap():
    from matplotlib import colormaps

    return colormaps["RdBu"].with_extremes(bad="#dddddd")


def _leader_colours(leaders: np.ndarray) -> dict[int, str]:
    """A colour for each of the leaders that led longest, final leader first."""
    palette = ["#2166ac", "#e08214", "#1b7837", "#762a83", "#b35806", "#5aae61",
               "#c51b7d", "#35978f"]
    if leaders.size == 0:
        return {}
    values, durations = np.unique(leaders, return_counts=True)
    order = [int(v) for v in values[np.argsort(-durations, kind="stable")]]
    final = int(leaders[-1])
    order = [final] + [v for v in order if v != final]
    return {v: palette[n] for n, v in enumerate(order[:MAX_LEADER_COLOURS])}
