"""The MNN layer against the independent dense oracle, closed-form ODE
solutions and finite differences."""

from __future__ import annotations

import math

import numpy as np
import pytest
from mnn_oracle import dense_rows, oracle_forward

from banded_mnn import NotPositiveDefiniteError
from banded_mnn.mnn import OdeSystem, clear_frozen_lhs_cache, ode_forward


def random_problem(rng, batch=(2,), T=5, E=2, D=2, O=3, S=1, I=2, dtype=np.float64, **b):
    """Random, well-posed inputs; ``b`` maps an input name to True to give
    its [b] axis length 1."""
    t_c = 1 if b.get("coefficients") else T
    t_r = 1 if b.get("rhs_equation") else T
    s_v = 1 if b.get("init_vars") else S
    t_h = 1 if b.get("steps") else T - 1
    coefficients = rng.standard_normal(batch + (t_c, E, D, O))
    rhs_equation = rng.standard_normal(batch + (t_r, E))
    init_vars = rng.standard_normal(batch + (s_v, D, I))
    steps = rng.uniform(0.2, 0.6, batch + (t_h,))
    return [x.astype(dtype) for x in (coefficients, rhs_equation, init_vars, steps)]


def assert_matches_oracle(u, inputs, *, n_steps=None, n_init_var_steps=None, weights=(1, 1, 1),
                          central=False, scale=1.0):  # fmt: skip
    ref, cond = oracle_forward(
        *[np.asarray(x, np.float64) for x in inputs],
        n_steps=n_steps,
        n_init_var_steps=n_init_var_steps,
        weights=weights,
        central=central,
        return_condition=True,
    )
    assert u.shape == ref.shape
    assert np.isfinite(u).all()
    # Normal equations: relative error ~ eps * cond(A)^2.
    tol = 50 * np.finfo(u.dtype).eps * cond**2 * scale
    err = np.linalg.norm(u - ref) / np.linalg.norm(ref)
    assert err <= tol, (err, tol, cond)


_SIZES = [  # T, E, D, O, S, I
    (5, 2, 2, 3, 1, 2),
    (6, 1, 1, 3, 1, 1),  # Lorenz-like 1-D
    (4, 3, 3, 2, 2, 1),
    (7, 2, 1, 4, 1, 4),
    (3, 1, 2, 5, 3, 2),
    (2, 2, 2, 3, 1, 3),  # one pair of steps
    (1, 3, 2, 2, 1, 1),  # one step: no smoothness rows
]


@pytest.mark.parametrize(
    "central,T,E,D,O,S,I",
    [(False, *size) for size in _SIZES] + [(True, *size) for size in _SIZES if size[0] >= 3],
)
def test_matches_dense_oracle(rng, lanes, central, T, E, D, O, S, I):
    inputs = random_problem(rng, (3,), T, E, D, O, S, I)
    u = ode_forward(*inputs, enable_central_smoothness=central)
    assert u.dtype == np.float64
    assert_matches_oracle(u, inputs, central=central)


def test_short_sequences_central(rng):
    for T in (1, 2):
        inputs = random_problem(rng, (2,), T, 2, 2, 3, 1, 3)
        u = ode_forward(*inputs, n_steps=T, enable_central_smoothness=True)
        assert_matches_oracle(u, inputs, n_steps=T, central=True)


def test_orders_one_and_two(rng):
    inputs = random_problem(rng, (2,), 6, 1, 2, 1, 1, 1)
    assert_matches_oracle(ode_forward(*inputs), inputs)
    inputs = random_problem(rng, (2,), 6, 2, 2, 2, 1, 1)
    for central in (False, True):
        u = ode_forward(*inputs, enable_central_smoothness=central)
        assert_matches_oracle(u, inputs, central=central)


@pytest.mark.parametrize("central", [False, True])
def test_weights(rng, lanes, central):
    inputs = random_problem(rng, (2,), 6, 2, 2, 3, 2, 2)
    weights = (0.7, 3.0, 1.9)
    u = ode_forward(
        *inputs,
        weight_equation=weights[0],
        weight_init_var=weights[1],
        weight_smooth=weights[2],
        enable_central_smoothness=central,
    )
    assert_matches_oracle(u, inputs, weights=weights, central=central)


@pytest.mark.parametrize("axis", ["coefficients", "rhs_equation", "init_vars", "steps"])
def test_broadcast_b_axes(rng, axis):
    inputs = random_problem(rng, (2,), 6, 2, 2, 3, 2, 2, **{axis: True})
    u = ode_forward(*inputs, n_steps=6, n_init_var_steps=2)
    assert_matches_oracle(u, inputs, n_steps=6, n_init_var_steps=2)


def test_batch_broadcasting_and_shared_lhs(rng, lanes):
    c, r, v, h = random_problem(rng, (4, 3), 6, 2, 2, 3, 1, 2)
    # Left-hand side batch (1, 3) / (4, 1): broadcast; right-hand side (5, 4, 3).
    c, h = c[:1], h[:, :1]
    r = np.broadcast_to(r, (5, 4, 3) + r.shape[-2:]) + rng.standard_normal((5, 4, 3, 6, 2))
    inputs = [c, r, v, h]
    u = ode_forward(*inputs)
    assert u.shape == (5, 4, 3, 6, 2, 3)
    assert_matches_oracle(u, inputs)
    # One system shared by many right-hand sides (Lorenz discovery).
    c1, h1 = c[0, :1], h[:1, 0]
    inputs = [c1, r, v, h1]
    u = ode_forward(*inputs)
    assert_matches_oracle(u, inputs)


def test_step_dim_first(rng):
    inputs = random_problem(rng, (2, 3), 6, 2, 2, 3, 2, 2)
    u = ode_forward(*inputs)
    first = [np.moveaxis(x, x.ndim - k, 0) for x, k in zip(inputs, (4, 2, 3, 1), strict=True)]
    u_first = ode_forward(*first, is_step_dim_first=True)
    assert u_first.shape == (6, 2, 3, 2, 3)
    np.testing.assert_array_equal(np.moveaxis(u_first, 0, -3), u)


def test_strided_and_expanded_inputs(rng):
    c, r, v, h = random_problem(rng, (3,), 6, 2, 2, 3, 1, 2)
    # Fortran order, reversed, and an expanded (zero-stride) equation axis.
    cf = np.asfortranarray(c)
    rr = np.broadcast_to(r[..., :1], r.shape)
    hv = np.ascontiguousarray(h[:, ::-1])[:, ::-1]
    u = ode_forward(cf, rr, v, hv)
    assert_matches_oracle(u, [cf, rr, v, hv])


def test_float32(rng):
    inputs = random_problem(rng, (3,), 6, 2, 2, 3, 1, 2, dtype=np.float32)
    u = ode_forward(*inputs)
    assert u.dtype == np.float32
    assert_matches_oracle(u, inputs)
    # Mixed: any float64 input makes the result float64 (SciPy's rule).
    mixed = inputs[:3] + [inputs[3].astype(np.float64)]
    assert ode_forward(*mixed).dtype == np.float64


def test_no_initial_values(rng):
    # Sine example shapes: init_vars (1, 1, 0, 1, 0); the equations pin u itself.
    c = rng.standard_normal((1, 1, 20, 1, 1, 3))
    c[..., 0] += 3.0
    r = np.ones((1, 1, 20, 1))
    v = np.zeros((1, 1, 0, 1, 0))
    h = rng.uniform(0.05, 0.15, (1, 1, 19))
    u = ode_forward(c, r, v, h)
    assert_matches_oracle(u, [c, r, v, h])


def test_empty_batch(rng):
    c, r, v, h = random_problem(rng, (0,), 5, 2, 2, 3, 1, 2)
    u = ode_forward(c, r, v, h)
    assert u.shape == (0, 5, 2, 3)


def test_factor_once_solve_many(rng, lanes):
    c, r, v, h = random_problem(rng, (2,), 8, 2, 2, 3, 1, 2)
    system = OdeSystem.factor(c, h, n_init_var_steps=1, n_init_var_orders=2)
    assert system.factor_band.shape == (2, system.spec.bandwidth + 1, 8 * 6)
    for _ in range(3):
        r2 = rng.standard_normal((4, 2, 8, 2))
        v2 = rng.standard_normal((4, 2, 1, 2, 2))
        np.testing.assert_allclose(
            system.solve(c, r2, v2), ode_forward(c, r2, v2, h), rtol=1e-12, atol=1e-12
        )


def test_frozen_lhs_cache(rng):
    clear_frozen_lhs_cache()
    try:
        c, r, v, h = random_problem(rng, (2,), 6, 1, 1, 3, 1, 1)
        u = ode_forward(c, r, v, h, frozen_lhs_cache_version=7)
        # Later calls reuse the cached factor: new steps are ignored, as in S-MNN.
        u_again = ode_forward(c, r, v, h * 2, frozen_lhs_cache_version=7)
        np.testing.assert_allclose(u_again, u, rtol=1e-13)
        r2 = rng.standard_normal((5, 2, 6, 1))
        np.testing.assert_allclose(
            ode_forward(c, r2, v, h, frozen_lhs_cache_version=7), ode_forward(c, r2, v, h)
        )
        # A different problem under the same version is refused, not silently stale.
        c4, r4, v4, h4 = random_problem(rng, (2,), 7, 1, 1, 3, 1, 1)
        with pytest.raises(ValueError, match="frozen_lhs_cache_version=7"):
            ode_forward(c4, r4, v4, h4, frozen_lhs_cache_version=7)
    finally:
        clear_frozen_lhs_cache()


# --------------------------------------------------------------------------
# Closed-form ODE solutions: the error shrinks with the step size.
# --------------------------------------------------------------------------


def _closed_form_cases():
    t = np.linspace  # noqa: F841  (documentation of the variable below)
    return {
        # name: (coefficients over orders 0..2, rhs, init values (u, u'), exact u(t))
        "rc": ([0.7, 1.0, 0.0], 0.0, [10.0], lambda t: 10 * np.exp(-0.7 * t)),
        "population": ([-0.23, 1.0, 0.0], 0.0, [4.78], lambda t: 4.78 * np.exp(0.23 * t)),
        "harmonic": ([2.1, 0.0, 1.0], 0.0, [0.4, -0.03], lambda t: (
            0.4 * np.cos(np.sqrt(2.1) * t) - 0.03 / np.sqrt(2.1) * np.sin(np.sqrt(2.1) * t)
        )),
        "damped": ([4.5, 0.43, 1.0], 0.0, [0.12, 0.043], None),
    }  # fmt: skip


def _damped_exact(t, k=4.5, c=0.43, u0=0.12, v0=0.043):
    a = -c / 2
    w = np.sqrt(k - a * a)
    return np.exp(a * t) * (u0 * np.cos(w * t) + (v0 - a * u0) / w * np.sin(w * t))


@pytest.mark.parametrize("central", [False, True], ids=["default", "central"])
@pytest.mark.parametrize("name", ["rc", "population", "harmonic", "damped"])
def test_closed_form_convergence(name, central):
    coeffs, rhs, init, exact = _closed_form_cases()[name]
    exact = exact or _damped_exact
    errors = []
    for h in (0.04, 0.02, 0.01):
        T = int(round(4.0 / h)) + 1
        c = np.array(coeffs).reshape(1, 1, 1, 3)
        u = ode_forward(
            c, np.full((1, 1), rhs), np.array(init).reshape(1, 1, -1), np.full(T - 1, h),
            enable_central_smoothness=central,
        )  # fmt: skip
        t = h * np.arange(T)
        errors.append(np.abs(u[:, 0, 0] - exact(t)).max() / np.abs(exact(t)).max())
    assert errors[-1] < 2e-3, errors
    assert errors[2] < errors[1] < errors[0], errors


def test_third_order_linear_system():
    # x''' = -x' - x'' (the custom system 99 of S-MNN's standalone notebook:
    # x0' = x1, x1' = x2, x2' = -x1 - x2), x(0) = 0, x'(0) = -1, x''(0) = 1.
    def exact(t):
        # Characteristic roots 0, -1/2 +- i sqrt(3)/2: x = A + e^{-t/2}(B cos wt + C sin wt).
        w = np.sqrt(3) / 2
        m = np.array([[1, 1, 0], [0, -0.5, w], [0, 0.25 - w * w, -w]])
        a, b, c = np.linalg.solve(m, [0.0, -1.0, 1.0])
        return a + np.exp(-t / 2) * (b * np.cos(w * t) + c * np.sin(w * t))

    errors = []
    for h in (0.04, 0.02, 0.01):
        T = int(round(5.0 / h)) + 1
        c = np.array([0.0, 1.0, 1.0, 1.0]).reshape(1, 1, 1, 4)
        u = ode_forward(c, np.zeros((1, 1)), np.array([[[0.0, -1.0, 1.0]]]), np.full(T - 1, h))
        t = h * np.arange(T)
        errors.append(np.abs(u[:, 0, 0] - exact(t)).max())
    assert errors[-1] < 1e-3, errors
    assert errors[2] < errors[1] < errors[0], errors


# --------------------------------------------------------------------------
# Vector-Jacobian product against finite differences (float64).
# --------------------------------------------------------------------------


def _directional_check(rng, inputs, kwargs, lhs=True):
    names = ["coefficients", "rhs_equation", "init_vars", "steps"]
    u = ode_forward(*inputs, **kwargs)
    g = rng.standard_normal(u.shape)
    system = OdeSystem.factor(
        inputs[0],
        inputs[3],
        n_init_var_steps=kwargs.get("n_init_var_steps", inputs[2].shape[-3]),
        n_init_var_orders=inputs[2].shape[-1],
        n_steps=kwargs.get("n_steps"),
        enable_central_smoothness=kwargs.get("enable_central_smoothness", False),
        weight_equation=kwargs.get("weight_equation", 1.0),
        weight_init_var=kwargs.get("weight_init_var", 1.0),
        weight_smooth=kwargs.get("weight_smooth", 1.0),
    )
    grads = system.vjp(g, u, inputs[0], inputs[1], inputs[2], inputs[3] if lhs else None)
    for i, name in enumerate(names):
        grad = getattr(grads, name)
        if not lhs and name in ("coefficients", "steps"):
            assert grad is None
            continue
        assert grad.shape == inputs[i].shape, name
        direction = rng.standard_normal(inputs[i].shape)

        def along(s, i=i, direction=direction):
            moved = [x + s * direction if j == i else x for j, x in enumerate(inputs)]
            return np.sum(g * ode_forward(*moved, **kwargs))

        # Fourth-order central difference: the second-order one's truncation
        # error (eps^2 times the third derivative) reached a few 1e-6 for some
        # draws with O = 4, where the step sizes enter as h^6.
        eps = 1e-4
        numeric = (8 * (along(eps) - along(-eps)) - (along(2 * eps) - along(-2 * eps))) / (12 * eps)
        analytic = np.sum(grad * direction)
        assert abs(numeric - analytic) <= 1e-6 * max(1.0, abs(numeric)), (name, numeric, analytic)


@pytest.mark.parametrize("central", [False, True], ids=["default", "central"])
@pytest.mark.parametrize("O", [2, 3, 4])
def test_vjp_finite_differences(rng, lanes, central, O):
    inputs = random_problem(rng, (2,), 6, 2, 2, O, 2, min(O, 2))
    kwargs = {"enable_central_smoothness": central, "weight_equation": 1.3,
              "weight_init_var": 0.8, "weight_smooth": 1.7}  # fmt: skip
    _directional_check(rng, inputs, kwargs)


@pytest.mark.parametrize("central", [False, True], ids=["default", "central"])
def test_vjp_across_step_blocks(rng, central):
    """Sequences longer than the kernels' blocks of 32 steps (the VJP's
    solve runs a block at a time from the end): every input by a random
    direction, and the step sizes one by one around the block boundaries,
    where central smoothness reads the previous block's values."""
    from banded_mnn.mnn._cpu import STEP_BLOCK

    T = 2 * STEP_BLOCK + 6
    inputs = random_problem(rng, (2,), T, 2, 2, 3, 1, 2)
    kwargs = {"enable_central_smoothness": central, "weight_smooth": 1.7}
    _directional_check(rng, inputs, kwargs)
    c, r, v, h = inputs
    u = ode_forward(*inputs, **kwargs)
    g = rng.standard_normal(u.shape)
    system = OdeSystem.factor(c, h, n_init_var_steps=1, n_init_var_orders=2, **kwargs)
    grad_h = system.vjp(g, u, c, r, v, h).steps
    eps = 1e-6
    for t in (STEP_BLOCK - 2, STEP_BLOCK - 1, STEP_BLOCK, STEP_BLOCK + 1, 2 * STEP_BLOCK):
        step = np.zeros_like(h)
        step[1, t] = eps
        numeric = np.sum(g * (ode_forward(c, r, v, h + step, **kwargs)
                              - ode_forward(c, r, v, h - step, **kwargs))) / (2 * eps)  # fmt: skip
        assert abs(numeric - grad_h[1, t]) <= 1e-5 * max(1.0, abs(numeric)), (
            t,
            numeric,
            grad_h[1, t],
        )


def test_vjp_broadcasting(rng):
    # Every [b] axis of length 1, and a left-hand side shared by 3 right-hand sides.
    c, r, v, h = random_problem(
        rng, (1,), 6, 2, 2, 3, 2, 2, coefficients=True, init_vars=True, steps=True
    )
    r = rng.standard_normal((3, 6, 2))
    _directional_check(rng, [c, r, v, h], {"n_steps": 6, "n_init_var_steps": 2})


def test_vjp_frozen_lhs(rng):
    inputs = random_problem(rng, (2,), 6, 2, 2, 3, 1, 2)
    _directional_check(rng, inputs, {}, lhs=False)


def test_vjp_matches_dense_normal_equations(rng):
    # dL/d(rhs) and dL/d(init) from the dense oracle's rows: A^T W b is linear in b.
    c, r, v, h = random_problem(rng, (), 5, 2, 2, 3, 1, 2)
    u = ode_forward(c, r, v, h)
    g = rng.standard_normal(u.shape)
    a, _ = dense_rows(c, r, v, h, 1)
    lam = np.linalg.solve(a.T @ a, g.reshape(-1))
    system = OdeSystem.factor(c, h, n_init_var_steps=1, n_init_var_orders=2)
    grads = system.vjp(g, u, c, r, v, h)
    expected_r = np.einsum("ted,td->te", c.reshape(5, 2, 6), lam.reshape(5, 6))
    np.testing.assert_allclose(grads.rhs_equation, expected_r, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(grads.init_vars, lam.reshape(5, 2, 3)[:1, :, :2], rtol=1e-9)


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


def test_singular_problem_is_reported(lanes):
    # u' = 1 with no initial value: the constant is free.
    c = np.array([0.0, 1.0, 0.0]).reshape(1, 1, 1, 3)
    # System 0 (u + u' = 1) is well posed, system 1 (u' = 1) is not.
    batch = np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0]]).reshape(2, 1, 1, 1, 3)
    with pytest.raises(NotPositiveDefiniteError, match="batch index") as excinfo:
        ode_forward(batch, np.ones((2, 1, 1)), np.zeros((2, 0, 1, 0)), np.full((2, 9), 0.1))
    assert excinfo.value.batch_index == (1,)
    assert excinfo.value.info[0] == 0
    assert "singular to working precision" in "".join(excinfo.value.__notes__)
    system = OdeSystem.factor(c, np.full(9, 0.1), n_init_var_steps=0, n_init_var_orders=0,
                              check=False)  # fmt: skip
    assert system.info > 0
    assert np.isnan(system.solve(c, np.ones((1, 1)), np.zeros((0, 1, 0)))).all()


@pytest.mark.parametrize("central", [False, True])
@pytest.mark.parametrize("steps", [2, 9, 30])
def test_singular_problem_is_reported_by_cyclic_reduction(steps, central):
    """Cyclic reduction eliminates in another order; the singular-pivot test
    still finds the free constant (u' = 1 and u'' = 0 with no initial value)."""
    c = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]).reshape(1, 2, 1, 3)
    inputs = (c, np.array([[1.0, 0.0]]), np.zeros((0, 1, 0)), np.full(steps - 1, 0.1))
    for algorithm in ("sequential", "cyclic"):
        with pytest.raises(NotPositiveDefiniteError) as excinfo:
            ode_forward(*inputs, algorithm=algorithm, enable_central_smoothness=central)
        assert "singular to working precision" in "".join(excinfo.value.__notes__)
    pinned = (c, np.array([[1.0, 0.0]]), np.zeros((1, 1, 1)), np.full(steps - 1, 0.1))
    u = ode_forward(*pinned, algorithm="cyclic", enable_central_smoothness=central)
    np.testing.assert_allclose(u, ode_forward(*pinned, enable_central_smoothness=central),
                               rtol=1e-9, atol=1e-9)  # fmt: skip


def test_failure_in_a_later_block_is_located(rng):
    # The factorisation works block by block in a window of columns; the
    # failed minor's order is still counted from the first unknown.  A NaN
    # coefficient of unknown (d=1, o=1) at step 70 (third block of 32 steps)
    # makes that unknown's pivot the first non-finite one.
    c, r, v, h = random_problem(rng, (11,), 100, 2, 2, 3, 1, 2)
    c[9, 70, 1, 1, 1] = np.nan
    system = OdeSystem.factor(c, h, n_init_var_steps=1, n_init_var_orders=2, check=False)
    expected = np.zeros(11, np.int32)
    expected[9] = 70 * 6 + (1 * 3 + 1) + 1
    np.testing.assert_array_equal(system.info, expected)


def test_nonfinite_lhs_is_named(rng):
    c, r, v, h = random_problem(rng, (2,), 5, 2, 2, 3, 1, 2)
    c[1, 2, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="coefficients must not contain"):
        ode_forward(c, r, v, h)


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda c, r, v, h: (c[..., :1, :, :, :][..., :0, :, :, :], r, v, h), "n_steps axis"),
        (lambda c, r, v, h: (c, r[..., :1], v, h), "n_equations axis"),
        (lambda c, r, v, h: (c, r, v[..., :1, :], h), "n_dims axis"),
        (lambda c, r, v, h: (c, r, np.zeros(v.shape[:-1] + (4,)), h), "at most n_orders"),
        (lambda c, r, v, h: (c, r, v, h[..., :3]), "n_steps axis"),
        (lambda c, r, v, h: (c[0, 0], r, v, h), "at least 4 dimensions"),
        (lambda c, r, v, h: (c, r, v, np.zeros((3, 4))), "batch shapes do not broadcast"),
        (lambda c, r, v, h: (c, np.zeros((3, 5, 2)), v, h), "batch shapes do not broadcast"),
        (lambda c, r, v, h: (c.astype(complex), r, v, h), "coefficients must be real"),
    ],
)
def test_bad_shapes_name_the_argument(rng, change, match):
    inputs = random_problem(rng, (2,), 5, 2, 2, 3, 1, 2)
    with pytest.raises((ValueError, TypeError), match=match):
        ode_forward(*change(*inputs))


def test_shape_validation_memo():
    from banded_mnn.mnn import _layer

    shapes = {"coefficients": (2, 5, 2, 2, 3), "rhs_equation": (5, 2), "init_vars": (2, 1, 2, 2),
              "steps": (1, 4)}  # fmt: skip
    cached = _layer._check_shapes_cached
    cached.cache_clear()
    for weights in [(1.0, 2, 0.5), (1.0, 2, 0.5), (np.float64(1.0), 2.0, 0.5)]:
        args = (shapes, None, None, weights, True)
        assert _layer.check_shapes_memo(*args) == _layer.check_shapes(*args)
    # The plain call twice: one miss then one hit; the NumPy scalar weight bypasses the memo.
    assert (cached.cache_info().hits, cached.cache_info().misses) == (1, 1)
    # So does a flag that is not a bool (which may not even be hashable).
    for central in (np.array(True), [1], np.True_):
        args = (shapes, None, None, (1.0, 1.0, 1.0), central)
        assert _layer.check_shapes_memo(*args) == _layer.check_shapes(*args)
    assert cached.cache_info().misses == 1
    bad = dict(shapes, steps=(1, 3))
    for _ in range(2):  # errors are raised every time, never remembered
        with pytest.raises(ValueError, match="n_steps axis"):
            _layer.check_shapes_memo(bad, None, None, (1.0, 1.0, 1.0), False)


def test_bad_options(rng):
    c, r, v, h = random_problem(rng, (2,), 5, 2, 2, 1, 1, 1)
    with pytest.raises(ValueError, match="n_orders >= 2"):
        ode_forward(c, r, v, h, enable_central_smoothness=True)
    with pytest.raises(TypeError, match="weight_smooth"):
        ode_forward(c, r, v, h, weight_smooth=np.ones(3))
    with pytest.raises(ValueError, match="n_init_var_steps"):
        ode_forward(c, r, v, h, n_init_var_steps=9)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_windowed_streamed_and_misaligned_workspace(rng, monkeypatch, dtype, lanes):
    # A chunk's factor that fits the L2 budget is assembled and factored in
    # the workspace; a larger one in a window of columns, which moves the
    # finished columns to the workspace with streaming stores when it is
    # aligned, with plain copies otherwise.  All four ways give the same
    # results.  Over several blocks of steps, with padding lanes (11 systems)
    # and central smoothness, for every lane count (a workspace one element
    # off is still aligned for one lane: no plain copies there).
    from banded_mnn.mnn import _cpu, _layer

    inputs = random_problem(rng, (11,), 70, 2, 2, 3, 1, 2, dtype=dtype)
    options = {"enable_central_smoothness": True, "return_system": True}
    factor_lanes, aligned = _cpu.factor_lanes, _layer._aligned_empty

    def misaligned(shape, dtype):
        buffer = aligned((math.prod(shape) + 1,), dtype)
        return buffer[1:].reshape(shape)

    def windowed(*args):
        return factor_lanes(*args, in_place_max_bytes=0)

    results = []
    for window in (False, True):
        for allocate in (aligned, misaligned):
            monkeypatch.setattr(_cpu, "factor_lanes", windowed if window else factor_lanes)
            monkeypatch.setattr(_layer, "_aligned_empty", allocate)
            u, system = ode_forward(*inputs, **options)
            assert (system.workspace.ctypes.data % 64 == 0) == (allocate is aligned)
            assert system.lanes == lanes
            results.append((u, system.factor_band))
    for u, band in results[1:]:
        np.testing.assert_array_equal(u, results[0][0])
        np.testing.assert_array_equal(band, results[0][1])


def test_inputs_are_not_written(rng):
    inputs = random_problem(rng, (2,), 5, 2, 2, 3, 1, 2)
    copies = [x.copy() for x in inputs]
    for x in inputs:
        x.flags.writeable = False
    u = ode_forward(*inputs)
    system = OdeSystem.factor(inputs[0], inputs[3], n_init_var_steps=1, n_init_var_orders=2)
    system.vjp(np.ones_like(u), u, *inputs)
    for x, y in zip(inputs, copies, strict=True):
        np.testing.assert_array_equal(x, y)


# --------------------------------------------------------------------------
# The benchmark baselines compute the same thing (else their timings mean nothing).
# --------------------------------------------------------------------------


@pytest.mark.parametrize("central", [False, True], ids=["default", "central"])
def test_baselines_agree(rng, central):
    from banded_mnn.mnn.baselines import blockwise_forward, blockwise_vjp, dense_forward

    c, r, v, h = random_problem(rng, (3,), 7, 2, 2, 3, 1, 2)
    u = ode_forward(c, r, v, h, enable_central_smoothness=central)
    ub, fac = blockwise_forward(c, r, v, h, central=central)
    np.testing.assert_allclose(ub, u, rtol=1e-9, atol=1e-9 * np.abs(u).max())
    ud = dense_forward(c, r, v, h, central=central)
    np.testing.assert_allclose(ud, u, rtol=1e-9, atol=1e-9 * np.abs(u).max())
    g = rng.standard_normal(u.shape)
    system = OdeSystem.factor(c, h, n_init_var_steps=1, n_init_var_orders=2,
                              enable_central_smoothness=central)  # fmt: skip
    grads = system.vjp(g, u, c, r, v, h)
    g_c, g_r, g_v, _ = blockwise_vjp(fac, u, g, c, r, n_init=1, n_init_orders=2)
    for ours, theirs in (
        (grads.coefficients, g_c),
        (grads.rhs_equation, g_r),
        (grads.init_vars, g_v),
    ):
        np.testing.assert_allclose(theirs, ours, rtol=1e-8, atol=1e-8 * np.abs(ours).max())
    # Shared left-hand side (Lorenz): batch-1 coefficients and steps.
    r5 = rng.standard_normal((5, 7, 2))
    ub, _ = blockwise_forward(c[:1], r5, v[:1], h[:1], central=central)
    u = ode_forward(c[:1], r5, v[:1], h[:1], enable_central_smoothness=central)
    np.testing.assert_allclose(ub, u, rtol=1e-9, atol=1e-9 * np.abs(u).max())


def test_return_system_gives_the_same_factor(rng):
    c, r, v, h = random_problem(rng, (3,), 6, 2, 2, 3, 1, 2)
    u, system = ode_forward(c, r, v, h, return_system=True)
    np.testing.assert_array_equal(u, ode_forward(c, r, v, h))
    reference = OdeSystem.factor(c, h, n_init_var_steps=1, n_init_var_orders=2)
    np.testing.assert_allclose(system.factor_band, reference.factor_band, rtol=1e-14)
    g = rng.standard_normal(u.shape)
    for ours, theirs in zip(system.vjp(g, u, c, r, v, h), reference.vjp(g, u, c, r, v, h),
                            strict=True):  # fmt: skip
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-14)


def test_factor_band_is_lapack_layout(rng, lanes):
    import scipy.linalg

    c, r, v, h = random_problem(rng, (3,), 5, 2, 2, 3, 1, 2)
    system = OdeSystem.factor(c, h, n_init_var_steps=1, n_init_var_orders=2)
    band = system.factor_band
    # Rebuild A from the oracle's rows and compare with SciPy's factor.
    for i in range(3):
        a, _ = dense_rows(c[i], r[i], v[i], h[i], 1)
        ata = a.T @ a
        u = system.spec.bandwidth
        ab = np.zeros((u + 1, ata.shape[0]))
        for d in range(u + 1):
            ab[d, : ata.shape[0] - d] = np.diagonal(ata, -d)
        expected = scipy.linalg.cholesky_banded(ab, lower=True)
        np.testing.assert_allclose(band[i], expected, rtol=1e-9, atol=1e-9 * np.abs(expected).max())


# --------------------------------------------------------------------------
# Block cyclic reduction inside the layer: the same values and gradients
# --------------------------------------------------------------------------


@pytest.mark.parametrize("central", [False, True], ids=["default", "central"])
@pytest.mark.parametrize("T", [1, 2, 3, 6, 9])
def test_cyclic_algorithm_matches_sequential(rng, central, T):
    if central and T < 3:
        T = 3
    c, r, v, h = random_problem(rng, (3,), T, 2, 2, 3, 1, 2)
    kwargs = {"enable_central_smoothness": central}
    u = ode_forward(c, r, v, h, **kwargs)
    uc, system = ode_forward(c, r, v, h, algorithm="cyclic", return_system=True, **kwargs)
    scale = np.abs(u).max()
    np.testing.assert_allclose(uc, u, rtol=1e-10, atol=1e-12 * scale)
    g = rng.standard_normal(u.shape)
    reference = OdeSystem.factor(c, h, n_init_var_steps=1, n_init_var_orders=2, **kwargs)
    for ours, theirs in zip(system.vjp(g, uc, c, r, v, h), reference.vjp(g, u, c, r, v, h),
                            strict=True):  # fmt: skip
        np.testing.assert_allclose(
            ours, theirs, rtol=1e-9, atol=1e-10 * np.abs(theirs).max(initial=1)
        )
    # A left-hand side shared by several right-hand sides.
    r5 = rng.standard_normal((5, T, 2))
    np.testing.assert_allclose(ode_forward(c[:1], r5, v[:1], h[:1], algorithm="cyclic", **kwargs),
                               ode_forward(c[:1], r5, v[:1], h[:1], **kwargs), rtol=1e-10,
                               atol=1e-12 * scale)  # fmt: skip


def test_cyclic_algorithm_errors(rng):
    c, r, v, h = random_problem(rng, (2,), 5, 2, 2, 3, 1, 2)
    with pytest.raises(ValueError, match="algorithm must be one of"):
        ode_forward(c, r, v, h, algorithm="parallel")
    c[1, 2, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="coefficients must not contain"):
        ode_forward(c, r, v, h, algorithm="cyclic")
    system = OdeSystem.factor(c, h, n_init_var_steps=1, n_init_var_orders=2, check=False,
                              algorithm="cyclic")  # fmt: skip
    assert system.info.tolist() == [0, 13]  # the first unknown of step 2, which holds the NaN
    with pytest.raises(AttributeError, match="cyclic reduction"):
        system.factor_band  # noqa: B018
