"""An independent dense oracle for the MNN layer.

Builds every least-squares row one by one, straight from the definitions in
``docs/mnn.md`` (equation, initial-value, forward/backward Taylor smoothness
and central rows), and solves the weighted least-squares problem with SVD
(``numpy.linalg.lstsq``) -- no normal equations, no band, no shared code with
the package.
"""

from __future__ import annotations

import itertools
import math

import numpy as np


def dense_rows(coef, rhs, init, steps, n_init_var_steps, weights=(1.0, 1.0, 1.0), central=False):
    """Weighted rows ``(A, b)`` of one system; ``coef`` (T, E, D, O), ``rhs``
    (T, E), ``init`` (S, D, I), ``steps`` (T-1,), all at full size."""
    T, E, D, O = coef.shape
    n_iv_orders = init.shape[-1]
    w_eq, w_iv, w_s = weights

    def at(t, d, o):
        return (t * D + d) * O + o

    rows, targets = [], []

    def add(entries, target, weight):
        row = np.zeros(T * D * O)
        for index, value in entries:
            row[index] += value
        rows.append(weight * row)
        targets.append(weight * target)

    for t, e in itertools.product(range(T), range(E)):
        entries = [(at(t, d, o), coef[t, e, d, o]) for d in range(D) for o in range(O)]
        add(entries, rhs[t, e], w_eq)
    for t, d, o in itertools.product(range(n_init_var_steps), range(D), range(n_iv_orders)):
        add([(at(t, d, o), 1.0)], init[t, d, o], w_iv)
    orders = range(O - 1) if central else range(O)
    for t, d, k in itertools.product(range(T - 1), range(D), orders):
        h = steps[t]
        forward = [(at(t, d, o), h**o / math.factorial(o - k)) for o in range(k, O)]
        add(forward + [(at(t + 1, d, k), -(h**k))], 0.0, w_s)
        backward = [(at(t + 1, d, o), (-h) ** o / math.factorial(o - k)) for o in range(k, O)]
        add(backward + [(at(t, d, k), -((-h) ** k))], 0.0, w_s)
    if central:
        for t, d in itertools.product(range(T - 2), range(D)):
            span = steps[t] + steps[t + 1]
            a, b = span ** float(O - 3), span ** float(O - 2)
            add([(at(t, d, O - 2), a), (at(t + 1, d, O - 1), b), (at(t + 2, d, O - 2), -a)], 0, w_s)
    return np.array(rows).reshape(-1, T * D * O), np.array(targets)


def _cores(coefficients, rhs_equation, init_vars, steps, n_steps, n_init_var_steps):
    """Batch shape and a function giving each system's full-size inputs."""
    T = n_steps
    E, D, O = coefficients.shape[-3:]
    S, I = n_init_var_steps, init_vars.shape[-1]
    cores = {
        "c": (coefficients, (T, E, D, O)),
        "r": (rhs_equation, (T, E)),
        "v": (init_vars, (S, D, I)),
        "h": (steps, (T - 1,)),
    }
    batch = np.broadcast_shapes(*(x.shape[: x.ndim - len(core)] for x, core in cores.values()))

    def system(index):
        out = {}
        for key, (x, core) in cores.items():
            xb = np.broadcast_to(x, batch + x.shape[x.ndim - len(core) :])[index]
            out[key] = np.broadcast_to(xb, core).astype(np.float64)
        return out

    return batch, system


def oracle_forward(
    coefficients,
    rhs_equation,
    init_vars,
    steps,
    *,
    n_steps=None,
    n_init_var_steps=None,
    weights=(1.0, 1.0, 1.0),
    central=False,
    return_condition=False,
):
    """``ode_forward`` (step axis not first) by dense SVD least squares, in float64."""
    n_steps = steps.shape[-1] + 1 if n_steps is None else n_steps
    S = init_vars.shape[-3] if n_init_var_steps is None else n_init_var_steps
    batch, system = _cores(coefficients, rhs_equation, init_vars, steps, n_steps, S)
    D, O = coefficients.shape[-2:]
    u = np.empty(batch + (n_steps, D, O))
    condition = 1.0
    for index in np.ndindex(*batch):
        s = system(index)
        a, b = dense_rows(s["c"], s["r"], s["v"], s["h"], S, weights, central)
        u[index] = np.linalg.lstsq(a, b, rcond=None)[0].reshape(n_steps, D, O)
        condition = max(condition, np.linalg.cond(a))
    return (u, condition) if return_condition else u
