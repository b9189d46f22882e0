"""CPU backend: Numba drivers that run the band cores in parallel over the batch.

Every operand reaches the drivers as a :class:`banded_mnn._strided.StridedBatch`
(a flat buffer, one element offset per batch element and two element strides),
so any NumPy strides -- non-contiguous, negative, zero (broadcast) -- are read
and written in place without a normalising copy.

Work is split into *chunks* of ``lanes`` systems.  Each chunk is gathered into a
private lane-interleaved workspace (see :mod:`._band_kernels`), factored and/or
solved there, and scattered back.  Peak extra memory is therefore
``threads * lanes`` systems' worth of band and right-hand side, independent of
the batch size; :func:`choose_lanes` keeps that below 1/8 of the operands.
Solves with a given factor (:func:`_solve_chunk`) read it twice, a block of
rows at a time, and hold only the right-hand sides whole.

With too few systems to fill the lanes (``lanes == 1``), :func:`_column_driver`
runs the one-system kernels of :mod:`._column_kernels` instead (vectorised
along the band; the same arithmetic, bit for bit); and :func:`_twisted_driver`
splits one long system's ``solveh_banded`` over two threads.  The gathers
transpose the band in registers (:func:`._band_kernels.lane_transpose`).
"""

from __future__ import annotations

import functools

import numba
import numpy as np
from numba import njit, prange, types

from .._strided import StridedBatch
from . import WORKSPACE_ALIGNMENT
from ._band_kernels import backward, factor, forward, lane_marker, lane_transpose
from ._column_kernels import (
    backward_compact,
    factor_leading,
    gather_rhs,
    ring_shape,
    scatter_rhs,
    small_pivot_in_part,
    solve_interface,
    solve_system,
    twisted_part,
)

#: Lane counts used.  8 fills one AVX-512 register in float64 (two AVX2
#: registers); 1 selects the one-system kernels (:func:`_column_driver`) for
#: small batches.  Each is compiled on first use.
LANE_COUNTS = (1, 2, 4, 8)

#: Rows gathered per step: the block of W being filled stays in cache until
#: it is factored.
ROW_BLOCK = 64


@njit(cache=True, nogil=True)
def aligned_empty(size, like):
    """An uninitialised 1-D workspace of ``size`` elements of ``like``'s
    dtype, its data at a multiple of ``WORKSPACE_ALIGNMENT`` bytes
    (:mod:`banded_mnn._backends`)."""
    item = like.itemsize
    buffer = np.empty(size + WORKSPACE_ALIGNMENT // item, dtype=like.dtype)
    start = (-buffer.ctypes.data) % WORKSPACE_ALIGNMENT // item
    return buffer[start : start + size]


def _driver(
    band, band_off, band_sj, band_st, n, bw, do_factor,
    fout, fout_off, fout_sj, fout_st, store_factor,
    rhs, rhs_off, rhs_sj, rhs_sk,
    out, out_off, out_sj, out_sk, nrhs,
    check, nonfinite, info, lanes, threads,
):  # fmt: skip
    """Factor, and solve with, ``len(info)`` systems (see module docstring);
    solves with a given factor go to :func:`_solve_driver` (``do_factor`` is
    unused here: one signature for every driver).

    band[band_off[i] + j*band_sj + t*band_st] is A_i[j + t, j].  With
    ``store_factor`` the factor goes to the same place in ``fout``.  The
    right-hand side (j, k) of system i is rhs[rhs_off[i] + j*rhs_sj +
    k*rhs_sk] and the solution goes to the same place in ``out``;
    ``nrhs == 0`` means no solve.  Systems with ``info[i] > 0`` get NaN in
    everything written for them.  With ``check``, a non-finite value read from
    the band or the right-hand side sets ``nonfinite[0]`` or ``nonfinite[1]``
    (the caller then discards the results).  ``threads`` (Numba's thread
    count) sets how many sets of workspaces are made, one per thread.
    """
    L = len(lanes)
    nsys = info.shape[0]
    nchunks = (nsys + L - 1) // L
    workers = max(1, min(threads, nchunks))  # Numba's thread count, read by the caller
    for worker in prange(workers):
        # One set of workspaces per thread, reused for its chunks of L
        # systems.  Allocated per chunk, they were fresh pages every time
        # where malloc maps large blocks afresh (Dask's Nanny sets
        # MALLOC_TRIM_THRESHOLD_ in its workers, which does that: 35% slower
        # at u = 17).  The gathers write every cell they are read from.
        W = aligned_empty(n * (bw + 1) * L, band)
        Y = aligned_empty(n * nrhs * L, band)
        linfo = np.empty(L, dtype=np.int32)
        recip = np.empty(2 * L, dtype=band.dtype)
        for c in range(worker, nchunks, workers):
            first = c * L
            real = min(L, nsys - first)  # lanes past the batch solve the identity
            linfo[:] = 0
            # Gather a block of rows, then factor the columns whose updates stay
            # inside the gathered rows, while the block is still in cache.
            done = 0
            for g0 in range(0, n, ROW_BLOCK):
                g1 = min(n, g0 + ROW_BLOCK)
                finite = _gather_band(
                    W, band, band_off[first:], band_sj, band_st, n, bw, real, lanes, g0, g1
                )
                if check and not finite:
                    nonfinite[0] = 1
                finite = lane_gather_rhs(
                    Y, rhs, rhs_off[first:], rhs_sj, rhs_sk, nrhs, real, lanes, g0, g1
                )
                if check and not finite:
                    nonfinite[1] = 1
                ready = n if g1 == n else max(done, g1 - bw)
                factor(W, Y, n, bw, nrhs, linfo, recip, lanes, done, ready)
                done = ready
            if nrhs > 0:
                backward(W, Y, n, bw, nrhs, lanes)
            # NaN for failed lanes, then scatter.
            for l in range(real):
                info[first + l] = linfo[l]
                if linfo[l] != 0:
                    _fill_lane(W, Y, n * (bw + 1), n * nrhs, l, L, np.nan)
            for g0 in range(0, n, ROW_BLOCK):
                g1 = min(n, g0 + ROW_BLOCK)
                if store_factor:
                    _scatter_band(
                        W, fout, fout_off[first:], fout_sj, fout_st, n, bw, real, lanes, g0, g1
                    )
                lane_scatter_rhs(Y, out, out_off[first:], out_sj, out_sk, nrhs, real, lanes, g0, g1)


@njit(cache=True, nogil=True)
def _solve_chunk(W, Y, band, offs, sj, st, n, bw, rhs, roffs, rsj, rsk, nrhs, real, lanes,
                 recip, check, nonfinite):  # fmt: skip
    """``cho_solve_banded`` for one chunk of ``L`` systems, with ``W`` one block
    of rows: the right-hand sides gathered, then the factor read from the
    caller's array twice, a block at a time -- forwards for ``L y = b``, from
    the end for ``L^T x = y``.  (Reading it twice costs what writing and
    rereading a whole-system workspace would, and keeps the workspace in
    cache.)"""
    for g0 in range(0, n, ROW_BLOCK):
        g1 = min(n, g0 + ROW_BLOCK)
        if not lane_gather_rhs(Y, rhs, roffs, rsj, rsk, nrhs, real, lanes, g0, g1) and check:
            nonfinite[1] = 1
    for g0 in range(0, n, ROW_BLOCK):
        g1 = min(n, g0 + ROW_BLOCK)
        if not _gather_band(W, band, offs, sj, st, n, bw, real, lanes, g0, g1, g0) and check:
            nonfinite[0] = 1
        forward(W, Y, n, bw, nrhs, recip, lanes, g0, g1, g0)
    for g0 in range((n - 1) // ROW_BLOCK * ROW_BLOCK, -1, -ROW_BLOCK):
        g1 = min(n, g0 + ROW_BLOCK)
        _gather_band(W, band, offs, sj, st, n, bw, real, lanes, g0, g1, g0)
        backward(W, Y, n, bw, nrhs, lanes, g0, g1, g0)


def _solve_driver(
    band, band_off, band_sj, band_st, n, bw, do_factor,
    fout, fout_off, fout_sj, fout_st, store_factor,
    rhs, rhs_off, rhs_sj, rhs_sk,
    out, out_off, out_sj, out_sk, nrhs,
    check, nonfinite, info, lanes, threads,
):  # fmt: skip
    """As :func:`_driver` for ``cho_solve_banded`` (the factor given, in
    ``band``): chunks of ``L`` systems through :func:`_solve_chunk`, whose
    band workspace is one block of rows.  ``do_factor``, ``fout`` and
    ``store_factor`` are unused (one signature for every driver)."""
    L = len(lanes)
    nsys = info.shape[0]
    nchunks = (nsys + L - 1) // L
    workers = max(1, min(threads, nchunks))
    for worker in prange(workers):
        W = aligned_empty(min(n, ROW_BLOCK) * (bw + 1) * L, band)
        Y = aligned_empty(n * nrhs * L, band)
        recip = np.empty(2 * L, dtype=band.dtype)
        for c in range(worker, nchunks, workers):
            first = c * L
            real = min(L, nsys - first)
            _solve_chunk(W, Y, band, band_off[first:], band_sj, band_st, n, bw,
                         rhs, rhs_off[first:], rhs_sj, rhs_sk, nrhs, real, lanes, recip,
                         check, nonfinite)  # fmt: skip
            for g0 in range(0, n, ROW_BLOCK):  # (info stays 0: nothing is factored)
                g1 = min(n, g0 + ROW_BLOCK)
                lane_scatter_rhs(Y, out, out_off[first:], out_sj, out_sk, nrhs, real, lanes, g0, g1)


def _column_driver(
    band, band_off, band_sj, band_st, n, bw, do_factor,
    fout, fout_off, fout_sj, fout_st, store_factor,
    rhs, rhs_off, rhs_sj, rhs_sk,
    out, out_off, out_sj, out_sk, nrhs,
    check, nonfinite, info, vec, threads,
):  # fmt: skip
    """As :func:`_driver`, one system at a time per thread, each vectorised
    along its band (:mod:`._column_kernels`; ``vec`` marks the vector width).

    Workspaces per thread: a ring of rows (a few KB), the right-hand sides,
    and, when factoring and solving, the compact factor for the
    backward substitution.
    """
    V = len(vec)
    nsys = info.shape[0]
    K, Rp = ring_shape(bw, ROW_BLOCK, V)
    ny = n
    workers = max(1, min(threads, nsys))
    for worker in prange(workers):
        ring = aligned_empty(K * Rp, band)
        F = np.empty(n * (bw + 1) + V if do_factor and nrhs > 0 else 0, dtype=band.dtype)
        Y = np.empty(nrhs * ny, dtype=band.dtype)
        for i in range(worker, nsys, workers):
            status, finite_band, finite_rhs = solve_system(
                band, band_off[i], band_sj, band_st, n, bw, do_factor,
                fout, fout_off[i], fout_sj, fout_st, store_factor,
                rhs, rhs_off[i], rhs_sj, rhs_sk, out, out_off[i], out_sj, out_sk, nrhs,
                ring, Rp, F, Y, ny, ROW_BLOCK, vec,
            )  # fmt: skip
            info[i] = status
            if check and not finite_band:
                nonfinite[0] = 1
            if check and not finite_rhs:
                nonfinite[1] = 1


def _twisted_driver(
    band, band_off, band_sj, band_st, n, bw, do_factor,
    fout, fout_off, fout_sj, fout_st, store_factor,
    rhs, rhs_off, rhs_sj, rhs_sk,
    out, out_off, out_sj, out_sk, nrhs,
    check, nonfinite, info, vec, threads,
):  # fmt: skip
    """As :func:`_column_driver` for ``solveh_banded`` (factor and solve, no
    factor kept), two threads per system: the twisted factorisation of
    :mod:`._column_kernels`, its top and bottom parts in parallel, then the
    ``bw x bw`` interface, then both parts' backward substitutions in parallel.

    A system whose factorisation fails anywhere, or has a pivot below
    ``sqrt(eps)`` of its diagonal (it may be singular to working precision,
    where rounding decides whether it fails, and the twisted order rounds
    differently: :func:`._column_kernels.small_pivot`), is solved again by
    :func:`solve_system`: the sequential order's result and LAPACK's ``info``
    (the first leading minor that is not positive definite; a failure in the
    bottom part or the interface does not say which).  The rerun reuses the
    twisted workspaces.

    Only for factor-and-solve calls (``do_factor`` true, ``store_factor``
    false, ``nrhs > 0``), as :func:`use_twisted` ensures; ``threads`` is
    unused (two threads per system).
    """
    V = len(vec)
    nsys = info.shape[0]
    K, Rp = ring_shape(bw, ROW_BLOCK, V)
    rows_top = twisted_part(0, 1, 1, n, bw, False)[3]
    rows_bottom = twisted_part(0, 1, 1, n, bw, True)[3]
    ny = rows_bottom  # the larger part: the workspaces' row count
    parts = 2 * nsys
    rings = aligned_empty(parts * K * Rp, band).reshape((parts, K * Rp))
    F = np.empty((parts, ny * (bw + 1) + V), dtype=band.dtype)
    Y = np.empty((parts, nrhs * ny), dtype=band.dtype)
    status = np.zeros(parts, dtype=np.int32)
    # sqrt(eps): pivots this small against their diagonal send the system to a rerun.
    tol = 1.4901161193847656e-08 if band.itemsize == 8 else 3.4526698300124393e-04
    bad = np.zeros((parts, 2), dtype=np.int8)
    for p in prange(parts):
        i, bottom = p // 2, p % 2 == 1
        off, sj, st, rows, pivots = twisted_part(band_off[i], band_sj, band_st, n, bw, bottom)
        roff, rsj = (rhs_off[i] + (n - 1) * rhs_sj, -rhs_sj) if bottom else (rhs_off[i], rhs_sj)
        if not gather_rhs(Y[p], ny, rhs, roff, rsj, rhs_sk, rows, nrhs):
            bad[p, 1] = 1
        status[p], finite = factor_leading(
            band, off, sj, st, rows, bw, pivots, fout, 0, 0, 0, False,
            rings[p], Rp, F[p], Y[p], ny, nrhs, ROW_BLOCK, vec,
        )  # fmt: skip
        if not finite:
            bad[p, 0] = 1
        elif status[p] == 0 and small_pivot_in_part(F[p], band, off, sj, pivots, bw, tol):
            status[p] = -1  # solved again below
    S = np.empty(bw * (bw + 1), dtype=band.dtype)
    for i in range(nsys):
        if status[2 * i] == 0 and status[2 * i + 1] == 0:
            info[i] = solve_interface(
                rings[2 * i], rings[2 * i + 1], Rp, rows_top, rows_bottom, bw,
                band, band_off[i], band_sj, band_st, Y[2 * i], Y[2 * i + 1], ny,
                rhs, rhs_off[i], rhs_sj, rhs_sk, nrhs, S, tol,
            )  # fmt: skip
        else:
            info[i] = 1  # solved again below
    for p in prange(parts):
        i, bottom = p // 2, p % 2 == 1
        if info[i] != 0:
            continue
        _, _, _, rows, pivots = twisted_part(0, 1, 1, n, bw, bottom)
        backward_compact(F[p], rows, bw, Y[p], ny, nrhs, pivots)
        if bottom:  # the interface rows go out with the top part
            scatter_rhs(Y[p], ny, out, out_off[i] + (n - 1) * out_sj, -out_sj, out_sk, pivots, nrhs)
        else:
            scatter_rhs(Y[p], ny, out, out_off[i], out_sj, out_sk, rows, nrhs)
    # Reruns, in the twisted workspaces: both parts' F hold n (bw + 1) + V
    # values, both parts' Y nrhs n.
    whole_F, whole_Y = F.reshape(-1), Y.reshape(-1)
    for i in range(nsys):
        if info[i] != 0:
            info[i], _, _ = solve_system(
                band, band_off[i], band_sj, band_st, n, bw, True,
                fout, fout_off[i], fout_sj, fout_st, False,
                rhs, rhs_off[i], rhs_sj, rhs_sk, out, out_off[i], out_sj, out_sk, nrhs,
                rings[0], Rp, whole_F, whole_Y, n, ROW_BLOCK, vec,
            )  # fmt: skip
    if check:
        for p in range(parts):
            if bad[p, 0]:
                nonfinite[0] = 1
            if bad[p, 1]:
                nonfinite[1] = 1


# Gather/scatter between the caller's arrays and the workspaces, rows [j0, j1)
# at a time.  Lanes are innermost, so each lane's operand is walked
# sequentially (diagonal by diagonal for the band) and the workspace
# contiguously.  Lanes >= ``real`` get the identity and a zero right-hand side;
# band cells past the end of the matrix are zeroed.  The gathers return False
# if a value read was inf or NaN: finiteness is checked in the same pass
# (x * 0 is 0 only for finite x, so one NaN-propagating sum does it).


@njit(cache=True, nogil=True)
def _band_tiles(real, lanes, sj, n, bw, j0, j1):
    """End of the rows ``[j0, end)`` of a chunk's band that go through ``L x L``
    register tiles (``L`` systems, ``L`` rows): full chunks whose rows are
    adjacent in the band, rows whose every cell lies inside the matrix
    (``j + L - 1 + bw < n``)."""
    L = len(lanes)
    if real == L and sj == 1 and j0 % L == 0:
        return j0 + max(0, min(j1, n - bw) - j0) // L * L
    return j0


@njit(cache=True, nogil=True)
def _gather_band(W, band, offs, sj, st, n, bw, real, lanes, j0, j1, wbase=0):
    # Row j of the band goes to row j - wbase of W (W may hold a block only).
    L = len(lanes)
    R = (bw + 1) * L
    probe = 0.0
    tiled = _band_tiles(real, lanes, sj, n, bw, j0, j1)
    for j in range(j0, tiled, L):
        w = (j - wbase) * R
        for t in range(bw + 1):
            probe += lane_transpose(W, None, w + t * L, R, band, offs, j + t * st, 0, lanes)
    for t in range(bw + 1):
        pad = 1.0 if t == 0 else 0.0
        jend = max(tiled, min(j1, n - t))
        for j in range(tiled, jend):
            w = (j - wbase) * R + t * L
            src = j * sj + t * st
            for l in range(real):
                value = band[offs[l] + src]
                W[w + l] = value
                probe += value * 0.0
            for l in range(real, L):
                W[w + l] = pad
        for j in range(jend, j1):
            for l in range(L):
                W[(j - wbase) * R + t * L + l] = 0.0
    return probe == 0.0


@njit(cache=True, nogil=True)
def _scatter_band(W, band, offs, sj, st, n, bw, real, lanes, j0, j1):
    L = len(lanes)
    R = (bw + 1) * L
    tiled = _band_tiles(real, lanes, sj, n, bw, j0, j1)
    for j in range(j0, tiled, L):
        for t in range(bw + 1):
            lane_transpose(band, offs, j + t * st, 0, W, None, j * R + t * L, R, lanes)
    for t in range(bw + 1):
        for j in range(tiled, max(tiled, min(j1, n - t))):
            w = j * R + t * L
            dst = j * sj + t * st
            for l in range(real):
                band[offs[l] + dst] = W[w + l]


@njit(cache=True, nogil=True)
def _rhs_tiles(real, lanes, sj, nrhs, j0, j1):
    """End of the rows ``[j0, end)`` of a chunk's right-hand sides that go
    through ``L x L`` register tiles (one right-hand side, full chunk, rows
    adjacent: as the band's, :func:`_band_tiles`)."""
    L = len(lanes)
    if real == L and nrhs == 1 and sj == 1 and j0 % L == 0:
        return j0 + (j1 - j0) // L * L
    return j0


@njit(cache=True, nogil=True)
def lane_gather_rhs(Y, rhs, offs, sj, sk, nrhs, real, lanes, j0, j1):
    L = len(lanes)
    probe = 0.0
    tiled = _rhs_tiles(real, lanes, sj, nrhs, j0, j1)
    for j in range(j0, tiled, L):
        probe += lane_transpose(Y, None, j * L, L, rhs, offs, j, 0, lanes)
    for j in range(tiled, j1):
        for k in range(nrhs):
            y = (j * nrhs + k) * L
            src = j * sj + k * sk
            for l in range(real):
                value = rhs[offs[l] + src]
                Y[y + l] = value
                probe += value * 0.0
            for l in range(real, L):
                Y[y + l] = 0.0
    return probe == 0.0


@njit(cache=True, nogil=True)
def lane_scatter_rhs(Y, out, offs, sj, sk, nrhs, real, lanes, j0, j1):
    L = len(lanes)
    tiled = _rhs_tiles(real, lanes, sj, nrhs, j0, j1)
    for j in range(j0, tiled, L):
        lane_transpose(out, offs, j, 0, Y, None, j * L, L, lanes)
    for j in range(tiled, j1):
        for k in range(nrhs):
            y = (j * nrhs + k) * L
            dst = j * sj + k * sk
            for l in range(real):
                out[offs[l] + dst] = Y[y + l]


@njit(cache=True, nogil=True)
def _fill_lane(W, Y, nw, ny, l, L, value):
    for e in range(nw):
        W[e * L + l] = value
    for e in range(ny):
        Y[e * L + l] = value


def _driver_signature(lanes: int, dtype: np.dtype):
    """Inputs are typed read-only so one compiled driver serves every caller."""
    scalar = numba.from_dtype(np.dtype(dtype))
    ro = types.Array(scalar, 1, "C", readonly=True)
    rw = types.Array(scalar, 1, "C")
    offs = types.Array(types.int64, 1, "C", readonly=True)
    i64, b1 = types.int64, types.boolean
    return types.void(
        ro, offs, i64, i64, i64, i64, b1,
        rw, offs, i64, i64, b1,
        ro, offs, i64, i64,
        rw, offs, i64, i64, i64,
        b1, types.Array(types.int8, 1, "C"),
        types.Array(types.int32, 1, "C"), types.UniTuple(types.int64, lanes), i64,
    )  # fmt: skip


@functools.cache
def _compiled_driver(lanes: int, dtype: np.dtype, solve: bool = False):
    """Compile (or load from Numba's on-disk cache) the driver for one lane
    count and dtype (with ``solve``, :func:`_solve_driver`)."""
    driver = _solve_driver if solve else _driver
    return njit(_driver_signature(lanes, dtype), parallel=True, cache=True)(driver)


#: Vector width of the one-system kernels (:mod:`._column_kernels`).
COLUMN_WIDTH = 8


@functools.cache
def _compiled_column_driver(dtype: np.dtype, twisted: bool = False):
    """As :func:`_compiled_driver`, for :func:`_column_driver` (or, with
    ``twisted``, :func:`_twisted_driver`)."""
    signature = _driver_signature(COLUMN_WIDTH, dtype)
    return njit(signature, parallel=True, cache=True)(
        _twisted_driver if twisted else _column_driver
    )


def _finite_source(buf, offsets, n0, n1, s0, s1):
    # x * 0 is 0 for finite x and NaN for inf or NaN, so one NaN-propagating sum
    # per system finds any non-finite element without a branch per element.
    # Only reassociation is allowed (it vectorises the sum); NaNs stay NaNs.
    nsys = offsets.shape[0]
    bad = 0
    for i in prange(nsys):
        acc = 0.0
        for a in range(n0):
            row = offsets[i] + a * s0
            for b in range(n1):
                acc += buf[row + b * s1] * 0.0
        if acc != 0.0:
            bad += 1
    return bad == 0


@functools.cache
def _finite_checker(dtype: np.dtype):
    scalar = numba.from_dtype(np.dtype(dtype))
    sig = types.boolean(
        types.Array(scalar, 1, "C", readonly=True),
        types.Array(types.int64, 1, "C", readonly=True),
        types.int64, types.int64, types.int64, types.int64,
    )  # fmt: skip
    return njit(sig, parallel=True, cache=True, fastmath={"reassoc"})(_finite_source)


def all_finite(x: StridedBatch) -> bool:
    """True when every element of every core of ``x`` is finite (no temporaries)."""
    if x.size == 0:
        return True
    check = _finite_checker(x.buf.dtype)
    return bool(check(x.buf, x.offsets, x.shape[0], x.shape[1], x.strides[0], x.strides[1]))


#: Largest lane workspace (band rows of ``L`` systems, bytes) for which 8
#: lanes are used; past it, 4.  The workspace is reread by the backward
#: substitution, so it should stay in the L2 cache (2 MiB per core on the
#: project machine).  Measured there (solveh_banded, u = 17): float64 at M =
#: 2304 (2.7 MB for 8 lanes) 19 ms with 4 lanes against 28 ms with 8; float32
#: at M = 2304 (1.3 MB) 18 ms with 8 against 23 ms with 4; M = 576 and M = 150
#: fastest with 8.
LANE_WORKSPACE_BUDGET = 3 << 19


def choose_lanes(nsys: int, spare_memory: bool = False, system_bytes: int = 0) -> int:
    """Lane count for ``nsys`` systems.

    The widest of :data:`LANE_COUNTS` such that every thread gets at least 8
    chunks, which also keeps the per-thread workspaces (``threads * lanes``
    systems in all) at or below 1/8 of the operands: with 2 threads, 8 lanes
    from 128 systems, 4 from 64, 2 from 32, else 1 (the one-system kernel,
    :mod:`._column_kernels`).  When ``8 * system_bytes`` (the band of one
    system, in bytes) exceeds :data:`LANE_WORKSPACE_BUDGET`, at most 4.

    With ``spare_memory`` (callers whose operands are their own temporaries,
    such as the MNN layer, and solves with a given factor, whose lane
    workspace is one block of rows) one chunk per thread suffices: the workspaces may
    then be as large as the operands, and small batches still get vectorised.
    """
    threads = numba.get_num_threads()
    chunks = 1 if spare_memory else 8
    widest = 4 if 8 * system_bytes > LANE_WORKSPACE_BUDGET else 8
    return max(
        lanes
        for lanes in LANE_COUNTS
        if lanes == 1 or (lanes <= widest and nsys >= chunks * threads * lanes)
    )


#: Least work, ``n * (bw + 4)``, for which one system is split over two
#: threads (:func:`_twisted_driver`): a column of the solve costs about
#: ``2-4 (bw + 4)`` ns on the project machine, and below about 20 us the
#: second parallel region and the interface cost more than half of it saves.
#: Measured (``python tools/twisted_ab.py``, B = 1, several runs): break-even
#: at n = 512-1024 for u = 1, 256-512 for u = 5, 256 for u = 17, below 256
#: for u = 40; at n = 2048 the twisted solve is 1.3x (u = 1), 1.3-1.8x (u =
#: 5), 1.5-1.6x (u = 17), 1.6-1.7x (u = 40) faster.
TWISTED_MIN_WORK = 8192


#: Fewest rows per band row for the twisted solve: its interface is a dense
#: ``bw x bw`` Cholesky in scalars, about ``bw^3 / 6`` multiply-adds, against
#: the ``n bw^2 / 4`` (vectorised) that the second thread saves.  Measured
#: (B = 1, bw = 200): 3.4x slower at n = 250, even at n = 1000, 1.8x faster
#: at n = 4000; bw = 100: 1.5x faster at n = 1000.
TWISTED_MIN_ROWS_PER_BAND = 8


def use_twisted(nsys: int, n: int, bw: int, solve_only: bool) -> bool:
    """Whether to split each system over two threads (:func:`_twisted_driver`):
    for ``solveh_banded`` (factor and solve, no factor kept: the twisted
    factor is not LAPACK's) when there are at least two threads per system and
    the systems are long enough (:data:`TWISTED_MIN_WORK`,
    :data:`TWISTED_MIN_ROWS_PER_BAND`; and at least ``bw + 2`` rows, so that
    both parts pivot a row)."""
    threads = numba.get_num_threads()
    return (
        solve_only
        and 2 * nsys <= threads
        and n >= max(bw + 2, TWISTED_MIN_ROWS_PER_BAND * bw)
        and n * (bw + 4) >= TWISTED_MIN_WORK
    )


def run(
    band: StridedBatch,
    bw: int,
    *,
    factor: bool,
    factor_out: StridedBatch | None,
    rhs: StridedBatch | None,
    out: StridedBatch | None,
    check_finite: bool = False,
    spare_memory: bool = False,
) -> tuple[np.ndarray, tuple[bool, bool]]:
    """Factor and/or solve every system described by ``band`` (and ``rhs``).

    ``band`` addresses the band as (j, t) -> A[j + t, j] (see
    :meth:`StridedBatch.band_view`); ``factor_out`` (same addressing, may be
    ``band`` itself) receives the factor.  Returns the int32 ``info`` array, one
    entry per batch element, and whether a non-finite value was read from the
    band and from the right-hand side (always ``False`` unless
    ``check_finite``; when ``True`` the outputs are meaningless).
    """
    nsys = band.offsets.shape[0]
    n = band.shape[0]
    info = np.zeros(nsys, dtype=np.int32)
    nonfinite = np.zeros(2, dtype=np.int8)
    if rhs is None:
        rhs = out = StridedBatch.dummy(band.buf.dtype, nsys)
        nrhs = 0
    else:
        nrhs = rhs.shape[1]
    system_bytes = n * (bw + 1) * band.buf.itemsize
    lanes = choose_lanes(nsys, spare_memory=spare_memory, system_bytes=system_bytes)
    if not factor and lanes == 1:
        # Solving with a given factor, the lane workspace is one block of
        # rows (_solve_chunk), so a few systems per thread may fill the lanes.
        lanes = choose_lanes(nsys, spare_memory=True)
    if lanes == 1:
        twisted = use_twisted(nsys, n, bw, factor and factor_out is None and nrhs > 0)
        driver = _compiled_column_driver(band.buf.dtype, twisted)
        marker = lane_marker(COLUMN_WIDTH)
    else:
        driver = _compiled_driver(lanes, band.buf.dtype, not factor)
        marker = lane_marker(lanes)
    store_factor = factor_out is not None
    fout = factor_out if store_factor else StridedBatch.dummy(band.buf.dtype, nsys)
    driver(
        band.buf, band.offsets, band.strides[0], band.strides[1], n, bw, factor,
        fout.buf, fout.offsets, fout.strides[0], fout.strides[1], store_factor,
        rhs.buf, rhs.offsets, rhs.strides[0], rhs.strides[1],
        out.buf, out.offsets, out.strides[0], out.strides[1], nrhs,
        check_finite, nonfinite, info, marker, numba.get_num_threads(),
    )  # fmt: skip
    return info, (bool(nonfinite[0]), bool(nonfinite[1]))


def array_namespace():
    """The CPU backend works on NumPy arrays."""
    return np
