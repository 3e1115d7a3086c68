"""Indexing of unordered pairs of policies.

Pairs ``(a, b)`` with ``a < b`` are numbered in lexicographic order, ``0`` to
``M - 1`` with ``M = K(K-1)/2``; every per-pair array in the library uses it.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=64)
def pairs(n_policies: int) -> tuple[np.ndarray, np.ndarray]:
    """Return arrays ``(a, b)`` of the first and second policy of every pair.

    Parameters
    ----------
    n_policies : int
        Number of policies ``K``.

    Returns
    -------
    a, b : ndarray of int, shape (M,)
        ``a[m] < b[m]``, pairs in lexicographic order. Read-only.
    """
    a, b = np.triu_indices(n_policies, k=1)
    a.setflags(write=False)
    b.setflags(write=False)
    return a, b


def pair_id(n_policies: int, a: int, b: int) -> int:
    """Index of the unordered pair ``{a, b}`` (``a != b``) in :func:`pairs` order."""
    if a > b:
        a, b = b, a
    return a * (2 * n_policies - a - 1) // 2 + (b - a - 1)


@lru_cache(maxsize=64)
def pair_matrix(n_policies: int) -> np.ndarray:
    """``K x K`` array whose entry ``[i, j]`` is the pair index of ``{i, j}``
    (``-1`` on the diagonal). Read-only."""
    a, b = pairs(n_policies)
    index = np.full((n_policies, n_policies), -1, dtype=np.int64)
    ids = np.arange(a.size)
    index[a, b] = ids
    index[b, a] = ids
    index.setflags(write=False)
    return index
