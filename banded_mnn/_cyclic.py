"""Block cyclic reduction (odd-even elimination) for SPD block-tridiagonal systems.

The parallel-in-time algorithm: instead of eliminating the T block rows one
after another (a dependency chain of length T), each level eliminates every
other block row at once, which leaves a block-tridiagonal Schur complement on
the remaining half; after about log2 T levels one block is left.  This is the
Cholesky factorisation of the symmetrically permuted matrix (odd block rows
first, level by level), so it keeps Cholesky's stability on SPD systems, at
about twice the arithmetic of the sequential factorisation.

With the odd rows E and the even rows R of a level (E rows are never
adjacent, so ``A_EE`` is block-diagonal)::

    L_EE = chol(A_EE)                      per block
    L_RE = A_RE L_EE^{-T}                  each odd row touches its two even neighbours
    S    = A_RR - L_RE L_RE^T              block-tridiagonal on R: the next level

Every operation of a level is one batched NumPy call over all blocks of the
level and of the batch (this CPU version is the reference for the GPU port,
where a level is one kernel launch).  Block-pentadiagonal systems are solved
as block-tridiagonal ones with blocks of size 2n (pairs of block rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class CyclicFactor:
    """The factor: per level, the Cholesky factors of the eliminated diagonal
    blocks and their couplings to the left and right neighbours that remain.

    ``levels[i] = (chol_E, left, right)`` with ``chol_E`` (..., nE, n, n),
    ``left``/``right`` (..., nE, n, n) holding ``L_RE`` blocks (zero where a
    neighbour does not exist); ``last`` is the Cholesky factor of the final
    single block (..., 1, n, n); ``info`` (batch shape, int32) is 0 or the
    1-based index of the first block row whose pivot block was not positive
    definite.
    """

    levels: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
    last: np.ndarray
    info: np.ndarray


def _cholesky(blocks: np.ndarray, rows: np.ndarray, info: np.ndarray) -> np.ndarray:
    """Batched Cholesky of (..., k, n, n); systems with a failed block get
    ``info`` (first failing block row, 1-based, from ``rows``) and identity."""
    try:
        return np.linalg.cholesky(blocks)
    except np.linalg.LinAlgError:
        pass
    out = np.empty_like(blocks)
    eye = np.eye(blocks.shape[-1], dtype=blocks.dtype)
    for index in np.ndindex(*blocks.shape[:-2]):
        try:
            out[index] = np.linalg.cholesky(blocks[index])
        except np.linalg.LinAlgError:
            out[index] = eye
            system = index[:-1]
            row = int(rows[index[-1]]) + 1
            if info[system] == 0 or row < info[system]:
                info[system] = row
    return out


def _right_solve_t(x: np.ndarray, chol: np.ndarray) -> np.ndarray:
    """``x L^{-T}`` for lower-triangular ``L`` (batched)."""
    return np.swapaxes(np.linalg.solve(chol, np.swapaxes(x, -1, -2)), -1, -2)


def factor_tridiagonal(a0: np.ndarray, a1: np.ndarray) -> CyclicFactor:
    """Block cyclic reduction of SPD block-tridiagonal matrices.

    ``a0`` (..., T, n, n) diagonal blocks (symmetric), ``a1`` (..., T-1, n, n)
    with ``a1[t] = A[t+1, t]``; equal batch shapes.
    """
    batch = a0.shape[:-3]
    info = np.zeros(batch, dtype=np.int32)
    rows = np.arange(a0.shape[-3])  # original block row of every current node
    levels = []
    d, c = a0, a1
    while d.shape[-3] > 1:
        m = d.shape[-3]
        odd, even = np.arange(1, m, 2), np.arange(0, m, 2)
        chol = _cholesky(d[..., odd, :, :], rows[odd], info)
        # Odd node i couples to i-1 (above: A[i-1, i] = c[i-1]^T) and i+1 (below: A[i+1, i] = c[i]).
        left = _right_solve_t(np.swapaxes(c[..., odd - 1, :, :], -1, -2), chol)  # L[i-1, i]
        below = odd + 1 < m
        right = np.zeros_like(left)
        right[..., below, :, :] = _right_solve_t(c[..., odd[below], :, :], chol[..., below, :, :])
        levels.append((chol, left, right))
        # Schur complement on the even nodes.
        s = d[..., even, :, :].copy()
        s[..., odd // 2, :, :] -= left @ np.swapaxes(left, -1, -2)  # even node i-1 = 2*(i//2)
        s[..., odd[below] // 2 + 1, :, :] -= right[..., below, :, :] @ np.swapaxes(
            right[..., below, :, :], -1, -2
        )
        # New coupling between even nodes i-1 and i+1 (both neighbours of odd i).
        c = -(right[..., below, :, :] @ np.swapaxes(left[..., below, :, :], -1, -2))
        d = s
        rows = rows[even]
    last = _cholesky(d, rows, info)
    return CyclicFactor(levels, last, info)


def solve_tridiagonal(factor: CyclicFactor, b: np.ndarray) -> np.ndarray:
    """Solve with the factor; ``b`` (..., T, n, K) with the factor's batch
    shape (or one that broadcasts with it)."""
    ys = []
    r = b
    for chol, left, right in factor.levels:  # forward: L y = b, level by level
        m = r.shape[-3]
        odd, even = np.arange(1, m, 2), np.arange(0, m, 2)
        y = np.linalg.solve(chol, r[..., odd, :, :])
        ys.append(y)
        r_even = r[..., even, :, :].copy()
        r_even[..., odd // 2, :, :] -= left @ y
        below = odd + 1 < m
        r_even[..., odd[below] // 2 + 1, :, :] -= right[..., below, :, :] @ y[..., below, :, :]
        r = r_even
    x = np.linalg.solve(np.swapaxes(factor.last, -1, -2), np.linalg.solve(factor.last, r))
    for (chol, left, right), y in zip(reversed(factor.levels), reversed(ys), strict=True):
        m_even = x.shape[-3]
        m = 2 * m_even - 1 + (y.shape[-3] == m_even)  # nodes at this level
        odd = np.arange(1, m, 2)
        below = odd + 1 < m
        rhs = y - np.swapaxes(left, -1, -2) @ x[..., odd // 2, :, :]
        rhs[..., below, :, :] -= (
            np.swapaxes(right[..., below, :, :], -1, -2) @ x[..., odd[below] // 2 + 1, :, :]
        )
        x_odd = np.linalg.solve(np.swapaxes(chol, -1, -2), rhs)
        full = np.empty(x.shape[:-3] + (m,) + x.shape[-2:], dtype=x.dtype)
        full[..., 0::2, :, :] = x
        full[..., 1::2, :, :] = x_odd
        x = full
    return x


@dataclass
class BlockFactor:
    """Cyclic-reduction factor of a block-tridiagonal or block-pentadiagonal
    matrix (the latter factored as block-tridiagonal in pairs of block rows)."""

    factor: CyclicFactor
    steps: int
    n: int
    pentadiagonal: bool

    @property
    def info(self) -> np.ndarray:
        """0, or the 1-based block row whose pivot block failed."""
        info = self.factor.info
        return np.where(info > 0, 2 * info - 1, 0).astype(np.int32) if self.pentadiagonal else info


def factor_blocks(blocks) -> BlockFactor:
    """Factor ``(A0, A1)`` or ``(A0, A1, A2)`` (``blocks[k][..., t] = A[t+k, t]``,
    equal batch shapes) by block cyclic reduction."""
    a = [np.asarray(x) for x in blocks]
    steps, n = a[0].shape[-3], a[0].shape[-1]
    batch = a[0].shape[:-3]
    if len(a) == 1:
        a.append(np.zeros(batch + (max(steps - 1, 0), n, n), dtype=a[0].dtype))
    pentadiagonal = len(a) == 3
    if pentadiagonal:
        a = _pair_matrix(a, steps, n)
    return BlockFactor(factor_tridiagonal(a[0], a[1]), steps, n, pentadiagonal)


def solve_blocks(factor: BlockFactor, b: np.ndarray) -> np.ndarray:
    """Solve with a :func:`factor_blocks` factor; ``b`` (..., T, n, K)."""
    steps, n = factor.steps, factor.n
    if factor.pentadiagonal:
        pad = steps % 2
        if pad:
            b = np.concatenate([b, np.zeros(b.shape[:-3] + (1,) + b.shape[-2:], b.dtype)], -3)
        b = b.reshape(b.shape[:-3] + ((steps + pad) // 2, 2 * n, b.shape[-1]))
    x = solve_tridiagonal(factor.factor, b)
    if factor.pentadiagonal:
        x = x.reshape(x.shape[:-3] + (-1, n, x.shape[-1]))[..., :steps, :, :]
    return x


def solveh_block_cyclic(blocks, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(x, info)`` for block-tridiagonal (``blocks = (A0, A1)``) or
    block-pentadiagonal (``(A0, A1, A2)``) SPD systems by block cyclic
    reduction; ``b`` (..., T, n, K).  Failed systems' solutions are NaN."""
    a = [np.asarray(x) for x in blocks]
    batch = np.broadcast_shapes(*(x.shape[:-3] for x in a), b.shape[:-3])
    dtype = np.result_type(*a, b)
    a = [np.broadcast_to(x, batch + x.shape[-3:]).astype(dtype) for x in a]
    b = np.broadcast_to(b, batch + b.shape[-3:]).astype(dtype)
    if a[0].shape[-3] == 0:
        return np.empty(b.shape, dtype=dtype), np.zeros(batch, dtype=np.int32)
    factor = factor_blocks(a)
    x = solve_blocks(factor, b)
    info = factor.info
    x[info != 0] = np.nan
    return x, info


def _pair_matrix(a, steps, n):
    """Block-pentadiagonal (blocks n) as block-tridiagonal (blocks 2n), with
    one decoupled identity block row appended when ``steps`` is odd."""
    pad = steps % 2
    a0, a1, a2 = a
    batch = a0.shape[:-3]
    if pad:
        eye = np.broadcast_to(np.eye(n, dtype=a0.dtype), batch + (1, n, n))
        zeros = np.zeros(batch + (1, n, n), dtype=a0.dtype)
        a0 = np.concatenate([a0, eye], -3)
        a1 = np.concatenate([a1, zeros], -3)
        a2 = np.concatenate([a2, zeros], -3)
    t2 = (steps + pad) // 2
    d = np.zeros(batch + (t2, 2 * n, 2 * n), dtype=np.result_type(a0, a1, a2))
    d[..., :n, :n] = a0[..., 0::2, :, :]
    d[..., n:, n:] = a0[..., 1::2, :, :]
    d[..., n:, :n] = a1[..., 0::2, :, :]  # A[2s+1, 2s]
    d[..., :n, n:] = np.swapaxes(a1[..., 0::2, :, :], -1, -2)
    c = np.zeros(batch + (t2 - 1, 2 * n, 2 * n), dtype=d.dtype)
    c[..., :n, :n] = a2[..., 0::2, :, :][..., : t2 - 1, :, :]  # A[2s+2, 2s]
    c[..., :n, n:] = a1[..., 1::2, :, :][..., : t2 - 1, :, :]  # A[2s+2, 2s+1]
    c[..., n:, n:] = a2[..., 1::2, :, :][..., : t2 - 1, :, :]  # A[2s+3, 2s+1]
    return [d, c]
