"""The Bernoulli divergence and the information a duel carries against a coin flip."""

from __future__ import annotations

import numpy as np
from scipy.special import xlogy

_LN2 = np.log(2.0)


def kl_bernoulli(a, b):
    """Bernoulli divergence ``kl(a, b) = a ln(a/b) + (1-a) ln((1-a)/(1-b))``.

    Parameters
    ----------
    a, b : float or ndarray
        Means in [0, 1]; ``0 ln 0 = 0``. ``b`` on the boundary with ``a`` not
        equal to it gives ``inf``.

    Returns
    -------
    float or ndarray
        The divergence, non-negative.
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        value = xlogy(a, a) - xlogy(a, b) + xlogy(1 - a, 1 - a) - xlogy(1 - a, 1 - b)
    return np.maximum(value, 0.0)


def coin_information(p):
    """``c(p) = kl(p, 1/2)``: the information one duel of mean ``p`` carries
    against a fair coin. Symmetric about 1/2, zero at 1/2, ``ln 2`` at 0 and 1."""
    p = np.asarray(p, dtype=float)
    return np.maximum(xlogy(p, p) + xlogy(1 - p, 1 - p) + _LN2, 0.0)


def kl_delta(delta: float) -> float:
    """``kl(delta, 1 - delta)``, the confidence term of the lower bound
    ``E[tau] >= T* kl(delta, 1-delta)``."""
    return float(kl_bernoulli(delta, 1 - delta))
