"""Reference solvers of the MNN problem, for benchmarks and cross-checks.

* :func:`blockwise_forward` / :func:`blockwise_vjp`: S-MNN's algorithm written
  with batched NumPy operations -- per-step block Cholesky (a Python loop over
  the steps of ``cholesky``, triangular solves and matmuls on batched
  ``n x n`` blocks), converted to block LDL^T so that the diagonal solves of
  the substitution run batched over all steps, as S-MNN's ``ode_forward``
  does.  Triangular solves use ``numpy.linalg.solve`` (the fastest batched
  option in NumPy/SciPy at these block sizes: SciPy's batched
  ``solve_triangular`` is about 6x slower on (16, 9, 9)).
* :func:`dense_forward`: the same normal equations as a dense ``M x M``
  matrix per system, solved by ``numpy.linalg.solve`` -- what the original
  MNN's dense solver costs, O(M^3) time and O(M^2) memory.

Inputs are canonical: step axis not first, batch shapes already equal (no
broadcasting), float64.  They are meant for measuring, not for use.
"""

from __future__ import annotations

import numpy as np

from ._kernels import smoothness_tables


def blocks(coefficients, steps, n_init_var_steps, n_init_var_orders, weights=(1.0, 1.0, 1.0),
           central=False):  # fmt: skip
    """Blocks of the normal matrix, vectorised over batch and steps.

    Returns ``(a0, a1, a2)``: diagonal blocks (B, T, n, n), first and second
    sub-diagonal blocks (B, T-1, n, n) and (B, T-2, n, n) (``None`` without
    central smoothness).
    """
    weq2, wiv2, ws2 = (w * w for w in weights)
    B, T, E, D, O = coefficients.shape
    n = D * O
    c = coefficients.reshape(B, T, E, n)
    a0 = weq2 * np.einsum("btep,bteq->btpq", c, c)
    pinned = (np.arange(D)[:, None] * O + np.arange(n_init_var_orders)).reshape(-1)
    a0[:, :n_init_var_steps, pinned, pinned] += wiv2
    p0, p1, q = smoothness_tables(O, central)
    orders = np.arange(O)
    hp = steps[..., None, None] ** (orders[:, None] + orders)  # (B, T-1, O, O)
    a1 = np.zeros((B, T - 1, n, n))
    for d in range(D):
        block = slice(d * O, (d + 1) * O)
        a0[:, :-1, block, block] += ws2 * hp * p0
        a0[:, 1:, block, block] += ws2 * hp * p1
        a1[:, :, block, block] = ws2 * hp * q
    a2 = None
    if central:
        span = steps[:, :-1] + steps[:, 1:]
        aa, ab, bb = (ws2 * span ** float(k) for k in (2 * O - 6, 2 * O - 5, 2 * O - 4))
        a2 = np.zeros((B, T - 2, n, n))
        for d in range(D):
            lo, hi = d * O + O - 2, d * O + O - 1
            a0[:, :-2, lo, lo] += aa
            a0[:, 2:, lo, lo] += aa
            a0[:, 1:-1, hi, hi] += bb
            a1[:, :-1, hi, lo] += ab
            a1[:, 1:, lo, hi] -= ab
            a2[:, :, lo, lo] = -aa
    return a0, a1, a2


def right_hand_side(coefficients, rhs_equation, init_vars, weights=(1.0, 1.0, 1.0)):
    """``A^T W b`` as (B, T, n); the batch axes of the inputs broadcast (a
    left-hand side of batch 1 may serve many right-hand sides)."""
    weq2, wiv2 = weights[0] ** 2, weights[1] ** 2
    *_, T, E, D, O = coefficients.shape
    c = coefficients.reshape(coefficients.shape[:-2] + (D * O,))
    beta = weq2 * (c * rhs_equation[..., None]).sum(axis=-2)
    S, I = init_vars.shape[-3], init_vars.shape[-1]
    pinned = (np.arange(D)[:, None] * O + np.arange(I)).reshape(-1)
    beta = np.array(
        np.broadcast_to(beta, np.broadcast_shapes(beta.shape, init_vars.shape[:-3] + (1, 1)))
    )
    beta[..., :S, pinned] += wiv2 * init_vars.reshape(init_vars.shape[:-2] + (D * I,))
    return beta


def _solve(triangular, rhs):
    return np.linalg.solve(triangular, rhs)


def factor(a0, a1, a2):
    """Block LDL^T, S-MNN style: returns ``(l0, l1, l2)`` with ``l0`` the
    Cholesky factors of the pivots D_t and ``l1``, ``l2`` the unit-lower
    multipliers (``L_(t+1),t = A~_(t+1),t D_t^{-1}``)."""
    T = a0.shape[1]
    l0, l1 = a0.copy(), a1.copy()
    l2 = None if a2 is None else a2.copy()
    for t in range(T):  # block Cholesky, one step at a time
        if l2 is not None and t >= 2:
            l2[:, t - 2] = _solve(l0[:, t - 2], l2[:, t - 2].swapaxes(-1, -2)).swapaxes(-1, -2)
            l1[:, t - 1] -= l2[:, t - 2] @ l1[:, t - 2].swapaxes(-1, -2)
        if t >= 1:
            l1[:, t - 1] = _solve(l0[:, t - 1], l1[:, t - 1].swapaxes(-1, -2)).swapaxes(-1, -2)
            if l2 is not None and t >= 2:
                l0[:, t] -= l2[:, t - 2] @ l2[:, t - 2].swapaxes(-1, -2)
            l0[:, t] -= l1[:, t - 1] @ l1[:, t - 1].swapaxes(-1, -2)
        l0[:, t] = np.linalg.cholesky(l0[:, t])
    # To LDL^T: multipliers times L0^{-1}, batched over all steps.
    l1 = _solve(l0[:, :-1].swapaxes(-1, -2), l1.swapaxes(-1, -2)).swapaxes(-1, -2)
    if l2 is not None:
        l2 = _solve(l0[:, :-2].swapaxes(-1, -2), l2.swapaxes(-1, -2)).swapaxes(-1, -2)
    return l0, l1, l2


def substitute(l0, l1, l2, rhs):
    """Solve with the block LDL^T factor; ``rhs`` (B, T, n)."""
    T = rhs.shape[1]
    y = rhs[..., None].copy()
    for t in range(1, T):  # unit-lower forward substitution
        y[:, t] -= l1[:, t - 1] @ y[:, t - 1]
        if l2 is not None and t >= 2:
            y[:, t] -= l2[:, t - 2] @ y[:, t - 2]
    # D^{-1}, batched over all steps.
    y = _solve(l0, y)
    y = _solve(l0.swapaxes(-1, -2), y)
    for t in range(T - 2, -1, -1):  # unit-upper backward substitution
        y[:, t] -= l1[:, t].swapaxes(-1, -2) @ y[:, t + 1]
        if l2 is not None and t + 2 < T:
            y[:, t] -= l2[:, t].swapaxes(-1, -2) @ y[:, t + 2]
    return y[..., 0]


def blockwise_forward(coefficients, rhs_equation, init_vars, steps, weights=(1.0, 1.0, 1.0),
                      central=False):  # fmt: skip
    """Solution ``u`` (B, T, D, O) and the factor, by S-MNN's per-step algorithm.

    ``coefficients`` and ``steps`` may have batch 1 and serve a larger
    right-hand-side batch (factor once, substitute for all).
    """
    S, I = init_vars.shape[-3], init_vars.shape[-1]
    fac = factor(*blocks(coefficients, steps, S, I, weights, central))
    beta = right_hand_side(coefficients, rhs_equation, init_vars, weights)
    x = substitute(*fac, beta)
    D, O = coefficients.shape[-2:]
    return x.reshape(x.shape[:2] + (D, O)), fac


def blockwise_vjp(fac, u, grad_u, coefficients, rhs_equation, weights=(1.0, 1.0, 1.0), n_init=1,
                  n_init_orders=1):  # fmt: skip
    """S-MNN's backward: one more substitution, the block gradients
    ``-lam x^T`` (as its ``LinearSolver.backward``), then the gradients of the
    equation and initial-value assembly.  The step-size gradient is not
    computed (which only flatters this baseline)."""
    weq2, wiv2 = weights[0] ** 2, weights[1] ** 2
    *_, T, E, D, O = coefficients.shape
    n = D * O
    lam = substitute(*fac, grad_u.reshape(-1, T, n))
    x = u.reshape(-1, T, n)
    d_a0 = -lam[..., :, None] * x[..., None, :]
    d_a1 = -(lam[:, 1:, :, None] * x[:, :-1, None, :] + x[:, 1:, :, None] * lam[:, :-1, None, :])
    c = coefficients.reshape(-1, T, E, n)
    cl = (c * lam[:, :, None]).sum(-1)
    cx = (c * x[:, :, None]).sum(-1)
    grad_rhs = weq2 * cl
    grad_coef = weq2 * (
        (rhs_equation - cx)[..., None] * lam[:, :, None] - cl[..., None] * x[:, :, None]
    )
    grad_init = wiv2 * lam.reshape(-1, T, D, O)[:, :n_init, :, :n_init_orders]
    return grad_coef.reshape(grad_coef.shape[:2] + (E, D, O)), grad_rhs, grad_init, (d_a0, d_a1)


def dense_forward(coefficients, rhs_equation, init_vars, steps, weights=(1.0, 1.0, 1.0),
                  central=False):  # fmt: skip
    """Solution ``u`` (B, T, D, O) from the dense normal matrix (B, M, M)."""
    S, I = init_vars.shape[-3], init_vars.shape[-1]
    a0, a1, a2 = blocks(coefficients, steps, S, I, weights, central)
    beta = right_hand_side(coefficients, rhs_equation, init_vars, weights)
    B, T, n, _ = a0.shape
    dense = np.zeros((B, T, n, T, n))
    t = np.arange(T)
    dense[:, t, :, t, :] = a0.transpose(1, 0, 2, 3)
    dense[:, t[1:], :, t[:-1], :] = a1.transpose(1, 0, 2, 3)
    dense[:, t[:-1], :, t[1:], :] = a1.transpose(1, 0, 3, 2)
    if a2 is not None:
        dense[:, t[2:], :, t[:-2], :] = a2.transpose(1, 0, 2, 3)
        dense[:, t[:-2], :, t[2:], :] = a2.transpose(1, 0, 3, 2)
    x = np.linalg.solve(dense.reshape(B, T * n, T * n), beta.reshape(-1, T * n, 1))
    D, O = coefficients.shape[-2:]
    return x.reshape(x.shape[0], T, D, O)


#: Benchmark sizes, name -> (B, T, E, D, O, shared left-hand side): a long
#: multi-dimensional batch, and Lorenz discovery (1536 one-dimensional ODEs
#: u' = rhs with one shared left-hand side, as in S-MNN's notebook).
BENCH_CASES = {
    "B=16 T=2048 D=3 O=3 E=3": (16, 2048, 3, 3, 3, False),
    "Lorenz: B=1536 T=50 D=1 O=3, shared LHS": (1536, 50, 1, 1, 3, True),
}


def bench_inputs(batch, steps, equations, dims, orders, shared, rng):
    """Inputs of one benchmark case, float64: ``(coefficients, rhs_equation,
    init_vars, steps)`` in the canonical layout.  With ``shared`` the
    coefficients are (0, 1, 0, ...) (u' = rhs) and, with the steps, have batch 1."""
    if shared:
        coefficients = np.zeros((1, 1, equations, dims, orders))
        coefficients[..., 1] = 1.0
        h = np.full((1, steps - 1), 0.01)
    else:
        coefficients = rng.standard_normal((batch, steps, equations, dims, orders))
        h = rng.uniform(0.01, 0.05, (batch, steps - 1))
    rhs = rng.standard_normal((batch, steps, equations))
    init = rng.standard_normal((batch, 1, dims, 1))
    return coefficients, rhs, init, h
