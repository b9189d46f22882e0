"""Numba kernels of the MNN layer: assembly of the banded normal equations and
the vector-Jacobian product of that assembly.

Notation (see ``docs/mnn.md``): unknown ``u[t, d, o]`` is entry ``t*n + d*O + o``
of the solution vector, ``n = D*O``.  The normal matrix ``A = sum_r w_r^2 r r^T``
(one term per least-squares row ``r``) is stored in LAPACK's lower band form,
``ab[i - j, j] = A[i, j]``, with bandwidth ``n + O - 1`` (``2n`` with central
smoothness).

Every smoothness row between steps ``t`` and ``t+1`` is ``h^o`` times a constant
on order ``o``, so each entry of the normal matrix it produces is
``w^2 h^(o1+o2)`` times a constant: the three ``O x O`` tables ``P0`` (block
``[t, t]``), ``P1`` (block ``[t+1, t+1]``) and ``Q`` (block ``[t+1, t]``) built
by :func:`smoothness_tables`.  Central rows are handled explicitly.

Operands are addressed like the band kernels' (:mod:`banded_mnn._strided`): a
flat buffer, one offset per batch element and one element stride per core
axis, a zero stride for an axis that broadcasts.  :func:`lhs_steps`,
:func:`rhs_steps` and :func:`vjp_steps` work on ``L`` systems at once in the
band kernels' lane-interleaved layout (the drivers are in :mod:`._cpu`);
:func:`assemble_rhs` runs :func:`rhs_steps` with one lane over jobs of
``STEP_CHUNK`` steps of one system, for right-hand sides solved apart from
their factorisation.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .._backends._band_kernels import (
    _fmadd,
    _index_values,
    _splat,
    _vector_pointer,
    lane_dot,
    lane_fmadd,
    lane_fmadd_run,
    lane_fnmadd,
    lane_mul,
    lane_transpose,
)
from .._backends._numba_cpu import lane_scatter_rhs

#: Steps handled by one parallel job.
STEP_CHUNK = 256


def smoothness_tables(n_orders: int, central: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The constants of the smoothness rows' contributions to the normal matrix.

    For each order ``k`` in ``K`` (all orders, or all but the highest with
    central smoothness) there are two rows over the pair of steps (t, t+1),
    with ``h^o`` factored out of the entry on order ``o``:

    * forward:  ``1/(o-k)!`` on ``u[t, o]`` (o >= k), ``-1`` on ``u[t+1, k]``;
    * backward: ``(-1)^o/(o-k)!`` on ``u[t+1, o]`` (o >= k), ``-(-1)^k`` on ``u[t, k]``.

    Returns ``(P0, P1, Q)``: the sums of the rows' outer products restricted
    to ``[t, t]``, ``[t+1, t+1]`` and ``[t+1, t]`` (rows at t+1, columns at t).
    """
    O = n_orders
    orders = range(O - 1 if central else O)
    p0 = np.zeros((O, O))
    p1 = np.zeros((O, O))
    q = np.zeros((O, O))
    for k in orders:
        taylor = np.array([1 / math.factorial(o - k) if o >= k else 0.0 for o in range(O)])
        sign = (-1.0) ** np.arange(O)
        unit = np.eye(O)[k]
        for at_t, at_t1 in ((taylor, -unit), (-sign[k] * unit, sign * taylor)):
            p0 += np.outer(at_t, at_t)
            p1 += np.outer(at_t1, at_t1)
            q += np.outer(at_t1, at_t)
    return p0, p1, q


@njit(cache=True, nogil=True)
def _central_powers(steps_buf, steps_off, steps_st, s, n_orders):
    """(H^(O-3), H^(O-2)) for the central row centred on step s+1, H = h_s + h_(s+1)."""
    span = steps_buf[steps_off + s * steps_st] + steps_buf[steps_off + (s + 1) * steps_st]
    return span ** (n_orders - 3), span ** (n_orders - 2)


@njit(cache=True, nogil=True)
def _load_lanes(buf, offs, first, real, base, dst, di, lanes):
    """dst[di + l] = buf[offs[first + l] + base] for the real lanes (lane 0's
    value for the padding lanes, which only need finite numbers)."""
    for l in range(len(lanes)):
        dst[di + l] = buf[offs[first + (l if l < real else 0)] + base]


@njit(cache=True, nogil=True)
def gather_run(dst, di, buf, offs, first, real, start, stride, count, lanes):
    """``dst[di + k*L + l] = buf[offs[first + l] + start + k*stride]`` for
    ``k < count`` (lane 0's values for the padding lanes, past ``real``):
    through ``L x L`` register transposes where the run is contiguous
    (``stride`` 1) and every lane real, element by element otherwise."""
    L = len(lanes)
    tiled = 0
    if real == L and stride == 1:
        tiled = count // L * L
        lane_offs = offs[first : first + L]
        for k in range(0, tiled, L):
            lane_transpose(dst, None, di + k * L, L, buf, lane_offs, start + k, 0, lanes)
    for k in range(tiled, count):
        _load_lanes(buf, offs, first, real, start + k * stride, dst, di + k * L, lanes)


@njit(cache=True, nogil=True)
def gather_steps(rows, coef, coef_off, cs0, cs1, cs2, cs3, first, real, t0, t1, T, E, D, O, lanes):
    """``rows[((t - t0)*E*n + e*n + p)*L + l] = c_l[t, e, p]`` for the steps
    ``t0 <= t < t1`` of the ``L`` systems from ``first`` (the padding lanes,
    past ``real``, get lane 0's).

    Where each system's coefficients are C-contiguous, the block is one run
    of ``(t1 - t0)*E*n`` elements per system (:func:`gather_run`).
    """
    L = len(lanes)
    n = D * O
    run = E * n
    contiguous = (
        (cs3 == 1 or O == 1)
        and (cs2 == O or D == 1)
        and (cs1 == n or E == 1)
        and (cs0 == run or T == 1)
    )
    if contiguous:
        gather_run(rows, 0, coef, coef_off, first, real, t0 * run, 1, (t1 - t0) * run, lanes)
        return
    for t in range(t0, t1):
        for e in range(E):
            for d in range(D):
                for o in range(O):
                    k = ((t - t0) * E + e) * n + d * O + o
                    _load_lanes(coef, coef_off, first, real, t * cs0 + e * cs1 + d * cs2 + o * cs3,
                                rows, k * L, lanes)  # fmt: skip


@njit(cache=True, nogil=True)
def lhs_steps(
    coef, coef_off, cs0, cs1, cs2, cs3, steps_buf, steps_off, steps_st,
    W, first, real, bw, t0, t1, T, E, D, O, S, I, weq2, wiv2, ws2, central,
    tab0, tab1, tabq, rows, scratch, lanes, col_base=0,
):  # fmt: skip
    """Band columns ``j = t*n .. t*n+n-1`` (``t0 <= t < t1``) of the normal
    matrices of ``L`` systems (``first .. first+real-1``; the others get the
    identity), written to the lane-interleaved workspace of the band kernels:
    ``W[(j*(bw+1) + r)*L + l] = A_l[j + r, j]``, zero where no row
    contributes or past the matrix.  Every entry is accumulated with L-wide
    vector operations, lanes innermost.

    ``tab0``, ``tab1``, ``tabq`` are ``ws^2`` times the smoothness tables,
    each entry repeated over the lanes ((O*O*L), see
    :func:`smoothness_tables`).  The coefficients of every lane are left in
    ``rows``, ``rows[((t - t0)*E*n + e*n + p)*L + l] = c_l[t, e, p]``, for
    :func:`rhs_steps`.  ``scratch`` holds at least ``(2*O + 2 + t1 - t0)*L``
    elements.
    ``W`` may be a window starting at column ``col_base`` of the band (column
    ``j`` at ``j - col_base``).
    """
    L = len(lanes)
    n = D * O
    w = bw + 1
    hp = 0  # powers h^m, m < 2*O - 1: (2*O - 1, L)
    sm = hp + (2 * O - 1) * L  # one entry's weight: (L,)
    weq = sm + L  # w_eq^2 repeated: (L,)
    hs = weq + L  # the step sizes of the block's pairs, h_s for s0 <= s < s1
    for l in range(L):
        scratch[weq + l] = weq2
        scratch[hp + l] = 1.0
    s0, s1 = max(t0 - 1, 0), min(t1, T - 1)
    if s1 > s0:
        gather_run(scratch, hs, steps_buf, steps_off, first, real, s0 * steps_st, steps_st,
                   s1 - s0, lanes)  # fmt: skip
    gather_steps(rows, coef, coef_off, cs0, cs1, cs2, cs3, first, real, t0, t1, T, E, D, O, lanes)
    for t in range(t0, t1):
        col0 = t * n - col_base
        row = (t - t0) * E * n * L  # c[t, e, :] of every lane in rows: (E*n, L)
        W[col0 * w * L : (col0 + n) * w * L] = 0.0  # a slice: vectorised, unlike a loop
        # Equation rows: block [t, t] += w_eq^2 sum_e c[t, e]^T c[t, e].
        for e in range(E):
            for jq in range(n):
                lane_mul(scratch, sm, scratch, weq, rows, row + (e * n + jq) * L, lanes)
                # A[t*n + jp, t*n + jq] += w^2 c[e, jp] c[e, jq], jq <= jp < n.
                lane_fmadd_run(W, (col0 + jq) * w * L, L, rows, row + (e * n + jq) * L, L,
                               scratch, sm, n - jq, lanes)  # fmt: skip
        # Initial-value rows: identity on the pinned unknowns.
        if t < S:
            for d in range(D):
                for o in range(I):
                    for l in range(L):
                        W[(col0 + d * O + o) * w * L + l] += wiv2
        # Smoothness rows: entries ws^2 h^(o1+o2) table[o1, o2], the same for
        # every dimension d.  Pair (t-1, t) contributes tab1 to block [t, t];
        # pair (t, t+1) contributes tab0 to [t, t] and tabq to [t+1, t].
        for pair in range(2):
            s = t - 1 + pair
            if s < 0 or s + 1 >= T:
                continue
            for m in range(1, 2 * O - 1):
                lane_mul(scratch, hp + m * L, scratch, hp + (m - 1) * L, scratch, hs + (s - s0) * L,
                         lanes)  # fmt: skip
            for d in range(D):
                for o2 in range(O):
                    j = (col0 + d * O + o2) * w - o2
                    for o1 in range(o2, O):
                        tab = tab1 if pair == 0 else tab0
                        lane_fmadd(
                            W, (j + o1) * L, tab, (o1 * O + o2) * L,
                            scratch, hp + (o1 + o2) * L, lanes,
                        )  # fmt: skip
                    if pair == 1:
                        for o1 in range(O):
                            lane_fmadd(
                                W, (j + n + o1) * L, tabq, (o1 * O + o2) * L,
                                scratch, hp + (o1 + o2) * L, lanes,
                            )  # fmt: skip
        if central:
            for l in range(real):
                off = steps_off[first + l]
                for d in range(D):
                    lo = ((col0 + d * O + O - 2) * w) * L + l
                    hi = ((col0 + d * O + O - 1) * w) * L + l
                    # Row a*u[s, O-2] + b*u[s+1, O-1] - a*u[s+2, O-2] = 0, a = H^(O-3),
                    # b = H^(O-2), H = h_s + h_(s+1), for s = t, t-1, t-2.
                    if t + 2 < T:  # u[t] is the first unknown
                        a, b = _central_powers(steps_buf, off, steps_st, t, O)
                        W[lo] += ws2 * a * a
                        W[lo + (n + 1) * L] += ws2 * a * b  # A[(t+1, O-1), (t, O-2)]
                        W[lo + 2 * n * L] -= ws2 * a * a  # A[(t+2, O-2), (t, O-2)]
                    if t >= 1 and t + 1 < T:  # the middle unknown
                        a, b = _central_powers(steps_buf, off, steps_st, t - 1, O)
                        W[hi] += ws2 * b * b
                        W[hi + (n - 1) * L] -= ws2 * a * b  # A[(t+1, O-2), (t, O-1)]
                    if t >= 2:  # the last unknown
                        a, b = _central_powers(steps_buf, off, steps_st, t - 2, O)
                        W[lo] += ws2 * a * a
        for l in range(real, L):  # padding lanes: the identity
            for j in range(col0, col0 + n):
                for r in range(w):
                    W[(j * w + r) * L + l] = 1.0 if r == 0 else 0.0


@njit(cache=True, nogil=True)
def rhs_steps(
    coef, coef_off, cs0, cs1, cs2, cs3, rhs, rhs_off, rs0, rs1, init, init_off, vs0, vs1, vs2,
    Y, first, real, t0, t1, E, D, O, S, I, weq2, wiv2, rows, scratch, lanes,
):  # fmt: skip
    """Entries ``t*n .. t*n+n-1`` (``t0 <= t < t1``) of the right-hand sides
    ``A^T W b`` of ``L`` systems -- ``w_eq^2 sum_e c[t, e, d, o] r[t, e]``,
    plus ``w_iv^2 v[t, d, o]`` where pinned -- into ``Y[j*L + l]`` (zero for
    the padding lanes).  The coefficients are read from ``rows`` as
    :func:`lhs_steps` leaves them there for the same steps, or from ``coef``
    if ``rows`` is empty.  ``scratch`` holds at least ``L`` elements
    (``(n + 1)*L`` when ``rows`` is empty)."""
    L = len(lanes)
    n = D * O
    factor_l = 0
    loaded = rows.size > 0
    for t in range(t0, t1):
        Y[t * n * L : (t + 1) * n * L] = 0.0
        for e in range(E):
            _load_lanes(rhs, rhs_off, first, real, t * rs0 + e * rs1, scratch, factor_l, lanes)
            for l in range(L):
                scratch[factor_l + l] *= weq2
            # Y[t*n + p] += (w^2 r[t, e]) c[t, e, p], p < n.
            if loaded:
                row = ((t - t0) * E + e) * n * L
                lane_fmadd_run(Y, t * n * L, L, rows, row, L, scratch, factor_l, n, lanes)
            else:
                for p in range(n):
                    _load_lanes(
                        coef, coef_off, first, real,
                        t * cs0 + e * cs1 + (p // O) * cs2 + (p % O) * cs3, scratch, L + p * L,
                        lanes,
                    )  # fmt: skip
                lane_fmadd_run(Y, t * n * L, L, scratch, L, L, scratch, factor_l, n, lanes)
        if t < S:
            for l in range(real):
                base = init_off[first + l] + t * vs0
                for d in range(D):
                    for o in range(I):
                        Y[(t * n + d * O + o) * L + l] += wiv2 * init[base + d * vs1 + o * vs2]
        for l in range(real, L):
            for j in range(t * n, (t + 1) * n):
                Y[j * L + l] = 0.0


@njit(parallel=True, cache=True)
def assemble_rhs(
    coef, coef_off, coef_st, rhs, rhs_off, rhs_st, init, init_off, init_st,
    beta, T, E, D, O, S, I, weq2, wiv2, one_lane,
):  # fmt: skip
    """Right-hand sides ``beta`` (systems, M) of the normal equations
    (``one_lane``: the marker of the 1-lane specialisation)."""
    nsys = beta.shape[0]
    chunks = (T + STEP_CHUNK - 1) // STEP_CHUNK
    cs0, cs1, cs2, cs3 = coef_st
    rs0, rs1 = rhs_st
    vs0, vs1, vs2 = init_st
    for job in prange(nsys * chunks):
        i = job // chunks
        t0 = (job - i * chunks) * STEP_CHUNK
        scratch = np.empty(D * O + 1, dtype=beta.dtype)
        rhs_steps(
            coef, coef_off, cs0, cs1, cs2, cs3, rhs, rhs_off, rs0, rs1, init, init_off,
            vs0, vs1, vs2, beta[i], i, 1, t0, min(T, t0 + STEP_CHUNK), E, D, O, S, I,
            weq2, wiv2, scratch[:0], scratch, one_lane,
        )  # fmt: skip


@intrinsic
def lane_step_form(typingctx, dst, di, tabs, powers, pi, x, lam, a0, a1, D, O, lanes):
    """The smoothness rows' bilinear form of the pair of steps (t, t+1), for
    every lane at once, accumulated in registers and stored once::

        dst[di : di+L] = sum_{d < D} sum_{i, j < O} powers[pi + (i+j)*L] * (
            T0[i, j] lam0[d, i] x0[d, j] + T1[i, j] lam1[d, i] x1[d, j]
            + TQ[i, j] (lam1[d, i] x0[d, j] + x1[d, i] lam0[d, j]))

    where ``T0, T1, TQ`` are ``tabs`` (three ``(O, O)`` tables one after
    another, each entry repeated over the lanes: ``T0[i, j]`` at
    ``tabs[(i*O + j)*L]``), and ``v0[d, i] = v[a0 + (d*O + i)*L]``,
    ``v1[d, i] = v[a1 + (d*O + i)*L]`` for ``v`` in ``x``, ``lam`` (the lane
    layout).  All arrays 1-D, contiguous, one dtype.  With the tables scaled by
    ``i + j`` and ``powers[k] = h^(k-1)``, it is ``lam^T (dA/dh) x`` over
    the pair, ``dA/dh`` from the smoothness entries ``h^(i+j) T[i, j]``.
    """
    width = lanes.count

    def codegen(context, builder, signature, args):
        (di_, pi_, a0_, a1_, d_count, o_count), intp = _index_values(
            context, builder, signature, args, (1, 4, 7, 8, 9, 10)
        )
        dty = signature.args[0]
        align = dty.dtype.bitwidth // 8
        vector = ir.VectorType(context.get_data_type(dty.dtype), width)
        step = ir.Constant(intp, width)

        def load(k, at):
            pointer = _vector_pointer(context, builder, signature.args[k], args[k], at, width)
            return builder.load(pointer, align=align)

        table = builder.mul(builder.mul(o_count, o_count), step)  # one table's length
        acc = cgutils.alloca_once_value(builder, ir.Constant(vector, None))
        with cgutils.for_range(builder, d_count, intp=intp) as d_loop:
            row = builder.mul(builder.mul(d_loop.index, o_count), step)
            with cgutils.for_range(builder, o_count, intp=intp) as i_loop:
                i_at = builder.add(row, builder.mul(i_loop.index, step))
                lam0_i = load(6, builder.add(a0_, i_at))
                lam1_i = load(6, builder.add(a1_, i_at))
                x1_i = load(5, builder.add(a1_, i_at))
                with cgutils.for_range(builder, o_count, intp=intp) as j_loop:
                    j = j_loop.index
                    j_at = builder.add(row, builder.mul(j, step))
                    x0_j = load(5, builder.add(a0_, j_at))
                    x1_j = load(5, builder.add(a1_, j_at))
                    lam0_j = load(6, builder.add(a0_, j_at))
                    entry = builder.mul(builder.add(builder.mul(i_loop.index, o_count), j), step)
                    t0 = load(2, entry)
                    t1 = load(2, builder.add(entry, table))
                    tq = load(2, builder.add(builder.add(entry, table), table))
                    power = load(
                        3, builder.add(pi_, builder.mul(builder.add(i_loop.index, j), step))
                    )
                    mixed = _fmadd(builder, builder.fmul(lam1_i, x0_j), x1_i, lam0_j)
                    term = _fmadd(builder, builder.fmul(tq, mixed), t0, builder.fmul(lam0_i, x0_j))
                    term = _fmadd(builder, term, t1, builder.fmul(lam1_i, x1_j))
                    builder.store(_fmadd(builder, builder.load(acc), power, term), acc)
        pointer = _vector_pointer(context, builder, dty, args[0], di_, width)
        builder.store(builder.load(acc), pointer, align=align)
        return context.get_dummy_value()

    sig = types.void(dst, di, tabs, powers, pi, x, lam, a0, a1, D, O, lanes)
    return sig, codegen


@intrinsic
def lane_any_square_at_most(typingctx, a, ai, b, bi, tol, lanes):
    """Whether ``a[ai + l]**2 <= tol * b[bi + l]`` for any lane ``l`` (false
    where either side is NaN): one vector comparison, with the arithmetic of
    the scalar expression (the square in the arrays' dtype, ``tol * b`` and
    the comparison in float64).  ``a``, ``b`` 1-D, contiguous, one dtype;
    ``tol`` a float64."""
    width = lanes.count

    def codegen(context, builder, signature, args):
        (ai_, bi_), intp = _index_values(context, builder, signature, args, (1, 3))
        aty, bty, tty = signature.args[0], signature.args[2], signature.args[4]
        align = aty.dtype.bitwidth // 8
        x = builder.load(_vector_pointer(context, builder, aty, args[0], ai_, width), align=align)
        y = builder.load(_vector_pointer(context, builder, bty, args[2], bi_, width), align=align)
        square = builder.fmul(x, x)
        if aty.dtype.bitwidth < 64:  # (exact conversions)
            wide = ir.VectorType(ir.DoubleType(), width)
            square, y = builder.fpext(square, wide), builder.fpext(y, wide)
        scale = _splat(builder, context.cast(builder, args[4], tty, types.float64), width)
        below = builder.fcmp_ordered("<=", square, builder.fmul(scale, y))
        bits = builder.bitcast(below, ir.IntType(width))
        return builder.icmp_unsigned("!=", bits, ir.Constant(ir.IntType(width), 0))

    return types.boolean(a, ai, b, bi, tol, lanes), codegen


@njit(cache=True, nogil=True)
def vjp_steps(
    coef, coef_off, cs0, cs1, cs2, cs3, rhs, rhs_off, rs0, rs1, steps_buf, steps_off, steps_st,
    X, LAM, first, real, t0, t1, T, E, D, O, weq2, ws2, central, tabs, lhs,
    grad_coef, grad_rhs, grad_steps, rows, scratch, grad_block, lanes,
):  # fmt: skip
    """Gradients of steps ``t0 <= t < t1`` of ``L`` systems (``first ..
    first+real-1``) from the solution ``X`` and ``LAM = A^{-1} dL/du``, both
    in the lane-interleaved layout (``X[j*L + l]``).

    With ``beta = sum_r w^2 b_r r`` and ``A = sum_r w^2 r r^T``,
    ``dL = lam . d(beta) - lam^T d(A) x``: for an equation row ``r`` with
    target ``b_r``, ``dL/db_r = w^2 (lam . r)`` and ``dL/dr = w^2 ((b_r - r . x)
    lam - (lam . r) x)``; step sizes enter through the smoothness entries
    ``w^2 h^(o1+o2) P[o1, o2]`` (``tabs``: ``tab0, tab1, tabq`` of
    :func:`lhs_steps` one after another, each entry ``(o1, o2)`` scaled by
    ``o1 + o2`` (the exponent that differentiating brings down) and by
    ``w_s^2``, repeated over the lanes; see :func:`lane_step_form`) and the
    central ones.  ``rows`` receives the block's coefficients (``(t1 - t0) E
    n L`` elements, :func:`gather_steps`); ``scratch`` holds at least ``(2 O
    + 4 + t1 - t0) L`` elements; ``grad_block`` (with ``lhs``) ``(t1 - t0) E
    n L``: the block's coefficient gradients, lanes innermost, before they are
    transposed into ``grad_coef`` (flat, (systems, T, E, n)).
    """
    L = len(lanes)
    n = D * O
    rl = 0  # r[t, e]
    cx = rl + L  # c . x
    cl = cx + L  # c . lam
    pw = cl + L  # powers of the step size, pw[k] = h^(k-1): (2 O - 1, L)
    weq = pw + (2 * O - 1) * L  # w_eq^2 repeated
    acc = weq + L  # lam^T (dA/dh) x
    hs = acc + L  # the block's step sizes, h_t for t0 <= t < min(t1, T - 1)
    for l in range(L):
        scratch[pw + l] = 0.0  # (pw[0] meets only zero entries)
        scratch[pw + L + l] = 1.0
        scratch[weq + l] = weq2
    if lhs and min(t1, T - 1) > t0:
        gather_run(scratch, hs, steps_buf, steps_off, first, real, t0 * steps_st, steps_st,
                   min(t1, T - 1) - t0, lanes)  # fmt: skip
    gather_steps(rows, coef, coef_off, cs0, cs1, cs2, cs3, first, real, t0, t1, T, E, D, O, lanes)
    for t in range(t0, t1):
        col0 = t * n
        for e in range(E):
            crow = ((t - t0) * E + e) * n * L  # c[t, e, :] of every lane in rows
            _load_lanes(rhs, rhs_off, first, real, t * rs0 + e * rs1, scratch, rl, lanes)
            lane_dot(scratch, cx, rows, crow, L, X, col0 * L, L, n, lanes)
            lane_dot(scratch, cl, rows, crow, L, LAM, col0 * L, L, n, lanes)
            for l in range(real):
                grad_rhs[first + l, t, e] = weq2 * scratch[cl + l]
            if lhs:  # into the block's buffer, lanes innermost
                g = ((t - t0) * E + e) * n * L
                # (r . x and c . lam are not needed further)
                lane_mul(scratch, cl, scratch, cl, scratch, weq, lanes)  # w^2 (lam . r)
                lane_mul(scratch, rl, scratch, rl, scratch, weq, lanes)
                lane_fnmadd(scratch, rl, scratch, cx, scratch, weq, lanes)  # w^2 (b_r - r . x)
                for p in range(n):  # w^2 (b_r - r . x) lam - w^2 (lam . r) x
                    lane_mul(grad_block, g + p * L, LAM, (col0 + p) * L, scratch, rl, lanes)
                    lane_fnmadd(grad_block, g + p * L, X, (col0 + p) * L, scratch, cl, lanes)
        if lhs and t == t1 - 1:  # the block's coefficient gradients, transposed
            offs = (np.arange(first, first + L) * T + t0) * E * n  # (systems, T, E, n)
            lane_scatter_rhs(
                grad_block, grad_coef, offs, 1, 0, 1, real, lanes, 0, (t1 - t0) * E * n
            )
        if not lhs or t + 1 >= T:
            continue
        # Step size h_t: -lam^T (dA/dh) x over the pair (t, t+1), summed over
        # dims: the smoothness entries are h^(o1+o2) T[o1, o2], so dA/dh has
        # (o1+o2) h^(o1+o2-1) T[o1, o2] (``tabs`` holds (o1+o2) T[o1, o2], the
        # powers h^(k-1) go to pw[k]; pw[0] meets only zero entries).
        for k in range(2, 2 * O - 1):
            lane_mul(scratch, pw + k * L, scratch, pw + (k - 1) * L, scratch, hs + (t - t0) * L,
                     lanes)  # fmt: skip
        lane_step_form(scratch, acc, tabs, scratch, pw, X, LAM, col0 * L, (col0 + n) * L, D, O,
                       lanes)  # fmt: skip
        for l in range(real):
            g = -scratch[acc + l]
            if central:  # h_t is in H of the triples starting at t-1 and at t
                off = steps_off[first + l]
                if t >= 1:
                    g += ws2 * _central_gradient(steps_buf, off, steps_st, X[l::L], LAM[l::L],
                                                 t - 1, D, O)  # fmt: skip
                if t + 2 < T:
                    g += ws2 * _central_gradient(steps_buf, off, steps_st, X[l::L], LAM[l::L],
                                                 t, D, O)  # fmt: skip
            grad_steps[first + l, t] = g


@njit(cache=True, nogil=True)
def _central_gradient(steps_buf, steps_off, steps_st, x, lam, s, D, O):
    """-lam^T (dA/dH) x for the central rows of the triple (s, s+1, s+2), summed over d."""
    n = D * O
    span = steps_buf[steps_off + s * steps_st] + steps_buf[steps_off + (s + 1) * steps_st]
    # Entries a^2 = H^(2O-6), b^2 = H^(2O-4), ab = H^(2O-5); their derivatives:
    d_aa = (2 * O - 6) * span ** (2 * O - 7)
    d_bb = (2 * O - 4) * span ** (2 * O - 5)
    d_ab = (2 * O - 5) * span ** (2 * O - 6)
    acc = 0.0
    for d in range(D):
        lo0 = s * n + d * O + O - 2  # u[s, d, O-2]
        hi1 = lo0 + n + 1  # u[s+1, d, O-1]
        lo2 = lo0 + 2 * n  # u[s+2, d, O-2]
        acc += d_aa * (
            lam[lo0] * x[lo0] + lam[lo2] * x[lo2] - lam[lo2] * x[lo0] - lam[lo0] * x[lo2]
        )
        acc += d_bb * lam[hi1] * x[hi1]
        acc += d_ab * (
            lam[hi1] * x[lo0] + x[hi1] * lam[lo0] - lam[lo2] * x[hi1] - x[lo2] * lam[hi1]
        )
    return -acc
