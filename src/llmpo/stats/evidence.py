"""Anytime-valid evidence that one policy beats another.

For a pair with ``n`` duels and outcome sum ``S`` (outcomes in [0, 1], a tie
counts 1/2), the evidence against the null ``p <= 1/2`` is the uniform mixture
over ``q`` in [1/2, 1] of the likelihood ratios
``prod_s (2q)^{X_s} (2(1-q))^{1-X_s}`` (Kaufmann & Koolen 2021)::

    M(n, S) = 2^{n+1} int_{1/2}^{1} q^S (1-q)^{n-S} dq
    ln M    = (n+1) ln 2 + ln B(S+1, n-S+1) + ln I_{1/2}(n-S+1, S+1)

using ``1 - I_{1/2}(a, b) = I_{1/2}(b, a)``. Each ratio is a non-negative
supermartingale under the null for any ``X_s`` in [0, 1] (ties included, by
convexity of ``x -> a^x b^(1-x)``), so is the mixture, and Ville's inequality
gives ``P(exists n: M >= 1/alpha) <= alpha`` however the duels are sampled or the
run is stopped. ``ln M ~ n c(S/n) - (1/2) ln n``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import betainc, betaln

_LN2 = math.log(2.0)


def log_mixture_evidence(successes, trials):
    """Log of the Beta-mixture e-process ``M(n, S)`` for "the first policy wins".

    Parameters
    ----------
    successes : float or ndarray
        Outcome sums ``S`` in ``[0, n]`` (fractional with ties).
    trials : float or ndarray
        Duel counts ``n >= 0``.

    Returns
    -------
    float or ndarray
        ``ln M``; 0 when ``n = 0``. Finite for any ``n`` up to well beyond 1e7.
    """
    s = np.asarray(successes, dtype=float)
    n = np.asarray(trials, dtype=float)
    a = n - s + 1.0
    b = s + 1.0
    tail = betainc(a, b, 0.5)
    with np.errstate(divide="ignore"):
        log_tail = np.log(tail)
    small = tail < 1e-280
    if np.any(small):
        log_tail = np.where(small, _log_lower_tail(a, b), log_tail)
    value = (n + 1.0) * _LN2 + betaln(b, a) + log_tail
    return value if value.ndim else float(value)


def log_mixture_scale(successes: float, trials: float) -> float:
    """``(n+1) ln 2 + ln B(S+1, n-S+1)``: the part of ``ln M`` that both
    orientations of a pair share. What is left, ``ln M - log_mixture_scale``, is
    the log posterior probability ``ln P(p > 1/2)`` under a uniform prior."""
    a = trials - successes + 1.0
    b = successes + 1.0
    log_beta = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    return (trials + 1.0) * _LN2 + log_beta


def log_mixture_evidence_pair(successes: float, trials: float) -> tuple[float, float]:
    """``(ln M(n, S), ln M(n, n - S))`` for one pair: the evidence that its first
    policy wins and that its second one does. A scalar fast path of
    :func:`log_mixture_evidence` for the per-duel update of a running procedure."""
    a = trials - successes + 1.0
    b = successes + 1.0
    base = log_mixture_scale(successes, trials)
    tail = float(betainc(a, b, 0.5))
    return base + _log_tail(tail, a, b), base + _log_tail(1.0 - tail, b, a)


def _log_tail(tail: float, a: float, b: float) -> float:
    """``ln I_{1/2}(a, b)`` given its value, falling back to the series on underflow.
    The complement ``1 - I`` loses precision near 0, so small values are recomputed."""
    if tail > 1e-12:
        return math.log(tail)
    tail = float(betainc(a, b, 0.5))
    if tail > 1e-280:
        return math.log(tail)
    return float(_log_lower_tail(a, b))


def _log_lower_tail(a, b):
    """``ln I_{1/2}(a, b)`` where it underflows (``a`` well above ``b``).

    Uses ``I_x(a, b) = x^a (1-x)^b / (a B(a, b)) * 2F1(a+b, 1; a+1; x)`` with the
    hypergeometric series summed directly: its ratio ``(a+b+k) x / (a+1+k)`` is
    below one in this region, so it converges geometrically.
    """
    a_arr, b_arr = np.broadcast_arrays(np.asarray(a, float), np.asarray(b, float))
    out = np.empty(a_arr.shape)
    for index in np.ndindex(a_arr.shape):
        aa, bb = float(a_arr[index]), float(b_arr[index])
        if aa <= bb + 1.0:
            out[index] = -np.inf
            continue
        term, total, k = 1.0, 1.0, 0
        while term > 1e-17 * total and k < 100_000:
            term *= (aa + bb + k) * 0.5 / (aa + 1.0 + k)
            total += term
            k += 1
        out[index] = (
            -(aa + bb) * _LN2 - math.log(aa) - float(betaln(aa, bb)) + math.log(total)
        )
    return out


def verify_threshold(n_policies: int, delta: float) -> float:
    """``ln(K / delta)``: the level each of the leader's pair evidences must reach
    in ``verify`` mode (a union over the ``K`` candidates)."""
    return math.log(n_policies / delta)


def assume_threshold(delta: float) -> float:
    """``ln(1 / delta)``: the level the refutation of every other policy must
    reach in ``assume-winner`` mode."""
    return math.log(1.0 / delta)


def verify_p_value(log_evidence_min: float, n_policies: int) -> float:
    """Anytime p-value ``K exp(-min_j ln M_{leader j})`` of the leader, capped at 1."""
    return float(min(1.0, n_policies * math.exp(-min(log_evidence_min, 745.0))))
