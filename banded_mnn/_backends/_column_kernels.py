"""Band Cholesky and substitution of one system, vectorised along the band.

The lane-interleaved cores of :mod:`._band_kernels` need ``L`` systems per
thread to fill a vector; with fewer systems than ``2 L`` per thread (one long
sequence, a handful of them) these cores work on one system at a time and
vectorise *within* a column instead.  Column ``j`` of the lower factor is
contiguous in the working rows (``row j`` holds ``L[j + t, j]``, ``t = 0..bw``),
and the factorisation is left-looking: row ``c`` receives all its updates at
once,

    A~[c + t, c] = A[c + t, c] - sum_k L[c + t, k] * L[c, k],   c - bw <= k < c,

each ``k`` one vector multiply-add per vector of the row: row ``k`` from cell
``c - k`` times the scalar ``L[c, k]`` (row ``k``, cell ``c - k``),
accumulated in registers in increasing ``k`` -- every element receives the
right-looking loop's fused multiply-adds in the same order, so the results
are bit for bit those of the lane kernels.  Then the pivot, the square root
and the scaling of the row (:func:`factor_columns`).

Working rows live in a *ring*: ``K`` (a power of two) rows of ``Rp`` elements,
row ``j`` at ``(j & (K - 1)) * Rp``.  ``Rp`` is at least ``bw + V`` (``V``
the vector width), and the cells of a row past ``bw`` and past the end of
the matrix hold zeros, so every vector may reach past the band: it reads
zeros and leaves the cells it overruns unchanged (zero).  No masks, no scalar
tails.

The right-hand sides are held one per row of ``Y`` (``Y[k * ny + j]``,
``ny >= n``); the substitutions run in scalars, by columns, with the rows
still pending held in registers (:func:`window_substitution`).  The finished factor rows
go to the caller's array, or (to be read again by the backward substitution)
to a compact workspace ``F[j * (bw + 1) + t] = L[j + t, j]``.

With a factor given (``cho_solve_banded``), the substitutions read the
caller's strided factor in place, once each: the workspace copy would cost
more than a scalar substitution saves by reading contiguous rows.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core.errors import TypingError
from numba.extending import intrinsic

from ._band_kernels import (
    _fnmadd,
    _index_values,
    _splat,
    bandwidth_switch,
    lane_copy_run,
    lane_dot_sub_splat,
    lane_mul_run,
    lane_transpose,
)


@njit(cache=True, nogil=True)
def gather_cells(ring, Rp, mask, band, off, sj, st, n, j0, j1, t0, t1):
    """Cells ``t0 <= t < t1`` of rows ``[j0, j1)`` of ``A`` (``band[off + j*sj +
    t*st] = A[j + t, j]``) into the ring, one at a time; cells past the end of
    the matrix zeroed.  Returns False if a value read is not finite."""
    finite = True
    for t in range(t0, t1):
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


@njit(cache=True, nogil=True)
def gather_tiles(ring, Rp, mask, band, off, sj, st, n, bw, j0, j1, tile):
    """The ``V x V`` tiles (``V = len(tile)``) of :func:`gather_ring`: the
    rows ``[j0, tiled_j)`` and cells ``[0, tiled_t)`` that lie inside the
    matrix, each tile transposed in registers (:func:`lane_transpose`).
    Returns ``(tiled_j, tiled_t, finite)``; no tiles unless the rows are
    adjacent in the band (``sj = +-1``) and ``j0`` is a multiple of ``V``."""
    V = len(tile)
    tiled_t = (bw + 1) // V * V if (sj == 1 or sj == -1) and j0 % V == 0 else 0
    # A tile of rows [j, j + V) and cells [t0, t0 + V) lies inside the matrix
    # when j + V - 1 + tiled_t - 1 < n.
    tiled_j = j0 + max(0, min(j1, n - tiled_t + 1) - j0) // V * V if tiled_t > 0 else j0
    check = 0.0  # NaN once a tile holds inf or NaN
    for j in range(j0, tiled_j, V):
        if sj == 1:
            src, dst, step = off + j, (j & mask) * Rp, Rp
        else:  # reversed: the band's first element of the tile is row j + V - 1
            src, dst, step = off - (j + V - 1), ((j + V - 1) & mask) * Rp, -Rp
        for t0 in range(0, tiled_t, V):
            check += lane_transpose(ring, None, dst + t0, step, band, None, src + t0 * st, st, tile)
    return tiled_j, tiled_t, check == 0.0


@njit(cache=True, nogil=True)
def gather_ring(ring, Rp, mask, band, off, sj, st, n, bw, j0, j1, vec):
    """Rows ``[j0, j1)`` of ``A`` (``band[off + j*sj + t*st] = A[j + t, j]``)
    into the ring, cells past the end of the matrix zeroed (the padding past
    ``bw`` is zeroed once per system, by :func:`factor_leading`).  Returns
    False if a value read is not finite.

    Where the rows are adjacent in the band (``sj = +-1``: SciPy's layouts,
    and their reversal in :func:`twisted_part`), tiles of ``V x V`` cells
    (``V = len(vec)``, or 4 for narrower bands) inside the matrix are
    transposed in registers (:func:`gather_tiles`); the rest, cell by cell.
    Measured at M = 10^5, u = 17: 7 ns per row, against 18 cell by cell.
    """
    if bw + 1 >= len(vec):
        tiled_j, tiled_t, finite = gather_tiles(ring, Rp, mask, band, off, sj, st, n, bw, j0, j1,
                                                vec)  # fmt: skip
    else:
        tiled_j, tiled_t, finite = gather_tiles(ring, Rp, mask, band, off, sj, st, n, bw, j0, j1,
                                                (0, 0, 0, 0))  # fmt: skip
    if not gather_cells(ring, Rp, mask, band, off, sj, st, n, j0, tiled_j, tiled_t, bw + 1):
        finite = False
    if not gather_cells(ring, Rp, mask, band, off, sj, st, n, tiled_j, j1, 0, bw + 1):
        finite = False
    return finite


@njit(cache=True, nogil=True)
def row_length(bw, width):
    """Padded row length of the ring (see :func:`ring_shape`): at least ``bw
    + width``, a multiple of ``width``."""
    return -(-(bw + width) // width) * width


@njit(cache=True, nogil=True)
def ring_shape(bw, rows, width):
    """``(K, Rp)``: ring rows (a power of two, more than ``rows + bw`` and
    ``2 bw`` so that a gathered block of ``rows`` rows, or the ``bw`` rows
    left unpivoted by a twisted part, and the ``bw`` finished rows before
    them fit) and padded row length (``>= bw + width``, so that vectors stay
    inside their row; see the module notes; :func:`row_length`)."""
    k = 1
    while k < max(rows, bw) + bw + 1:
        k *= 2
    return k, row_length(bw, width)


@njit(cache=True, nogil=True)
def update_row(ring, Rp, mask, c, k0, k1, n, bw, vec):
    """Row ``c`` of the ring minus the finished rows ``k0 <= k < k1`` (only
    those with ``c - bw <= k``), in increasing ``k``, its vectors up to cell
    ``min(bw, n - 1 - c)``:

        A~[c + t, c] -= L[c + t, k] * L[c, k],   L[c + t, k] = row k, cell c - k + t

    (the left-looking form of the update; every element receives the
    right-looking loop's fused multiply-adds in the same order).  Each
    vector accumulates in a register over a run of rows adjacent in the
    ring, the multiplier ``L[c, k]`` broadcast (``lane_dot_sub_splat``):
    consecutive rows are ``Rp - 1`` apart in the cell they read.  Cells
    past ``bw`` read the rows' zero padding."""
    V = len(vec)
    p = (c & mask) * Rp
    for v in range(min(bw, n - 1 - c) // V + 1):
        first = max(k0, c - bw + v * V)  # rows whose cells reach vector v
        k = first
        while k < k1:
            stop = min(k1, (k | mask) + 1)  # the ring's rows wrap at K
            q = (k & mask) * Rp + c - k
            lane_dot_sub_splat(ring, p + v * V, ring, q + v * V, Rp - 1, ring, q, Rp - 1,
                               stop - k, vec)  # fmt: skip
            k = stop


#: Widest band whose row updates :func:`lane_row_update_early` and
#: :func:`lane_row_update_late` unroll.
UNROLLED_ROW_BANDWIDTH = 24


def _row_update(nearest: int, farthest: int | None):
    """An intrinsic ``f(ring, p, Rp, bw, lanes) -> bool``: :func:`update_row`
    of a row ``r`` (at ``p``) by the rows ``r - s`` for ``nearest <= s <=
    farthest`` (``None``: ``bw``), when the ``bw`` rows before it lie just
    before it in the ring (no wrap) and ``r + bw < n``.  Unrolled, one case
    per bandwidth from 1 to :data:`UNROLLED_ROW_BANDWIDTH`: each of the
    row's vectors accumulates in a register, oldest row first, every offset
    a constant; the same fused multiply-adds in the same order.  Returns
    False, having done nothing, for other bandwidths or when ``Rp`` is not
    :func:`ring_shape`'s for ``bw``."""

    def typer(typingctx, ring, p, Rp, bw, lanes):
        width = lanes.count

        def codegen(context, builder, signature, args):
            (p_, rp_, bw_), intp = _index_values(context, builder, signature, args, (1, 2, 3))
            rty = signature.args[0]
            align = rty.dtype.bitwidth // 8
            data = context.make_array(rty)(context, builder, args[0]).data
            vector = ir.VectorType(context.get_data_type(rty.dtype), width)

            def pointer(offset, vector_type=None):
                at = builder.gep(data, [builder.add(p_, ir.Constant(intp, offset))], inbounds=True)
                return builder.bitcast(at, vector_type.as_pointer()) if vector_type else at

            def case(m, other):
                rp = row_length(m, width)
                body = builder.function.append_basic_block(f"rowupdate.bw{m}.body")
                same = builder.icmp_signed("==", rp_, ir.Constant(intp, rp))
                builder.cbranch(same, body, other)
                builder.position_at_end(body)
                top = m if farthest is None else min(m, farthest)
                for v in range(m // width + 1):
                    terms = range(min(top, m - v * width), nearest - 1, -1)
                    if not terms:
                        continue
                    target = pointer(v * width, vector)
                    acc = builder.load(target, align=align)
                    for s_ in terms:  # row r - s_, oldest first
                        row = -s_ * rp + s_  # cell s_ of row r - s_: L[r, r - s_]
                        x = builder.load(pointer(row + v * width, vector), align=align)
                        y = _splat(builder, builder.load(pointer(row), align=align), width)
                        acc = _fnmadd(builder, acc, x, y)
                    builder.store(acc, target, align=align)
                return ir.Constant(ir.IntType(1), 1)

            widths = range(1, UNROLLED_ROW_BANDWIDTH + 1)
            return bandwidth_switch(builder, bw_, intp, widths, case, ir.Constant(ir.IntType(1), 0))

        return types.boolean(ring, p, Rp, bw, lanes), codegen

    return intrinsic(typer)


#: A row's updates by all but the two rows just before it.
lane_row_update_early = _row_update(3, None)
#: A row's updates by the two rows just before it.
lane_row_update_late = _row_update(1, 2)


@njit(cache=True, nogil=True)
def _unrolled_row(r, n, bw, mask):
    """Whether row ``r``'s updates can take the unrolled intrinsics: a whole
    band below it and the ``bw`` rows before it adjacent in the ring."""
    return r + bw < n and r >= bw and (r & mask) >= bw


@njit(cache=True, nogil=True, fastmath={"contract"})
def factor_columns(ring, Rp, mask, n, bw, j0, j1, info, vec):
    """Columns ``[j0, j1)`` of the band Cholesky, in the ring, left-looking
    (row ``c`` receives all its updates, then its pivot and scaling) and
    pipelined two rows ahead.

    Rows ``[j0, j1)`` must be in the ring as gathered, with the ``bw`` rows
    before ``j0`` finished; rows from ``j1`` on are not touched.  When row
    ``c`` has been pivoted and scaled, row ``c + 1`` receives its updates by
    rows ``c - 1`` and ``c`` (the last two), and row ``c + 2`` those by the
    rows before ``c``.  A row's updates are ``bw`` fused multiply-adds into
    one accumulator per element, in the order of the rows (so the results
    are bit for bit the right-looking loop's; the early and late parts meet
    through the ring, exactly); begun two pivots early, that
    chain runs alongside the pivots, and the chain from one pivot to the
    next is two updates, the square root and the reciprocal.  The updates
    go through :func:`lane_row_update_early` / :func:`lane_row_update_late`
    (unrolled), or :func:`update_row` where the ring wraps, near the ends and
    for wide bands.  (The forward substitution is :func:`factor_leading`'s,
    block by block, from the compact factor.)

    ``info`` is the status so far (LAPACK's: the first leading minor that is
    not positive definite, 0 if none); a failed pivot (not ``0 < x < inf``)
    becomes 1 so that the sweep stays finite.  Returns the updated ``info``.
    """
    V = len(vec)
    unit = np.ones(1, dtype=ring.dtype)[0]  # float32 arithmetic stays float32
    # Rows j0 and j0 + 1: their updates by the rows before j0.
    for r in range(j0, min(j0 + 2, j1)):
        update_row(ring, Rp, mask, r, 0, j0, n, bw, vec)
    pivot = ring[(j0 & mask) * Rp]
    for c in range(j0, j1):
        m = min(bw, n - 1 - c)
        p = (c & mask) * Rp
        if pivot > 0.0 and pivot < math.inf:
            d = math.sqrt(pivot)
        else:
            d = unit
            if info == 0:
                info = c + 1
        # Column c of L: L[c + t, c] = A~[c + t, c] * (1 / L[c, c]) (as LAPACK),
        # in vectors from cell 1: the very vectors that row c + 1's update
        # loads next, so that they are forwarded from these stores (a load
        # across two stores would wait for them to retire, and retirement
        # waits for every older instruction: the pipelining would be lost).
        recip = unit / d
        below = ring[p + 1]  # A~[c + 1, c], before the scaling
        lane_mul_run(ring, p + 1, V, ring, p + 1, V, recip, 0, (m + V - 1) // V, vec)
        ring[p] = d
        r = c + 1  # its updates by rows c - 1 and c (only c if c = j0: see above)
        if r < j1:
            q = (r & mask) * Rp
            # Its pivot in scalars, the same fused multiply-adds as its cell 0
            # receives below: the chain to the next square root does not go
            # through the vector stores and loads.  (Cells past bw are zero.)
            pivot = ring[q]  # (Rp >= bw + 8: cells 1 and 2 exist, zero past bw)
            if c > j0:
                older = ring[((c - 1) & mask) * Rp + 2]  # L[c + 1, c - 1]
                pivot -= older * older
            newest = below * recip  # L[c + 1, c], as the vector scaling rounds it
            pivot -= newest * newest
            if not (c > j0 and _unrolled_row(r, n, bw, mask)
                    and lane_row_update_late(ring, q, Rp, bw, vec)):  # fmt: skip
                update_row(ring, Rp, mask, r, max(j0, c - 1), r, n, bw, vec)
        r = c + 2  # its updates by the rows before c
        if r < j1:
            q = (r & mask) * Rp
            if not (_unrolled_row(r, n, bw, mask) and lane_row_update_early(ring, q, Rp, bw, vec)):
                update_row(ring, Rp, mask, r, 0, c, n, bw, vec)
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


#: Widest band whose substitutions keep their window of pending rows in
#: registers (:func:`window_substitution`); wider bands use the loops.
WINDOW_BANDWIDTH = 24


def _window_substitution(divide: bool):
    """An intrinsic ``f(band, base, cs, ts, Y, yi, ys, count, bw, check)``:
    ``count`` steps of a triangular substitution by columns, the ``bw``
    rows still pending held in registers.  Step ``c`` reads the factor column
    ``band[base + c*cs + t*ts]`` (``t = 0`` its diagonal, ``t = 1..bw`` the
    rows it updates, in the order of the steps) and the right-hand side
    ``Y[yi + c*ys]``, and does::

        x = w[0] * (1 / band[base + c*cs]);  Y[yi + c*ys] = x   (divide: w[0] / band[...])
        w[t] = w[t + 1] - band[base + c*cs + (t + 1)*ts] * x   (t < bw - 1)
        w[bw - 1] = Y[yi + (c + bw)*ys] - band[base + c*cs + bw*ts] * x

    from ``w[t] = Y[yi + t*ys]``; at the end the window goes back to
    ``Y[yi + (count + t)*ys]``.  These are the operations, in the same order,
    of the loops ``Y[row] -= L * x`` over the rows, so the rounding is the
    same, but the pending rows never go through memory: a step costs ``bw +
    1`` loads and ``bw`` fused multiply-adds, and its chain (the next ``x``
    waits for one multiply and one multiply-add) has no store-to-load
    forwarding in it.

    The forward substitution ``L y = b`` is ``base = off, cs = sj, ts = st,
    ys = 1``; the backward ``L^T x = y``, from the last row, ``base = off +
    (n-1) sj, cs = -sj, ts = st - sj, ys = -1``.  Needs ``1 <= bw <=``
    :data:`WINDOW_BANDWIDTH` (otherwise nothing is done) and every index
    named above inside the arrays.

    Returns ``check + sum((d - d) + (x - x))`` over the steps' diagonals
    ``d`` and results ``x``: not finite exactly when one of them is not
    (see :func:`forward_strided`).
    """

    def typer(typingctx, band, base, cs, ts, Y, yi, ys, count, bw, check):
        # The code indexes the arrays' data directly: contiguous, one dtype.
        if not all(
            isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C" and a.dtype == band.dtype
            for a in (band, Y)
        ):
            raise TypingError("window_substitution: band and Y must be 1-D C arrays of one dtype")

        def codegen(context, builder, signature, args):
            (base_, cs_, ts_, yi_, ys_, count_, bw_), intp = _index_values(
                context, builder, signature, args, (1, 2, 3, 5, 6, 7, 8)
            )
            bty, yty = signature.args[0], signature.args[4]
            ftype = context.get_data_type(bty.dtype)
            align = bty.dtype.bitwidth // 8
            bdata = context.make_array(bty)(context, builder, args[0]).data
            ydata = context.make_array(yty)(context, builder, args[4]).data
            one = ir.Constant(ftype, 1.0)
            check_in = args[9]
            function = builder.function

            def load(data, index):
                return builder.load(builder.gep(data, [index], inbounds=True), align=align)

            def store(value, data, index):
                builder.store(value, builder.gep(data, [index], inbounds=True), align=align)

            def times(k, stride):
                return builder.mul(ir.Constant(intp, k), stride)

            def case(m, other):
                entry = builder.block
                window = [load(ydata, builder.add(yi_, times(t, ys_))) for t in range(m)]
                header = function.append_basic_block(f"window.bw{m}.head")
                body = function.append_basic_block(f"window.bw{m}.body")
                leave = function.append_basic_block(f"window.bw{m}.leave")
                builder.branch(header)
                builder.position_at_end(header)
                step = builder.phi(intp)
                pending = [builder.phi(ftype) for _ in range(m)]
                checked = builder.phi(ftype)
                step.add_incoming(ir.Constant(intp, 0), entry)
                for phi, value in zip(pending, window, strict=True):
                    phi.add_incoming(value, entry)
                checked.add_incoming(check_in, entry)
                builder.cbranch(builder.icmp_signed("<", step, count_), body, leave)
                builder.position_at_end(body)
                column = builder.add(base_, builder.mul(step, cs_))
                diagonal = load(bdata, column)
                if divide:
                    x = builder.fdiv(pending[0], diagonal)
                else:
                    x = builder.fmul(pending[0], builder.fdiv(one, diagonal))
                row = builder.add(yi_, builder.mul(step, ys_))
                store(x, ydata, row)
                updated = []
                for t in range(1, m + 1):
                    factor = load(bdata, builder.add(column, times(t, ts_)))
                    # The last row enters the window from the right-hand side.
                    target = pending[t] if t < m else load(ydata, builder.add(row, times(m, ys_)))
                    updated.append(_fnmadd(builder, target, factor, x))
                residue = builder.fadd(builder.fsub(diagonal, diagonal), builder.fsub(x, x))
                step.add_incoming(builder.add(step, ir.Constant(intp, 1)), body)
                for phi, value in zip(pending, updated, strict=True):
                    phi.add_incoming(value, body)
                checked.add_incoming(builder.fadd(checked, residue), body)
                builder.branch(header)
                builder.position_at_end(leave)
                last = builder.add(yi_, builder.mul(count_, ys_))
                for t, value in enumerate(pending):
                    store(value, ydata, builder.add(last, times(t, ys_)))
                return checked

            widths = range(1, WINDOW_BANDWIDTH + 1)
            return bandwidth_switch(builder, bw_, intp, widths, case, check_in)

        dtype = band.dtype
        return dtype(band, base, cs, ts, Y, yi, ys, count, bw, dtype), codegen

    return intrinsic(typer)


#: The substitution of :func:`_window_substitution`, ``x = w[0] * (1 / d)``.
window_substitution = _window_substitution(divide=False)
#: The same with ``x = w[0] / d``.
window_substitution_divide = _window_substitution(divide=True)


@njit(cache=True, nogil=True, fastmath={"contract"})
def backward_compact(F, n, bw, Y, ny, nrhs, solved):
    """``Y <- L^{-T} Y`` with the factor in ``F`` (see :func:`rows_to_compact`),
    by columns of ``L^T`` as :func:`backward_strided`.

    Rows ``j >= solved`` already hold ``x`` (the interface of the twisted
    factorisation, :func:`solve_interface`; ``solved = n`` for a whole
    factor): they only update the rows above them, through the columns
    ``< solved`` of ``F``; the rows above are then the backward substitution
    of the leading ``solved`` rows."""
    w = bw + 1
    for k in range(nrhs):
        y0 = k * ny
        for j in range(n - 1, solved - 1, -1):
            xj = Y[y0 + j]
            for t in range(j - solved + 1, min(bw, j) + 1):
                Y[y0 + j - t] -= F[(j - t) * w + t] * xj
    # L[j + t, j] = F[j*w + t]: the strided form with sj = w, st = 1.
    backward_strided(F, 0, w, 1, solved, bw, Y, ny, nrhs)


@njit(cache=True, nogil=True)
def band_finite(band, off, sj, st, n, bw):
    """Whether every element of the factor (``band[off + j*sj + t*st] = L[j +
    t, j]``, ``j + t < n``) is finite."""
    for j in range(n):
        col = off + j * sj
        for t in range(min(bw, n - 1 - j) + 1):
            value = band[col + t * st]
            if value - value != 0.0:  # inf or NaN
                return False
    return True


@njit(cache=True, nogil=True, fastmath={"contract"})
def forward_columns(band, off, sj, st, n, bw, Y, y0, j0, j1, check):
    """Columns ``[j0, j1)`` of :func:`forward_strided` for the right-hand side
    at ``Y[y0:]``, in loops; returns ``check`` plus the residues of
    :func:`window_substitution`."""
    unit = np.ones(1, dtype=band.dtype)[0]
    for j in range(j0, j1):
        m = min(bw, n - 1 - j)
        col = off + j * sj
        d = band[col]
        yj = Y[y0 + j] * (unit / d)
        Y[y0 + j] = yj
        check += (d - d) + (yj - yj)
        for t in range(1, m + 1):
            Y[y0 + j + t] -= band[col + t * st] * yj
    return check


@njit(cache=True, nogil=True, fastmath={"contract"})
def backward_columns(band, off, sj, st, bw, Y, y0, j0, j1):
    """Columns ``j1 - 1`` down to ``j0`` of :func:`backward_strided` for the
    right-hand side at ``Y[y0:]``, in loops."""
    for j in range(j1 - 1, j0 - 1, -1):
        xj = Y[y0 + j] / band[off + j * sj]
        Y[y0 + j] = xj
        for t in range(1, min(bw, j) + 1):
            Y[y0 + j - t] -= band[off + (j - t) * sj + t * st] * xj


@njit(cache=True, nogil=True)
def windowed(n, bw):
    """Whether the substitutions of an order-``n`` factor of bandwidth ``bw``
    go through :func:`window_substitution` (for all but ``bw`` columns)."""
    return 1 <= bw <= WINDOW_BANDWIDTH and n > bw


@njit(cache=True, nogil=True, fastmath={"contract"})
def forward_range(band, off, sj, st, n, bw, Y, ny, nrhs, j0, j1):
    """Columns ``[j0, j1)`` of ``Y <- L^{-1} Y`` (the factor as in
    :func:`forward_strided`); the rows below ``j1`` keep the updates from
    these columns.  The columns whose updates stay above row ``n`` go
    through :func:`window_substitution`, the rest in loops.  Returns the
    residue sum of :func:`window_substitution`."""
    check = np.zeros(1, dtype=band.dtype)[0]
    mid = min(j1, n - bw) if windowed(n, bw) else j0
    for k in range(nrhs):
        if mid > j0:
            check = window_substitution(band, off + j0 * sj, sj, st, Y, k * ny + j0, 1, mid - j0,
                                        bw, check)  # fmt: skip
        check = forward_columns(band, off, sj, st, n, bw, Y, k * ny, max(j0, mid), j1, check)
    return check


@njit(cache=True, nogil=True)
def forward_compact(F, n, bw, Y, ny, nrhs, j0, j1):
    """Columns ``[j0, j1)`` of ``Y <- L^{-1} Y`` with the factor in ``F``
    (:func:`rows_to_compact`: ``L[j + t, j] = F[j*(bw + 1) + t]``, the
    strided form with ``sj = bw + 1``, ``st = 1``), :func:`forward_range`.
    Called block by block as the factorisation finishes rows, while they
    are still in the caches."""
    forward_range(F, 0, bw + 1, 1, n, bw, Y, ny, nrhs, j0, j1)


@njit(cache=True, nogil=True)
def forward_strided(band, off, sj, st, n, bw, Y, ny, nrhs):
    """``Y <- L^{-1} Y`` reading the caller's factor in place
    (``band[off + j*sj + t*st] = L[j + t, j]``), column by column:
    y[j] *= 1 / L[j, j]; y[j + t] -= L[j + t, j] y[j].  Returns False if a factor
    value read is not finite.

    Bands up to :data:`WINDOW_BANDWIDTH` go through
    :func:`window_substitution` but for the last ``bw`` columns
    (:func:`forward_range`).  The finiteness test then costs nothing extra,
    unless it fails: a factor value that is not finite makes its diagonal,
    or the result of a row it updates, not finite (``x * (1/d)`` with ``d``
    finite is finite only if ``x`` is; ``inf * y`` is ``inf`` or NaN for any
    ``y``), so only when a diagonal or a result is not finite -- which finite
    overflow can also cause -- is the factor read again element by element
    (:func:`band_finite`).
    """
    check = forward_range(band, off, sj, st, n, bw, Y, ny, nrhs, 0, n)
    if nrhs > 0 and check - check == 0.0:
        return True
    return band_finite(band, off, sj, st, n, bw)


@njit(cache=True, nogil=True, fastmath={"contract"})
def backward_strided(band, off, sj, st, n, bw, Y, ny, nrhs):
    """``Y <- L^{-T} Y`` reading the caller's factor in place (as
    :func:`forward_strided`), by columns of ``L^T``, from the last row up:
    x[j] = y[j] / L[j, j] (as LAPACK, and as the lane kernels), then y[j - t] -= L[j, j - t] x[j] for t =
    1..bw.  Each x[j] waits for one update only, not for a sum over the band.
    Bands up to :data:`WINDOW_BANDWIDTH` keep the pending rows in registers
    (:func:`window_substitution`) but for the first ``bw`` rows."""
    zero = np.zeros(1, dtype=band.dtype)[0]
    for k in range(nrhs):
        rest = n
        if windowed(n, bw):
            rest = bw
            # L[j, j - t] = band[off + (j - t)*sj + t*st]: from the last column down.
            window_substitution_divide(band, off + (n - 1) * sj, -sj, st - sj, Y, k * ny + n - 1,
                                       -1, n - bw, bw, zero)  # fmt: skip
        backward_columns(band, off, sj, st, bw, Y, k * ny, 0, rest)


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
def factor_leading(
    band, off, sj, st, n, bw, npiv, fout, foff, fsj, fst, store_factor,
    ring, Rp, F, Y, ny, nrhs, block, vec,
):  # fmt: skip
    """Pivot the first ``npiv`` columns of one system's ``n``-row band
    (``npiv = n``: the whole factorisation), and the forward substitution of
    the right-hand sides in ``Y`` after each block of columns.

    Rows are gathered ``block`` at a time and factored at once (the
    factorisation is left-looking: a row needs only the ``bw`` rows before
    it); the finished factor rows go to ``fout`` (with ``store_factor``) and
    to ``F`` (with ``nrhs > 0``, then the forward substitution of those
    columns, :func:`forward_compact`).  With
    ``npiv < n`` the rows ``[npiv, n)`` are left in the ring holding their
    Schur complement ``A22 - L21 L21^T``, and ``Y[npiv:n]`` holds
    ``b2 - L21 y1``.  Returns ``(info, band finite)``.
    """
    finite_band = True
    info = 0
    mask = ring.shape[0] // Rp - 1
    # The rows' padding stays zero through the factorisation (it only ever
    # gets 0 * finite subtracted); zeroed per system, so that a system with
    # non-finite input cannot leave NaN there for the next one.
    ring[: min(n, mask + 1) * Rp] = 0.0
    done = 0
    # Gather a block of rows, factor them, and send the finished rows on.
    for g0 in range(0, n, block):
        g1 = min(n, g0 + block)
        if not gather_ring(ring, Rp, mask, band, off, sj, st, n, bw, g0, g1, vec):
            finite_band = False
        ready = min(g1, npiv)  # a row is factored as soon as it is gathered
        info = factor_columns(ring, Rp, mask, n, bw, done, ready, info, vec)
        if store_factor:
            rows_to_band(ring, Rp, mask, fout, foff, fsj, fst, n, bw, done, ready)
        if nrhs > 0:
            rows_to_compact(ring, Rp, mask, F, bw, done, ready, vec)
            forward_compact(F, n, bw, Y, ny, nrhs, done, ready)
        done = ready
    # Rows left unpivoted receive the pivoted rows' updates: A22 - L21 L21^T.
    for c in range(npiv, n):
        update_row(ring, Rp, mask, c, 0, npiv, n, bw, vec)
    return info, finite_band


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
    info, finite_band = factor_leading(
        band, off, sj, st, n, bw, n, fout, foff, fsj, fst, store_factor,
        ring, Rp, F, Y, ny, nrhs, block, vec,
    )  # fmt: skip
    if info > 0:
        if store_factor:
            fill_band(fout, foff, fsj, fst, n, bw, math.nan)
        for e in range(Y.shape[0]):
            Y[e] = math.nan
    elif nrhs > 0:
        backward_compact(F, n, bw, Y, ny, nrhs, n)
    scatter_rhs(Y, ny, out, ooff, osj, osk, n, nrhs)
    return info, finite_band, finite_rhs


# Two threads on one system: the "twisted" (two-sided) factorisation.  The
# unknowns split into a top part ``[0, top)``, an interface of ``bw`` rows
# ``[top, top + bw)`` and a bottom part ``[top + bw, n)``, which the band
# keeps apart: with ``P`` the permutation (top, bottom, interface),
#
#     P A P^T = [[A11, 0, A1s], [0, A33, A3s], [As1, As3, Ass]]
#             = G G^T,  G = [[L1, 0, 0], [0, R, 0], [W1^T, W3^T, Ls]],
#
# with ``L1 L1^T = A11`` (Cholesky from the top), ``R R^T = A33`` where ``R`` is
# *upper* triangular (Cholesky of the reversed matrix ``J A33 J``, i.e. from
# the bottom), ``W1 = L1^{-1} A1s``, ``W3 = R^{-1} A3s`` (each nonzero in
# ``bw`` rows only: no fill) and ``Ls Ls^T = Ass - W1^T W1 - W3^T W3``.  The
# two parts are the ordinary band factorisation stopped ``bw`` rows early
# (:func:`factor_leading` with ``npiv < n``), the bottom one run on the
# reversed band -- a strided view, see :func:`twisted_part` -- so both run at
# once, on the same kernel.  Being a symmetric permutation of ``A`` followed by
# Cholesky, it is as stable as the ordinary factorisation.


@njit(cache=True, nogil=True)
def twisted_part(off, sj, st, n, bw, bottom):
    """``(off, sj, st, rows, pivots)`` of one part of the twisted
    factorisation of an ``n``-row band at ``(off, sj, st)`` (the addressing
    of :func:`gather_ring`).

    The top part is rows ``[0, top + bw)``, ``top = (n - bw) // 2``, and
    pivots ``top``.  The bottom part is rows ``[top, n)`` of the reversed
    matrix ``A'[i, j] = A[n-1-i, n-1-j]``: ``A'[j + t, j] = A[n-1-j,
    n-1-j-t]``, which is ``A[(n-1-j-t) + t, n-1-j-t]``, at ``off + (n-1) sj
    - j sj + t (st - sj)``: a strided view (the cells past the matrix end are
    never read).  It pivots its first ``n - top - bw`` rows.
    """
    top = (n - bw) // 2
    if bottom:
        return off + (n - 1) * sj, -sj, st - sj, n - top, n - top - bw
    return off, sj, st, top + bw, top


@njit(cache=True, nogil=True)
def small_pivot(d, diagonal, tol):
    """Whether a pivot ``d = L[j, j]`` is small against its diagonal:
    ``d^2 <= tol A[j, j]``.

    The twisted factorisation uses ``tol = sqrt(eps)``.  A matrix singular to
    working precision has, in any elimination order, a pivot that is mostly
    rounding (seen from ``6e-13`` to ``2e-7`` of ``A[j, j]`` in float64), and
    whether it comes out positive is luck, which the twisted order draws
    differently from the sequential (LAPACK's) one.  Such a system is solved
    again sequentially -- all but a few in a thousand of them, since the
    pivot is not always below ``tol`` (tests/test_twisted.py) -- and so is a
    merely ill-conditioned one with a pivot this small, which costs time,
    not accuracy.
    """
    return d * d <= tol * diagonal


@njit(cache=True, nogil=True)
def small_pivot_in_part(F, band, off, sj, pivots, bw, tol):
    """Whether any of a twisted part's ``pivots`` (``F[j*(bw + 1)]``) is small
    against its diagonal ``band[off + j*sj]`` (:func:`small_pivot`)."""
    w = bw + 1
    for j in range(pivots):  # noqa: SIM110 (no generators in Numba)
        if small_pivot(F[j * w], band[off + j * sj], tol):
            return True
    return False


@njit(cache=True, nogil=True, fastmath={"contract"})
def solve_interface(
    ring_top, ring_bottom, Rp, rows_top, rows_bottom, bw,
    band, off, sj, st, Y_top, Y_bottom, ny, rhs, roff, rsj, rsk, nrhs, S, tol,
):  # fmt: skip
    """The interface of the twisted factorisation: ``Ls Ls^T = Ass - W1^T W1
    - W3^T W3`` and ``Ls Ls^T x_s = b_s - W1^T y1 - W3^T y3``.

    Each part left its Schur complement ``Ass - Wi^T Wi`` in its ring and
    ``b_s - Wi^T yi`` in its ``Y`` (the bottom's in reversed order), so the
    interface matrix is their sum less ``Ass`` (read again from the band), and
    likewise the right-hand side.  ``x_s`` is written back to both parts'
    ``Y``.  ``S`` is a ``bw * (bw + 1)`` workspace.  Returns 0, or the
    interface column (from 1) whose pivot is not positive or is small
    against its diagonal (:func:`small_pivot`, ``tol``).
    """
    mask = ring_top.shape[0] // Rp - 1
    top = rows_top - bw
    unit = np.ones(1, dtype=S.dtype)[0]
    # S[a, b] (a >= b) for interface rows top + a, top + b.  In the bottom
    # part's reversed numbering, row top + a is rows_bottom - 1 - a.
    for b in range(bw):
        for a in range(b, bw):
            t = a - b
            from_top = ring_top[((top + b) & mask) * Rp + t]
            from_bottom = ring_bottom[((rows_bottom - 1 - a) & mask) * Rp + t]
            S[a * bw + b] = from_top + from_bottom - band[off + (top + b) * sj + t * st]
    # Dense Cholesky of the bw x bw interface, lower triangle in place.
    for c in range(bw):
        d = S[c * bw + c]
        for k in range(c):
            d -= S[c * bw + k] * S[c * bw + k]
        if not (d > 0.0 and d < math.inf):
            return c + 1
        d = math.sqrt(d)
        if small_pivot(d, band[off + (top + c) * sj], tol):
            return c + 1
        S[c * bw + c] = d
        r = unit / d
        for a in range(c + 1, bw):
            v = S[a * bw + c]
            for k in range(c):
                v -= S[a * bw + k] * S[c * bw + k]
            S[a * bw + c] = v * r
    x = bw * bw  # the interface unknowns, after the matrix in S
    for k in range(nrhs):
        yt, yb, b0 = k * ny + top, k * ny + rows_bottom - 1, roff + top * rsj + k * rsk
        for a in range(bw):
            v = Y_top[yt + a] + Y_bottom[yb - a] - rhs[b0 + a * rsj]
            for c in range(a):
                v -= S[a * bw + c] * S[x + c]
            S[x + a] = v / S[a * bw + a]
        for a in range(bw - 1, -1, -1):
            v = S[x + a]
            for c in range(a + 1, bw):
                v -= S[c * bw + a] * S[x + c]
            v /= S[a * bw + a]
            S[x + a] = v
            Y_top[yt + a] = v
            Y_bottom[yb - a] = v
    return 0
