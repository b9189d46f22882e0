"""Generators of test and benchmark problems in band storage.

These build symmetric positive definite band matrices with the structure that
banded_mnn is for, so that the demo, the benchmarks and the tests share one
definition of "a representative problem".
"""

from __future__ import annotations

import numpy as np

__all__ = ["lower_to_upper", "mnn_normal_band", "random_spd_band"]


def random_spd_band(
    batch: tuple[int, ...],
    m: int,
    u: int,
    *,
    lower: bool = False,
    dtype: np.dtype | type = np.float64,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Random, strictly diagonally dominant (hence SPD) band matrices.

    Parameters
    ----------
    batch : tuple of int
        Batch shape.
    m, u : int
        Matrix order and number of off-diagonals (``u + 1`` band rows).
    lower : bool, optional
        Return lower form instead of upper form.
    dtype : dtype, optional
        float32 or float64.
    rng : numpy.random.Generator, optional
        Source of randomness (a fresh default generator if omitted).

    Returns
    -------
    numpy.ndarray, shape ``batch + (u + 1, m)``
        Off-diagonals uniform in [-1, 1]; diagonal ``2u + 1 + U(0, 1)``.  The
        cells outside the matrix are set to zero.

    Examples
    --------
    >>> from banded_mnn.problems import random_spd_band
    >>> random_spd_band((2,), 5, 1).shape
    (2, 2, 5)
    """
    rng = np.random.default_rng() if rng is None else rng
    ab = rng.uniform(-1.0, 1.0, tuple(batch) + (u + 1, m))
    diag_row = 0 if lower else u
    ab[..., diag_row, :] = 2 * u + 1 + rng.uniform(0.0, 1.0, tuple(batch) + (m,))
    _zero_outside(ab, lower)
    return ab.astype(dtype, copy=False)


def _zero_outside(ab: np.ndarray, lower: bool) -> None:
    u = ab.shape[-2] - 1
    m = ab.shape[-1]
    for d in range(1, u + 1):
        if lower:
            ab[..., d, max(m - d, 0) :] = 0.0
        else:
            ab[..., u - d, : min(d, m)] = 0.0


def lower_to_upper(ab_lower: np.ndarray) -> np.ndarray:
    """Convert band storage from lower form to upper form (same matrices).

    Parameters
    ----------
    ab_lower : numpy.ndarray, shape (..., u + 1, M)
        Symmetric band matrices in lower form (``ab_lower[i - j, j] == a[i, j]``).

    Returns
    -------
    numpy.ndarray, shape (..., u + 1, M)
        The same matrices in upper form (``ab[u + i - j, j] == a[i, j]``); cells
        outside the matrix are zero.

    Examples
    --------
    >>> import numpy as np
    >>> from banded_mnn.problems import lower_to_upper
    >>> lower_to_upper(np.array([[4.0, 4.0, 4.0], [1.0, 2.0, 0.0]]))
    array([[0., 1., 2.],
           [4., 4., 4.]])
    """
    u = ab_lower.shape[-2] - 1
    m = ab_lower.shape[-1]
    upper = np.zeros_like(ab_lower)
    for d in range(min(u, m - 1) + 1):  # diagonals beyond the matrix stay zero
        # a[j + d, j] is at lower[d, j] and at upper[u - d, j + d].
        upper[..., u - d, d:] = ab_lower[..., d, : m - d]
    return upper


def mnn_normal_band(
    batch: tuple[int, ...],
    steps: int,
    block: int,
    *,
    lower: bool = False,
    dtype: np.dtype | type = np.float64,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Block-tridiagonal normal equations shaped like an MNN layer's.

    For every step ``t`` a least-squares operator has equation rows
    ``E_t x_t`` (``E_t``: ``block x block``, random) and smoothness rows
    ``P_t x_t - x_{t+1}`` with ``P_t = I + h N`` (``N`` the upper shift,
    a first-order Taylor step), plus a small ridge.  The normal matrix
    ``J^T J + 1e-3 I`` is SPD and block-tridiagonal with ``block x block``
    blocks: a scalar band with ``M = steps * block`` and ``u = 2 block - 1``
    (the S-MNN layout with ``block = n_dims * n_orders``).

    Parameters
    ----------
    batch : tuple of int
        Batch shape.
    steps : int
        Number of time steps ``T`` (at least 1).
    block : int
        Block size ``n``.
    lower : bool, optional
        Return lower form instead of upper form.
    dtype : dtype, optional
        float32 or float64 (built in float64, then rounded).
    rng : numpy.random.Generator, optional
        Source of randomness (a fresh default generator if omitted).

    Returns
    -------
    numpy.ndarray, shape ``batch + (2 * block, steps * block)``

    Examples
    --------
    >>> from banded_mnn.problems import mnn_normal_band
    >>> mnn_normal_band((4,), steps=10, block=3).shape
    (4, 6, 30)
    """
    rng = np.random.default_rng() if rng is None else rng
    n = block
    batch = tuple(batch)
    h = rng.uniform(0.05, 0.2, batch + (steps - 1, 1, 1))
    p = np.eye(n) + h * np.eye(n, k=1)  # (..., steps-1, n, n)
    e = rng.standard_normal(batch + (steps, n, n))
    diag = np.einsum("...kp,...kq->...pq", e, e) + 1e-3 * np.eye(n)
    diag[..., :-1, :, :] += np.einsum("...kp,...kq->...pq", p, p)
    diag[..., 1:, :, :] += np.eye(n)
    sub = -p  # block (t + 1, t) of J^T J: (-I)^T P_t
    u = 2 * n - 1
    ab = np.zeros(batch + (u + 1, steps * n))
    cols = np.arange(steps)[:, None] * n  # first column of each block
    for pi in range(n):
        for qi in range(n):
            if pi >= qi:  # lower triangle of the diagonal blocks
                ab[..., pi - qi, (cols + qi)[:, 0]] = diag[..., :, pi, qi]
            # sub-diagonal block: row (t+1) n + pi, column t n + qi
            ab[..., n + pi - qi, (cols[:-1] + qi)[:, 0]] = sub[..., :, pi, qi]
    if not lower:
        ab = lower_to_upper(ab)
    return ab.astype(dtype, copy=False)
