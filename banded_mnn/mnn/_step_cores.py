"""Per-step cores of the MNN layer for the GPU: one thread per (system, step).

Each function below is one job -- step ``t`` of system ``i``, ``job = i * T +
t`` -- written as plain scalar Python with no calls to other functions, so that
``numba.cuda.jit(device=True)`` compiles it (the kernels in :mod:`._cuda`).
They compute what the CPU layer's lane kernels compute (:mod:`._kernels`,
whose docstrings derive the formulas; ``docs/mnn.md`` has the rows), with one
system per thread instead of ``L`` systems per SIMD vector:

* :func:`assemble_step`: band columns ``t*n .. t*n+n-1`` of the normal matrix
  (every entry of such a column comes from rows that involve unknown ``t*n +
  q``, so no two jobs write the same cell) and/or entries ``t*n .. t*n+n-1``
  of the right-hand side ``A^T W b``;
* :func:`vjp_step`: the gradients of step ``t``'s coefficients, right-hand
  side and step size from the solution ``x`` and ``lam = A^{-1} dL/du``.

Operands are addressed as everywhere in banded_mnn (:mod:`banded_mnn._strided`):
a flat buffer, one element offset per system, element strides per core axis
(zero where an axis broadcasts).  The band is ``(j, r) -> A[j + r, j]`` at
``band[band_off[i] + j * bsj + r * bsr]`` -- the GPU driver's workspace in
either regime (:mod:`banded_mnn._backends._gpu`), so the factorisation runs on
it in place with no gather.  Vectors (right-hand side, solution, ``lam``) are
``v[off[i] + j * sj]``.  Gradients are written C-contiguous, ``(systems, T, E,
n)``, ``(systems, T, E)`` and ``(systems, T - 1)``.

``tab0``, ``tab1``, ``tabq`` are the smoothness tables of
:func:`._kernels.smoothness_tables`, flattened ``(O * O,)`` (the weight
``w_s^2`` is applied here, so the tables depend on ``O`` alone and a device
keeps one copy).
"""

from __future__ import annotations


def assemble_step(
    job, coef, coef_off, cs0, cs1, cs2, cs3, steps, steps_off, hs,
    rhs, rhs_off, rs0, rs1, init, init_off, vs0, vs1, vs2,
    band, band_off, bsj, bsr, diag, y, y_off, ysj,
    T, E, D, O, S, I, bw, weq2, wiv2, ws2, central, tab0, tab1, tabq, lhs, solve, zero, one,
):  # fmt: skip
    """Step ``t`` of system ``i``: with ``lhs`` its band columns (zero where no
    row contributes) and their diagonal entries in ``diag[i * T * n + j]``;
    with ``solve`` its right-hand-side entries ``y[y_off[i] + j * ysj]``.
    ``zero`` and ``one`` are 0 and 1 in the arrays' dtype (a literal would
    make float32 arithmetic float64)."""
    i = job // T
    t = job - i * T
    n = D * O
    c0 = coef_off[i] + t * cs0
    if lhs:
        for q in range(n):
            for r in range(bw + 1):
                band[band_off[i] + (t * n + q) * bsj + r * bsr] = zero
        # Equation rows: A[t*n + p, t*n + q] += w_eq^2 sum_e c[t, e, p] c[t, e, q], p >= q.
        for e in range(E):
            for q in range(n):
                cq = weq2 * coef[c0 + e * cs1 + (q // O) * cs2 + (q % O) * cs3]
                for p in range(q, n):
                    cp = coef[c0 + e * cs1 + (p // O) * cs2 + (p % O) * cs3]
                    band[band_off[i] + (t * n + q) * bsj + (p - q) * bsr] += cp * cq
        if t < S:  # initial-value rows: the identity on the pinned unknowns
            for d in range(D):
                for o in range(I):
                    band[band_off[i] + (t * n + d * O + o) * bsj] += wiv2
        # Smoothness rows: w_s^2 h^(o1+o2) table[o1, o2] for every dimension;
        # pair (t-1, t) adds tab1 to block [t, t], pair (t, t+1) adds tab0 to
        # [t, t] and tabq to [t+1, t] (rows n + o1 - o2 below the diagonal).
        for pair in range(2):
            s = t - 1 + pair
            if s >= 0 and s + 1 < T:
                h = steps[steps_off[i] + s * hs]
                for o2 in range(O):
                    for o1 in range(O):
                        power = one
                        for _ in range(o1 + o2):
                            power *= h
                        for d in range(D):
                            col = band_off[i] + (t * n + d * O + o2) * bsj
                            if o1 >= o2:
                                value = tab1[o1 * O + o2] if pair == 0 else tab0[o1 * O + o2]
                                band[col + (o1 - o2) * bsr] += ws2 * value * power
                            if pair == 1:
                                value = tabq[o1 * O + o2]
                                band[col + (n + o1 - o2) * bsr] += ws2 * value * power
        if central:
            # Row a u[s, d, O-2] + b u[s+1, d, O-1] - a u[s+2, d, O-2] for s = t,
            # t-1, t-2: a = H^(O-3), b = H^(O-2), H = h_s + h_(s+1).
            for d in range(D):
                lo = band_off[i] + (t * n + d * O + O - 2) * bsj  # column of u[t, d, O-2]
                hi = lo + bsj  # u[t, d, O-1]
                for back in range(3):
                    s = t - back
                    if s >= 0 and s + 2 < T:
                        span = steps[steps_off[i] + s * hs] + steps[steps_off[i] + (s + 1) * hs]
                        b = one  # H^(O-2), a = H^(O-3) (powers by products: no float64)
                        for _ in range(O - 2):
                            b *= span
                        a = b / span
                        if back == 0:  # u[t] is the first unknown of the row
                            band[lo] += ws2 * a * a
                            band[lo + (n + 1) * bsr] += ws2 * a * b
                            band[lo + 2 * n * bsr] -= ws2 * a * a
                        elif back == 1:  # the middle unknown
                            band[hi] += ws2 * b * b
                            band[hi + (n - 1) * bsr] -= ws2 * a * b
                        else:  # the last unknown
                            band[lo] += ws2 * a * a
        for q in range(n):
            diag[i * T * n + t * n + q] = band[band_off[i] + (t * n + q) * bsj]
    if solve:
        r0 = rhs_off[i] + t * rs0
        for p in range(n):
            acc = zero
            for e in range(E):
                cp = coef[c0 + e * cs1 + (p // O) * cs2 + (p % O) * cs3]
                acc += (weq2 * rhs[r0 + e * rs1]) * cp
            if t < S and p % O < I:
                acc += wiv2 * init[init_off[i] + t * vs0 + (p // O) * vs1 + (p % O) * vs2]
            y[y_off[i] + (t * n + p) * ysj] = acc


def vjp_step(
    job, coef, coef_off, cs0, cs1, cs2, cs3, rhs, rhs_off, rs0, rs1, steps, steps_off, hs,
    x, x_off, xsj, lam, lam_off, lsj, info,
    T, E, D, O, weq2, ws2, central, tab0, tab1, tabq, lhs,
    grad_coef, grad_rhs, grad_steps, one, nan,
):  # fmt: skip
    """Gradients of step ``t`` of system ``i`` (``dL = lam . d(beta) - lam^T
    d(A) x``, see :func:`._kernels.vjp_steps`): ``grad_rhs`` always,
    ``grad_coef`` and ``grad_steps`` (step ``t < T - 1``) with ``lhs``.  A
    system whose ``info`` is not 0 failed: its gradients are ``nan``.  ``one``
    and ``nan`` are typed like the arrays."""
    zero = one - one
    i = job // T
    t = job - i * T
    n = D * O
    failed = info[i] != 0
    c0 = coef_off[i] + t * cs0
    base = t * n
    for e in range(E):
        cx = zero
        cl = zero
        for p in range(n):
            cp = coef[c0 + e * cs1 + (p // O) * cs2 + (p % O) * cs3]
            cx += cp * x[x_off[i] + (base + p) * xsj]
            cl += cp * lam[lam_off[i] + (base + p) * lsj]
        out = (i * T + t) * E + e
        grad_rhs[out] = nan if failed else weq2 * cl
        if lhs:
            residual = rhs[rhs_off[i] + t * rs0 + e * rs1] - cx
            for p in range(n):
                xp = x[x_off[i] + (base + p) * xsj]
                lp = lam[lam_off[i] + (base + p) * lsj]
                value = weq2 * (residual * lp - cl * xp)
                grad_coef[out * n + p] = nan if failed else value
    if not lhs or t + 1 >= T:
        return
    # Step size h_t: -lam^T (dA/dh) x over the pair (t, t+1), summed over the
    # dimensions; an entry w^2 h^(o1+o2) P[o1, o2] has derivative
    # w^2 (o1+o2) h^(o1+o2-1) P[o1, o2].
    h = steps[steps_off[i] + t * hs]
    acc = zero
    for o1 in range(O):
        for o2 in range(O):
            derivative = zero  # (o1 + o2) h^(o1 + o2 - 1), by d' = d h + h^k
            power = one
            for _ in range(o1 + o2):
                derivative = derivative * h + power
                power *= h
            m0 = zero  # lam[t, o1] x[t, o2]
            m1 = zero  # lam[t+1, o1] x[t+1, o2]
            m2 = zero  # lam[t+1, o1] x[t, o2]
            m3 = zero  # x[t+1, o1] lam[t, o2]
            for d in range(D):
                a1 = base + d * O + o1
                a2 = base + d * O + o2
                m0 += lam[lam_off[i] + a1 * lsj] * x[x_off[i] + a2 * xsj]
                m1 += lam[lam_off[i] + (a1 + n) * lsj] * x[x_off[i] + (a2 + n) * xsj]
                m2 += lam[lam_off[i] + (a1 + n) * lsj] * x[x_off[i] + a2 * xsj]
                m3 += x[x_off[i] + (a1 + n) * xsj] * lam[lam_off[i] + a2 * lsj]
            entry = o1 * O + o2
            acc += derivative * (tab0[entry] * m0 + tab1[entry] * m1 + tabq[entry] * (m2 + m3))
    g = -ws2 * acc
    if central:  # h_t is in H of the rows starting at t-1 and at t
        for s in range(t - 1, t + 1):
            if s >= 0 and s + 2 < T:
                span = steps[steps_off[i] + s * hs] + steps[steps_off[i] + (s + 1) * hs]
                # Entries a^2 = H^(2O-6), b^2 = H^(2O-4), ab = H^(2O-5), a =
                # H^(O-3), b = H^(O-2): each entry's derivative is its power
                # over H times the entry (counts and powers in the arrays' dtype).
                b = one
                count = zero  # 2O - 4
                for _ in range(O - 2):
                    b *= span
                    count += one + one
                a = b / span
                d_aa = (count - one - one) * a * a / span
                d_bb = count * b * b / span
                d_ab = (count - one) * a * b / span
                for d in range(D):
                    lo0 = s * n + d * O + O - 2  # u[s, d, O-2]
                    hi1 = lo0 + n + 1  # u[s+1, d, O-1]
                    lo2 = lo0 + 2 * n  # u[s+2, d, O-2]
                    x0 = x[x_off[i] + lo0 * xsj]
                    x1 = x[x_off[i] + hi1 * xsj]
                    x2 = x[x_off[i] + lo2 * xsj]
                    l0 = lam[lam_off[i] + lo0 * lsj]
                    l1 = lam[lam_off[i] + hi1 * lsj]
                    l2 = lam[lam_off[i] + lo2 * lsj]
                    g -= ws2 * (
                        d_aa * (l0 * x0 + l2 * x2 - l2 * x0 - l0 * x2)
                        + d_bb * l1 * x1
                        + d_ab * (l1 * x0 + x1 * l0 - l2 * x1 - x2 * l1)
                    )
    grad_steps[i * (T - 1) + t] = nan if failed else g
