"""Problem instances with a known preference model, and the simulated judge they give.

An instance is either a preference matrix ``P`` (``p_ij`` the probability that
policy ``i`` beats ``j``), optionally with a tie matrix ``T`` (a duel of ``(i, j)``
is a win for ``i`` with probability ``p_ij - t_ij/2``, a tie with ``t_ij`` and a
loss with ``1 - p_ij - t_ij/2``), or a Bradley-Terry model with policy features,
``p_ij = sigma(theta^T (x_i - x_j))``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import expit

from llmpo.errors import InputError

_TOLERANCE = 1e-9


@dataclass(frozen=True, eq=False)
class Instance:
    """A preference model over ``K`` policies with a sampler of duel outcomes.

    Parameters
    ----------
    name : str
        Name used in reports.
    preference : ndarray, shape (K, K)
        ``p_ij``; ``p_ii = 1/2`` and ``p_ij + p_ji = 1``.
    ties : ndarray, shape (K, K), or None
        Symmetric tie probabilities, ``0 <= t_ij <= 2 min(p_ij, p_ji)``.
    features : ndarray, shape (K, d), or None
        Policy features of a Bradley-Terry instance.
    theta : ndarray, shape (d,), or None
        Bradley-Terry parameter.
    """

    name: str
    preference: np.ndarray
    ties: np.ndarray | None = None
    features: np.ndarray | None = None
    theta: np.ndarray | None = None

    @property
    def n_policies(self) -> int:
        """Number of policies ``K``."""
        return self.preference.shape[0]

    @property
    def kind(self) -> str:
        """``"bt"`` when the instance has features, else ``"matrix"``."""
        return "bt" if self.features is not None else "matrix"

    @property
    def condorcet_winner(self) -> int | None:
        """The policy that beats every other with probability above 1/2, or None."""
        beats = self.preference > 0.5
        np.fill_diagonal(beats, True)
        winners = np.flatnonzero(beats.all(axis=1))
        return int(winners[0]) if winners.size else None

    def duel(self, i: int, j: int, rng: np.random.Generator) -> float:
        """Draw the outcome of one duel of ``i`` against ``j``: 1, 1/2 or 0."""
        u = rng.random()
        p = self.preference[i, j]
        half_tie = 0.0 if self.ties is None else 0.5 * self.ties[i, j]
        if u < p - half_tie:
            return 1.0
        if u < p + half_tie:
            return 0.5
        return 0.0

    def duels(
        self, i: np.ndarray, j: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        """Vectorised :meth:`duel` over arrays of policy indices."""
        u = rng.random(np.shape(i))
        p = self.preference[i, j]
        half_tie = 0.0 if self.ties is None else 0.5 * self.ties[i, j]
        return np.where(u < p - half_tie, 1.0, np.where(u < p + half_tie, 0.5, 0.0))


def check_preference(preference, *, field: str = "preference") -> np.ndarray:
    """Validate a preference matrix and return it as a float array.

    Raises
    ------
    InputError
        When it is not a square matrix of at least 2 policies, has entries
        outside [0, 1] or non-finite, a diagonal other than 1/2, or
        ``p_ij + p_ji != 1``.
    """
    try:
        matrix = np.asarray(preference, dtype=float)
    except (TypeError, ValueError):
        raise InputError(
            f"{field}: got a value that is not a matrix of numbers, "
            "expected a K x K list of numbers"
        ) from None
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise InputError(
            f"{field}: got shape {matrix.shape}, expected a square K x K matrix"
        )
    if matrix.shape[0] < 2:
        raise InputError(f"{field}: got {matrix.shape[0]} policy, expected at least 2")
    bad = ~np.isfinite(matrix) | (matrix < 0) | (matrix > 1)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise InputError(
            f"{field}[{i}][{j}]: got {matrix[i, j]}, expected a probability in [0, 1]"
        )
    off = np.abs(matrix + matrix.T - 1) > _TOLERANCE
    if off.any():
        i, j = np.argwhere(off)[0]
        raise InputError(
            f"{field}[{i}][{j}] + {field}[{j}][{i}]: got "
            f"{matrix[i, j] + matrix[j, i]:.6g}, expected 1"
        )
    return matrix


def check_ties(ties, preference: np.ndarray, *, field: str = "ties") -> np.ndarray:
    """Validate a tie matrix against its preference matrix."""
    try:
        matrix = np.asarray(ties, dtype=float)
    except (TypeError, ValueError):
        raise InputError(f"{field}: expected a K x K list of numbers") from None
    if matrix.shape != preference.shape:
        raise InputError(
            f"{field}: got shape {matrix.shape}, expected {preference.shape} "
            "like the preference matrix"
        )
    if not np.all(np.isfinite(matrix)) or np.abs(matrix - matrix.T).max() > _TOLERANCE:
        raise InputError(f"{field}: expected a finite symmetric matrix")
    limit = 2 * np.minimum(preference, preference.T) + _TOLERANCE
    off = (matrix < 0) | (matrix > limit)
    np.fill_diagonal(off, False)
    if off.any():
        i, j = np.argwhere(off)[0]
        raise InputError(
            f"{field}[{i}][{j}]: got {matrix[i, j]}, expected a value in "
            f"[0, {2 * min(preference[i, j], preference[j, i]):.6g}] "
            "so that win, tie and loss probabilities are non-negative"
        )
    return matrix


def matrix_instance(preference, ties=None, *, name: str = "matrix") -> Instance:
    """Build a validated preference-matrix instance."""
    matrix = check_preference(preference, field=f"{name}.preference")
    tie_matrix = None
    if ties is not None:
        tie_matrix = check_ties(ties, matrix, field=f"{name}.ties")
        np.fill_diagonal(tie_matrix, 0.0)
    return Instance(name=name, preference=matrix, ties=tie_matrix)


def bt_preference(features: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """``p_ij = sigma(theta^T (x_i - x_j))`` for all pairs."""
    utility = features @ theta
    return expit(utility[:, None] - utility[None, :])


def bt_instance(features, theta, *, name: str = "bt") -> Instance:
    """Build a validated Bradley-Terry instance from features and ``theta``."""
    try:
        x = np.asarray(features, dtype=float)
    except (TypeError, ValueError):
        raise InputError(
            f"{name}.features: expected a K x d list of numbers of equal length"
        ) from None
    try:
        t = np.asarray(theta, dtype=float)
    except (TypeError, ValueError):
        raise InputError(f"{name}.theta: expected a list of d numbers") from None
    if x.ndim != 2 or x.shape[0] < 2:
        raise InputError(
            f"{name}.features: got shape {x.shape}, expected K x d with K >= 2"
        )
    if t.ndim != 1 or t.shape[0] != x.shape[1]:
        raise InputError(
            f"{name}.theta: got shape {t.shape}, expected ({x.shape[1]},) to match "
            "the features"
        )
    if not np.all(np.isfinite(x)):
        raise InputError(f"{name}.features: expected finite numbers")
    if not np.all(np.isfinite(t)):
        raise InputError(f"{name}.theta: got {t.tolist()}, expected finite numbers")
    return Instance(
        name=name, preference=bt_preference(x, t), features=x, theta=t
    )


def instance_from_dict(record: dict, *, index: int = 0) -> Instance:
    """Build an instance from one record of an instances file."""
    if not isinstance(record, dict):
        raise InputError(f"instances[{index}]: expected an object")
    name = str(record.get("name", f"instance-{index}"))
    kind = record.get("kind")
    if kind == "matrix":
        if "preference" not in record:
            raise InputError(f"{name}.preference: missing, expected a K x K matrix")
        return matrix_instance(record["preference"], record.get("ties"), name=name)
    if kind == "bt":
        for key in ("features", "theta"):
            if key not in record:
                raise InputError(f"{name}.{key}: missing, required for kind 'bt'")
        return bt_instance(record["features"], record["theta"], name=name)
    raise InputError(f"{name}.kind: got {kind!r}, expected 'matrix' or 'bt'")


def load_instances(path: str | Path) -> list[Instance]:
    """Read an instances file: ``{"instances": [...]}`` or a bare list of records.

    Raises
    ------
    InputError
        When the file is missing, is not JSON, or a record is invalid.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"instances file: got {str(path)!r}, expected an existing file")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"instances file {str(path)!r}: not valid JSON ({error})") from None
    records = data.get("instances") if isinstance(data, dict) else data
    if not isinstance(records, list) or not records:
        raise InputError(
            f"instances file {str(path)!r}: expected a non-empty list under 'instances'"
        )
    return [instance_from_dict(record, index=k) for k, record in enumerate(records)]
