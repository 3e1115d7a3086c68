"""The fundamental data requirement ``T*(P)`` and the optimal proportions.

Unstructured space, both model classes of MATH.md §2, in closed form:

- ``verify`` (no winner assumed): ``T* = sum_{j != i*} 1 / c(p_{i* j})`` and
  ``w*_{i* j}`` proportional to ``1 / c(p_{i* j})``.
- ``assume-winner``: each policy ``j != i*`` is refuted through its strongest
  defeater ``k_j``; ``T* = sum_j 1 / c_j`` with ``c_j = c(p_{k_j j})`` and
  ``w*_{j k_j}`` proportional to ``1 / c_j``.

Every procedure needs ``E[tau] >= T* kl(delta, 1 - delta)`` duels (Garivier &
Kaufmann 2016, Theorem 1, with pairs as arms).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmpo.errors import InputError
from llmpo.stats.divergence import coin_information
from llmpo.stats.instances import check_preference
from llmpo.stats.pairs import pair_matrix

MODES = ("verify", "assume-winner")


@dataclass(frozen=True)
class Bound:
    """The lower bound of an instance for one model class.

    ``tstar`` is ``inf`` and ``proportions`` is ``None`` when the instance has no
    Condorcet winner (nothing can be certified, so no finite budget suffices).
    ``proportions`` is over pairs in :func:`llmpo.stats.pairs.pairs` order.
    """

    mode: str
    winner: int | None
    tstar: float
    proportions: np.ndarray | None


def condorcet_winner(preference: np.ndarray) -> int | None:
    """The policy ``i`` with ``p_ij > 1/2`` for every ``j != i``, or ``None``."""
    beats = preference > 0.5
    np.fill_diagonal(beats, True)
    winners = np.flatnonzero(beats.all(axis=1))
    return int(winners[0]) if winners.size else None


def check_mode(mode: str) -> str:
    """Return ``mode`` if it is a known model class, else raise InputError."""
    if mode not in MODES:
        raise InputError(f"mode: got {mode!r}, expected one of {', '.join(MODES)}")
    return mode


def verify_bound(preference) -> Bound:
    """``T*`` and ``w*`` of the ``verify`` class (MATH.md §2.1)."""
    p = check_preference(preference)
    winner = condorcet_winner(p)
    if winner is None:
        return Bound("verify", None, float("inf"), None)
    rivals = np.delete(np.arange(p.shape[0]), winner)
    cost = 1.0 / coin_information(p[winner, rivals])
    proportions = np.zeros(p.shape[0] * (p.shape[0] - 1) // 2)
    proportions[pair_matrix(p.shape[0])[winner, rivals]] = cost / cost.sum()
    return Bound("verify", winner, float(cost.sum()), proportions)


def strongest_defeaters(preference: np.ndarray) -> np.ndarray:
    """For each policy ``j``, the ``k`` with ``p_kj > 1/2`` maximising ``c(p_kj)``;
    ``-1`` where ``j`` has no defeater."""
    info = np.where(preference > 0.5, coin_information(preference), -1.0)
    np.fill_diagonal(info, -1.0)
    best = np.argmax(info, axis=0)
    return np.where(info[best, np.arange(preference.shape[0])] > 0, best, -1)


def assume_bound(preference) -> Bound:
    """``T*`` and ``w*`` of the ``assume-winner`` class (MATH.md §2.2)."""
    p = check_preference(preference)
    winner = condorcet_winner(p)
    if winner is None:
        return Bound("assume-winner", None, float("inf"), None)
    losers = np.delete(np.arange(p.shape[0]), winner)
    defeaters = strongest_defeaters(p)[losers]
    cost = 1.0 / coin_information(p[defeaters, losers])
    proportions = np.zeros(p.shape[0] * (p.shape[0] - 1) // 2)
    np.add.at(proportions, pair_matrix(p.shape[0])[defeaters, losers], cost / cost.sum())
    return Bound("assume-winner", winner, float(cost.sum()), proportions)


def lower_bound(preference, mode: str = "verify") -> Bound:
    """``T*`` and ``w*`` for the model class ``mode``."""
    check_mode(mode)
    return verify_bound(preference) if mode == "verify" else assume_bound(preference)
