"""Strides, broadcasting, dtypes and empty inputs."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

import banded_mnn as bm
from banded_mnn.problems import random_spd_band
from conftest import scipy_cholesky, scipy_solve

TOL = {"rtol": 1e-12, "atol": 1e-12}


def _strided_variants(a: np.ndarray):
    """Views of the same values with unusual memory layouts."""
    yield "fortran", np.asfortranarray(a)
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
    big[..., ::2] = a
    yield "every-other-column", big[..., ::2]
    rev = np.ascontiguousarray(a[::-1]) if a.ndim > 2 else a.copy()
    yield "negative-batch-stride", rev[::-1] if a.ndim > 2 else rev
    flipped = np.ascontiguousarray(a[..., ::-1, :])
    yield "negative-row-stride", flipped[..., ::-1, :]
    flipped_cols = np.ascontiguousarray(a[..., ::-1])
    yield "negative-column-stride", flipped_cols[..., ::-1]
    if a.ndim == 4:
        yield "swapped-batch-axes", np.ascontiguousarray(a.swapaxes(0, 1)).swapaxes(0, 1)


@pytest.mark.parametrize("lower", [False, True], ids=["upper", "lower"])
def test_any_strides(lower, lanes, rng):
    ab = random_spd_band((3, 4), 25, 3, lower=lower, rng=rng)
    b = rng.standard_normal((3, 4, 25, 2))
    x_ref = scipy_solve(ab, b, lower)
    c_ref = scipy_cholesky(ab, lower)
    for name_a, ab_view in _strided_variants(ab):
        np.testing.assert_array_equal(ab_view, ab)
        np.testing.assert_allclose(bm.cholesky_banded(ab_view, lower=lower), c_ref, **TOL)
        for name_b, b_view in _strided_variants(b):
            x = bm.solveh_banded(ab_view, b_view, lower=lower)
            np.testing.assert_allclose(x, x_ref, **TOL, err_msg=f"ab {name_a}, b {name_b}")
            cx = bm.cho_solve_banded((c_ref, lower), b_view)
            np.testing.assert_allclose(cx, x_ref, **TOL, err_msg=f"b {name_b}")


def test_zero_strides_and_broadcasting(lanes, rng):
    ab = random_spd_band((3, 1), 20, 2, rng=rng)
    b = rng.standard_normal((4, 20, 2))
    x = bm.solveh_banded(ab, b)
    assert x.shape == (3, 4, 20, 2)
    np.testing.assert_allclose(x, scipy_solve(ab, b, False), **TOL)
    # Explicit zero-stride views (read-only), for both operands.
    ab_b = np.broadcast_to(ab, (3, 4) + ab.shape[-2:])
    b_b = np.broadcast_to(b, (3, 4, 20, 2))
    np.testing.assert_allclose(bm.solveh_banded(ab_b, b_b), x, **TOL)
    np.testing.assert_allclose(
        bm.cholesky_banded(ab_b), np.broadcast_to(scipy_cholesky(ab, False), ab_b.shape), **TOL
    )
    # One matrix, many right-hand sides; one right-hand side, many matrices.
    x1 = bm.solveh_banded(ab[0, 0], b)
    np.testing.assert_allclose(x1, scipy_solve(ab[0, 0], b, False), **TOL)
    v = rng.standard_normal(20)
    x2 = bm.solveh_banded(ab, v)
    assert x2.shape == (3, 1, 20)
    np.testing.assert_allclose(x2, scipy_solve(ab, v, False), **TOL)
    # A stride-0 core axis: every column of b the same vector.
    col = np.broadcast_to(v[:, None], (20, 3))
    np.testing.assert_allclose(
        bm.solveh_banded(ab[0, 0], col), np.repeat(x2[0, 0][:, None], 3, axis=1), **TOL
    )


def test_incompatible_batches_raise(rng):
    ab = random_spd_band((3,), 10, 1, rng=rng)
    with pytest.raises(ValueError, match=r"batch shapes of ab \(3,\) and b \(4,\)"):
        bm.solveh_banded(ab, np.ones((4, 10, 1)))


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        (np.bool_, np.float32),
        (np.int8, np.float32),
        (np.uint8, np.float32),
        (np.int16, np.float32),
        (np.int32, np.float64),
        (np.int64, np.float64),
        (np.float16, np.float32),
        (np.float32, np.float32),
        (np.float64, np.float64),
        (np.longdouble, np.float64),
    ],
)
def test_result_dtypes_follow_scipy(dtype, expected):
    ab = np.array([[0, 1, 1, 1], [4, 4, 4, 4]], dtype=np.float64).astype(dtype)
    if dtype is np.bool_:
        ab = np.array([[0, 0, 0, 0], [1, 1, 1, 1]], dtype=bool)
    b = np.ones(4, dtype=dtype)
    c = bm.cholesky_banded(ab)
    x = bm.solveh_banded(ab, b)
    assert c.dtype == scipy.linalg.cholesky_banded(ab).dtype == expected
    assert x.dtype == scipy.linalg.solveh_banded(ab, b).dtype == expected
    np.testing.assert_allclose(c, scipy.linalg.cholesky_banded(ab), rtol=1e-6)
    np.testing.assert_allclose(x, scipy.linalg.solveh_banded(ab, b), rtol=1e-6)


def test_mixed_dtypes_promote(rng):
    ab = random_spd_band((2,), 12, 2, dtype=np.float32, rng=rng)
    b = rng.standard_normal((2, 12, 1))
    x = bm.solveh_banded(ab, b)
    assert x.dtype == np.float64
    np.testing.assert_allclose(x, scipy_solve(ab, b, False), rtol=1e-12, atol=1e-12)
    c = bm.cholesky_banded(ab)
    assert bm.cho_solve_banded((c, False), b).dtype == np.float64


def test_lists_are_accepted():
    x = bm.solveh_banded([[0, 1, 1], [4, 4, 4]], [5, 6, 5])
    np.testing.assert_allclose(x, [1, 1, 1])


@pytest.mark.parametrize(
    ("ab_shape", "b_shape", "x_shape"),
    [
        ((0, 3, 10), (0, 10, 2), (0, 10, 2)),  # zero-size batch
        ((0, 3, 10), (10,), (0, 10)),
        ((2, 0, 3, 10), (10, 1), (2, 0, 10, 1)),
        ((3, 10), (10, 0), (10, 0)),  # K = 0
        ((4, 3, 10), (4, 10, 0), (4, 10, 0)),
        ((2, 0), (0,), (0,)),  # M = 0
        ((5, 2, 0), (5, 0, 3), (5, 0, 3)),
    ],
)
def test_empty_inputs_give_empty_results(ab_shape, b_shape, x_shape):
    ab = np.ones(ab_shape)
    x = bm.solveh_banded(ab, np.ones(b_shape))
    assert x.shape == x_shape and x.dtype == np.float64
    x, info = bm.solveh_banded_ex(ab, np.ones(b_shape))
    assert info.shape == x_shape[: len(x_shape) - (1 if len(b_shape) == 1 else 2)]
    assert bm.cho_solve_banded((ab, False), np.ones(b_shape)).shape == x_shape
    c, info = bm.cholesky_banded_ex(ab)
    assert c.shape == ab_shape and info.shape == ab_shape[:-2]


def test_empty_rhs_does_not_factor():
    """As in SciPy: with no right-hand side, nothing is factored (and nothing raised)."""
    indefinite = np.array([[0.0, 5.0, 1.0], [1.0, 1.0, 1.0]])
    assert bm.solveh_banded(indefinite, np.ones((3, 0))).shape == (3, 0)
    assert scipy.linalg.solveh_banded(indefinite, np.ones((3, 0))).shape == (3, 0)


@pytest.mark.parametrize("lower", [False, True])
def test_bandwidth_larger_than_matrix_is_dense(lower, rng):
    """u + 1 > M: accepted as by LAPACK; the matrix is simply dense."""
    ab = random_spd_band((3,), 4, 7, lower=lower, rng=rng)
    b = rng.standard_normal((3, 4, 2))
    np.testing.assert_allclose(bm.solveh_banded(ab, b, lower=lower), scipy_solve(ab, b, lower))
    np.testing.assert_allclose(bm.cholesky_banded(ab, lower=lower), scipy_cholesky(ab, lower))


def test_overwrite_b_writes_in_place(rng):
    ab = random_spd_band((4,), 30, 3, rng=rng)
    b = rng.standard_normal((4, 30, 2))
    expected = scipy_solve(ab, b, False)
    x = bm.solveh_banded(ab, b, overwrite_b=True)
    assert x is b
    np.testing.assert_allclose(b, expected, **TOL)
    c = bm.cholesky_banded(ab)
    b2 = rng.standard_normal((4, 30, 2))
    expected2 = scipy_solve(ab, b2, False)
    assert bm.cho_solve_banded((c, False), b2, overwrite_b=True) is b2
    np.testing.assert_allclose(b2, expected2, **TOL)


def test_overwrite_ab_factors_in_place(rng):
    ab = random_spd_band((4,), 30, 3, rng=rng)
    expected = scipy_cholesky(ab, False)
    c = bm.cholesky_banded(ab, overwrite_ab=True)
    assert c is ab
    np.testing.assert_allclose(ab, expected, **TOL)


def test_overwrite_ab_in_solveh_never_writes(rng):
    ab = random_spd_band((4,), 30, 3, rng=rng)
    ab0 = ab.copy()
    bm.solveh_banded(ab, np.ones(30), overwrite_ab=True)
    np.testing.assert_array_equal(ab, ab0)


@pytest.mark.parametrize(
    "make_b",
    [
        lambda b: b.astype(np.float32),  # wrong dtype: must copy
        lambda b: np.broadcast_to(b[:1], b.shape),  # read-only, zero strides
        lambda b: b[:1],  # batch smaller than the result's
    ],
    ids=["other-dtype", "broadcast", "needs-broadcasting"],
)
def test_overwrite_b_only_when_possible(make_b, rng):
    ab = random_spd_band((3,), 10, 2, rng=rng)
    b = make_b(rng.standard_normal((3, 10, 1)))
    b0 = b.copy()
    x = bm.solveh_banded(ab, b, overwrite_b=True)
    assert x is not b
    np.testing.assert_array_equal(b, b0)
    np.testing.assert_allclose(x, scipy_solve(ab.astype(np.float64), b, False), rtol=1e-6)


def test_overwrite_b_not_used_when_b_overlaps_ab(rng):
    buf = random_spd_band((), 12, 3, rng=rng)
    ab = buf.copy()
    both = np.concatenate([ab, rng.standard_normal((1, 12))])  # b is a row of the same buffer
    ab_view, b_view = both[:4], both[4]
    expected = scipy_solve(ab, b_view.copy(), False)
    x = bm.solveh_banded(ab_view, b_view, overwrite_b=True)
    np.testing.assert_allclose(x, expected, **TOL)


def test_lower_to_upper_with_bandwidth_beyond_matrix(rng):
    from banded_mnn.problems import lower_to_upper

    lower = random_spd_band((2,), 3, 5, lower=True, rng=rng)
    upper = lower_to_upper(lower)
    np.testing.assert_allclose(
        scipy_cholesky(lower, True).sum(), scipy_cholesky(upper, False).sum(), rtol=1e-12
    )
    np.testing.assert_allclose(
        bm.solveh_banded(upper, np.ones(3)), bm.solveh_banded(lower, np.ones(3), lower=True)
    )


def test_single_unknown_with_one_off_diagonal():
    """M = 1, u = 1: SciPy's tridiagonal path raises here; we solve it."""
    x = bm.solveh_banded([[0.0], [4.0]], [2.0])
    np.testing.assert_array_equal(x, [0.5])
    with pytest.raises(ValueError, match="unexpected array size"):
        scipy.linalg.solveh_banded(np.array([[0.0], [4.0]]), np.array([2.0]))


def test_shared_matrix_is_factored_once(lanes, rng, monkeypatch):
    """One matrix, many right-hand-side batches: one factorisation, then solves."""
    from banded_mnn._backends import _numba_cpu

    calls = []
    real_run = _numba_cpu.run

    def counting_run(band, bw, **kwargs):
        calls.append((band.offsets.shape[0], kwargs["factor"]))
        return real_run(band, bw, **kwargs)

    monkeypatch.setattr(_numba_cpu, "run", counting_run)
    ab = random_spd_band((2, 1), 30, 4, rng=rng)
    ab[1, 0, 4, 7] = -3.0  # the second matrix is indefinite
    b = rng.standard_normal((2, 6, 30, 2))
    x, info = bm.solveh_banded_ex(ab, b)
    assert calls == [(2, True), (12, False)]
    np.testing.assert_array_equal(info, [[0] * 6, [8] * 6])
    assert np.isnan(x[1]).all()
    np.testing.assert_allclose(x[0], scipy_solve(ab[0], b[0], False), **TOL)
    with pytest.raises(bm.NotPositiveDefiniteError, match=r"batch index \(1, 0\)"):
        bm.solveh_banded(ab, b)


def test_overwrite_with_odd_strided_arrays_is_honest():
    """Fields of packed records: NumPy calls them aligned, but their strides are
    not whole elements.  The result must be right, and `x is b` only if written."""
    ab = np.array([[0.0, 1, 1, 1], [4.0, 4, 4, 4]])
    rec = np.zeros(1, dtype=[("ab", "f8", (2, 4)), ("b", "f8", (4, 1)), ("flag", "i1")])
    rec["ab"][0] = ab
    rec["b"][0, :, 0] = [5, 6, 6, 5]
    a, b = rec["ab"], rec["b"]
    c = bm.cholesky_banded(a, overwrite_ab=True)
    np.testing.assert_allclose(c[0], scipy.linalg.cholesky_banded(ab))
    x = bm.solveh_banded(ab, b, overwrite_b=True)
    np.testing.assert_allclose(x.ravel(), [1, 1, 1, 1])
    if x is b:
        np.testing.assert_allclose(b.ravel(), [1, 1, 1, 1])


def test_overwrite_b_refused_when_b_overlaps_itself(rng):
    ab = random_spd_band((), 4, 1, rng=rng)
    b = np.lib.stride_tricks.as_strided(np.arange(1.0, 8.0), shape=(4, 4, 1), strides=(8, 8, 8))
    expected = scipy_solve(ab, b.copy(), False)
    x = bm.solveh_banded(ab, b, overwrite_b=True)
    assert x is not b
    np.testing.assert_allclose(x, expected, **TOL)


def test_broadcast_matrices_are_not_expanded(monkeypatch, rng):
    """A broadcast ab is factored once per distinct matrix, not once per copy."""
    from banded_mnn._backends import _numba_cpu

    sizes = []
    real_run = _numba_cpu.run

    def recording_run(band, bw, **kwargs):
        sizes.append((band.offsets.shape[0], kwargs["factor"], band.buf.size))
        return real_run(band, bw, **kwargs)

    monkeypatch.setattr(_numba_cpu, "run", recording_run)
    one = random_spd_band((), 50, 3, dtype=np.float32, rng=rng)
    ab = np.broadcast_to(one, (40, 2, 4, 50))
    b = rng.standard_normal((40, 2, 50, 1))
    x = bm.solveh_banded(ab, b)
    assert sizes[0] == (1, True, one.size)  # one factorisation of one matrix
    assert sizes[1][:2] == (80, False)
    np.testing.assert_allclose(x, scipy_solve(one.astype(np.float64), b, False), rtol=1e-5)


def test_empty_result_still_checks_finiteness():
    ab = np.array([[0.0, 1, 1, 1], [4.0, np.nan, 4, 4]])
    with pytest.raises(ValueError, match="ab must not contain infs or NaNs"):
        bm.solveh_banded(ab, np.zeros((4, 0)))
    with pytest.raises(ValueError, match="cb must not contain infs or NaNs"):
        bm.cho_solve_banded((ab, False), np.zeros((4, 0)))
    assert bm.solveh_banded(ab, np.zeros((4, 0)), check_finite=False).shape == (4, 0)


@pytest.mark.parametrize(
    "shape, core_ndim",
    [((4, 5, 3, 3, 3), 4), ((2, 3, 7), 2), ((1, 6, 2), 2), ((3, 1, 4), 1), ((5,), 1),
     ((2, 2, 1, 3), 2), ((2, 1, 1), 1)],
)  # fmt: skip
def test_contiguous_addressing_matches_the_general_one(shape, core_ndim, rng):
    """flat_batch's shortcut for C-contiguous arrays of the full batch shape
    addresses every element as the general path does."""
    from banded_mnn import _strided

    x = rng.standard_normal(shape)
    batch = shape[: len(shape) - core_ndim]
    fast = _strided.flat_batch(x, batch, core_ndim)
    general = _strided._flat_general(x, batch, core_ndim)
    assert fast[2] == general[2]
    np.testing.assert_array_equal(fast[1], general[1])
    for buf, offsets, strides in (fast, general):
        for index in np.ndindex(*shape):
            i = np.ravel_multi_index(index[: len(batch)], batch) if batch else 0
            at = offsets[i] + sum(k * s for k, s in zip(index[len(batch) :], strides, strict=True))
            assert buf[at] == x[index]
    assert fast[0].base is x or fast[0].base is x.base  # no copy
