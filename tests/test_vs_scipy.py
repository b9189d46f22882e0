"""Batched results equal a loop of SciPy calls, across sizes, forms, dtypes and K."""

from __future__ import annotations

import numpy as np
import pytest

import banded_mnn as bm
from banded_mnn.problems import mnn_normal_band, random_spd_band
from conftest import eps, scipy_cholesky, scipy_solve

# (batch, M, u): M from 1 to 10^4, u = 0, 1, small, 17 (the MNN block-tridiagonal
# band for block 9), up to 70 (more than the one-system kernel's row block), and
# u + 1 > M.
SHAPES = [
    ((), 1, 0),
    ((3,), 1, 2),
    ((2,), 2, 1),
    ((5,), 7, 0),
    ((4,), 7, 1),
    ((11,), 30, 3),
    ((2, 3), 40, 5),
    ((9,), 64, 17),
    ((3,), 120, 50),
    ((2,), 5, 9),
    ((19,), 300, 7),
    ((2,), 10_000, 4),
    ((), 2_001, 17),
    ((2,), 203, 70),
]


def _tol(dtype, m: int, u: int) -> float:
    # Diagonally dominant test matrices are well conditioned (cond < 10), so
    # the error budget is a few ulps times the band width.
    return 40 * (u + 1) * eps(dtype)


@pytest.mark.parametrize("lower", [False, True], ids=["upper", "lower"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("batch", "m", "u"), SHAPES)
def test_cholesky_matches_scipy(batch, m, u, dtype, lower, lanes, rng):
    ab = random_spd_band(batch, m, u, lower=lower, dtype=dtype, rng=rng)
    original = ab.copy()
    c = bm.cholesky_banded(ab, lower=lower)
    expected = scipy_cholesky(ab, lower)
    assert c.dtype == expected.dtype == dtype
    assert c.shape == ab.shape
    np.testing.assert_allclose(c, expected, rtol=_tol(dtype, m, u), atol=_tol(dtype, m, u))
    np.testing.assert_array_equal(ab, original)


@pytest.mark.parametrize("lower", [False, True], ids=["upper", "lower"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nrhs", [None, 1, 3])
@pytest.mark.parametrize(("batch", "m", "u"), SHAPES)
def test_solves_match_scipy(batch, m, u, nrhs, dtype, lower, lanes, rng):
    ab = random_spd_band(batch, m, u, lower=lower, dtype=dtype, rng=rng)
    b_shape = (m,) if nrhs is None else batch + (m, nrhs)
    b = rng.standard_normal(b_shape).astype(dtype)
    ab0, b0 = ab.copy(), b.copy()

    x = bm.solveh_banded(ab, b, lower=lower)
    expected = scipy_solve(ab, b, lower)
    assert x.dtype == expected.dtype == dtype
    assert x.shape == expected.shape
    tol = _tol(dtype, m, u)
    np.testing.assert_allclose(x, expected, rtol=tol, atol=tol * np.abs(expected).max())

    c = bm.cholesky_banded(ab, lower=lower)
    x2 = bm.cho_solve_banded((c, lower), b)
    expected2 = scipy_solve(scipy_cholesky(ab, lower), b, lower, factored=True)
    np.testing.assert_allclose(x2, expected2, rtol=tol, atol=tol * np.abs(expected2).max())

    x3, info = bm.solveh_banded_ex(ab, b, lower=lower)
    np.testing.assert_array_equal(x3, x)
    assert info.shape == batch and info.dtype == np.int32 and not info.any()
    np.testing.assert_array_equal(ab, ab0)
    np.testing.assert_array_equal(b, b0)


@pytest.mark.parametrize("lower", [False, True], ids=["upper", "lower"])
def test_mnn_shaped_systems(lower, lanes, rng):
    """The S-MNN structure: block-tridiagonal, block 9, so u = 17."""
    ab = mnn_normal_band((10,), steps=40, block=9, lower=lower, rng=rng)
    b = rng.standard_normal((10, 360, 2))
    x = bm.solveh_banded(ab, b, lower=lower)
    expected = scipy_solve(ab, b, lower)
    np.testing.assert_allclose(x, expected, rtol=1e-10, atol=1e-10 * np.abs(expected).max())


def test_batched_equals_loop_of_own_calls(rng):
    """Batching changes nothing: each system is solved as if alone (bitwise)."""
    ab = random_spd_band((130,), 50, 6, rng=rng)  # 130: 16 full chunks of 8 + 2
    b = rng.standard_normal((130, 50, 2))
    x = bm.solveh_banded(ab, b)
    for i in (0, 7, 8, 127, 128, 129):
        np.testing.assert_allclose(x[i], bm.solveh_banded(ab[i], b[i]), rtol=1e-14, atol=0)


def test_lane_counts_agree(rng, monkeypatch):
    """The lane kernels (2, 4, 8 systems in SIMD lanes) and the one-system
    kernel (lanes = 1: vectorised along the band, updates in column blocks)
    perform the same arithmetic, bit for bit: a system's result does not
    depend on the batch it comes in.  Float32 and float64, upper and lower."""
    from banded_mnn._backends import _numba_cpu

    for dtype, lower in ((np.float64, False), (np.float32, True)):
        ab = random_spd_band((21,), 83, 9, lower=lower, dtype=dtype, rng=rng)
        b = rng.standard_normal((21, 83, 3)).astype(dtype)
        results = []
        for lanes in (1, 2, 4, 8):
            monkeypatch.setattr(_numba_cpu, "choose_lanes", lambda nsys, lanes=lanes, **_: lanes)
            c = bm.cholesky_banded(ab, lower=lower)
            results.append((bm.solveh_banded(ab, b, lower=lower), c,
                            bm.cho_solve_banded((c, lower), b)))  # fmt: skip
        for got in results[1:]:
            for x, expected in zip(got, results[0], strict=True):
                np.testing.assert_array_equal(x, expected)


def test_positional_and_keyword_calls_agree(rng):
    ab = random_spd_band((3,), 20, 2, lower=True, rng=rng)
    b = rng.standard_normal((3, 20, 1))
    np.testing.assert_array_equal(
        bm.solveh_banded(ab, b, False, False, True, True),
        bm.solveh_banded(ab=ab, b=b, lower=True, check_finite=True, backend="numba"),
    )
    c = bm.cholesky_banded(ab, False, True, True)
    np.testing.assert_array_equal(c, bm.cholesky_banded(ab=ab, lower=True))
    np.testing.assert_array_equal(
        bm.cho_solve_banded((c, True), b, False, True), bm.cho_solve_banded((c, True), b=b)
    )


def test_unused_band_cells_copied_like_scipy(rng):
    """Corner cells outside the matrix are returned as given (LAPACK leaves them)."""
    ab = random_spd_band((), 6, 2, rng=rng)
    ab[0, :2] = [7.0, 8.0]
    ab[1, 0] = 9.0
    c = bm.cholesky_banded(ab)
    np.testing.assert_array_equal(c[0, :2], [7.0, 8.0])
    assert c[1, 0] == 9.0
    np.testing.assert_allclose(c, scipy_cholesky(ab, False), rtol=1e-14)


def test_lane_choice_keeps_workspaces_small():
    from banded_mnn._backends import _numba_cpu

    threads = _numba_cpu.numba.get_num_threads()
    for nsys in (1, 5, 16, 31, 32, 64, 100, 128, 1000):
        lanes = _numba_cpu.choose_lanes(nsys)
        assert lanes in _numba_cpu.LANE_COUNTS
        assert lanes == 1 or threads * lanes <= nsys / 8


def test_lane_choice_caps_the_workspace():
    """8 lanes only while 8 systems' bands fit LANE_WORKSPACE_BUDGET, else 4."""
    from banded_mnn._backends import _numba_cpu

    threads = _numba_cpu.numba.get_num_threads()
    budget = _numba_cpu.LANE_WORKSPACE_BUDGET
    many = 1000 * threads
    assert _numba_cpu.choose_lanes(many, system_bytes=budget // 8) == 8
    assert _numba_cpu.choose_lanes(many, system_bytes=budget // 8 + 1) == 4
    assert _numba_cpu.choose_lanes(1, system_bytes=10 * budget) == 1
