"""Per-node cores of block cyclic reduction, written once for the CPU and the GPU.

One level of block cyclic reduction (:mod:`banded_mnn._cyclic`) works on ``m``
nodes of a block-tridiagonal matrix: diagonal blocks ``d[s, i]`` (symmetric,
lower triangle read) and couplings ``c[s, i] = A[i+1, i]`` of system ``s``.
Node ``i = 2k + 1`` (``k < m // 2``) is eliminated::

    L_k      = chol(d[2k+1])                       lower
    left_k   = c[2k]^T   L_k^{-T}                  = L[2k,   2k+1]
    right_k  = c[2k+1]   L_k^{-T}  (if 2k+2 < m)   = L[2k+2, 2k+1]

and the even nodes ``e = 2k`` form the next level (the Schur complement)::

    d'[k] = d[2k] - left_k left_k^T - right_{k-1} right_{k-1}^T   (lower triangle)
    c'[k] = -right_k left_k^T                      = A'[2k+2, 2k]

The solve follows the same pattern: ``y_k = L_k^{-1} r[2k+1]``,
``r'[k] = r[2k] - left_k y_k - right_{k-1} y_{k-1}`` on the way down, and
``x[2k+1] = L_k^{-T} (y_k - left_k^T x[2k] - right_k^T x[2k+2])`` on the way up.

Each function below is one job -- one node of one system, ``job = s *
nodes + k`` -- with plain scalar loops over contiguous 4-D arrays (systems,
nodes, n, n or K) and no calls to other functions, so that the same source
compiles with ``numba.njit`` (the CPU drivers in :mod:`._cyclic_cpu`: a
``prange`` over the jobs) and with ``numba.cuda.jit(device=True)`` (the
kernels in :mod:`._numba_cuda`: a thread per job).  The functions are plain
Python here; the backends compile them.  :func:`jobs` gives each level's job
count.  Solve functions take ``fmap``, the factor's system for each
right-hand side's system (a factor may be shared).  ``m == 1`` is the single
node left at the end: no neighbours, node 0 in slot 0.
"""

from __future__ import annotations

import math

#: The functions over the odd nodes (the others run over the even nodes).
ODD_NODE_FUNCTIONS = ("factor_node", "forward_node", "backward_node")


def jobs(function: str, systems: int, m: int) -> int:
    """Job count of ``function`` at a level of ``m`` nodes."""
    odd = m // 2
    return systems * (max(odd, 1) if function in ODD_NODE_FUNCTIONS else m - odd)


def factor_node(job, d, c, chol, left, right, failed, one, m):
    """Eliminate odd node ``i = 2k + 1``: ``chol[s, k] = chol(d[s, i])`` (upper
    triangle zero) and its couplings ``left[s, k]`` (from ``c[s, i-1]``) and
    ``right[s, k]`` (from ``c[s, i]``; zero without a right neighbour).  A
    pivot that is not positive and finite sets ``failed[s, k]`` and the block
    becomes the identity, so that the system stays finite (its results are
    discarded).  ``one`` is 1 in the arrays' dtype (float32 stays float32:
    a float literal would make the arithmetic float64)."""
    zero = one - one
    n = d.shape[3]
    nodes = max(m // 2, 1)
    s = job // nodes
    k = job - s * nodes
    i = 2 * k + 1 if m > 1 else 0
    has_left = m > 1
    has_right = i + 1 < m
    bad = False
    for j in range(n):  # left-looking Cholesky, column j
        pivot = d[s, i, j, j]
        for p in range(j):
            pivot -= chol[s, k, j, p] * chol[s, k, j, p]
        if not (pivot > 0 and pivot < math.inf):  # also NaN
            bad = True
            pivot = one
        diagonal = math.sqrt(pivot)
        chol[s, k, j, j] = diagonal
        for r in range(j + 1, n):
            value = d[s, i, r, j]
            for p in range(j):
                value -= chol[s, k, r, p] * chol[s, k, j, p]
            chol[s, k, r, j] = value / diagonal
        for r in range(j):
            chol[s, k, r, j] = zero
    failed[s, k] = 1 if bad else 0
    if bad:
        for r in range(n):
            for q in range(n):
                chol[s, k, r, q] = one if r == q else zero
    # left = c[i-1]^T L^{-T}, right = c[i] L^{-T}: row by row, X[r] L^T = B[r]
    # is L X[r]^T = B[r]^T, a forward substitution.
    for r in range(n):
        for q in range(n):
            lsum = c[s, i - 1, q, r] if has_left else zero
            rsum = c[s, i, r, q] if has_right else zero
            for p in range(q):
                lsum -= chol[s, k, q, p] * left[s, k, r, p]
                rsum -= chol[s, k, q, p] * right[s, k, r, p]
            left[s, k, r, q] = lsum / chol[s, k, q, q]
            right[s, k, r, q] = rsum / chol[s, k, q, q]


def schur_node(job, d, left, right, d_next, c_next, m):
    """Even node ``2k`` for the next level: ``d_next[s, k]`` (lower triangle:
    the only part any core reads) and, if node ``2k + 2`` exists, the
    coupling ``c_next[s, k]`` to it.  (``n >= 1``: the loops are empty for
    ``n = 0``; sums start from their first term, so that float32 stays
    float32.)"""
    n = d.shape[3]
    odd = m // 2
    below = odd if m % 2 else odd - 1  # odd nodes with a right neighbour
    even = m - odd
    s = job // even
    k = job - s * even
    for r in range(n):
        for q in range(r + 1):
            d_next[s, k, r, q] = d[s, 2 * k, r, q]
    if k < odd:  # - left_k left_k^T
        for r in range(n):
            for q in range(r + 1):
                product = left[s, k, r, 0] * left[s, k, q, 0]
                for p in range(1, n):
                    product += left[s, k, r, p] * left[s, k, q, p]
                d_next[s, k, r, q] -= product
    if k >= 1 and k - 1 < below:  # - right_{k-1} right_{k-1}^T
        for r in range(n):
            for q in range(r + 1):
                product = right[s, k - 1, r, 0] * right[s, k - 1, q, 0]
                for p in range(1, n):
                    product += right[s, k - 1, r, p] * right[s, k - 1, q, p]
                d_next[s, k, r, q] -= product
    if k < below:  # c' = -right_k left_k^T
        for r in range(n):
            for q in range(n):
                product = right[s, k, r, 0] * left[s, k, q, 0]
                for p in range(1, n):
                    product += right[s, k, r, p] * left[s, k, q, p]
                c_next[s, k, r, q] = -product


def forward_node(job, chol, r, y, fmap, m):
    """``y[s, k] = L_k^{-1} r[s, 2k+1]``."""
    n = chol.shape[3]
    nodes = max(m // 2, 1)
    s = job // nodes
    k = job - s * nodes
    i = 2 * k + 1 if m > 1 else 0
    f = fmap[s]
    for col in range(r.shape[3]):
        for q in range(n):
            value = r[s, i, q, col]
            for p in range(q):
                value -= chol[f, k, q, p] * y[s, k, p, col]
            y[s, k, q, col] = value / chol[f, k, q, q]


def reduce_node(job, left, right, y, r, r_next, fmap, m):
    """``r_next[s, k] = r[s, 2k] - left_k y_k - right_{k-1} y_{k-1}``."""
    n = left.shape[3]
    odd = m // 2
    below = odd if m % 2 else odd - 1
    even = m - odd
    s = job // even
    k = job - s * even
    f = fmap[s]
    for col in range(r.shape[3]):
        for q in range(n):
            value = r[s, 2 * k, q, col]
            if k < odd:
                for p in range(n):
                    value -= left[f, k, q, p] * y[s, k, p, col]
            if k >= 1 and k - 1 < below:
                for p in range(n):
                    value -= right[f, k - 1, q, p] * y[s, k - 1, p, col]
            r_next[s, k, q, col] = value


def backward_node(job, chol, left, right, y, x_even, x, fmap, m):
    """``x[s, 2k+1] = L_k^{-T} (y[s, k] - left_k^T x_even[s, k] - right_k^T
    x_even[s, k+1])`` (the terms whose neighbour exists); the even nodes of
    ``x`` are the caller's copy of ``x_even``."""
    n = chol.shape[3]
    nodes = max(m // 2, 1)
    s = job // nodes
    k = job - s * nodes
    i = 2 * k + 1 if m > 1 else 0
    has_left = m > 1
    has_right = i + 1 < m
    f = fmap[s]
    for col in range(y.shape[3]):
        for q in range(n - 1, -1, -1):
            value = y[s, k, q, col]
            for p in range(n):
                if has_left:
                    value -= left[f, k, p, q] * x_even[s, k, p, col]
                if has_right:
                    value -= right[f, k, p, q] * x_even[s, k + 1, p, col]
            for p in range(q + 1, n):
                value -= chol[f, k, p, q] * x[s, i, p, col]
            x[s, i, q, col] = value / chol[f, k, q, q]
