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

A level is two parallel loops over all its nodes and all systems (eliminate
the odd nodes, form the even nodes' Schur complement), the per-node cores of
:mod:`banded_mnn._backends._cyclic_cores`: compiled by Numba on the CPU, Numba
CUDA kernels for CuPy arrays (see :func:`_level_kernels`).  The batched
array-operation version below (the same on NumPy and CuPy) is the reference
the kernels are tested against, and what runs on CuPy arrays without
numba-cuda or with ``backend="cupy"``.  Block-pentadiagonal systems are solved
as block-tridiagonal ones with blocks of size 2n (pairs of block rows).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._strided import namespace


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


def _cholesky(blocks: Any, rows: Any, info: Any) -> Any:
    """Batched Cholesky of (..., k, n, n), one column at a time over the whole
    batch (``n`` steps of array operations: the same on NumPy and CuPy).  A
    block with a pivot that is not positive and finite is replaced by the
    identity, and a system's ``info`` becomes the first failing block row
    (1-based, from ``rows``: the smallest one of the first level that fails;
    later failures may be artefacts of the repair) -- per system, never an
    exception.  NaN and inf fail too.  Nothing waits for the device."""
    xp = namespace(blocks)
    n = blocks.shape[-1]
    chol = xp.zeros(blocks.shape, dtype=np.result_type(blocks.dtype, np.float32))
    failed = xp.zeros(blocks.shape[:-2], dtype=bool)  # (..., k)
    with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf pivots are reported below
        for j in range(n):
            pivot = blocks[..., j, j] - (chol[..., j, :j] ** 2).sum(-1)
            ok = (pivot > 0) & xp.isfinite(pivot)
            failed |= ~ok
            diagonal = xp.sqrt(xp.where(ok, pivot, 1))
            chol[..., j, j] = diagonal
            if j + 1 < n:
                products = chol[..., j + 1 :, :j] * chol[..., j, None, :j]
                chol[..., j + 1 :, j] = (blocks[..., j + 1 :, j] - products.sum(-1)) / diagonal[
                    ..., None
                ]
    # Failed blocks become the identity.
    chol = xp.where(failed[..., None, None], xp.eye(n, dtype=chol.dtype), chol)
    _record_failures(failed, rows, info)
    return chol


def _record_failures(failed: Any, rows: Any, info: Any) -> None:
    """``info`` of a system with a failed block (``failed`` (..., k), True
    where a pivot block failed) becomes its first failing block row (1-based,
    from ``rows``), unless an earlier level failed already -- unconditionally,
    so that the device is never waited for."""
    xp = namespace(info)
    never = np.iinfo(np.int32).max
    first = xp.where(failed, rows + 1, never).min(-1) if failed.shape[-1] else never
    info[...] = xp.where((first < never) & (info == 0), first, info)


def _solve(a: Any, b: Any) -> Any:
    """Batched ``a^{-1} b`` with the batch axes broadcast (``numpy.linalg.solve``
    broadcasts them, ``cupy.linalg.solve`` wants them equal)."""
    xp = namespace(b)
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    return xp.linalg.solve(xp.broadcast_to(a, batch + a.shape[-2:]),
                           xp.broadcast_to(b, batch + b.shape[-2:]))  # fmt: skip


def _right_solve_t(x: Any, chol: Any) -> Any:
    """``x L^{-T}`` for lower-triangular ``L`` (batched)."""
    xp = namespace(x)
    return xp.swapaxes(_solve(chol, xp.swapaxes(x, -1, -2)), -1, -2)


def _counts(m: int) -> tuple[int, int]:
    """Nodes ``0..m-1`` of a level: the number of odd nodes (eliminated), and
    of those that have a right neighbour (all but the last when ``m`` is even)."""
    odd = m // 2
    return odd, odd if m % 2 else odd - 1


def _level_kernels(xp, backend: str | None = None) -> Callable | None:
    """The compiled level operations for arrays of ``xp`` (see
    :func:`banded_mnn._backends._cyclic_cpu.run_level`), or ``None`` for the
    array-operation reference below: Numba on the CPU; for CuPy arrays the
    Numba CUDA kernels where numba-cuda can compile for the device
    (``backend`` None or "numba-cuda"), the reference otherwise and with
    ``backend="cupy"`` (the CUDA C++ backend has no cyclic kernels)."""
    if _USE_REFERENCE:
        return None
    if xp is np:
        from ._backends._cyclic_cpu import run_level

        return run_level
    if backend == "cupy" or not _numba_cuda_compiles():
        if backend == "numba-cuda":
            from . import _backends

            raise RuntimeError(f"backend 'numba-cuda' cannot run: {_backends.usable(backend)[1]}")
        return None
    from ._backends._numba_cuda import run_cyclic_level

    return run_cyclic_level


@functools.cache
def _numba_cuda_compiles() -> bool:
    """numba-cuda has a device and its compiler (NVVM) for CuPy arrays (once per process)."""
    from . import _backends

    if not _backends.usable("numba-cuda")[0]:
        return False
    try:
        from numba.cuda.cudadrv import nvvm

        return bool(nvvm.is_available())
    except Exception:  # an older or partial numba-cuda: use the reference
        return False


#: Tests set this to run the array-operation reference instead of the kernels.
_USE_REFERENCE = False


def factor_tridiagonal(a0: Any, a1: Any, backend: str | None = None) -> CyclicFactor:
    """Block cyclic reduction of SPD block-tridiagonal matrices.

    ``a0`` (..., T, n, n) diagonal blocks (symmetric), ``a1`` (..., T-1, n, n)
    with ``a1[t] = A[t+1, t]``; equal batch shapes; NumPy or CuPy arrays.
    Odd node ``i`` couples to ``i-1`` (``A[i-1, i] = c[i-1]^T``) and ``i+1``
    (``A[i+1, i] = c[i]``); with odd nodes ``1, 3, ...`` the even neighbours
    ``i - 1`` and ``i + 1`` are entries ``(i-1)/2`` and ``(i+1)/2`` of the even
    nodes, so every selection below is a strided slice.
    """
    xp = namespace(a0)
    run = _level_kernels(xp, backend)
    if run is not None:
        return _factor_with_kernels(run, xp, a0, a1)
    batch = a0.shape[:-3]
    info = xp.zeros(batch, dtype=np.int32)
    rows = xp.arange(a0.shape[-3])  # original block row of every current node
    levels = []
    d, c = a0, a1
    t = xp.swapaxes
    while d.shape[-3] > 1:
        n_odd, n_below = _counts(d.shape[-3])
        chol = _cholesky(d[..., 1::2, :, :], rows[1::2], info)
        left = _right_solve_t(t(c[..., 0::2, :, :], -1, -2), chol)  # L[i-1, i]
        right = xp.zeros_like(left)  # L[i+1, i]
        right[..., :n_below, :, :] = _right_solve_t(c[..., 1::2, :, :], chol[..., :n_below, :, :])
        levels.append((chol, left, right))
        # Schur complement on the even nodes, and their new couplings (i-1, i+1).
        s = d[..., 0::2, :, :].copy()
        s[..., :n_odd, :, :] -= left @ t(left, -1, -2)
        near = right[..., :n_below, :, :]
        s[..., 1 : n_below + 1, :, :] -= near @ t(near, -1, -2)
        c = -(near @ t(left[..., :n_below, :, :], -1, -2))
        d = s
        rows = rows[0::2]
    last = _cholesky(d, rows, info)
    return CyclicFactor(levels, last, info)


def _factor_with_kernels(run: Callable, xp, a0: Any, a1: Any) -> CyclicFactor:
    """:func:`factor_tridiagonal` with the compiled level operations: two
    launches per level (eliminate the odd nodes, form the even nodes' Schur
    complement) on contiguous (systems, nodes, n, n) arrays."""
    batch, steps, n = a0.shape[:-3], a0.shape[-3], a0.shape[-1]
    systems = math.prod(batch)
    dtype = np.dtype(np.result_type(a0.dtype, a1.dtype, np.float32))
    if steps == 0:
        return CyclicFactor([], xp.empty(batch + (0, n, n), dtype), xp.zeros(batch, np.int32))
    d = xp.ascontiguousarray(a0.reshape(systems, steps, n, n), dtype=dtype)
    c = xp.ascontiguousarray(a1.reshape(systems, max(steps - 1, 0), n, n), dtype=dtype)
    info = xp.zeros(systems, dtype=np.int32)
    rows = xp.arange(steps)
    levels = []
    while True:
        m = d.shape[1]
        odd = max(m // 2, 1)
        chol = xp.empty((systems, odd, n, n), dtype=dtype)
        left, right = xp.empty_like(chol), xp.empty_like(chol)
        failed = xp.empty((systems, odd), dtype=np.int8)
        run("factor_node", systems, m, d, c, chol, left, right, failed, dtype.type(1))
        _record_failures(failed != 0, rows[1::2] if m > 1 else rows, info)
        if m == 1:
            break
        even = m - m // 2
        d_next = xp.empty((systems, even, n, n), dtype=dtype)
        c_next = xp.empty((systems, even - 1, n, n), dtype=dtype)
        run("schur_node", systems, m, d, left, right, d_next, c_next)
        levels.append(tuple(a.reshape(batch + a.shape[1:]) for a in (chol, left, right)))
        d, c, rows = d_next, c_next, rows[0::2]
    return CyclicFactor(levels, chol.reshape(batch + chol.shape[1:]), info.reshape(batch))


def _solve_with_kernels(run: Callable, xp, factor: CyclicFactor, b: Any) -> Any:
    """:func:`solve_tridiagonal` with the compiled level operations: two
    launches per level down, one (and a copy) per level up.  A factor shared
    by several right-hand sides' systems is not copied (``fmap``)."""
    fbatch = factor.info.shape
    batch = np.broadcast_shapes(fbatch, b.shape[:-3])
    steps, n, nrhs = b.shape[-3:]
    systems = math.prod(batch)
    dtype = np.result_type(factor.last.dtype, b.dtype, np.float32)
    fmap = xp.ascontiguousarray(
        xp.broadcast_to(xp.arange(math.prod(fbatch)).reshape(fbatch), batch).reshape(-1)
    )
    r = xp.ascontiguousarray(
        xp.broadcast_to(b, batch + (steps, n, nrhs)).reshape(systems, steps, n, nrhs), dtype=dtype
    )

    def flat(a):  # (factor systems, nodes, n, n) in the solve's dtype
        return a.reshape((math.prod(fbatch),) + a.shape[len(fbatch) :]).astype(dtype, copy=False)

    ys = []
    for chol, left, right in factor.levels:
        m = r.shape[1]
        y = xp.empty((systems, m // 2, n, nrhs), dtype=dtype)
        run("forward_node", systems, m, flat(chol), r, y, fmap)
        r_next = xp.empty((systems, m - m // 2, n, nrhs), dtype=dtype)
        run("reduce_node", systems, m, flat(left), flat(right), y, r, r_next, fmap)
        ys.append(y)
        r = r_next
    last = flat(factor.last)
    y = xp.empty((systems, 1, n, nrhs), dtype=dtype)
    run("forward_node", systems, 1, last, r, y, fmap)
    x = xp.empty_like(y)
    run("backward_node", systems, 1, last, last, last, y, y, x, fmap)
    for (chol, left, right), y in zip(reversed(factor.levels), reversed(ys), strict=True):
        m = x.shape[1] + y.shape[1]
        full = xp.empty((systems, m, n, nrhs), dtype=dtype)
        full[:, 0::2] = x
        run("backward_node", systems, m, flat(chol), flat(left), flat(right), y, x, full, fmap)
        x = full
    return x.reshape(batch + (steps, n, nrhs))


def solve_tridiagonal(factor: CyclicFactor, b: Any, backend: str | None = None) -> Any:
    """Solve with the factor; ``b`` (..., T, n, K) with the factor's batch
    shape (or one that broadcasts with it)."""
    xp = namespace(b)
    run = _level_kernels(xp, backend)
    if run is not None and factor.last.shape[-3] == 1:
        return _solve_with_kernels(run, xp, factor, b)
    t = xp.swapaxes
    ys = []
    r = xp.broadcast_to(b, np.broadcast_shapes(factor.info.shape, b.shape[:-3]) + b.shape[-3:])
    for chol, left, right in factor.levels:  # forward: L y = b, level by level
        _, n_below = _counts(r.shape[-3])
        y = _solve(chol, r[..., 1::2, :, :])
        ys.append(y)
        r_even = r[..., 0::2, :, :].copy()
        r_even[..., : y.shape[-3], :, :] -= left @ y
        r_even[..., 1 : n_below + 1, :, :] -= right[..., :n_below, :, :] @ y[..., :n_below, :, :]
        r = r_even
    x = _solve(t(factor.last, -1, -2), _solve(factor.last, r))
    for (chol, left, right), y in zip(reversed(factor.levels), reversed(ys), strict=True):
        n_odd = y.shape[-3]
        m = x.shape[-3] + n_odd  # nodes at this level
        _, n_below = _counts(m)
        rhs = y - t(left, -1, -2) @ x[..., :n_odd, :, :]
        rhs[..., :n_below, :, :] -= (
            t(right[..., :n_below, :, :], -1, -2) @ x[..., 1 : n_below + 1, :, :]
        )
        x_odd = _solve(t(chol, -1, -2), rhs)
        full = xp.empty(x.shape[:-3] + (m,) + x.shape[-2:], dtype=x.dtype)
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
    backend: str | None = None  # for CuPy arrays: see _level_kernels

    @property
    def info(self) -> np.ndarray:
        """0, or the 1-based block row whose pivot block failed."""
        info = self.factor.info
        if not self.pentadiagonal:
            return info
        return namespace(info).where(info > 0, 2 * info - 1, 0).astype(np.int32)


def _node_counts(steps: int) -> list[int]:
    """The odd nodes eliminated at each level of ``steps`` block rows."""
    counts = []
    while steps > 1:
        counts.append(steps // 2)
        steps -= steps // 2
    return counts


def flat_factor_size(systems: int, steps: int, n: int, pentadiagonal: bool) -> int:
    """Elements of :func:`flatten` of the factor of ``systems`` such systems."""
    if steps == 0:
        return 0
    rows, size = ((steps + 1) // 2, 2 * n) if pentadiagonal else (steps, n)
    return systems * size * size * (3 * sum(_node_counts(rows)) + 1)


def flatten(factor: BlockFactor) -> Any:
    """The factor's arrays as one 1-D array (levels in order, ``chol``,
    ``left``, ``right`` each, then ``last``): a factor that frameworks can
    keep as one tensor (:func:`from_flat` takes it back, as views)."""
    xp = namespace(factor.factor.last)
    parts = [a.reshape(-1) for level in factor.factor.levels for a in level]
    return xp.concatenate(parts + [factor.factor.last.reshape(-1)])


def from_flat(flat: Any, batch: tuple[int, ...], steps: int, n: int, pentadiagonal: bool,
              info: Any = None, backend: str | None = None) -> BlockFactor:  # fmt: skip
    """The :class:`BlockFactor` whose :func:`flatten` is ``flat`` (views of
    it); ``info`` defaults to zeros (a factor that was kept succeeded)."""
    xp = namespace(flat)
    rows, size = ((steps + 1) // 2, 2 * n) if pentadiagonal else (steps, n)
    systems = math.prod(batch)
    start, levels = 0, []

    def take(nodes: int) -> Any:
        nonlocal start
        count = systems * nodes * size * size
        part = flat[start : start + count].reshape(batch + (nodes, size, size))
        start += count
        return part

    if steps:
        for nodes in _node_counts(rows):
            levels.append((take(nodes), take(nodes), take(nodes)))
        last = take(1)
    else:
        last = xp.empty(batch + (0, size, size), dtype=flat.dtype)
    if info is None:
        info = xp.zeros(batch, dtype=np.int32)
    return BlockFactor(CyclicFactor(levels, last, info), steps, n, pentadiagonal, backend)


def factor_blocks(blocks, backend: str | None = None) -> BlockFactor:
    """Factor ``(A0, A1)`` or ``(A0, A1, A2)`` (``blocks[k][..., t] = A[t+k, t]``,
    equal batch shapes) by block cyclic reduction (``backend``: for CuPy
    arrays, see :func:`_level_kernels`)."""
    a = list(blocks)
    xp = namespace(a[0])
    steps, n = a[0].shape[-3], a[0].shape[-1]
    batch = a[0].shape[:-3]
    if len(a) == 1:
        a.append(xp.zeros(batch + (max(steps - 1, 0), n, n), dtype=a[0].dtype))
    pentadiagonal = len(a) == 3
    if pentadiagonal:
        a = _pair_matrix(a, steps, n)
    return BlockFactor(factor_tridiagonal(a[0], a[1], backend), steps, n, pentadiagonal, backend)


def solve_blocks(factor: BlockFactor, b: np.ndarray) -> np.ndarray:
    """Solve with a :func:`factor_blocks` factor; ``b`` (..., T, n, K)."""
    steps, n = factor.steps, factor.n
    if factor.pentadiagonal:
        pad = steps % 2
        if pad:
            xp = namespace(b)
            b = xp.concatenate([b, xp.zeros(b.shape[:-3] + (1,) + b.shape[-2:], b.dtype)], -3)
        b = b.reshape(b.shape[:-3] + ((steps + pad) // 2, 2 * n, b.shape[-1]))
    x = solve_tridiagonal(factor.factor, b, factor.backend)
    if factor.pentadiagonal:
        x = x.reshape(x.shape[:-3] + (steps + steps % 2, n, x.shape[-1]))[..., :steps, :, :]
    return x


def solveh_block_cyclic(
    blocks, b: np.ndarray, backend: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(x, info)`` for block-tridiagonal (``blocks = (A0, A1)``) or
    block-pentadiagonal (``(A0, A1, A2)``) SPD systems by block cyclic
    reduction; ``b`` (..., T, n, K).  Failed systems' solutions are NaN.
    NumPy or CuPy arrays (all of one kind)."""
    xp = namespace(b)
    a = list(blocks)
    batch = np.broadcast_shapes(*(x.shape[:-3] for x in a), b.shape[:-3])
    # SciPy's rule: float32 if every input fits, else float64 (never integers).
    dtype = np.result_type(*(x.dtype for x in a), b.dtype, np.float32)
    dtype = np.dtype(np.float32) if dtype == np.float32 else np.dtype(np.float64)
    a = [xp.broadcast_to(x, batch + x.shape[-3:]).astype(dtype) for x in a]
    b = xp.broadcast_to(b, batch + b.shape[-3:]).astype(dtype)
    if a[0].shape[-3] == 0:
        return xp.empty(b.shape, dtype=dtype), xp.zeros(batch, dtype=np.int32)
    factor = factor_blocks(a, backend)
    x = solve_blocks(factor, b)
    info = factor.info
    failed = (info != 0).reshape(info.shape + (1,) * (x.ndim - info.ndim))
    return xp.where(failed, xp.nan, x), info  # (no boolean-mask assignment: CuPy would wait)


def _pair_matrix(a, steps, n):
    """Block-pentadiagonal (blocks n) as block-tridiagonal (blocks 2n), with
    one decoupled identity block row appended when ``steps`` is odd."""
    pad = steps % 2
    a0, a1, a2 = a
    xp = namespace(a0)
    batch = a0.shape[:-3]
    if pad:
        eye = xp.broadcast_to(xp.eye(n, dtype=a0.dtype), batch + (1, n, n))
        zeros = xp.zeros(batch + (1, n, n), dtype=a0.dtype)
        a0 = xp.concatenate([a0, eye], -3)
        a1 = xp.concatenate([a1, zeros], -3)
        a2 = xp.concatenate([a2, zeros], -3)
    t2 = (steps + pad) // 2
    d = xp.zeros(batch + (t2, 2 * n, 2 * n), dtype=np.result_type(a0.dtype, a1.dtype, a2.dtype))
    d[..., :n, :n] = a0[..., 0::2, :, :]
    d[..., n:, n:] = a0[..., 1::2, :, :]
    d[..., n:, :n] = a1[..., 0::2, :, :]  # A[2s+1, 2s]
    d[..., :n, n:] = xp.swapaxes(a1[..., 0::2, :, :], -1, -2)
    c = xp.zeros(batch + (t2 - 1, 2 * n, 2 * n), dtype=d.dtype)
    c[..., :n, :n] = a2[..., 0::2, :, :][..., : t2 - 1, :, :]  # A[2s+2, 2s]
    c[..., :n, n:] = a1[..., 1::2, :, :][..., : t2 - 1, :, :]  # A[2s+2, 2s+1]
    c[..., n:, n:] = a2[..., 1::2, :, :][..., : t2 - 1, :, :]  # A[2s+3, 2s+1]
    return [d, c]
