"""Optimal proportions of duels over pairs in the structured (Bradley-Terry) space.

With ``z_ab = x_a - x_b``, slopes ``sigma'_ab = sigma'(theta^T z_ab)``, the leader
``i*``, ``y_j = x_{i*} - x_j`` and gaps ``Delta_j = theta^T y_j > 0``, the Fisher
information of proportions ``w`` over pairs is

    H(w) = sum_ab w_ab sigma'_ab z_ab z_ab^T,

and the regularised convex program of the proportions (MATH.md section 3) is

    minimise over w in the simplex
        s(w) = max_j y_j^T (H(w) + gamma I)^{-1} y_j / Delta_j^2.

Its value ``1 / (2 s*)`` approximates ``T*(theta)^{-1}``. :func:`solve_program` is the
fast solver used inside an experiment (a fully-corrective Frank-Wolfe method that
certifies its own accuracy by a duality gap); :func:`solve_program_reference`
solves the same program as a semidefinite program through CVXPY, for tests.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

from llmpo.errors import InputError
from llmpo.stats.pairs import pairs

logger = logging.getLogger(__name__)

_GAP_FLOOR = 1e-9
# Alternatives whose ratio is at least this share of the largest enter the
# restricted solves of the program.
_BINDING = 0.5


def program_inputs(features, theta, leader: int | None = None):
    """Arrays of the program for policies ``features`` at parameter ``theta``.

    Parameters
    ----------
    features : ndarray, shape (K, d)
    theta : ndarray, shape (d,)
    leader : int, optional
        The policy taken as best; ``argmax theta^T x_i`` when omitted.

    Returns
    -------
    diffs : ndarray, shape (M, d)
        ``z_ab`` for every pair in :func:`llmpo.stats.pairs.pairs` order.
    slopes : ndarray, shape (M,)
        ``sigma'(theta^T z_ab)``.
    directions : ndarray, shape (K - 1, d)
        ``y_j`` for ``j != leader`` in increasing order of ``j``.
    gaps : ndarray, shape (K - 1,)
        ``Delta_j``, floored at a tiny positive number so that a tie does not
        divide by zero.
    """
    x = np.asarray(features, dtype=float)
    t = np.asarray(theta, dtype=float)
    a, b = pairs(x.shape[0])
    diffs = x[a] - x[b]
    p = expit(diffs @ t)
    utility = x @ t
    if leader is None:
        leader = int(np.argmax(utility))
    others = np.delete(np.arange(x.shape[0]), leader)
    directions = x[leader] - x[others]
    gaps = np.maximum(utility[leader] - utility[others], _GAP_FLOOR)
    return diffs, p * (1.0 - p), directions, gaps


def fisher_information(diffs, slopes, weights) -> np.ndarray:
    """``H(w) = sum_ab w_ab sigma'_ab z_ab z_ab^T``.

    Parameters
    ----------
    diffs : ndarray, shape (M, d)
    slopes : ndarray, shape (M,)
    weights : ndarray, shape (M,)

    Returns
    -------
    ndarray, shape (d, d)
    """
    return (diffs.T * (np.asarray(weights) * slopes)) @ diffs


def program_objective(weights, diffs, slopes, directions, gaps, *, gamma) -> float:
    """``s(w) = max_j y_j^T (H(w) + gamma I)^{-1} y_j / Delta_j^2``."""
    diffs, slopes, scaled, gamma = _check(diffs, slopes, directions, gaps, gamma)
    weights = np.asarray(weights, float)
    return float(_ratios(weights, diffs, slopes, scaled, gamma).max())


def solve_program(
    diffs,
    slopes,
    directions,
    gaps,
    *,
    gamma: float,
    start=None,
    tolerance: float = 2e-3,
    max_rounds: int = 60,
):
    """Solve the program by a fully-corrective Frank-Wolfe method.

    Each round prices every pair with the gradient
    ``d/dw_ab [sum_j pi_j y_j^T A^{-1} y_j / Delta_j^2] = -sigma'_ab z_ab^T A^{-1}
    G_pi A^{-1} z_ab`` (``A = H(w) + gamma I``, ``G_pi = sum_j pi_j y_j y_j^T /
    Delta_j^2``, ``pi`` the multipliers of the active constraints), adds the best
    pairs to the active set, and re-solves the program exactly on the active set
    (its epigraph form, by SLSQP). It stops when the duality gap
    ``s(w) - [phi(w) + min_ab grad_ab - grad^T w]`` (``phi = sum_j pi_j (...)``, a
    lower bound on ``s*`` by convexity) is below ``tolerance * s(w)``.

    Parameters
    ----------
    diffs : ndarray, shape (M, d)
        ``z_ab`` of every candidate pair.
    slopes : ndarray, shape (M,)
        ``sigma'(theta^T z_ab)``.
    directions : ndarray, shape (J, d)
        ``y_j``.
    gaps : ndarray, shape (J,)
        ``Delta_j > 0``.
    gamma : float
        Ridge ``> 0``.
    start : ndarray, shape (M,), optional
        Warm start: its support seeds the active set.
    tolerance : float
        Relative duality gap at which to stop.
    max_rounds : int
        Cap on pricing rounds.

    Returns
    -------
    value : float
        ``s(w)`` at the returned proportions (an upper bound on ``s*``, within
        ``tolerance`` of it when the gap closed).
    weights : ndarray, shape (M,)
        Proportions, summing to 1.

    Raises
    ------
    InputError
        When shapes disagree, a gap is not positive or ``gamma <= 0``.
    """
    diffs, slopes, scaled, gamma = _check(diffs, slopes, directions, gaps, gamma)
    n_pairs, dim = diffs.shape
    batch = max(4, dim)

    if start is not None and np.shape(start) == (n_pairs,) and np.sum(start) > 0:
        active = np.flatnonzero(np.asarray(start) > 1e-9)
        weights = np.asarray(start, dtype=float)[active]
    else:
        uniform = np.full(n_pairs, 1.0 / n_pairs)
        ratios = _ratios(uniform, diffs, slopes, scaled, gamma)
        pi = np.exp((ratios - ratios.max()) / max(ratios.max(), 1e-300) * 20.0)
        scores = _scores(uniform, diffs, slopes, scaled, gamma, pi / pi.sum())
        active = np.sort(np.argsort(-scores)[: min(n_pairs, dim + 1)])
        weights = None

    value = np.inf
    # The restricted solves keep only the alternatives whose ratio is near the
    # largest (SLSQP is cubic in its constraints; K - 1 = 199 of them for
    # K = 200); the others come back when the full ratios show them binding.
    if weights is not None:
        ratios = _ratios(_spread(active, weights, n_pairs), diffs, slopes, scaled,
                         gamma)
    binding = ratios >= _BINDING * ratios.max()
    for _ in range(max_rounds):
        weights, value, pi_binding = _restricted(
            diffs[active], slopes[active], scaled[binding], gamma, weights
        )
        pi = np.zeros(scaled.shape[0])
        pi[binding] = pi_binding
        full = _spread(active, weights, n_pairs)
        scores = _scores(full, diffs, slopes, scaled, gamma, pi)
        ratios = _ratios(full, diffs, slopes, scaled, gamma)
        binding |= ratios >= _BINDING * ratios.max()
        value = float(ratios.max())
        lower = float(pi @ ratios) - float(scores.max()) + float(full @ scores)
        if value - lower <= tolerance * value:
            break
        candidates = np.argsort(-scores)
        fresh = candidates[~np.isin(candidates, active)][:batch]
        keep = weights > 1e-12
        active, weights = active[keep], weights[keep]
        active = np.concatenate([active, fresh])
        weights = np.concatenate([weights, np.zeros(fresh.size)])
    else:
        logger.debug("program: gap not closed after %d rounds", max_rounds)
    full = _spread(active, weights, n_pairs)
    return value, full / full.sum()


def solve_program_reference(diffs, slopes, directions, gaps, *, gamma: float):
    """Solve the program exactly as a semidefinite program through CVXPY.

    ``y_j^T A^{-1} y_j <= s Delta_j^2`` is written as the linear matrix inequality
    ``[[A, y_j], [y_j^T, s Delta_j^2]] >= 0`` with ``A = H(w) + gamma I`` affine in
    ``w``. Meant for tests and small instances: it builds ``J`` blocks of size
    ``d + 1``.

    Returns
    -------
    value : float
        ``s*``.
    weights : ndarray, shape (M,)

    Raises
    ------
    ImportError
        When CVXPY is not installed (it is an optional dependency).
    cvxpy.error.SolverError
        When neither Clarabel nor SCS returns a solution.
    """
    import cvxpy as cp

    diffs, slopes, scaled, gamma = _check(diffs, slopes, directions, gaps, gamma)
    n_pairs, dim = diffs.shape
    # Scale the constraints so that s is of order one: solvers of semidefinite
    # programs work to absolute tolerances.
    scale = float(_ratios(np.full(n_pairs, 1.0 / n_pairs), diffs, slopes, scaled,
                          gamma).max())
    scaled_for_solver = scaled / np.sqrt(scale)
    outer = (diffs[:, :, None] * diffs[:, None, :]).reshape(n_pairs, dim * dim)
    w = cp.Variable(n_pairs, nonneg=True)
    s = cp.Variable()
    # One symmetric variable stands for A(w): the J blocks then share it instead
    # of each repeating the M x d^2 coefficients of H(w) (for bt-features-100,
    # 99 blocks over 4,950 pairs: half an hour against seconds).
    matrix = cp.Variable((dim, dim), symmetric=True)
    information = cp.reshape(outer.T @ cp.multiply(w, slopes), (dim, dim), order="C")
    constraints = [cp.sum(w) == 1, matrix == information + gamma * np.eye(dim)]
    corner = cp.reshape(s, (1, 1), order="C")
    for y in scaled_for_solver:
        column = y[:, None]
        block = cp.bmat([[matrix, column], [column.T, corner]])
        constraints.append(0.5 * (block + block.T) >> 0)
    problem = cp.Problem(cp.Minimize(s), constraints)
    # Clarabel (interior point) is exact where it converges; it stops with a
    # numerical error on bt-features-100, where SCS (first order, run to a
    # tight tolerance) still solves it.
    try:
        problem.solve(solver=cp.CLARABEL)
    except cp.error.SolverError:
        problem.solve(solver=cp.SCS, eps=1e-9, max_iters=200_000)
    if w.value is None:
        raise cp.error.SolverError(f"reference program: status {problem.status}")
    weights = np.clip(np.asarray(w.value, dtype=float), 0.0, None)
    weights /= weights.sum()
    return float(_ratios(weights, diffs, slopes, scaled, gamma).max()), weights


def g_optimal_design(diffs, *, tolerance: float = 1e-3, max_iter: int = 2000):
    """G-optimal proportions over pairs: minimise ``max_ab z_ab^T H(w)^+ z_ab``.

    Parameter-free (``sigma'`` taken constant). By the Kiefer-Wolfowitz theorem
    this is the D-optimal design, maximising ``log det H(w)`` on the span of the
    differences; computed by the multiplicative algorithm
    ``w_ab <- w_ab z_ab^T H(w)^{-1} z_ab / r`` (``r`` the rank of the span) until
    ``max_ab z_ab^T H^{-1} z_ab <= r (1 + tolerance)``.

    Parameters
    ----------
    diffs : ndarray, shape (M, d)

    Returns
    -------
    ndarray, shape (M,)
        Proportions summing to 1.
    """
    diffs = np.asarray(diffs, dtype=float)
    _, singular, basis = np.linalg.svd(diffs, full_matrices=False)
    rank = int(np.sum(singular > 1e-9 * max(singular.max(), 1e-300)))
    if rank == 0:
        raise InputError("features: all policies have the same features")
    reduced = diffs @ basis[:rank].T
    weights = np.full(diffs.shape[0], 1.0 / diffs.shape[0])
    for _ in range(max_iter):
        matrix = (reduced.T * weights) @ reduced
        leverage = np.einsum("md,md->m", reduced @ np.linalg.inv(matrix), reduced)
        if leverage.max() <= rank * (1.0 + tolerance):
            break
        weights *= leverage / rank
        weights /= weights.sum()
    return weights


# ---------------------------------------------------------------------------


def _check(diffs, slopes, directions, gaps, gamma):
    diffs = np.asarray(diffs, dtype=float)
    slopes = np.asarray(slopes, dtype=float)
    directions = np.asarray(directions, dtype=float)
    gaps = np.asarray(gaps, dtype=float)
    if diffs.ndim != 2 or slopes.shape != (diffs.shape[0],):
        raise InputError(
            f"diffs, slopes: got shapes {diffs.shape} and {slopes.shape}, "
            "expected (M, d) and (M,)"
        )
    if directions.ndim != 2 or directions.shape[1] != diffs.shape[1]:
        raise InputError(
            f"directions: got shape {directions.shape}, expected (J, {diffs.shape[1]})"
        )
    if gaps.shape != (directions.shape[0],) or not np.all(gaps > 0):
        raise InputError(
            f"gaps: got {gaps.tolist()}, expected {directions.shape[0]} numbers > 0"
        )
    if not (np.isfinite(gamma) and gamma > 0):
        raise InputError(f"gamma: got {gamma}, expected a number > 0")
    # Work on the span of the differences: directions outside it carry no
    # information and only make the ridge-dominated matrix ill-conditioned; the
    # ratios y^T (H + gamma I)^{-1} y are the same in both coordinates.
    _, singular, basis = np.linalg.svd(diffs, full_matrices=False)
    rank = int(np.sum(singular > 1e-9 * max(singular.max(), 1e-300)))
    basis = basis[: max(rank, 1)]
    scaled = (directions / gaps[:, None]) @ basis.T
    return diffs @ basis.T, slopes, scaled, float(gamma)


def _spread(active, weights, n_pairs):
    full = np.zeros(n_pairs)
    full[active] = weights
    return full


def _ratios(weights, diffs, slopes, scaled, gamma):
    """``y_j^T A^{-1} y_j / Delta_j^2`` for every ``j``
    (``scaled`` = ``y_j / Delta_j``)."""
    matrix = fisher_information(diffs, slopes, weights)
    matrix[np.diag_indices_from(matrix)] += gamma
    solved = np.linalg.solve(matrix, scaled.T)
    return np.einsum("dj,jd->j", solved, scaled)


def _scores(weights, diffs, slopes, scaled, gamma, pi):
    """Minus the gradient of ``sum_j pi_j y_j^T A^{-1} y_j / Delta_j^2`` in ``w``."""
    matrix = fisher_information(diffs, slopes, weights)
    matrix[np.diag_indices_from(matrix)] += gamma
    solved = np.linalg.solve(matrix, scaled.T)
    middle = (solved * pi) @ solved.T
    return slopes * np.einsum("md,md->m", diffs @ middle, diffs)


def _restricted(diffs, slopes, scaled, gamma, start):
    """Exact solve on a few pairs: minimise ``s`` s.t. ``ratio_j(w) <= s``, ``w`` in
    the simplex. Returns the proportions, ``s`` and the normalised multipliers."""
    n = diffs.shape[0]
    dim = diffs.shape[1]
    weights = np.full(n, 1.0 / n) if start is None else np.asarray(start, float)
    weights = 0.9 * weights / weights.sum() + 0.1 / n
    scale = float(_ratios(weights, diffs, slopes, scaled, gamma).max())

    def parts(v):
        matrix = (diffs.T * (v[:n] * slopes)) @ diffs
        matrix[np.diag_indices(dim)] += gamma
        solved = np.linalg.solve(matrix, scaled.T)
        return solved, np.einsum("dj,jd->j", solved, scaled) / scale

    def constraint(v):
        return v[n] - parts(v)[1]

    def jacobian(v):
        solved, _ = parts(v)
        inner = diffs @ solved
        jac = np.empty((scaled.shape[0], n + 1))
        jac[:, :n] = (slopes[:, None] * inner**2).T / scale
        jac[:, n] = 1.0
        return jac

    x0 = np.append(weights, parts(np.append(weights, 0.0))[1].max())
    eq_jac = np.append(np.ones(n), 0.0)[None, :]
    result = minimize(
        lambda v: v[n],
        x0,
        jac=lambda v: np.append(np.zeros(n), 1.0),
        method="SLSQP",
        bounds=[(0.0, 1.0)] * n + [(0.0, None)],
        constraints=[
            {"type": "eq", "fun": lambda v: np.array([v[:n].sum() - 1.0]),
             "jac": lambda v: eq_jac},
            {"type": "ineq", "fun": constraint, "jac": jacobian},
        ],
        options={"maxiter": 200, "ftol": 1e-10},
    )
    weights = np.clip(result.x[:n], 0.0, None)
    weights /= weights.sum()
    ratios = parts(np.append(weights, 0.0))[1]
    multipliers = getattr(result, "multipliers", None)
    pi = None
    if multipliers is not None and len(multipliers) == 1 + scaled.shape[0]:
        pi = np.clip(np.asarray(multipliers[1:], dtype=float), 0.0, None)
    if pi is None or pi.sum() <= 0:
        pi = (ratios >= ratios.max() * (1 - 1e-6)).astype(float)
    return weights, float(ratios.max() * scale), pi / pi.sum()
