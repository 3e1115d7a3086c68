"""The exact lower bound ``T*(theta)`` of the structured (Bradley-Terry) space.

    T*(theta)^{-1} = max_w min_{j != i*} F_j(w),
    F_j(w) = inf_{lambda : lambda^T (x_j - x_{i*}) >= 0} sum_ab w_ab kl(p_ab, sigma(lambda^T z_ab))

with ``p_ab = sigma(theta^T z_ab)`` (MATH.md section 3). ``sum_ab w_ab kl(p_ab,
sigma(u_ab))`` is, up to a constant, the negative log-likelihood of "outcome sums"
``w_ab p_ab`` over "counts" ``w_ab``, so each inner problem is a half-space
constrained Bradley-Terry fit (:func:`llmpo.stats.bt.fit_halfspace`). Every
``F_j`` is a minimum of functions linear in ``w``, so the outer problem is
concave; it is solved by a level bundle method: the inner solutions give cuts
``F_j(w) <= sum_ab w_ab kl(p_ab, sigma(lambda_j^T z_ab))``, the cutting-plane
linear program gives an upper bound, the best point found a lower bound, and
the next point is the closest one (in L1) to the best point whose model value
reaches the middle level.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import sparse
from scipy.optimize import linprog
from scipy.special import expit

from llmpo.errors import InputError
from llmpo.stats import bt
from llmpo.stats.design import program_inputs, solve_program
from llmpo.stats.pairs import pairs

logger = logging.getLogger(__name__)

_INNER_RIDGE = 1e-9


def program_value(features, theta, gamma: float = 1e-6):
    """Value ``1 / (2 s*)`` of the regularised convex program, and its proportions.

    ``s*`` is the optimum of ``min_w max_j y_j^T (H(w) + gamma I)^{-1} y_j /
    Delta_j^2`` (:func:`llmpo.stats.design.solve_program`); ``1 / (2 s*)``
    approximates ``T*(theta)^{-1}`` (the quadratic approximation of ``kl``).

    Parameters
    ----------
    features : array_like, shape (K, d)
    theta : array_like, shape (d,)
    gamma : float
        Ridge of the program.

    Returns
    -------
    value : float
    weights : ndarray, shape (M,)
        Proportions over pairs in :func:`llmpo.stats.pairs.pairs` order.

    Raises
    ------
    InputError
        As :func:`check_model`.
    """
    x, t = check_model(features, theta)
    s, weights = solve_program(*program_inputs(x, t), gamma=gamma)
    return 1.0 / (2.0 * s), weights


def structured_lower_bound(
    features, theta, *, tolerance: float = 1e-3, max_iter: int = 300
):
    """Exact ``T*(theta)`` of the Bradley-Terry model and its optimal proportions.

    Parameters
    ----------
    features : array_like, shape (K, d)
        Policy features ``x_i``.
    theta : array_like, shape (d,)
        Parameter; the best policy ``argmax theta^T x_i`` must be unique.
    tolerance : float
        Relative gap between the bundle method's bounds at which to stop.
    max_iter : int
        Cap on outer iterations.

    Returns
    -------
    tstar : float
        ``T*(theta)``, the number of duels per unit of ``kl(delta, 1 - delta)``.
    weights : ndarray, shape (M,)
        Optimal proportions over pairs in :func:`llmpo.stats.pairs.pairs` order.

    Raises
    ------
    InputError
        As :func:`check_model`.
    """
    x, t = check_model(features, theta)
    a, b = pairs(x.shape[0])
    diffs = x[a] - x[b]
    _, singular, basis = np.linalg.svd(diffs, full_matrices=False)
    rank = int(np.sum(singular > 1e-9 * singular.max()))
    diffs = diffs @ basis[:rank].T
    t_reduced = basis[:rank] @ t
    p = expit(diffs @ t_reduced)
    utility = x @ t
    best = int(np.argmax(utility))
    directions = (x[best] - np.delete(x, best, axis=0)) @ basis[:rank].T

    def evaluate(weights):
        weights = np.clip(weights, 0.0, None)
        values, cuts = [], []
        for y in directions:
            lam = bt.fit_halfspace(
                diffs, weights, weights * p, y, ridge=_INNER_RIDGE, start=t_reduced
            )
            cut = _kl(p, expit(diffs @ lam))
            values.append(float(weights @ cut))
            cuts.append(cut)
        values = np.array(values)
        # Only the alternatives near the minimum shape the optimum; keeping the
        # others out of the linear program leaves its value an upper bound and
        # keeps it small when K is large (99 alternatives for K = 100).
        keep = values <= 1.5 * values.min() + 1e-300
        return float(values.min()), np.array(cuts)[keep]

    n_pairs = diffs.shape[0]
    _, start = solve_program(*program_inputs(x, t), gamma=1e-6)
    best_w = start
    lower, cuts = evaluate(start)
    uniform = np.full(n_pairs, 1.0 / n_pairs)
    value, more = evaluate(uniform)
    cuts = np.vstack([cuts, more])
    if value > lower:
        lower, best_w = value, uniform
    # The optimum puts weight on few pairs; the linear programs run over a
    # working set of pairs that grows by column generation (_master), so their
    # size does not grow with the K (K - 1) / 2 pairs.
    working = np.union1d(np.flatnonzero(start > 1e-6),
                         np.argsort(-cuts.max(axis=0))[: 2 * diffs.shape[1]])

    upper = np.inf
    for _ in range(max_iter):
        upper, working = _master(cuts, working)
        if upper - lower <= tolerance * lower:
            break
        level = lower + 0.5 * (upper - lower)
        candidate = _level_projection(cuts, best_w, level, working)
        value, more = evaluate(candidate)
        cuts = np.vstack([cuts, more])
        if value > lower:
            lower, best_w = value, candidate
    else:
        logger.debug("T*: bundle gap %.3g after %d iterations",
                     (upper - lower) / lower, max_iter)
    return 1.0 / lower, best_w


def check_model(features, theta):
    """Validate features and ``theta`` of a Bradley-Terry model.

    Returns
    -------
    features : ndarray, shape (K, d)
    theta : ndarray, shape (d,)

    Raises
    ------
    InputError
        When the features are not a ``K x d`` array of finite numbers of equal
        length (``K >= 2``), ``theta`` is not ``d`` finite numbers, or the best
        policy is not unique.
    """
    try:
        x = np.asarray(features, dtype=float)
    except (TypeError, ValueError):
        raise InputError(
            "features: expected a K x d list of numbers, every row of the same length"
        ) from None
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 1:
        raise InputError(f"features: got shape {x.shape}, expected K x d with K >= 2")
    if not np.all(np.isfinite(x)):
        raise InputError("features: expected finite numbers")
    try:
        t = np.asarray(theta, dtype=float)
    except (TypeError, ValueError):
        raise InputError("theta: expected a list of d numbers") from None
    if t.shape != (x.shape[1],):
        raise InputError(f"theta: got shape {t.shape}, expected ({x.shape[1]},)")
    if not np.all(np.isfinite(t)):
        raise InputError(f"theta: got {t.tolist()}, expected finite numbers")
    utility = x @ t
    order = np.sort(utility)
    if order[-1] - order[-2] <= 1e-12 * max(1.0, abs(order[-1])):
        raise InputError(
            "theta: the best policy is not unique (two policies share the largest "
            "utility), expected a unique maximiser of theta^T x_i"
        )
    return x, t


# ---------------------------------------------------------------------------


def _kl(p, q):
    q = np.clip(q, 1e-300, 1.0 - 1e-16)
    return p * np.log(p / q) + (1.0 - p) * np.log((1.0 - p) / (1.0 - q))


def _cutting_plane(cuts):
    """``max t s.t. t <= cut_k^T w, w`` in the simplex.

    Returns ``(t, w, mu)``: the value, the proportions and the multipliers of
    the cuts (``mu >= 0``, summing to 1), so that ``t = max_ab (mu^T cuts)_ab``
    over the pairs the program was given.
    """
    n_cuts, n_pairs = cuts.shape
    cost = np.zeros(n_pairs + 1)
    cost[-1] = -1.0
    a_ub = np.hstack([-cuts, np.ones((n_cuts, 1))])
    a_eq = np.append(np.ones(n_pairs), 0.0)[None, :]
    result = linprog(
        cost, A_ub=a_ub, b_ub=np.zeros(n_cuts), A_eq=a_eq, b_eq=[1.0],
        bounds=[(0, None)] * n_pairs + [(None, None)], method="highs",
    )
    mu = np.clip(-np.asarray(result.ineqlin.marginals, dtype=float), 0.0, None)
    mu = mu / mu.sum() if mu.sum() > 0 else np.full(n_cuts, 1.0 / n_cuts)
    return float(result.x[-1]), result.x[:-1], mu


def _master(cuts, working, *, slack: float = 1e-9):
    """Value of the cutting-plane program over all pairs, by column generation.

    Solves the program on the pairs ``working``; by duality its value is
    ``min_mu max_ab (mu^T cuts)_ab``, so the multipliers price every pair, and
    the pairs priced above the value join the working set until none is.

    Returns
    -------
    value : float
        The program's value over all pairs (an upper bound on the max-min).
    working : ndarray
        The working set, grown as needed.
    """
    working = np.asarray(working, dtype=np.int64)
    batch = max(8, working.size // 4)
    while True:
        value, _, mu = _cutting_plane(cuts[:, working])
        prices = mu @ cuts
        prices[working] = -np.inf
        fresh = np.flatnonzero(prices > value * (1.0 + slack) + 1e-300)
        if fresh.size == 0:
            return value, working
        fresh = fresh[np.argsort(-prices[fresh])[:batch]]
        working = np.union1d(working, fresh)


def _level_projection(cuts, center, level, working):
    """Closest ``w`` to ``center`` in L1, supported on ``working``, with
    ``cut_k^T w >= level`` for all ``k``.

    Variables ``w`` and ``e >= |w - center|`` on the working set (the weight of
    ``center`` outside it counts as a fixed distance); a linear program.
    """
    cuts = cuts[:, working]
    center_full = center
    center = center_full[working]
    n_cuts, n_pairs = cuts.shape
    cost = np.concatenate([np.zeros(n_pairs), np.ones(n_pairs)])
    eye = sparse.identity(n_pairs, format="csr")
    a_ub = sparse.vstack([
        sparse.hstack([sparse.csr_matrix(-cuts), sparse.csr_matrix((n_cuts, n_pairs))]),
        sparse.hstack([eye, -eye]),
        sparse.hstack([-eye, -eye]),
    ], format="csr")
    b_ub = np.concatenate([np.full(n_cuts, -level), center, -center])
    a_eq = np.concatenate([np.ones(n_pairs), np.zeros(n_pairs)])[None, :]
    result = linprog(
        cost, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=[1.0],
        bounds=[(0, None)] * (2 * n_pairs), method="highs",
    )
    full = np.zeros(center_full.size)
    if result.status != 0:
        full[working] = _cutting_plane(cuts)[1]
    else:
        full[working] = np.clip(result.x[:n_pairs], 0.0, None)
    return full / full.sum()
