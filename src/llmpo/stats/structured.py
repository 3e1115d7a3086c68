"""LLM-PO in the structured space: Bradley-Terry with known policy features.

``p_ij = sigma(theta^T (x_i - x_j))`` with unknown ``theta``; the best policy is
``argmax theta^T x_i`` (MATH.md sections 3-5). This module holds the evidence
(a Gaussian-mixture likelihood over the best fit of each null ``H_ij :
theta^T (x_i - x_j) <= 0``, or a generalized likelihood ratio with a heuristic
threshold), the adaptive procedure :class:`StructuredLLMPO` (steepest descent
of the convex program of the proportions at the current counts), and the
fixed-design baseline :class:`GOptimalDesign` that shares its evidence.

All computations run in coordinates of the span of the feature differences:
only differences enter the likelihood, and directions outside their span carry
no information.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from scipy.special import expit

from llmpo.errors import InputError
from llmpo.stats import bt
from llmpo.stats.design import g_optimal_design, solve_program
from llmpo.stats.pairs import pair_id, pairs
from llmpo.stats.procedure import Decision, Procedure

logger = logging.getLogger(__name__)

RULES = ("guaranteed", "glr")

# Ridge of the fits whose likelihood is the null's maximum: small enough that
# the likelihood it gives up (of order 1e-6 |theta|^2 / 2 nats) is negligible
# next to the threshold, large enough to keep Newton's method well posed when
# the data separate.
_NULL_RIDGE = 1e-6
# Refit the estimate (leader, proportions, expansion point of the mixture
# bound) at least whenever the sample grows by this factor.
_REFIT_GROWTH = 1.05
# Precisions of the Gaussian priors the guaranteed rule mixes over, with equal
# weights: a scale-free choice that costs ln(13) nats against the best of them.
_PRIOR_PRECISIONS = 2.0 ** np.arange(-6, 7)
# Sharpness of the soft maximum over alternatives in the sampling rule: the
# alternative with ratio r_j weighs exp(kappa (r_j / max r - 1)). 20 was best of
# 5, 20 and a hard maximum on 16 seeds of bt-features-27 (12,675, 11,619 and
# 12,234 mean duels).
_SHARPNESS = 20.0


class StructuredEvidence:
    """Evidence that one policy is the best under a Bradley-Terry model.

    Guaranteed rule: for the null ``H_ij``, the e-process

        E_ij(n) = M_n / sup_{lambda in H_ij} L_n(lambda),
        M_n = sum_k (1/13) \\int L_n(theta) N(theta; 0, rho_k^-1 I) d theta,

    where ``L_n(theta) = prod_{s <= n} sigma(u_s)^X_s (1 - sigma(u_s))^(1 - X_s)``
    (``u_s = theta^T z`` of the duel's pair) and the ``rho_k`` are 13 prior
    precisions ``2^-6 .. 2^6``. ``M_n`` is the likelihood of a Bayesian mixture;
    its logarithm is bounded from below in closed form
    (:func:`llmpo.stats.bt.log_mixture_lower_bounds`), which only makes the
    evidence smaller. Read as a generalized likelihood ratio, the rule compares
    ``sup l - sup_{H_ij} l`` with ``ln(1 / delta)`` plus a threshold computed from
    the data: ``sup l - ln M_n``, about ``(r / 2) ln n`` nats for the ``r``
    dimensions of the model. The null's maximum likelihood can only decrease as
    duels are added, so one computed earlier is a valid (conservative) stand-in:
    each alternative keeps its last computed value and is refitted only when
    that stale value does not already clear the threshold.

    The rule stops when the leader ``i`` has ``ln E_ij >= ln(1 / delta)`` for every
    ``j``. The numerator is shared by all nulls, so one martingale covers every
    error: if ``i`` is not the best policy, the true ``theta`` lies in
    ``H_{i i*}``, so ``E_{i i*}(n) <= M_n / L_n(theta)``, a non-negative martingale
    of mean 1 (the pairs are chosen from past outcomes only), which crosses
    ``1 / delta`` with probability at most ``delta`` by Ville's inequality. No
    union over the ``K`` candidates is needed.

    GLR rule (no proof): the statistic ``sup l - sup_{H_ij} l`` against
    ``ln((1 + ln n) / delta)``. Heuristic; offered for comparison only.

    Parameters
    ----------
    coords : ndarray, shape (K, r)
        Policy features in coordinates of the span of their differences.
    delta : float
        Error probability in (0, 1).
    rule : {"guaranteed", "glr"}
    ridge : float
        Ridge of the plug-in estimate.
    """

    def __init__(self, coords, delta: float, rule: str, ridge: float):
        self.coords = coords
        self.delta = delta
        self.rule = rule
        self.ridge = ridge
        k = coords.shape[0]
        first, second = pairs(k)
        self.pair_first, self.pair_second = first, second
        self.diffs = coords[first] - coords[second]
        self.counts = np.zeros(first.size)
        self.sums = np.zeros(first.size)
        self.n = 0
        self.theta = np.zeros(coords.shape[1])
        self._active = np.zeros(0, dtype=np.int64)
        self._n_fit = 0
        # Upper bounds on the null's maximum log-likelihood, per ordered pair;
        # 0 is one since a log-likelihood is never positive.
        self._null_max = np.zeros((k, k))
        self._decision: Decision | None = None
        self._n_decision = -1
        self._n_settled = -1
        self._stopped: Decision | None = None

    def record(self, pair: int, outcome: float) -> None:
        """Fold in one duel of ``pair`` (index) with ``outcome`` for its first
        policy."""
        if self.counts[pair] == 0:
            self._active = np.flatnonzero(self.counts > 0)
            self._active = np.append(self._active, pair)
        self.counts[pair] += 1.0
        self.sums[pair] += outcome
        self.n += 1
        if self.n >= _REFIT_GROWTH * self._n_fit:
            self.refit()

    def refit(self) -> None:
        """Refit the ridge MLE on all recorded duels (the next duels' plug-in)."""
        if self.n == self._n_fit:
            return
        self.theta = bt.fit(*self._data(), ridge=self.ridge, start=self.theta)
        self._n_fit = self.n

    def log_numerator(self) -> float:
        """A lower bound on ``ln M_n``, the guaranteed rule's numerator (0 before
        the first duel)."""
        if self.n == 0:
            return 0.0
        bounds = bt.log_mixture_lower_bounds(
            self.theta, *self._data(), _PRIOR_PRECISIONS
        )
        return float(np.max(bounds)) - math.log(_PRIOR_PRECISIONS.size)

    def leader(self) -> int:
        """``argmax theta^T x_i`` at the current estimate."""
        return int(np.argmax(self.coords @ self.theta))

    def decision(self, settle: bool = False) -> Decision:
        """The decision from completed duels; frozen once the rule has fired.

        A decision costs convex fits, so it is taken afresh only when the number
        of duels has reached a point of a fixed grid since the last one: every
        count up to 256, then counts spaced by at most 1/256 of themselves (see
        :func:`_next_check`). Between them the last decision stands; the rule
        fires at most 0.4% of the duels late, and checking at fewer times does
        not touch the guarantee (Ville's inequality holds at any stopping time).

        While the rule has not fired, the alternatives past the first that
        holds out keep the bounds of their last fit, so the reported evidence
        and p-value are valid but may be far weaker than the data allow.
        ``settle=True`` refits the alternatives until the weakest is exact: the
        reported evidence is then the minimum of ``ln E_ij`` over ``j`` at this
        count (a few fits more; used where a person reads it, at the end of a
        run and in reports).
        """
        if self._stopped is not None:
            return self._stopped
        if (self._decision is not None and self.n < _next_check(self._n_decision)
                and (not settle or self._n_settled == self._n_decision)):
            return self._decision
        k = self.coords.shape[0]
        if self.n == 0:
            threshold = self._threshold()
            return Decision(False, None, 1.0, -math.inf, threshold)
        self.refit()
        diffs, counts, sums = self._data()
        leader = self.leader()
        threshold = self._threshold()
        if self.rule == "guaranteed":
            level = self.log_numerator()
        else:
            top = bt.fit(diffs, counts, sums, ridge=_NULL_RIDGE, start=self.theta)
            level = bt.log_likelihood(top, diffs, counts, sums)

        utility = self.coords @ self.theta
        others = np.delete(np.arange(k), leader)
        others = others[np.argsort(utility[leader] - utility[others])]
        precision = None

        def projection(j):
            """The estimate moved onto the null's boundary: a fit's start."""
            nonlocal precision
            if precision is None:
                precision = bt.information(self.theta, diffs, counts, ridge=self.ridge)
            direction = self.coords[leader] - self.coords[j]
            return bt.metric_projection(self.theta, direction, precision)

        fresh = set()
        stopped = True
        for j in others:
            if level - self._null_max[leader, j] >= threshold:
                continue
            start = projection(j)
            if level - bt.log_likelihood(start, diffs, counts, sums) < threshold:
                stopped = False
                break
            self._refresh(leader, j, start)
            fresh.add(j)
            if level - self._null_max[leader, j] < threshold:
                stopped = False
                break
        if not stopped and settle:
            # Refit the weakest stale bound until the weakest bound is a fresh
            # one: a refit only raises a bound, so the minimum is then exact.
            while True:
                bounds = level - self._null_max[leader, others]
                weakest = others[int(np.argmin(bounds))]
                if weakest in fresh:
                    break
                self._refresh(leader, weakest, projection(weakest))
                fresh.add(weakest)
        elif not stopped:
            # Keep the reported evidence informative: refresh the weakest stale
            # bound, one fit per decision.
            bounds = level - self._null_max[leader, others]
            for j in others[np.argsort(bounds)]:
                if j not in fresh:
                    self._refresh(leader, j, self.theta)
                    break

        log_evidence = float(np.min(level - self._null_max[leader, others]))
        if self.rule == "guaranteed":
            p_value = min(1.0, math.exp(min(-log_evidence, 700.0)))
        else:
            p_value = min(1.0, math.exp(min(-log_evidence, 700.0))
                          * (1.0 + math.log(max(self.n, 1))))
        decision = Decision(stopped, leader, p_value, log_evidence, threshold)
        self._decision, self._n_decision = decision, self.n
        if settle:
            self._n_settled = self.n
        if stopped:
            self._stopped = decision
            logger.info("stopped after %d duels: leader %d (p <= %.3g)",
                        self.n, leader, p_value)
        return decision

    # -----------------------------------------------------------------------

    def _data(self):
        active = self._active
        return self.diffs[active], self.counts[active], self.sums[active]

    def _threshold(self) -> float:
        if self.rule == "guaranteed":
            return math.log(1.0 / self.delta)
        return math.log((1.0 + math.log(max(self.n, 1))) / self.delta)

    def _refresh(self, leader: int, other: int, start) -> None:
        diffs, counts, sums = self._data()
        direction = self.coords[leader] - self.coords[other]
        lam = bt.fit_halfspace(
            diffs, counts, sums, direction, ridge=_NULL_RIDGE, start=start
        )
        value = bt.log_likelihood(lam, diffs, counts, sums)
        if self.rule == "guaranteed":
            value = min(value, self._null_max[leader, other])
        self._null_max[leader, other] = value


class _StructuredProcedure(Procedure):
    """Bookkeeping shared by the structured procedures: pending duels, records,
    decisions. Subclasses choose the next pair."""

    def __init__(self, features, delta, rule, seed, ridge):
        x = _check_features(features)
        if not (isinstance(delta, (int, float)) and 0.0 < delta < 1.0):
            raise InputError(f"delta: got {delta!r}, expected a number in (0, 1)")
        if rule not in RULES:
            raise InputError(f"rule: got {rule!r}, expected one of {', '.join(RULES)}")
        if not (isinstance(ridge, (int, float)) and math.isfinite(ridge) and ridge > 0):
            raise InputError(f"ridge: got {ridge!r}, expected a number > 0")
        self.n_policies = x.shape[0]
        self.delta = float(delta)
        self.rule = rule
        self.rng = np.random.default_rng(seed)
        self.evidence = StructuredEvidence(_span_coords(x), self.delta, rule, ridge)
        self.pending = np.zeros(self.evidence.diffs.shape[0], dtype=np.int64)

    def propose(self, size: int = 1) -> list[tuple[int, int]]:
        """Next ``size`` duels; pending duels count as done. Empty once stopped."""
        if not isinstance(size, int) or size < 0:
            raise InputError(f"size: got {size!r}, expected an integer >= 0")
        if self.decision().stopped:
            return []
        out = []
        for _ in range(size):
            pair = self._next_pair()
            self.pending[pair] += 1
            out.append((int(self.evidence.pair_first[pair]),
                        int(self.evidence.pair_second[pair])))
        return out

    def record(self, i: int, j: int, outcome: float) -> None:
        """Fold in a duel of ``i`` against ``j``; ``(j, i, x)`` is stored as
        ``(i, j, 1 - x)``."""
        pair = self._pair(i, j)
        try:
            x = float(outcome)
        except (TypeError, ValueError):
            x = math.nan
        if not 0.0 <= x <= 1.0:
            raise InputError(f"outcome: got {outcome!r}, expected a number in [0, 1]")
        if i > j:
            x = 1.0 - x
        if self.pending[pair] > 0:
            self.pending[pair] -= 1
        self.evidence.record(pair, x)

    def release(self, i: int, j: int) -> None:
        """Forget one pending duel of the pair."""
        pair = self._pair(i, j)
        if self.pending[pair] > 0:
            self.pending[pair] -= 1

    def add_pending(self, i: int, j: int) -> None:
        """Count one duel of the pair as pending without proposing it."""
        self.pending[self._pair(i, j)] += 1

    def decision(self) -> Decision:
        """The current decision from completed duels (see
        :class:`StructuredEvidence`)."""
        return self.evidence.decision()

    def settled_decision(self) -> Decision:
        """The current decision with every alternative's bound exact where it
        decides the reported evidence (see :meth:`StructuredEvidence.decision`)."""
        return self.evidence.decision(settle=True)

    @property
    def n_duels(self) -> int:
        """Number of completed duels."""
        return self.evidence.n

    def _pair(self, i, j) -> int:
        k = self.n_policies
        if not (isinstance(i, (int, np.integer)) and isinstance(j, (int, np.integer))
                and 0 <= i < k and 0 <= j < k and i != j):
            raise InputError(
                f"duel ({i!r}, {j!r}): expected two different policies in 0..{k - 1}"
            )
        return pair_id(k, int(i), int(j))

    def _next_pair(self) -> int:
        raise NotImplementedError

    def _track(self, weights, t) -> int:
        """D-tracking: the pair furthest behind its share ``t w_ab``."""
        effective = self.evidence.counts + self.pending
        return int(np.argmax(t * weights - effective + self._jitter))


class StructuredLLMPO(_StructuredProcedure):
    """LLM-PO for a Bradley-Terry model with known policy features.

    Sampling: a spanning design first (pairs of a random spanning tree over the
    policies, kept while they add a dimension, until the compared differences
    span all feature differences), with forced exploration of it afterwards (a
    pair of it is forced when its count falls below ``sqrt(t) - size / 2``).
    Every other duel tracks the regularised convex program of the proportions
    (:mod:`llmpo.stats.design`) at the ridge MLE in the program's own geometry:
    it goes to the pair of steepest descent of the program's objective at the
    current counts ``N`` (pending duels included),

        argmax_ab  sigma'_ab z_ab^T A^{-1} G A^{-1} z_ab,
        A = sum_ab N_ab sigma'_ab z_ab z_ab^T + ridge I,
        G = sum_j pi_j y_j y_j^T / Delta_j^2,

    with ``pi`` a soft maximum (sharpness 20) over the alternatives' ratios
    ``y_j^T A^{-1} y_j / Delta_j^2``. This is a Frank-Wolfe step of step size
    ``1 / (t + 1)`` on the program, with the counts as the iterate: ``N / t``
    approaches the program's solution as the estimate settles, and pairs with
    the same difference ``z`` (many, with categorical features) serve as one,
    ties going to the pair dueled least. D-tracking of the solved proportions
    (MATH.md section 4) was measured first and dropped: the program has many
    optimal supports, a re-solve moves the weight to pairs that carry the same
    information, and tracking then owes those pairs duels that the others
    already supplied (on bt-features-27 mean duels fell from 15,218 to 11,619
    on 16 seeds, on bt-features-100 from 2,506 to 1,274). The solved
    proportions are still what :meth:`proportions` reports.
    Pending duels count as done. Evidence and stopping: :class:`StructuredEvidence`.

    Parameters
    ----------
    features : array_like, shape (K, d)
        Policy features; no two policies may share the same features.
    delta : float
        Error probability in (0, 1).
    rule : {"guaranteed", "glr"}
        ``"guaranteed"`` (default) is delta-correct; ``"glr"`` has no proof.
    seed : int
        Seed of the spanning design and of tie-breaking.
    ridge : float
        Ridge of the estimate.

    Raises
    ------
    InputError
        For features of unequal length or non-finite, duplicate features, a
        ``delta`` outside (0, 1) or an unknown rule.
    """

    def __init__(self, features, delta: float, rule: str = "guaranteed",
                 seed: int = 0, ridge: float = 1.0):
        super().__init__(features, delta, rule, seed, ridge)
        self.spanning = _spanning_design(self.evidence.coords, self.rng)
        self._queue = list(self.spanning[::-1])
        self._jitter = 1e-9 * self.rng.random(self.pending.size)
        # The information matrix A of the sampling rule, kept up to date with
        # rank-one changes between refits of the estimate.
        self._slopes = None
        self._slopes_fit = -1
        self._matrix = None
        self._matrix_counts = np.zeros(self.pending.size)
        self._solved = (None, None)

    def proportions(self):
        """The program's proportions (pair order) at the current estimate and
        leader, solved on demand; None before the first duel."""
        evidence = self.evidence
        if evidence.n == 0:
            return None
        evidence.refit()
        key, weights = self._solved
        if key != (evidence.n, evidence.leader()) or weights is None:
            coords, theta = evidence.coords, evidence.theta
            leader = evidence.leader()
            p = expit(evidence.diffs @ theta)
            others = np.delete(np.arange(self.n_policies), leader)
            directions = coords[leader] - coords[others]
            gaps = np.maximum(directions @ theta, 1e-6)
            _, weights = solve_program(
                evidence.diffs, p * (1.0 - p), directions, gaps,
                gamma=evidence.ridge / evidence.n, start=weights, tolerance=0.02,
            )
            self._solved = ((evidence.n, leader), weights)
        return weights.copy()

    def _next_pair(self) -> int:
        if self._queue:
            return int(self._queue.pop())
        t = self.evidence.n + int(self.pending.sum())
        effective = self.evidence.counts[self.spanning] + self.pending[self.spanning]
        lagging = int(np.argmin(effective))
        if effective[lagging] < math.sqrt(t) - self.spanning.size / 2:
            return int(self.spanning[lagging])
        return self._steepest_pair()

    def _steepest_pair(self) -> int:
        evidence = self.evidence
        evidence.refit()
        diffs, theta = evidence.diffs, evidence.theta
        counts = evidence.counts + self.pending
        if evidence._n_fit != self._slopes_fit:
            p = expit(diffs @ theta)
            self._slopes = p * (1.0 - p)
            self._slopes_fit = evidence._n_fit
            self._matrix = (diffs.T * (counts * self._slopes)) @ diffs
            self._matrix[np.diag_indices_from(self._matrix)] += evidence.ridge
        else:
            changed = np.flatnonzero(counts != self._matrix_counts)
            if changed.size:
                step = (counts - self._matrix_counts)[changed] * self._slopes[changed]
                self._matrix += (diffs[changed].T * step) @ diffs[changed]
        self._matrix_counts = counts

        leader = evidence.leader()
        others = np.delete(np.arange(self.n_policies), leader)
        directions = evidence.coords[leader] - evidence.coords[others]
        gaps = np.maximum(directions @ theta, 1e-6)
        scaled = directions / gaps[:, None]
        solved = np.linalg.solve(self._matrix, scaled.T)
        ratios = np.einsum("dj,jd->j", solved, scaled)
        pi = np.exp(_SHARPNESS * (ratios / ratios.max() - 1.0))
        middle = (solved * (pi / pi.sum())) @ solved.T
        scores = self._slopes * np.einsum("md,md->m", diffs @ middle, diffs)
        tied = np.flatnonzero(scores >= scores.max() * (1.0 - 1e-9))
        return int(tied[np.argmin(counts[tied] + self._jitter[tied])])


class GOptimalDesign(_StructuredProcedure):
    """Baseline: a fixed design over pairs, with the evidence of LLM-PO.

    ``design="g-optimal"`` tracks the G-optimal proportions over pair differences
    (:func:`llmpo.stats.design.g_optimal_design`, which ignores ``theta``);
    ``design="uniform"`` spreads duels evenly over all pairs (round robin in a
    random order).

    Parameters
    ----------
    features, delta, rule, seed, ridge
        As :class:`StructuredLLMPO`.
    design : {"g-optimal", "uniform"}
    """

    def __init__(self, features, delta: float, rule: str = "guaranteed",
                 seed: int = 0, ridge: float = 1.0, design: str = "g-optimal"):
        super().__init__(features, delta, rule, seed, ridge)
        n_pairs = self.pending.size
        if design == "g-optimal":
            self._weights = g_optimal_design(self.evidence.diffs)
        elif design == "uniform":
            self._weights = np.full(n_pairs, 1.0 / n_pairs)
        else:
            raise InputError(
                f"design: got {design!r}, expected 'g-optimal' or 'uniform'"
            )
        self.design = design
        self._jitter = 1e-9 * self.rng.random(n_pairs)

    def proportions(self):
        """The fixed proportions over pairs."""
        return self._weights.copy()

    def _next_pair(self) -> int:
        t = self.evidence.n + int(self.pending.sum()) + 1
        return self._track(self._weights, t)


# ---------------------------------------------------------------------------


def _next_check(n: int) -> int:
    """The first point after ``n`` of the grid of duel counts at which the
    structured rule is checked: every count up to 256, then the multiples of
    ``2^(floor(log2 m) - 8)`` for counts ``m`` in ``[2^k, 2^(k+1))``."""
    m = n + 1
    if m <= 256:
        return m
    step = 1 << (m.bit_length() - 9)
    return -(-m // step) * step


def _check_features(features) -> np.ndarray:
    try:
        x = np.asarray(features, dtype=float)
    except (TypeError, ValueError):
        raise InputError(
            "features: expected a K x d list of numbers, every row of the same length"
        ) from None
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 1:
        raise InputError(f"features: got shape {x.shape}, expected K x d with K >= 2")
    if not np.all(np.isfinite(x)):
        row = int(np.argwhere(~np.isfinite(x))[0][0])
        raise InputError(
            f"features[{row}]: got {x[row].tolist()}, expected finite numbers"
        )
    _, first, inverse = np.unique(x, axis=0, return_index=True, return_inverse=True)
    if first.size < x.shape[0]:
        dup = int(np.flatnonzero(np.bincount(inverse.ravel()) > 1)[0])
        rows = np.flatnonzero(inverse.ravel() == dup)
        raise InputError(
            f"features[{rows[0]}] and features[{rows[1]}]: equal, expected distinct "
            "features (the model cannot tell these policies apart)"
        )
    return x


def _span_coords(x) -> np.ndarray:
    centred = x - x[0]
    _, singular, basis = np.linalg.svd(centred, full_matrices=False)
    rank = int(np.sum(singular > 1e-9 * singular.max()))
    return centred @ basis[:rank].T


def _spanning_design(coords, rng) -> np.ndarray:
    """Pairs of a random spanning tree, kept while each adds a dimension to the
    span of compared differences, until that span is all of ``R^r``."""
    k, rank = coords.shape
    order = rng.permutation(k)
    chosen, basis = [], []
    for position in range(1, k):
        child = order[position]
        parent = order[rng.integers(position)]
        z = coords[child] - coords[parent]
        residual = z.copy()
        for vector in basis:
            residual -= (residual @ vector) * vector
        norm = np.linalg.norm(residual)
        if norm > 1e-9 * max(np.linalg.norm(z), 1e-300):
            basis.append(residual / norm)
            chosen.append(pair_id(k, int(child), int(parent)))
            if len(basis) == rank:
                break
    return np.array(chosen, dtype=np.int64)
