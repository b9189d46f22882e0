"""Property-based fuzzing against SciPy: shapes, broadcasting, forms, dtypes, strides."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import banded_mnn as bm
from banded_mnn.problems import random_spd_band
from conftest import scipy_cholesky, scipy_solve

batch_shapes = st.lists(st.integers(0, 3), min_size=0, max_size=3).map(tuple)


@st.composite
def problems(draw):
    ab_batch = draw(batch_shapes)
    m = draw(st.integers(1, 40))
    u = draw(st.integers(0, 10))  # includes u + 1 > M
    lower = draw(st.booleans())
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    ab = random_spd_band(ab_batch, m, u, lower=lower, dtype=dtype, rng=rng)
    if draw(st.booleans()):
        b = rng.standard_normal(m).astype(dtype)
    else:
        # b's batch: broadcast-compatible with ab's (drop axes or set them to 1).
        b_batch = tuple(n if draw(st.booleans()) else 1 for n in ab_batch)
        b_batch = b_batch[draw(st.integers(0, len(b_batch))) :]
        b = rng.standard_normal(b_batch + (m, draw(st.integers(0, 3)))).astype(dtype)
    if draw(st.booleans()) and ab.ndim >= 3:
        ab = ab[::-1]  # a negative batch stride
    if draw(st.booleans()):
        b = np.asfortranarray(b)
    return ab, b, lower


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_fuzz_against_scipy(problem):
    ab, b, lower = problem
    x = bm.solveh_banded(ab, b, lower=lower)
    b_batch = () if b.ndim == 1 else b.shape[:-2]
    batch = np.broadcast_shapes(ab.shape[:-2], b_batch)
    expected_shape = batch + ((b.shape[0],) if b.ndim == 1 else b.shape[-2:])
    assert x.shape == expected_shape and x.dtype == ab.dtype
    tol = 200 * np.finfo(ab.dtype).eps
    if x.size:
        np.testing.assert_allclose(x, scipy_solve(ab, b, lower), rtol=tol, atol=tol)
    c = bm.cholesky_banded(ab, lower=lower)
    if c.size:
        np.testing.assert_allclose(c, scipy_cholesky(ab, lower), rtol=tol, atol=tol)
        if x.size:
            np.testing.assert_allclose(bm.cho_solve_banded((c, lower), b), x, rtol=tol, atol=tol)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(), st.sampled_from(["thread", "warp"]))
def test_fuzz_gpu_backend_on_the_host_against_scipy(problem, regime):
    """The "cupy" backend's Python and its .cu kernels (run on the host by
    tests/gpu_host.py) on the same random problems, in a random regime."""
    from gpu_host import HostKernels

    from banded_mnn._backends import _cupy, _gpu

    ab, b, lower = problem
    saved = _cupy._kernels, _gpu.choose_regime
    _cupy._kernels, _gpu.choose_regime = HostKernels(), lambda nsys, sms: regime
    try:
        x = bm.solveh_banded(ab, b, lower=lower, backend="cupy")
        c = bm.cholesky_banded(ab, lower=lower, backend="cupy")
        y = bm.cho_solve_banded((c, lower), b, backend="cupy")
    finally:
        _cupy._kernels, _gpu.choose_regime = saved
    tol = 200 * np.finfo(ab.dtype).eps
    assert x.dtype == ab.dtype and x.shape == y.shape
    if x.size:
        np.testing.assert_allclose(x, scipy_solve(ab, b, lower), rtol=tol, atol=tol)
        np.testing.assert_allclose(y, x, rtol=tol, atol=tol)
    if c.size:
        np.testing.assert_allclose(c, scipy_cholesky(ab, lower), rtol=tol, atol=tol)
