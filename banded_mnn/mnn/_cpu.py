"""CPU drivers of the MNN layer: assembly fused with the band Cholesky.

The core routines gather a caller's band into a lane-interleaved workspace,
factor it there and scatter it back.  The layer owns its normal matrices, so
it skips both copies: :func:`factor_lanes` assembles each block of rows
straight into the workspace layout of :mod:`banded_mnn._backends._band_kernels`
(``W[(j*(bw+1) + r)*L + l] = A_l[j + r, j]``), factors it while it is in cache
(forward substitution fused, when a right-hand side is given) and keeps the
workspace as the stored factor: ``W_all`` of shape ``(chunks, M*(bw+1)*L)``,
system ``i`` in chunk ``i // L``, lane ``i % L``.  :func:`solve_lanes` solves
more right-hand sides with it.  Lanes past the batch hold the identity.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .._backends._band_kernels import backward, factor, forward, lane_copy_run, stream_columns
from .._backends._numba_cpu import LANE_WORKSPACE_BUDGET, lane_gather_rhs, lane_scatter_rhs
from ._kernels import lane_any_square_at_most, lhs_steps, rhs_steps, vjp_steps

#: Steps assembled before the factorisation catches up (rows stay in cache).
STEP_BLOCK = 32


@njit(parallel=True, cache=True)
def factor_lanes(
    coef, coef_off, coef_st, steps_buf, steps_off, steps_st,
    rhs, rhs_off, rhs_st, init, init_off, init_st,
    W_all, x_out, info, bw, solve, singular_tol,
    T, E, D, O, S, I, weq2, wiv2, ws2, central, tabs, lanes, factorise=True,
    in_place_max_bytes=LANE_WORKSPACE_BUDGET,
):  # fmt: skip
    """Assemble and factor every system (only assemble without ``factorise``:
    ``W_all`` then holds the normal matrices); with ``solve``, also assemble the
    right-hand side ``A^T W b`` and write the solution to ``x_out`` (systems, M).

    ``info`` receives the per-system status: 1 + the first column ``j`` that
    fails either LAPACK's test (a pivot <= 0, or not finite) or ``L[j, j]^2
    <= singular_tol * A[j, j]`` -- a normal matrix singular to working precision, whose pivots
    LAPACK's test misses because the last pivot of a null direction is
    rounding noise of either sign (see ``docs/mnn.md``).  Failed systems'
    factors and solutions are NaN.  Returns whether any system failed.
    A chunk's factor of at most ``in_place_max_bytes`` is assembled and
    factored where it lies, a larger one in a window of columns (see the
    loop below).  ``tabs``: ``tab0, tab1, tabq`` of
    :func:`._kernels.lhs_steps`, one after another.
    """
    L = len(lanes)
    nsys = coef_off.shape[0]
    n = D * O
    M = T * n
    w = bw + 1
    cs0, cs1, cs2, cs3 = coef_st
    rs0, rs1 = rhs_st
    vs0, vs1, vs2 = init_st
    size = O * O * L
    tab0, tab1, tabq = tabs[:size], tabs[size : 2 * size], tabs[2 * size :]
    nrhs = 1 if solve else 0
    x_flat = x_out.reshape(-1)
    for c in prange(W_all.shape[0]):
        first = c * L
        real = min(L, nsys - first)
        if real <= 0:  # room left for other lane counts (see _lane_slots)
            continue
        W = W_all[c]
        Y = np.zeros(M * L if solve else 0, dtype=W_all.dtype)
        rows = np.empty(STEP_BLOCK * E * n * L, dtype=W_all.dtype)  # a block's coefficients
        scratch = np.empty((2 * O + 2 + STEP_BLOCK) * L, dtype=W_all.dtype)  # see lhs_steps
        linfo = np.zeros(L, dtype=np.int32)
        before = np.zeros(L, dtype=np.int32)
        recip = np.empty(2 * L, dtype=W_all.dtype)
        diag = np.empty(M * L, dtype=W_all.dtype)  # A[j, j] of every lane
        # Factoring, columns are assembled and factored a block of steps at a
        # time, while in cache.  A W that fits the L2 cache is worked on where
        # it lies (the backward substitution finds it there next).  A larger
        # W is not: a window of columns from `done` on (the block being
        # assembled and the columns it still updates) is, and its finished
        # columns go to W, streamed where W is aligned (written whole, its
        # lines need not be read first).
        in_place = W.size * W.itemsize <= in_place_max_bytes or not factorise
        window = np.empty(0 if in_place else (STEP_BLOCK * n + bw) * w * L, W_all.dtype)
        stream = not in_place and W.ctypes.data % (L * W.itemsize) == 0
        done = 0
        for t0 in range(0, T, STEP_BLOCK):
            t1 = min(T, t0 + STEP_BLOCK)
            target = W if in_place else window
            base = 0 if in_place else done  # the first column in target
            lhs_steps(
                coef, coef_off, cs0, cs1, cs2, cs3, steps_buf, steps_off, steps_st,
                target, first, real, bw, t0, t1, T, E, D, O, S, I, weq2, wiv2, ws2, central,
                tab0, tab1, tabq, rows, scratch, lanes, base,
            )  # fmt: skip
            # diag[j*L + l] = A_l[j, j], the block's columns (stride w*L in the band)
            lane_copy_run(diag, t0 * n * L, L, target, (t0 * n - base) * w * L, w * L, 0.0, 0,
                          (t1 - t0) * n, lanes)  # fmt: skip
            if solve:
                rhs_steps(
                    coef, coef_off, cs0, cs1, cs2, cs3, rhs, rhs_off, rs0, rs1,
                    init, init_off, vs0, vs1, vs2, Y, first, real, t0, t1,
                    E, D, O, S, I, weq2, wiv2, rows, scratch, lanes,
                )  # fmt: skip
            if not factorise:
                continue
            ready = M if t1 == T else max(done, t1 * n - bw)
            before[:] = linfo
            # Columns done .. ready - 1, numbered from column `done`.
            panel = target[(done - base) * w * L :]
            factor(panel, Y[done * nrhs * L :], M - done, bw, nrhs, linfo, recip, lanes, 0,
                   ready - done)  # fmt: skip
            for l in range(L):
                if linfo[l] != before[l]:  # (the factor numbers its columns from 0 too)
                    linfo[l] += done
            for j in range(done, ready):  # the singularity test, while in cache
                p = (j - done) * w * L
                # (any lane; the padding lanes' identity never is suspect)
                if not lane_any_square_at_most(panel, p, diag, j * L, singular_tol, lanes):
                    continue
                for l in range(real):
                    pivot = panel[p + l]
                    # (a pivot test failed later in the block is superseded)
                    earlier = linfo[l] == 0 or linfo[l] > j + 1
                    if earlier and pivot * pivot <= singular_tol * diag[j * L + l]:
                        linfo[l] = j + 1
            if not in_place:
                if stream:
                    stream_columns(W, done * w * L, window, 0, (ready - done) * w, lanes)
                else:
                    W[done * w * L : ready * w * L] = window[: (ready - done) * w * L]
                # The columns still being updated move to the window's start.
                carried = (t1 * n - ready) * w * L
                window[:carried] = window[(ready - done) * w * L : (ready - done) * w * L + carried]
            done = ready
        if solve:
            backward(W, Y, M, bw, 1, lanes)
            offs = np.arange(first, first + L) * M  # each system's row in x_out
            lane_scatter_rhs(Y, x_flat, offs, 1, 0, 1, real, lanes, 0, M)
        for l in range(real):
            info[first + l] = linfo[l]
            if linfo[l] != 0:  # failed: NaN factor and solution
                for k in range(M * w):
                    W[k * L + l] = np.nan
                if solve:
                    x_out[first + l, :] = np.nan
    failed = False  # (what the caller tests, without a NumPy reduction)
    for i in range(nsys):
        failed |= info[i] != 0
    return failed


@njit(parallel=True, cache=True)
def solve_lanes(W_all, b, bw, lanes):
    """Solve in place for ``b`` (systems, M), system ``i`` with the factor in
    lane ``i % L`` of chunk ``i // L`` of ``W_all``."""
    L = len(lanes)
    nsys, M = b.shape
    for c in prange(W_all.shape[0]):
        first = c * L
        real = min(L, nsys - first)
        if real <= 0:
            continue
        W = W_all[c]
        Y = np.zeros(M * L, dtype=W_all.dtype)
        recip = np.empty(L, dtype=W_all.dtype)
        for l in range(real):
            for j in range(M):
                Y[j * L + l] = b[first + l, j]
        forward(W, Y, M, bw, 1, recip, lanes, 0, M)
        backward(W, Y, M, bw, 1, lanes)
        for l in range(real):
            for j in range(M):
                b[first + l, j] = Y[j * L + l]


@njit(parallel=True, cache=True)
def vjp_lanes(
    coef, coef_off, coef_st, rhs, rhs_off, rhs_st, steps_buf, steps_off, steps_st,
    x, lam, W_all, bw, lam_head, grad_coef, grad_rhs, grad_steps,
    T, E, D, O, weq2, ws2, central, tabs, lhs, lanes,
):  # fmt: skip
    """The VJP's pass over the steps (:func:`._kernels.vjp_steps`) for every
    system, ``x`` and ``lam`` (systems, M) gathered into the lane layout one
    chunk of ``L`` systems at a time.

    With a factor ``W_all`` (the layout of :func:`factor_lanes`; empty: none)
    ``lam`` holds ``dL/du`` and ``A^{-1} dL/du`` is solved here: the forward
    substitution, then the backward substitution a block of steps at a time
    from the end, each block's gradients computed as soon as the values they
    read are final (the block's, the next step's and, with central
    smoothness, the previous step's), while they are in cache.  Otherwise ``lam`` is
    ``A^{-1} dL/du`` already.  ``lam_head`` (systems, H) receives its first H
    entries (the initial values' gradient needs them).  ``tabs``: see
    :func:`._kernels.vjp_steps`.
    """
    L = len(lanes)
    nsys, M = x.shape
    n = D * O
    cs0, cs1, cs2, cs3 = coef_st
    rs0, rs1 = rhs_st
    solve = W_all.shape[0] > 0
    chunks = (nsys + L - 1) // L
    grad_coef_flat = grad_coef.reshape(-1)
    x_flat, lam_flat = x.reshape(-1), lam.reshape(-1)
    for c in prange(chunks):
        first = c * L
        real = min(L, nsys - first)
        X = np.empty(M * L, dtype=x.dtype)
        LAM = np.empty(M * L, dtype=x.dtype)
        offs = np.arange(first, first + L) * M  # each system's row in x and lam
        lane_gather_rhs(X, x_flat, offs, 1, 0, 1, real, lanes, 0, M)
        lane_gather_rhs(LAM, lam_flat, offs, 1, 0, 1, real, lanes, 0, M)
        scratch = np.empty((2 * O + 4 + STEP_BLOCK) * L, dtype=x.dtype)  # see vjp_steps
        rows = np.empty(STEP_BLOCK * E * n * L, dtype=x.dtype)  # a block's coefficients
        grad_block = np.empty((STEP_BLOCK * E * n * L) if lhs else 0, dtype=x.dtype)
        if solve:
            recip = np.empty(L, dtype=x.dtype)
            forward(W_all[c], LAM, M, bw, 1, recip, lanes, 0, M)
        done = M  # rows [done, M) of LAM are final
        for t0 in range(((T - 1) // STEP_BLOCK) * STEP_BLOCK, -1, -STEP_BLOCK):
            t1 = min(T, t0 + STEP_BLOCK)
            if solve:
                # The block's gradients read lam at steps t0 .. t1 (+1 with
                # central smoothness, whose rows span three steps) and, with
                # central smoothness, at step t0 - 1 too.
                low = max(t0 - 1, 0) * n if central else t0 * n
                backward(W_all[c], LAM, M, bw, 1, lanes, low, done)
                done = low
            vjp_steps(
                coef, coef_off, cs0, cs1, cs2, cs3, rhs, rhs_off, rs0, rs1, steps_buf, steps_off,
                steps_st, X, LAM, first, real, t0, t1, T, E, D, O, weq2, ws2, central,
                tabs, lhs, grad_coef_flat, grad_rhs, grad_steps, rows, scratch, grad_block,
                lanes,
            )  # fmt: skip
        for l in range(real):
            for j in range(lam_head.shape[1]):
                lam_head[first + l, j] = LAM[j * L + l]


@njit(parallel=True, cache=True)
def workspace_blocks(W_all, a0, a1, a2, levels, lanes_count):
    """The assembled normal matrices of ``W_all`` (the layout above, not
    factored) as blocks ``a_k[i, t] = A_i[t+k, t]`` (k < ``levels``; diagonal
    blocks filled symmetric) for block cyclic reduction -- one pass, without
    the LAPACK band in between.  ``a_k`` (systems, T - k, n, n)."""
    nsys, steps, n = a0.shape[0], a0.shape[1], a0.shape[2]
    L = lanes_count
    w = W_all.shape[1] // (steps * n * L)  # bw + 1
    for job in prange(nsys * steps):
        i = job // steps
        t = job - i * steps
        W = W_all[i // L]
        lane = i % L
        for k in range(levels):
            if t + k >= steps:
                continue
            for p in range(n):
                for q in range(n):
                    row = (t + k) * n + p
                    col = t * n + q
                    if row < col:  # upper triangle of a diagonal block: by symmetry
                        row, col = col, row
                    r = row - col
                    value = W[(col * w + r) * L + lane] if r < w else 0.0
                    if k == 0:
                        a0[i, t, p, q] = value
                    elif k == 1:
                        a1[i, t, p, q] = value
                    else:
                        a2[i, t, p, q] = value
