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
axis, a zero stride for an axis that broadcasts.  Work is split into jobs of
``STEP_CHUNK`` steps of one system, so a few long systems still use every
thread; each job writes only the band columns, right-hand-side entries and
gradient entries of its own steps.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

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
def _powers(h, out, count):
    """out[m] = h**m for m < count."""
    value = 1.0
    for m in range(count):
        out[m] = value
        value *= h


@njit(cache=True, nogil=True)
def _power_derivatives(h, out, count):
    """out[m] = d(h**m)/dh = m * h**(m-1) for m < count."""
    out[0] = 0
    value = 1.0
    for m in range(1, count):
        out[m] = m * value
        value *= h


@njit(cache=True, nogil=True)
def _central_powers(steps_buf, steps_off, steps_st, s, n_orders):
    """(H^(O-3), H^(O-2)) for the central row centred on step s+1, H = h_s + h_(s+1)."""
    span = steps_buf[steps_off + s * steps_st] + steps_buf[steps_off + (s + 1) * steps_st]
    return span ** (n_orders - 3), span ** (n_orders - 2)


@njit(cache=True, nogil=True)
def lhs_steps(
    coef, coef_off, cs0, cs1, cs2, cs3,
    steps_buf, steps_off, steps_st,
    out, base, sj, sr, bw, diag,
    t0, t1, T, E, D, O, S, I, weq2, wiv2, ws2, central, p0, p1, q, hp, row, blk,
):  # fmt: skip
    """Write band columns ``j = t*n .. t*n+n-1``, ``t0 <= t < t1``, of one
    system's normal matrix:
    ``A[j + r, j]`` (0 <= r <= bw, zero where no row contributes or past the
    matrix) goes to ``out[base + j*sj + r*sr]``, and ``A[j, j]`` to
    ``diag[j]``.  The layout parameters cover LAPACK's lower band form and
    the lane-interleaved workspace of the band kernels alike.  Scratch:
    ``hp`` (2*O), ``row`` (E, n) and ``blk`` (n*(bw+1)), where the columns
    are accumulated before one store each."""
    for t in range(t0, t1):
        n = D * O
        col0 = t * n
        w = bw + 1
        for k in range(n * w):
            blk[k] = 0.0
        # Equation rows: block [t, t] += w^2 * sum_e c[t, e]^T c[t, e], from a
        # contiguous copy of c[t] (strided index arithmetic would dominate).
        for e in range(E):
            cbase = coef_off + t * cs0 + e * cs1
            for d in range(D):
                for o in range(O):
                    row[e, d * O + o] = coef[cbase + d * cs2 + o * cs3]
        for jq in range(n):
            for jp in range(jq, n):
                acc = 0.0
                for e in range(E):
                    acc += row[e, jp] * row[e, jq]
                blk[jq * w + jp - jq] = weq2 * acc
        # Initial-value rows: identity on the pinned unknowns.
        if t < S:
            for d in range(D):
                for o in range(I):
                    blk[(d * O + o) * w] += wiv2
        # Smoothness rows of the pair (t-1, t): its [t+1, t+1] part lands on [t, t].
        if t >= 1:
            _powers(steps_buf[steps_off + (t - 1) * steps_st], hp, 2 * O - 1)
            for d in range(D):
                for o2 in range(O):
                    j = (d * O + o2) * w
                    for o1 in range(o2, O):
                        blk[j + o1 - o2] += ws2 * hp[o1 + o2] * p1[o1, o2]
        # ... and of the pair (t, t+1): blocks [t, t] and [t+1, t].
        if t + 1 < T:
            _powers(steps_buf[steps_off + t * steps_st], hp, 2 * O - 1)
            for d in range(D):
                for o2 in range(O):
                    j = (d * O + o2) * w
                    for o1 in range(o2, O):
                        blk[j + o1 - o2] += ws2 * hp[o1 + o2] * p0[o1, o2]
                    for o1 in range(O):
                        blk[j + n + o1 - o2] = ws2 * hp[o1 + o2] * q[o1, o2]
        if central:
            # Row a*u[s, O-2] + b*u[s+1, O-1] - a*u[s+2, O-2] = 0 for s = t-2, t-1, t,
            # a = H^(O-3), b = H^(O-2); its entries in columns of step t.
            for d in range(D):
                lo = (d * O + O - 2) * w
                hi = (d * O + O - 1) * w
                if t + 2 < T:  # s = t: u[t] is the first unknown
                    a, b = _central_powers(steps_buf, steps_off, steps_st, t, O)
                    blk[lo] += ws2 * a * a
                    blk[lo + n + 1] += ws2 * a * b  # A[(t+1, O-1), (t, O-2)]
                    blk[lo + 2 * n] -= ws2 * a * a  # A[(t+2, O-2), (t, O-2)]
                if t >= 1 and t + 1 < T:  # s = t-1: u[t] is the middle unknown
                    a, b = _central_powers(steps_buf, steps_off, steps_st, t - 1, O)
                    blk[hi] += ws2 * b * b
                    blk[hi + n - 1] -= ws2 * a * b  # A[(t+1, O-2), (t, O-1)]
                if t >= 2:  # s = t-2: u[t] is the last unknown
                    a, b = _central_powers(steps_buf, steps_off, steps_st, t - 2, O)
                    blk[lo] += ws2 * a * a
        # Cells past the end of the matrix stay zero (LAPACK never reads them).
        for k in range(n):
            diag[col0 + k] = blk[k * w]
            j = base + (col0 + k) * sj
            for r in range(w):
                out[j + r * sr] = blk[k * w + r]


@njit(cache=True, nogil=True)
def rhs_steps(
    coef, coef_off, cs0, cs1, cs2, cs3, rhs, rhs_off, rs0, rs1, init, init_off, vs0, vs1, vs2,
    out, base, stride, t0, t1, E, D, O, S, I, weq2, wiv2,
):  # fmt: skip
    """Entries ``t*n .. t*n+n-1``, ``t0 <= t < t1``, of the right-hand side ``A^T W b`` of one
    system (``w_eq^2 sum_e c[t, e, d, o] r[t, e]``, plus ``w_iv^2 v[t, d, o]``
    where pinned), written to ``out[base + index*stride]``."""
    for t in range(t0, t1):
        for d in range(D):
            for o in range(O):
                acc = 0.0
                for e in range(E):
                    acc += (
                        coef[coef_off + t * cs0 + e * cs1 + d * cs2 + o * cs3]
                        * rhs[rhs_off + t * rs0 + e * rs1]
                    )
                value = weq2 * acc
                if t < S and o < I:
                    value += wiv2 * init[init_off + t * vs0 + d * vs1 + o * vs2]
                out[base + (t * D * O + d * O + o) * stride] = value


@njit(parallel=True, cache=True)
def assemble_rhs(
    coef, coef_off, coef_st, rhs, rhs_off, rhs_st, init, init_off, init_st,
    beta, T, E, D, O, S, I, weq2, wiv2,
):  # fmt: skip
    """Right-hand sides ``beta`` (systems, M) of the normal equations."""
    nsys = beta.shape[0]
    M = beta.shape[1]
    flat = beta.reshape(-1)
    chunks = (T + STEP_CHUNK - 1) // STEP_CHUNK
    cs0, cs1, cs2, cs3 = coef_st
    rs0, rs1 = rhs_st
    vs0, vs1, vs2 = init_st
    for job in prange(nsys * chunks):
        i = job // chunks
        t0 = (job - i * chunks) * STEP_CHUNK
        rhs_steps(
            coef, coef_off[i], cs0, cs1, cs2, cs3, rhs, rhs_off[i], rs0, rs1, init, init_off[i],
            vs0, vs1, vs2, flat, i * M, 1, t0, min(T, t0 + STEP_CHUNK), E, D, O, S, I, weq2, wiv2,
        )  # fmt: skip


@njit(cache=True)
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


@njit(parallel=True, cache=True)
def assemble_vjp(
    coef, coef_off, coef_st, rhs, rhs_off, rhs_st, steps_buf, steps_off, steps_st,
    x, lam, grad_coef, grad_rhs, grad_steps,
    T, E, D, O, weq2, ws2, central, p0, p1, q, lhs_grads,
):  # fmt: skip
    """Gradients of ``L`` through the assembly, given the solution ``x`` and
    ``lam = A^{-1} dL/dx`` (both (systems, M)).

    With ``beta = sum_r w^2 b_r r`` and ``A = sum_r w^2 r r^T``,
    ``dL = lam . d(beta) - lam^T d(A) x``, so for each row ``r`` with target
    ``b_r``: ``dL/db_r = w^2 (lam . r)`` and
    ``dL/dr = w^2 ((b_r - r . x) lam - (lam . r) x)``.  Step sizes enter
    through the smoothness entries ``w^2 h^(o1+o2) P[o1, o2]`` and the central
    ones.  ``grad_coef`` (systems, T, E, D, O), ``grad_rhs`` (systems, T, E) and
    ``grad_steps`` (systems, T-1) are written in full; the left-hand-side ones
    only when ``lhs_grads``.
    """
    nsys = x.shape[0]
    n = D * O
    chunks = (T + STEP_CHUNK - 1) // STEP_CHUNK
    cs0, cs1, cs2, cs3 = coef_st
    rs0, rs1 = rhs_st
    for job in prange(nsys * chunks):
        i = job // chunks
        t0 = (job - i * chunks) * STEP_CHUNK
        xi = x[i]
        li = lam[i]
        dp = np.empty(2 * O, dtype=x.dtype)
        for t in range(t0, min(T, t0 + STEP_CHUNK)):
            col0 = t * n
            for e in range(E):
                base = coef_off[i] + t * cs0 + e * cs1
                cx = 0.0
                cl = 0.0
                for d in range(D):
                    for o in range(O):
                        c = coef[base + d * cs2 + o * cs3]
                        cx += c * xi[col0 + d * O + o]
                        cl += c * li[col0 + d * O + o]
                grad_rhs[i, t, e] = weq2 * cl
                if lhs_grads:
                    residual = rhs[rhs_off[i] + t * rs0 + e * rs1] - cx
                    for d in range(D):
                        for o in range(O):
                            j = col0 + d * O + o
                            grad_coef[i, t, e, d, o] = weq2 * (residual * li[j] - cl * xi[j])
            if lhs_grads and t + 1 < T:
                _power_derivatives(steps_buf[steps_off[i] + t * steps_st], dp, 2 * O - 1)
                acc = 0.0
                for d in range(D):
                    a0 = col0 + d * O  # u[t, d, 0]
                    a1 = a0 + n  # u[t+1, d, 0]
                    for o1 in range(O):
                        for o2 in range(O):
                            acc += dp[o1 + o2] * (
                                p0[o1, o2] * li[a0 + o1] * xi[a0 + o2]
                                + p1[o1, o2] * li[a1 + o1] * xi[a1 + o2]
                                + q[o1, o2]
                                * (li[a1 + o1] * xi[a0 + o2] + xi[a1 + o1] * li[a0 + o2])
                            )
                g = -acc
                if central:
                    # h_t is in H of the triples starting at t-1 and at t.
                    if t >= 1:
                        g += _central_gradient(
                            steps_buf, steps_off[i], steps_st, xi, li, t - 1, D, O
                        )
                    if t + 2 < T:
                        g += _central_gradient(steps_buf, steps_off[i], steps_st, xi, li, t, D, O)
                grad_steps[i, t] = ws2 * g
