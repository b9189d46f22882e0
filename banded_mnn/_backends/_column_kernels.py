"""Band Cholesky and substitution of one system, vectorised along the band.

The lane-interleaved cores of :mod:`._band_kernels` need ``L`` systems per
thread to fill a vector; with fewer systems than ``2 L`` per thread (one long
sequence, a handful of them) these cores work on one system at a time and
vectorise *within* a column instead.  Column ``j`` of the lower factor is
contiguous in the working rows (``row j`` holds ``L[j + t, j]``, ``t = 0..bw``),
so the rank-1 update of the trailing triangle,

    A~[j + s + r, j + s] -= L[j + s + r, j] * L[j + s, j],   1 <= s <= m, r >= 0,

is, for each ``s``, one run of vector multiply-adds: row ``j + s`` from
position 0 minus row ``j`` from position ``s`` times the scalar ``L[j + s, j]``.

Working rows live in a *ring*: ``K`` (a power of two) rows of ``Rp`` elements,
row ``j`` at ``(j & (K - 1)) * Rp``.  ``Rp`` is at least ``bw +
BLOCK_COLUMNS + V - 1`` (``V`` the vector width), and the cells of a row past
``bw`` and past the end of the matrix hold zeros, so every vector run may
overrun its count up to the next multiple of ``V``: it reads zeros and leaves
the cells it overruns unchanged.  No masks, no scalar tails.

The right-hand sides are held one per row of ``Y`` (``Y[k * ny + j]``,
``ny >= n``); the substitutions run in scalars.  The finished factor rows
go to the caller's array, or (to be read again by the backward substitution)
to a compact workspace ``F[j * (bw + 1) + t] = L[j + t, j]``.

With a factor given (``cho_solve_banded``), the substitutions read the
caller's strided factor in place, once each: the workspace copy would cost
more than a scalar substitution saves by reading contiguous rows.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from ._band_kernels import lane_copy_run, lane_fnmadd_run, lane_fnmadd_sum, lane_mul_run


@njit(cache=True, nogil=True)
def gather_ring(ring, Rp, mask, band, off, sj, st, n, bw, j0, j1):
    """Rows ``[j0, j1)`` of ``A`` (``band[off + j*sj + t*st] = A[j + t, j]``)
    into the ring, cells past the end of the matrix zeroed (the padding past
    ``bw`` is zeroed once per system, by :func:`solve_system`).  Returns False
    if a value read is not finite."""
    finite = True
    for t in range(bw + 1):
        src = off + t * st
        inside = max(j0, min(j1, n - t))
        for j in range(j0, inside):
            value = band[src + j * sj]
            ring[(j & mask) * Rp + t] = value
            if value - value != 0.0:  # inf or NaN (a branch, not a chain of adds)
                finite = False
        for j in range(inside, j1):
            ring[(j & mask) * Rp + t] = 0.0
    return finite


#: Columns per block: each block's updates of the rows below it are applied
#: together, loading and storing every row vector once per block, not once
#: per column (``lane_fnmadd_sum``).
BLOCK_COLUMNS = 4


@njit(cache=True, nogil=True)
def ring_shape(bw, rows, width):
    """``(K, Rp)``: ring rows (a power of two, more than ``rows + bw +
    BLOCK_COLUMNS`` so that a gathered block, the rows it still updates and a
    column block fit) and padded row length (``>= bw + BLOCK_COLUMNS + width
    - 1``, so that vector runs stay inside their row; see the module notes)."""
    k = 1
    while k < rows + bw + BLOCK_COLUMNS + 1:
        k *= 2
    return k, -(-(bw + BLOCK_COLUMNS + width - 1) // width) * width


@njit(cache=True, nogil=True, fastmath={"contract"})
def factor_columns(ring, Rp, mask, n, bw, j0, j1, Y, ny, nrhs, info, vec):
    """Columns ``[j0, j1)`` of the right-looking band Cholesky, in the ring;
    with ``nrhs > 0`` the forward substitution ``L y = b`` fused.

    Rows up to ``min(j1 + bw, n)`` must be in the ring.  Columns go in blocks
    of :data:`BLOCK_COLUMNS`: within a block, each column updates the block's
    own rows at once (the next pivots need them); the rows below the block
    get the block's rank-4 update in one pass.  A last, shorter block updates
    all its rows column by column.

    ``info`` is the status so far (LAPACK's: the first leading minor that is
    not positive definite, 0 if none); a failed pivot (not ``0 < x < inf``)
    becomes 1 so that the sweep stays finite.  Returns the updated ``info``.
    """
    V = len(vec)
    pivot = ring[(j0 & mask) * Rp]
    unit = np.ones(1, dtype=ring.dtype)[0]  # float32 arithmetic stays float32
    for j in range(j0, j1, BLOCK_COLUMNS):
        full = j + BLOCK_COLUMNS <= j1
        for c in range(j, min(j + BLOCK_COLUMNS, j1)):
            m = min(bw, n - 1 - c)
            p = (c & mask) * Rp
            q = ((c + 1) & mask) * Rp
            if pivot > 0.0 and pivot < math.inf:
                d = math.sqrt(pivot)
            else:
                d = unit
                if info == 0:
                    info = c + 1
            r = unit / d
            # The next pivot, A~[c+1, c+1] - L[c+1, c]^2, in scalars: the
            # chain from pivot to pivot does not wait for the vector updates.
            if m > 0:
                below = ring[p + 1] * r
                pivot = ring[q] - below * below
            else:  # bw == 0 (or the last column): nothing to subtract
                pivot = ring[q]
            # Column c of L: L[c + t, c] = A~[c + t, c] * (1 / L[c, c]) (as LAPACK).
            lane_mul_run(ring, p, V, ring, p, V, r, 0, (m + V) // V, vec)
            ring[p] = d
            # A~[c + s + t, c + s] -= L[c + s + t, c] * L[c + s, c]: row c + s
            # minus row c from s, for the block's rows (all rows if not full).
            reach = min(m, j + BLOCK_COLUMNS - 1 - c) if full else m
            for s in range(1, reach + 1):
                lane_fnmadd_run(ring, ((c + s) & mask) * Rp, V, ring, p + s, V, ring[p + s], 0,
                                (m - s + V) // V, vec)  # fmt: skip
            # y[c] *= 1 / L[c, c]; y[c + t] -= L[c + t, c] y[c], in scalars:
            # scalar loads of row c are served from the vector stores above
            # at once (a vector load across two of them would wait).
            for k in range(nrhs):
                y = k * ny + c
                yc = Y[y] * r
                Y[y] = yc
                for t in range(1, m + 1):
                    Y[y + t] -= ring[p + t] * yc
        if full:
            # Rows q below the block: row q -= sum_i row (j + i) from q - j - i,
            # times L[q, j + i].  Offsets past bw read the rows' zero padding.
            last = min(n - 1, j + BLOCK_COLUMNS - 1 + bw)
            p0 = (j & mask) * Rp - j
            p1 = ((j + 1) & mask) * Rp - j - 1
            p2 = ((j + 2) & mask) * Rp - j - 2
            p3 = ((j + 3) & mask) * Rp - j - 3
            if last >= j + BLOCK_COLUMNS:  # the next block's first pivot, in scalars
                q = j + BLOCK_COLUMNS
                l0, l1, l2, l3 = ring[p0 + q], ring[p1 + q], ring[p2 + q], ring[p3 + q]
                pivot = ring[(q & mask) * Rp] - l0 * l0 - l1 * l1 - l2 * l2 - l3 * l3
            for q in range(j + BLOCK_COLUMNS, last + 1):
                offsets = (p0 + q, p1 + q, p2 + q, p3 + q)
                mults = (ring[p0 + q], ring[p1 + q], ring[p2 + q], ring[p3 + q])
                lane_fnmadd_sum(
                    ring, (q & mask) * Rp, ring, offsets, mults, (last - q + V) // V, vec
                )
    return info


@njit(cache=True, nogil=True)
def rows_to_compact(ring, Rp, mask, F, bw, j0, j1, vec):
    """Factor rows ``[j0, j1)`` from the ring to ``F[j*(bw + 1) + t]``.

    Whole vectors are copied: each row's overrun lands on the start of the
    next row, which is written after it (``F`` needs ``V`` spare elements)."""
    V = len(vec)
    w = bw + 1
    for j in range(j0, j1):
        lane_copy_run(F, j * w, V, ring, (j & mask) * Rp, V, 0.0, 0, (w + V - 1) // V, vec)


@njit(cache=True, nogil=True)
def rows_to_band(ring, Rp, mask, band, off, sj, st, n, bw, j0, j1):
    """Factor rows ``[j0, j1)`` from the ring to the caller's band
    (``band[off + j*sj + t*st] = L[j + t, j]``)."""
    for t in range(bw + 1):
        dst = off + t * st
        for j in range(j0, min(j1, n - t)):
            band[dst + j * sj] = ring[(j & mask) * Rp + t]


@njit(cache=True, nogil=True, fastmath={"contract"})
def backward_compact(F, n, bw, Y, ny, nrhs):
    """``Y <- L^{-T} Y`` with the factor in ``F`` (see :func:`rows_to_compact`),
    by columns of ``L^T``: x[j] = y[j] / L[j, j], then y[j - t] -= L[j, j - t] x[j]
    for t = 1..bw, from the last row up.  Each x[j] waits for one update
    only, not for a sum over the band."""
    w = bw + 1
    for k in range(nrhs):
        y0 = k * ny
        for j in range(n - 1, -1, -1):
            xj = Y[y0 + j] / F[j * w]
            Y[y0 + j] = xj
            for t in range(1, min(bw, j) + 1):
                Y[y0 + j - t] -= F[(j - t) * w + t] * xj


@njit(cache=True, nogil=True, fastmath={"contract"})
def forward_strided(band, off, sj, st, n, bw, Y, ny, nrhs):
    """``Y <- L^{-1} Y`` reading the caller's factor in place
    (``band[off + j*sj + t*st] = L[j + t, j]``), column by column:
    y[j] *= 1 / L[j, j]; y[j + t] -= L[j + t, j] y[j].  Returns False if a factor
    value read is not finite."""
    finite = True
    unit = np.ones(1, dtype=band.dtype)[0]
    for j in range(n):
        m = min(bw, n - 1 - j)
        col = off + j * sj
        d = band[col]
        for t in range(m + 1):
            value = band[col + t * st]
            if value - value != 0.0:  # inf or NaN
                finite = False
        r = unit / d  # as the factorisation: y[j] * (1 / L[j, j])
        for k in range(nrhs):
            y = k * ny + j
            yj = Y[y] * r
            Y[y] = yj
            for t in range(1, m + 1):
                Y[y + t] -= band[col + t * st] * yj
    return finite


@njit(cache=True, nogil=True, fastmath={"contract"})
def backward_strided(band, off, sj, st, n, bw, Y, ny, nrhs):
    """``Y <- L^{-T} Y`` reading the caller's factor in place (as
    :func:`forward_strided`), by columns as :func:`backward_compact`."""
    for k in range(nrhs):
        y0 = k * ny
        for j in range(n - 1, -1, -1):
            xj = Y[y0 + j] / band[off + j * sj]
            Y[y0 + j] = xj
            for t in range(1, min(bw, j) + 1):
                Y[y0 + j - t] -= band[off + (j - t) * sj + t * st] * xj


@njit(cache=True, nogil=True)
def gather_rhs(Y, ny, rhs, off, sj, sk, n, nrhs):
    """Right-hand side ``k`` (``rhs[off + j*sj + k*sk]``) to ``Y[k*ny + j]``.
    Returns False if a value read is not finite."""
    finite = True
    for k in range(nrhs):
        src = off + k * sk
        for j in range(n):
            value = rhs[src + j * sj]
            Y[k * ny + j] = value
            if value - value != 0.0:  # inf or NaN
                finite = False
    return finite


@njit(cache=True, nogil=True)
def scatter_rhs(Y, ny, out, off, sj, sk, n, nrhs):
    """``Y[k*ny + j]`` to ``out[off + j*sj + k*sk]``."""
    for k in range(nrhs):
        dst = off + k * sk
        for j in range(n):
            out[dst + j * sj] = Y[k * ny + j]


@njit(cache=True, nogil=True)
def fill_band(band, off, sj, st, n, bw, value):
    """Every cell of one system's band inside the matrix set to ``value``."""
    for t in range(bw + 1):
        for j in range(n - t):
            band[off + j * sj + t * st] = value


@njit(cache=True, nogil=True)
def solve_system(
    band, off, sj, st, n, bw, do_factor,
    fout, foff, fsj, fst, store_factor,
    rhs, roff, rsj, rsk, out, ooff, osj, osk, nrhs,
    ring, Rp, F, Y, ny, block, vec,
):  # fmt: skip
    """Factor and/or solve one system, the arguments as the band driver's
    (:func:`banded_mnn._backends._numba_cpu._driver`) for one batch element.

    ``ring`` (``K * Rp``), ``F`` (``n*(bw + 1) + V``) and ``Y`` (``nrhs * ny``)
    are the workspaces; ``block`` rows are gathered at a time.  Returns
    ``(info, band finite, rhs finite)``; when ``info > 0`` everything written
    for the system is NaN.
    """
    finite_rhs = True
    if nrhs > 0:
        finite_rhs = gather_rhs(Y, ny, rhs, roff, rsj, rsk, n, nrhs)
    info = 0
    if not do_factor:
        finite_band = forward_strided(band, off, sj, st, n, bw, Y, ny, nrhs)
        backward_strided(band, off, sj, st, n, bw, Y, ny, nrhs)
        scatter_rhs(Y, ny, out, ooff, osj, osk, n, nrhs)
        return info, finite_band, finite_rhs
    finite_band = True
    mask = ring.shape[0] // Rp - 1
    # The rows' padding stays zero through the factorisation (it only ever
    # gets 0 * finite subtracted); zeroed per system, so that a system with
    # non-finite input cannot leave NaN there for the next one.
    ring[: min(n, mask + 1) * Rp] = 0.0
    done = 0
    # Gather a block of rows, then factor the columns whose updates stay
    # inside the gathered rows, and send the finished rows on.
    for g0 in range(0, n, block):
        g1 = min(n, g0 + block)
        if not gather_ring(ring, Rp, mask, band, off, sj, st, n, bw, g0, g1):
            finite_band = False
        # Whole column blocks only, except at the end.
        ready = n if g1 == n else done + max(0, g1 - bw - done) // BLOCK_COLUMNS * BLOCK_COLUMNS
        info = factor_columns(ring, Rp, mask, n, bw, done, ready, Y, ny, nrhs, info, vec)
        if store_factor:
            rows_to_band(ring, Rp, mask, fout, foff, fsj, fst, n, bw, done, ready)
        if nrhs > 0:
            rows_to_compact(ring, Rp, mask, F, bw, done, ready, vec)
        done = ready
    if info > 0:
        if store_factor:
            fill_band(fout, foff, fsj, fst, n, bw, math.nan)
        for e in range(Y.shape[0]):
            Y[e] = math.nan
    elif nrhs > 0:
        backward_compact(F, n, bw, Y, ny, nrhs)
    scatter_rhs(Y, ny, out, ooff, osj, osk, n, nrhs)
    return info, finite_band, finite_rhs
