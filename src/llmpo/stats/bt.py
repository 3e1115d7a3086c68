"""Bradley-Terry maximum likelihood from duels summarised per pair.

A pair ``(a, b)`` has a difference vector ``z_ab = x_a - x_b``, a count ``N_ab``
of duels and a sum ``S_ab`` of outcomes for ``a`` (a tie counts 1/2). Under
``p_ab = sigma(theta^T z_ab)`` the log-likelihood is

    l(theta) = sum_ab S_ab log sigma(u_ab) + (N_ab - S_ab) log(1 - sigma(u_ab))
             = sum_ab S_ab u_ab - N_ab softplus(u_ab),      u_ab = theta^T z_ab,

which holds for fractional ``S_ab`` as well. Every fit here minimises
``-l(theta) + (ridge / 2) |theta|^2`` by Newton's method with a backtracking line
search; the ridge keeps the problem strictly convex when the compared
differences do not span ``R^d`` (a comparison graph that is not connected, or
an outcome that separates the data).
"""

from __future__ import annotations

import logging

import numpy as np
from scipy.special import expit

from llmpo.errors import InputError

logger = logging.getLogger(__name__)

_MAX_ITER = 100
_TOLERANCE = 1e-10


def log_likelihood(theta, diffs, counts, sums) -> float:
    """Bradley-Terry log-likelihood ``l(theta)`` of duels summarised per pair.

    Parameters
    ----------
    theta : ndarray, shape (d,)
        Parameter.
    diffs : ndarray, shape (m, d)
        Difference vectors ``z_ab`` of the pairs.
    counts, sums : ndarray, shape (m,)
        Number of duels ``N_ab`` and sum of outcomes ``S_ab`` for the first policy.

    Returns
    -------
    float
        ``sum S u - N softplus(u)`` with ``u = diffs @ theta`` (nats, <= 0).
    """
    u = diffs @ theta
    return float(sums @ u - counts @ np.logaddexp(0.0, u))


def log_mixture_lower_bounds(
    theta, diffs, counts, sums, precisions, *, steps: int = 3
) -> np.ndarray:
    """Lower bounds on the log marginal likelihood under Gaussian priors.

    For each precision ``rho``, a lower bound on
    ``ln \\int L(lambda) N(lambda; 0, rho^-1 I) d lambda`` with ``L = exp l``. The
    log-likelihood's Hessian is ``-sum N sigma'(u) z z^T``, and ``sigma' <= 1/4``,
    so around any point ``m``, with ``g`` the gradient of ``l`` there and
    ``V = sum N z z^T / 4``,

        l(lambda) >= l(m) + g^T (lambda - m) - (lambda - m)^T V (lambda - m) / 2,

    and the Gaussian integral of the right-hand side is closed:

        l(m) - rho |m|^2 / 2 + b^T (V + rho I)^{-1} b / 2 - ln det(I + V / rho) / 2,

    with ``b = g - rho m``. The bound holds for every ``m`` and is tightest near
    the ridge-``rho`` maximum-likelihood estimate; starting from ``theta``, each
    of ``steps`` minorise-maximise steps ``m <- m + (V + rho I)^{-1} b`` moves
    toward it and can only raise the bound. The largest bound met is returned.

    Parameters
    ----------
    theta : ndarray, shape (d,)
        The first expansion point.
    diffs, counts, sums : ndarray
        As :func:`log_likelihood`.
    precisions : array_like, shape (n,)
        Prior precisions ``rho > 0``.
    steps : int
        Minorise-maximise steps.

    Returns
    -------
    ndarray, shape (n,)
        The lower bounds, in nats.
    """
    rho = np.asarray(precisions, dtype=float)[:, None]
    curvature, vectors = np.linalg.eigh(0.25 * (diffs.T * counts) @ diffs)
    curvature = np.clip(curvature, 0.0, None)[None, :]
    log_det = 0.5 * np.sum(np.log1p(curvature / rho), axis=1)
    points = np.repeat(np.asarray(theta, dtype=float)[None, :], rho.shape[0], axis=0)
    best = np.full(rho.shape[0], -np.inf)
    for _ in range(steps + 1):
        u = points @ diffs.T
        values = u @ sums - np.logaddexp(0.0, u) @ counts
        gradients = (sums[None, :] - counts[None, :] * expit(u)) @ diffs
        b = (gradients - rho * points) @ vectors
        rise = b / (curvature + rho)
        bounds = (values - 0.5 * rho[:, 0] * np.sum(points**2, axis=1)
                  + 0.5 * np.sum(b * rise, axis=1) - log_det)
        best = np.maximum(best, bounds)
        points = points + rise @ vectors.T
    return best


def fit(diffs, counts, sums, *, ridge: float, start=None) -> np.ndarray:
    """Ridge-regularised maximum-likelihood estimate of ``theta``.

    Minimises ``-l(theta) + (ridge / 2) |theta|^2`` by Newton's method,
    warm-started at ``start``.

    Parameters
    ----------
    diffs : ndarray, shape (m, d)
        Difference vectors ``z_ab`` of the pairs.
    counts, sums : ndarray, shape (m,)
        Duel counts ``N_ab`` and outcome sums ``S_ab`` (ties count 1/2).
    ridge : float
        Penalty weight, > 0.
    start : ndarray, shape (d,), optional
        Warm start; zero when omitted.

    Returns
    -------
    ndarray, shape (d,)

    Raises
    ------
    InputError
        When shapes disagree, ``ridge <= 0`` or an input is not finite.
    """
    diffs, counts, sums, theta = _check(diffs, counts, sums, ridge, start)
    return _newton(diffs, counts, sums, ridge, theta, direction=None)


def fit_halfspace(diffs, counts, sums, direction, *, ridge: float, start=None):
    """Ridge-regularised maximum likelihood over ``{theta : theta^T y <= 0}``.

    The objective is strictly convex, so the solution is the unconstrained
    one when that is feasible, and otherwise lies on the hyperplane
    ``theta^T y = 0``. The hyperplane problem is solved first by Newton steps
    projected on it (in the metric of the Hessian); its multiplier
    ``mu = -y^T grad / |y|^2`` tells which case holds: ``mu >= 0`` is the KKT
    condition of the half-space problem, ``mu < 0`` means the unconstrained
    optimum is interior, and it is then computed and returned.

    Parameters
    ----------
    diffs, counts, sums : ndarray
        As in :func:`fit`.
    direction : ndarray, shape (d,)
        ``y``; the null of "``i`` beats ``j``" uses ``y = x_i - x_j``.
    ridge : float
        Penalty weight, > 0.
    start : ndarray, shape (d,), optional
        Warm start, moved onto the hyperplane when it is not feasible.

    Returns
    -------
    ndarray, shape (d,)
        The constrained estimate, with ``theta^T y <= 0`` up to rounding.

    Raises
    ------
    InputError
        As :func:`fit`, or when ``direction`` has the wrong shape.
    """
    diffs, counts, sums, theta = _check(diffs, counts, sums, ridge, start)
    y = np.asarray(direction, dtype=float)
    if y.shape != (diffs.shape[1],) or not np.all(np.isfinite(y)):
        raise InputError(
            f"direction: got shape {y.shape}, expected {diffs.shape[1]} finite numbers"
        )
    norm2 = float(y @ y)
    if norm2 == 0.0:
        return _newton(diffs, counts, sums, ridge, theta, direction=None)
    excess = float(theta @ y)
    if excess > 0.0:
        theta = theta - (excess / norm2) * y
    theta = _newton(diffs, counts, sums, ridge, theta, direction=y)
    _, gradient, _ = _objective(theta, diffs, counts, sums, ridge, hessian=False)
    multiplier = -float(y @ gradient) / norm2
    if multiplier < 0.0:
        theta = _newton(diffs, counts, sums, ridge, theta, direction=None)
    return theta


def metric_projection(theta, direction, precision) -> np.ndarray:
    """Move ``theta`` onto ``{lambda : lambda^T y = 0}`` in the metric ``precision``.

    ``lambda = theta - H^{-1} y (y^T theta) / (y^T H^{-1} y)``: the maximiser of the
    quadratic approximation of the log-likelihood on the hyperplane when
    ``theta`` is the unconstrained maximiser and ``H`` its Hessian. A point of the
    null, so its likelihood is a lower bound on the null's maximum likelihood.

    Parameters
    ----------
    theta : ndarray, shape (d,)
    direction : ndarray, shape (d,)
        ``y``, not zero.
    precision : ndarray, shape (d, d)
        Positive definite ``H``.

    Returns
    -------
    ndarray, shape (d,)
    """
    h_inv_y = np.linalg.solve(precision, direction)
    return theta - h_inv_y * (float(direction @ theta) / float(direction @ h_inv_y))


def information(theta, diffs, counts, *, ridge: float) -> np.ndarray:
    """Observed information ``sum N sigma'(u) z z^T + ridge I`` at ``theta``."""
    u = diffs @ theta
    p = expit(u)
    weights = counts * p * (1.0 - p)
    return (diffs.T * weights) @ diffs + ridge * np.eye(diffs.shape[1])


# ---------------------------------------------------------------------------


def _check(diffs, counts, sums, ridge, start):
    diffs = np.asarray(diffs, dtype=float)
    counts = np.asarray(counts, dtype=float)
    sums = np.asarray(sums, dtype=float)
    if diffs.ndim != 2:
        raise InputError(f"diffs: got shape {diffs.shape}, expected (m, d)")
    m, d = diffs.shape
    if counts.shape != (m,) or sums.shape != (m,):
        raise InputError(
            f"counts, sums: got shapes {counts.shape} and {sums.shape}, "
            f"expected ({m},) to match diffs"
        )
    if not (np.all(np.isfinite(diffs)) and np.all(np.isfinite(counts))
            and np.all(np.isfinite(sums))):
        raise InputError("diffs, counts, sums: expected finite numbers")
    if np.any(counts < 0) or np.any(sums < 0) or np.any(sums > counts):
        raise InputError("counts, sums: expected 0 <= sums <= counts")
    if not (np.isfinite(ridge) and ridge > 0):
        raise InputError(f"ridge: got {ridge}, expected a number > 0")
    if start is None:
        theta = np.zeros(d)
    else:
        theta = np.array(start, dtype=float)
        if theta.shape != (d,) or not np.all(np.isfinite(theta)):
            raise InputError(
                f"start: got shape {theta.shape}, expected {d} finite numbers"
            )
    return diffs, counts, sums, theta


def _value(theta, diffs, counts, sums, ridge):
    u = diffs @ theta
    return float(counts @ np.logaddexp(0.0, u) - sums @ u) + 0.5 * ridge * (
        theta @ theta
    )


def _objective(theta, diffs, counts, sums, ridge, *, hessian=True):
    u = diffs @ theta
    p = expit(u)
    value = float(counts @ np.logaddexp(0.0, u) - sums @ u) + 0.5 * ridge * (
        theta @ theta
    )
    gradient = diffs.T @ (counts * p - sums) + ridge * theta
    if not hessian:
        return value, gradient, None
    weights = counts * p * (1.0 - p)
    matrix = (diffs.T * weights) @ diffs
    matrix[np.diag_indices_from(matrix)] += ridge
    return value, gradient, matrix


def _newton(diffs, counts, sums, ridge, theta, *, direction):
    """Newton's method with backtracking; on the hyperplane ``direction^T theta =
    const`` when ``direction`` is given (the steps keep that product fixed)."""
    value, gradient, matrix = _objective(theta, diffs, counts, sums, ridge)
    for _ in range(_MAX_ITER):
        step = np.linalg.solve(matrix, gradient)
        if direction is not None:
            h_inv_y = np.linalg.solve(matrix, direction)
            step -= h_inv_y * (float(direction @ step) / float(direction @ h_inv_y))
        decrement = float(gradient @ step)
        if decrement <= _TOLERANCE * max(1.0, abs(value)):
            break
        length = 1.0
        while True:
            candidate = theta - length * step
            new_value = _value(candidate, diffs, counts, sums, ridge)
            if new_value <= value - 0.25 * length * decrement or length < 1e-12:
                break
            length *= 0.5
        if new_value > value:
            break
        theta = candidate
        value, gradient, matrix = _objective(theta, diffs, counts, sums, ridge)
    else:
        logger.debug("Newton stopped after %d iterations", _MAX_ITER)
    return theta
