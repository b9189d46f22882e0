"""Vector-Jacobian products of the banded routines, framework-agnostic (NumPy).

The adapters (:mod:`banded_mnn.torch`, :mod:`banded_mnn.jax`) differentiate
``cholesky_banded``, ``cho_solve_banded`` and ``solveh_banded`` with these.
Gradients are with respect to the *stored* band entries: LAPACK reads one
triangle, so ``ab[r, j]`` (lower form) stands for ``A[j + r, j]`` and, for
``r > 0``, also for ``A[j, j + r]``.  Cells outside the matrix get zero.

All functions take batched arrays with equal batch shapes (the adapters sum
over broadcast axes themselves) and are written against the array module of
their inputs, so they run on CuPy arrays (on the GPU) as well as on NumPy
arrays; ``cholesky_gradient``'s reverse sweep is one per-system core compiled
for the CPU (Numba) and the GPU (Numba CUDA).
"""

from __future__ import annotations

import functools

import numpy as np

from ._strided import namespace
from .problems import lower_to_upper


def _band_index(u: int, lower: bool, r: int, m: int) -> tuple[slice, slice]:
    """Where the ``r``-th sub-diagonal (``A[j + r, j]``, ``j < m - r``) is stored."""
    return (slice(r, r + 1), slice(0, m - r)) if lower else (slice(u - r, u - r + 1), slice(r, m))


def solve_gradient(lam: np.ndarray, x: np.ndarray, u: int, lower: bool) -> np.ndarray:
    """``dL/d(ab)`` for ``x = A^{-1} b`` given ``lam = A^{-1} dL/dx``.

    ``dL/dA = -lam x^T``; a stored off-diagonal entry stands for ``A[i, j]``
    and ``A[j, i]``, so it gets ``-(lam_i x_j + lam_j x_i)``, a diagonal one
    ``-lam_i x_i``.  ``lam`` and ``x`` are ``(..., M, K)``; the result is
    ``(..., u + 1, M)``.
    """
    xp = namespace(x)
    m = x.shape[-2]
    g = xp.zeros(x.shape[:-2] + (u + 1, m), dtype=x.dtype)
    for r in range(min(u, m - 1) + 1):
        v = xp.einsum("...ik,...ik->...i", lam[..., r:, :], x[..., : m - r, :])
        if r:
            v = v + xp.einsum("...ik,...ik->...i", lam[..., : m - r, :], x[..., r:, :])
        rows, cols = _band_index(u, lower, r, m)
        g[..., rows, cols] = -v[..., None, :]
    return g


def _lower_t_matvec(c: np.ndarray, v: np.ndarray, u: int, lower: bool) -> np.ndarray:
    """``L^T v`` for the band factor ``c`` (``(..., u+1, M)``) and ``v`` (``(..., M, K)``)."""
    m = v.shape[-2]
    xp = namespace(v)
    out = xp.zeros(np.broadcast_shapes(c.shape[:-2], v.shape[:-2]) + v.shape[-2:], dtype=v.dtype)
    for r in range(min(u, m - 1) + 1):
        rows, cols = _band_index(u, lower, r, m)
        band = c[..., rows, cols][..., 0, :, None]  # L[j + r, j], j < m - r
        out[..., : m - r, :] += band * v[..., r:, :]
    return out


def cho_solve_gradient(c: np.ndarray, lam: np.ndarray, x: np.ndarray, lower: bool) -> np.ndarray:
    """``dL/d(cb)`` for ``x = (L L^T)^{-1} b`` given ``lam = (L L^T)^{-1} dL/dx``.

    ``dL/dL = -(lam x^T + x lam^T) L`` restricted to the band:
    ``-(lam_i (L^T x)_j + x_i (L^T lam)_j)`` for the stored ``L[i, j]``
    (upper form stores ``U = L^T``, the same numbers transposed).
    """
    u = c.shape[-2] - 1
    m = x.shape[-2]
    y = _lower_t_matvec(c, x, u, lower)
    z = _lower_t_matvec(c, lam, u, lower)
    xp = namespace(x)
    g = xp.zeros(x.shape[:-2] + (u + 1, m), dtype=x.dtype)
    for r in range(min(u, m - 1) + 1):
        v = xp.einsum("...ik,...ik->...i", lam[..., r:, :], y[..., : m - r, :])
        v = v + xp.einsum("...ik,...ik->...i", x[..., r:, :], z[..., : m - r, :])
        rows, cols = _band_index(u, lower, r, m)
        g[..., rows, cols] = -v[..., None, :]
    return g


def cholesky_reverse_system(s, c, g, u, half):
    """In place, for system ``s``: ``g[s]`` holds dL/dL (lower band,
    ``L[j + r, j]`` at ``[s, r, j]``) and becomes dL/dA for the lower-triangle
    entries the factorisation reads (LAPACK reads only the stored triangle).

    The unblocked reverse-mode Cholesky (I. Murray, "Differentiation of the
    Cholesky decomposition", 2016, level-2 algorithm), with every range cut
    to the band: O(M u^2) per system.  Plain scalar Python with no calls, so
    that ``numba.njit`` (the CPU driver, a ``prange`` over systems) and
    ``numba.cuda.jit(device=True)`` (a thread per system) both compile it;
    ``half`` is 0.5 in the arrays' dtype.
    """
    m = c.shape[2]
    for j in range(m - 1, -1, -1):
        jmax = min(u, m - 1 - j)
        d = c[s, 0, j]
        acc = half - half
        for r in range(1, jmax + 1):
            acc += c[s, r, j] * g[s, r, j]
        g[s, 0, j] -= acc / d
        for r in range(jmax + 1):
            g[s, r, j] /= d
        # Row j of the factor, L[j, k] for k in [j - u, j): update
        # G[j, k] -= sum_{i >= j} G[i, j] L[i, k]  and
        # G[i, k] -= G[i, j] L[j, k] for i > j.
        for k in range(max(0, j - u), j):
            t = j - k  # L[j, k] is at [t, k]
            acc = half - half
            for r in range(jmax + 1):
                if t + r <= u:
                    acc += g[s, r, j] * c[s, t + r, k]
            g[s, t, k] -= acc
            ljk = c[s, t, k]
            for r in range(1, jmax + 1):
                if t + r <= u:
                    g[s, t + r, k] -= g[s, r, j] * ljk
        g[s, 0, j] *= half


@functools.cache
def _cholesky_reverse_cpu():
    from numba import njit, prange

    core = njit(cache=True)(cholesky_reverse_system)

    @njit(parallel=True, cache=True)
    def reverse(c, g, u, half):
        for s in prange(c.shape[0]):
            core(s, c, g, u, half)

    return reverse


def _cholesky_reverse(lc, g, u: int, backend: str | None) -> None:
    """Run the reverse sweep on every system: on the GPU for CuPy arrays (or
    a GPU ``backend``, simulated on NumPy arrays), else on the CPU."""
    from . import _backends

    half = g.dtype.type(0.5)
    if namespace(g) is np and backend not in _backends.GPU_BACKENDS:
        _cholesky_reverse_cpu()(lc, g, u, half)
        return
    from ._backends import _numba_cuda

    _numba_cuda.run_per_system("cholesky_reverse", g.shape[0], lc, g, u, half)


def cholesky_gradient(
    c: np.ndarray, cbar: np.ndarray, lower: bool, backend: str | None = None
) -> np.ndarray:
    """``dL/d(ab)`` for ``c = cholesky_banded(ab, lower=lower)`` given ``dL/dc``.

    ``c`` and ``cbar`` are ``(..., u + 1, M)`` in the same form, NumPy or
    CuPy arrays (the reverse sweep runs on the GPU for CuPy arrays, a thread
    per system; ``backend="numba-cuda"`` runs it in Numba's CUDA simulator on
    NumPy arrays, for the tests).
    """
    xp = namespace(cbar)
    u, m = c.shape[-2] - 1, c.shape[-1]
    dtype = np.result_type(c.dtype, cbar.dtype)
    lo_c, lo_g = (c, cbar) if lower else (_upper_to_lower(c), _upper_to_lower(cbar))
    batch = c.shape[:-2]
    lc = xp.ascontiguousarray(lo_c, dtype=dtype).reshape((-1, u + 1, m))
    g = xp.array(lo_g, dtype=dtype, order="C").reshape((-1, u + 1, m))
    # Cells outside the matrix carry no gradient.
    for r in range(1, u + 1):
        g[:, r, max(m - r, 0) :] = 0.0
    if g.size:
        _cholesky_reverse(lc, g, u, backend)
    g = g.reshape(batch + (u + 1, m))
    g = g if lower else lower_to_upper(g)
    # Cells outside the matrix are copied from ab to c unchanged (as LAPACK
    # leaves them), so their gradient passes through.
    for r in range(1, u + 1):
        cells = (..., r, slice(max(m - r, 0), None)) if lower else (..., u - r, slice(0, min(r, m)))
        g[cells] = cbar[cells]
    return g


def _upper_to_lower(ab: np.ndarray) -> np.ndarray:
    """Upper-form band to lower form: ``lo[r, j] = up[u - r, j + r]``; cells
    outside are 0 (the inverse of :func:`banded_mnn.problems.lower_to_upper`)."""
    u, m = ab.shape[-2] - 1, ab.shape[-1]
    lo = namespace(ab).zeros(ab.shape, dtype=ab.dtype)
    for r in range(min(u, m - 1) + 1):
        lo[..., r, : m - r] = ab[..., u - r, r:]
    return lo
