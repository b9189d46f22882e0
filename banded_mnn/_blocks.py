"""SPD systems given as blocks: block-tridiagonal and block-pentadiagonal.

Many users hold these matrices as blocks -- Kalman smoothers, Gaussian Markov
random fields, S-MNN's normal equations -- rather than as a scalar band.  The
block form ``blocks[k][..., t, :, :] = A[t+k, t]`` (block row ``t + k``,
block column ``t``; ``k = 0`` the diagonal blocks, of which the lower
triangle is read) is converted to LAPACK's lower band form with ``u = (K+1) n
- 1`` sub-diagonals and solved by the band Cholesky routines, or, with
``algorithm="cyclic"``, factored by block cyclic reduction
(:mod:`banded_mnn._cyclic`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import _api
from ._strided import namespace


def _check_blocks(
    blocks: Sequence[Any], xp: Any, backend: str | None
) -> tuple[list[Any], int, int, np.dtype]:
    """Validated block arrays (of ``xp``), ``T``, ``n`` and the result dtype."""
    arrays = [_api._as_real_array(a, f"blocks[{k}]", xp, backend) for k, a in enumerate(blocks)]
    a0 = arrays[0]
    if a0.ndim < 3 or a0.shape[-1] != a0.shape[-2]:
        raise ValueError(f"blocks[0] must have shape (..., T, n, n); got {a0.shape}")
    steps, n = a0.shape[-3], a0.shape[-1]
    for k, a in enumerate(arrays[1:], start=1):
        expected = (max(steps - k, 0), n, n)
        if a.ndim < 3 or a.shape[-3:] != expected:
            raise ValueError(
                f"blocks[{k}] must have shape (..., T-{k}, n, n) = (..., {expected[0]}, {n}, "
                f"{n}) to go with blocks[0] of shape {a0.shape}; got {a.shape}"
            )
    try:
        np.broadcast_shapes(*(a.shape[:-3] for a in arrays))
    except ValueError:
        raise ValueError(
            "the blocks' batch shapes do not broadcast: " + ", ".join(str(a.shape) for a in arrays)
        ) from None
    return arrays, steps, n, _api._result_dtype(*arrays)


def _block_band(arrays: list[Any], steps: int, n: int, dtype: np.dtype) -> Any:
    """The lower band form of the block matrix (NumPy or CuPy, as the blocks)."""
    batch = np.broadcast_shapes(*(a.shape[:-3] for a in arrays))
    u = len(arrays) * n - 1
    ab = namespace(arrays[0]).zeros(batch + (u + 1, steps, n), dtype=dtype)
    # A[t*n + k*n + p, t*n + q] = blocks[k][t, p, q] sits at band row k*n + p - q.
    for k, a in enumerate(arrays):
        for p in range(n):
            for q in range(n) if k else range(p + 1):
                ab[..., k * n + p - q, : steps - k, q] = a[..., p, q]
    return ab.reshape(batch + (u + 1, steps * n))


def band_to_blocks(ab: np.ndarray, steps: int, n: int, levels: int) -> list[np.ndarray]:
    """Blocks ``A[t+k, t]`` (k < levels) of the matrix in lower band form
    ``ab`` (..., u+1, T*n); diagonal blocks are filled symmetric."""
    band = ab.reshape(ab.shape[:-1] + (steps, n))
    u = ab.shape[-2] - 1
    blocks = []
    for k in range(levels):
        blk = np.zeros(ab.shape[:-2] + (max(steps - k, 0), n, n), dtype=ab.dtype)
        for p in range(n):
            for q in range(n):
                r = k * n + p - q
                if k == 0 and p < q:
                    blk[..., p, q] = band[..., q - p, :, p]  # the upper triangle, by symmetry
                elif 0 <= r <= u:
                    blk[..., p, q] = band[..., r, : steps - k, q]
        blocks.append(blk)
    return blocks


def _rhs(b: Any, steps: int, n: int, xp: Any, backend: str | None) -> tuple[Any, tuple, bool]:
    """``b`` as (..., T*n, K); whether it was given as vectors (..., T, n).
    A shape that fits both, (..., T, n, K) with K = n = T, is taken as matrices."""
    b = _api._as_real_array(b, "b", xp, backend)
    if b.ndim >= 3 and b.shape[-3:-1] == (steps, n):
        return b.reshape(b.shape[:-3] + (steps * n, b.shape[-1])), b.shape, False
    if b.ndim >= 2 and b.shape[-2:] == (steps, n):
        return b.reshape(b.shape[:-2] + (steps * n, 1)), b.shape, True
    raise ValueError(f"b must have shape (..., T, n) or (..., T, n, K) with T={steps}, n={n}; "
                     f"got {b.shape}")  # fmt: skip


def solveh_block_banded_ex(
    blocks: Sequence[Any],
    b: Any,
    check_finite: bool = True,
    *,
    algorithm: str | None = None,
    backend: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`solveh_block_banded` returning ``(x, info)`` instead of raising.

    ``info`` (int32, the batch shape) is 0 where the system factored.
    Otherwise it is ``k``: unknown ``k - 1`` (block ``(k - 1) // n``) is where
    the factorisation failed -- LAPACK's leading-minor order of the equivalent
    scalar band with ``algorithm="sequential"``; with ``"cyclic"`` the first
    unknown of the block row whose pivot block failed (in elimination order).
    Failed systems' solutions are NaN.
    """
    if not isinstance(blocks, (tuple, list)) or not 1 <= len(blocks) <= 3:
        raise TypeError(
            "blocks must be a sequence (A0, A1) or (A0, A1, A2) of block arrays, "
            "blocks[k][..., t, :, :] = A[t+k, t]"
        )
    named = {f"blocks[{k}]": a for k, a in enumerate(blocks)} | {"b": b}
    impl, xp = _api._select(backend, named)
    arrays, steps, n, dtype = _check_blocks(blocks, xp, backend)
    rhs, shape, vector = _rhs(b, steps, n, xp, backend)
    if xp is not np:
        _api._same_device({**{f"blocks[{k}]": a for k, a in enumerate(arrays)}, "b": rhs})
    if algorithm is None:
        algorithm = _choose_algorithm(arrays, rhs, steps, impl)
    with _api._on_device_of(rhs, xp):
        x, info = _solve_blocks(arrays, rhs, steps, n, dtype, xp, check_finite, algorithm,
                                backend)  # fmt: skip
    batch = x.shape[: x.ndim - (3 if algorithm == "cyclic" else 2)]
    x = x.reshape(batch + (steps, n) + (() if vector else (shape[-1],)))
    return x, info


def _choose_algorithm(arrays, rhs, steps: int, impl) -> str:
    """``algorithm=None``: "sequential" with the CPU backend (on 2 cores
    cyclic reduction wins only for a few long systems and by at most 2.4x,
    ``docs/performance.md``); with a GPU backend "cyclic" for few, long
    systems (:func:`._backends._gpu.choose_algorithm`)."""
    from . import _backends
    from ._backends import _gpu

    if not _backends.is_gpu(impl):
        return "sequential"

    batch = np.broadcast_shapes(*(a.shape[:-3] for a in arrays), rhs.shape[:-2])
    return _gpu.choose_algorithm(math.prod(batch), steps, impl.kernels().multiprocessors())


def _solve_blocks(arrays, rhs, steps, n, dtype, xp, check_finite, algorithm, backend):
    """``(x, info)`` on the arrays' device; ``x`` (..., T n, K) or (..., T, n, K)."""
    if algorithm == "cyclic":
        from ._cyclic import solveh_block_cyclic

        if check_finite:
            for name, a in [*((f"blocks[{k}]", a) for k, a in enumerate(arrays)), ("b", rhs)]:
                if not bool(xp.isfinite(a).all()):
                    raise ValueError(f"{name} must not contain infs or NaNs")
        rhs = rhs.reshape(rhs.shape[:-2] + (steps, n, rhs.shape[-1]))
        x, info = solveh_block_cyclic(arrays, rhs, backend)
        x = x.astype(np.result_type(dtype, _api._result_dtype(rhs)), copy=False)
        # The block row's first unknown (1-based), in the sequential's units.
        info = xp.where(info > 0, (info - 1) * n + 1, 0).astype(np.int32)
    elif algorithm == "sequential":
        ab = _block_band(arrays, steps, n, dtype)
        x, info = _api.solveh_banded_ex(ab, rhs, lower=True, overwrite_ab=True,
                                        check_finite=check_finite, backend=backend)  # fmt: skip
    else:
        raise ValueError(f"algorithm must be 'sequential' or 'cyclic'; got {algorithm!r}")
    return x, info


def solveh_block_banded(
    blocks: Sequence[Any],
    b: Any,
    check_finite: bool = True,
    *,
    algorithm: str | None = None,
    backend: str | None = None,
) -> np.ndarray:
    """Solve ``A x = b`` for SPD block-tridiagonal or block-pentadiagonal ``A``
    given as blocks, batched.

    Parameters
    ----------
    blocks : sequence of array_like
        ``(A0, A1)`` (block-tridiagonal) or ``(A0, A1, A2)``
        (block-pentadiagonal), ``A0`` alone for block-diagonal.
        ``blocks[k]`` has shape ``(..., T - k, n, n)`` and holds ``A[t+k, t]``
        (block row ``t + k``, block column ``t``).  Only the lower triangle of
        each diagonal block ``A0[t]`` is read.  Batch axes broadcast.
    b : array_like, shape (..., T, n) or (..., T, n, K)
        Right-hand sides.  Batch axes broadcast with the blocks'.
    check_finite : bool
        Check the inputs for infs and NaNs.
    algorithm : {None, "sequential", "cyclic"}
        ``"sequential"``: the band Cholesky of the equivalent scalar band (a
        dependency chain over the T block rows, parallel over the batch).
        ``"cyclic"``: block cyclic reduction, about log2 T levels of block
        operations parallel over every node of every system, at about twice
        the arithmetic -- the parallel-in-time algorithm for few, long
        sequences (on 2 CPU cores up to 2.4x faster than "sequential" for
        few long systems, about even at 64, ``docs/performance.md``).
        ``None`` (default): "sequential" for NumPy arrays; for CuPy arrays
        "cyclic" when the systems are too few to fill the device and have
        at least ``_backends._gpu.CYCLIC_MIN_STEPS`` block rows.
    backend : str, optional
        The band backend of the sequential algorithm (default ``"numba"``,
        or ``"cupy"`` for CuPy blocks).  With ``"cyclic"`` and CuPy blocks:
        ``"numba-cuda"`` (the default where it can run) uses the Numba CUDA
        kernels, ``"cupy"`` CuPy array operations.

    Returns
    -------
    x : numpy.ndarray
        Same layout as ``b``, with the broadcast batch shape; float32 if every
        input fits in float32, else float64.

    Raises
    ------
    NotPositiveDefiniteError
        For a system that is not positive definite; its ``order`` ``k`` is
        unknown ``k - 1``, that is block ``(k - 1) // n``, component
        ``(k - 1) % n`` (with ``algorithm="cyclic"``: the first unknown of
        the block row that failed).
    ValueError, TypeError
        For blocks or right-hand sides of the wrong shapes or types.

    Examples
    --------
    >>> import numpy as np
    >>> from banded_mnn import solveh_block_banded
    >>> a0 = np.tile(4 * np.eye(2), (5, 1, 1))      # 5 diagonal blocks, n = 2
    >>> a1 = np.tile(np.eye(2), (4, 1, 1))          # A[t+1, t] = I
    >>> x = solveh_block_banded((a0, a1), np.ones((5, 2)))
    >>> x.shape
    (5, 2)
    """
    x, info = solveh_block_banded_ex(blocks, b, check_finite, algorithm=algorithm, backend=backend)
    _api._raise_if_failed(info, "solveh_block_banded")
    return x
