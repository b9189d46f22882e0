"""Every error path: clear messages, per-system status, and nothing written."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import scipy.linalg

import banded_mnn as bm
from banded_mnn.problems import random_spd_band


def _make_indefinite(ab: np.ndarray, index, column: int, lower: bool) -> None:
    """Make the leading minor of order column + 1 of system ``index`` indefinite."""
    diag_row = 0 if lower else ab.shape[-2] - 1
    ab[index + (diag_row, column)] = -1.0


@pytest.mark.parametrize("lower", [False, True], ids=["upper", "lower"])
def test_not_positive_definite_names_batch_index_and_minor(lower, lanes, rng):
    ab = random_spd_band((3, 5), 40, 4, lower=lower, rng=rng)
    _make_indefinite(ab, (2, 1), 17, lower)
    _make_indefinite(ab, (2, 3), 5, lower)
    ab0 = ab.copy()
    b = rng.standard_normal((3, 5, 40, 1))
    b0 = b.copy()
    # SciPy's info for the first failure is the oracle.
    with pytest.raises(np.linalg.LinAlgError, match="18-th leading minor"):
        scipy.linalg.cholesky_banded(ab[2, 1], lower=lower)

    for call in (
        lambda: bm.cholesky_banded(ab, lower=lower),
        lambda: bm.solveh_banded(ab, b, lower=lower),
    ):
        with pytest.raises(bm.NotPositiveDefiniteError) as excinfo:
            call()
        error = excinfo.value
        assert isinstance(error, np.linalg.LinAlgError)
        assert error.batch_index == (2, 1)
        assert error.order == 18
        assert "18-th leading minor not positive definite" in str(error)
        assert "batch index (2, 1)" in str(error)
        assert "2 of 15 systems failed" in str(error)
        assert error.info.shape == (3, 5)
        assert error.info[2, 3] == 6
        np.testing.assert_array_equal(ab, ab0)
        np.testing.assert_array_equal(b, b0)


def test_unbatched_error_message_matches_scipy_wording():
    ab = np.array([[0.0, 5.0, 1.0], [1.0, 1.0, 1.0]])
    with pytest.raises(bm.NotPositiveDefiniteError, match="^cholesky_banded: 2-th leading minor"):
        bm.cholesky_banded(ab)
    with pytest.raises(bm.NotPositiveDefiniteError) as excinfo:
        bm.solveh_banded(ab, np.ones(3))
    assert excinfo.value.batch_index == () and excinfo.value.order == 2
    assert excinfo.value.info.shape == ()
    with pytest.raises(np.linalg.LinAlgError, match="2th leading minor"):
        scipy.linalg.solveh_banded(ab, np.ones(3))


def test_error_pickles():
    ab = np.array([[[0.0, 5.0, 1.0], [1.0, 1.0, 1.0]]] * 2)
    with pytest.raises(bm.NotPositiveDefiniteError) as excinfo:
        bm.cholesky_banded(ab)
    clone = pickle.loads(pickle.dumps(excinfo.value))
    assert str(clone) == str(excinfo.value)
    assert clone.batch_index == (0,)


@pytest.mark.parametrize("lower", [False, True], ids=["upper", "lower"])
def test_ex_variants_report_status_without_raising(lower, lanes, rng):
    ab = random_spd_band((20,), 30, 3, lower=lower, rng=rng)
    for i, col in ((0, 0), (9, 29), (13, 4)):
        _make_indefinite(ab, (i,), col, lower)
    b = rng.standard_normal((20, 30, 2))
    good = np.setdiff1d(np.arange(20), [0, 9, 13])
    expected_info = np.zeros(20, dtype=np.int32)
    expected_info[[0, 9, 13]] = [1, 30, 5]

    c, info = bm.cholesky_banded_ex(ab, lower=lower)
    np.testing.assert_array_equal(info, expected_info)
    assert np.isnan(c[[0, 9, 13]]).sum() > 0
    diag = 0 if lower else 3
    assert np.isnan(c[[0, 9, 13], diag]).all()
    np.testing.assert_allclose(c[good], bm.cholesky_banded(ab[good], lower=lower), rtol=1e-14)

    x, info = bm.solveh_banded_ex(ab, b, lower=lower)
    np.testing.assert_array_equal(info, expected_info)
    assert np.isnan(x[[0, 9, 13]]).all()
    np.testing.assert_allclose(x[good], bm.solveh_banded(ab[good], b[good], lower=lower))


def test_infinite_pivot_is_reported():
    """LAPACK accepts sqrt(inf) and returns a wrong factor; info reports it here."""
    ab = np.array([[0.0, 1, 1, 1], [4.0, np.inf, 4, 4]])
    _, info = bm.cholesky_banded_ex(ab, check_finite=False)
    assert info == 2
    x, info = bm.solveh_banded_ex(ab, np.ones(4), check_finite=False)
    assert info == 2 and np.isnan(x).all()


def test_zero_pivot_and_nan_pivot_are_not_positive_definite():
    ab = np.array([[0.0, 1.0, 1.0], [1.0, 1.0, 2.0]])  # second minor is exactly 0
    _, info = bm.cholesky_banded_ex(ab)
    assert info == 2
    nan = np.array([[0.0, np.nan, 1.0], [4.0, 4.0, 4.0]])
    _, info = bm.cholesky_banded_ex(nan, check_finite=False)
    assert info == 2  # the NaN reaches the second pivot


def test_nonfinite_input_raises_value_error_and_writes_nothing(rng):
    ab = random_spd_band((2,), 10, 2, rng=rng)
    b = rng.standard_normal((2, 10, 1))
    for bad in (np.nan, np.inf, -np.inf):
        ab_bad = ab.copy()
        ab_bad[1, 0, 0] = bad  # an unused corner cell: SciPy checks it too
        with pytest.raises(ValueError, match="ab must not contain infs or NaNs"):
            bm.cholesky_banded(ab_bad, overwrite_ab=True)
        with pytest.raises(ValueError, match="must not contain infs or NaNs"):
            scipy.linalg.cholesky_banded(ab_bad[1])
        b_bad = b.copy()
        b_bad[0, 3, 0] = bad
        b_copy = b_bad.copy()
        with pytest.raises(ValueError, match="b must not contain infs or NaNs"):
            bm.solveh_banded(ab, b_bad, overwrite_b=True)
        np.testing.assert_array_equal(b_bad, b_copy)
        with pytest.raises(ValueError, match="cb must not contain"):
            bm.cho_solve_banded((ab_bad, False), b)
    assert bm.cholesky_banded(ab_bad, check_finite=False).shape == ab.shape


@pytest.mark.parametrize(
    ("ab", "b", "message"),
    [
        (np.ones(3), np.ones(3), r"ab must have shape \(\.\.\., u \+ 1, M\)"),
        (np.ones((0, 3)), np.ones(3), "at least one row"),
        (np.ones((2, 3)), np.ones(4), r"M = 3 columns"),
        (np.ones((2, 3)), np.ones((4, 1)), "not compatible"),
        (np.ones((2, 3)), np.float64(1.0), "0-d"),
    ],
)
def test_bad_shapes_raise_value_error(ab, b, message):
    with pytest.raises(ValueError, match=message):
        bm.solveh_banded(ab, b)


def test_bad_shape_for_cholesky():
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        bm.cholesky_banded(np.ones(4))


@pytest.mark.parametrize(
    ("value", "exception", "message"),
    [
        (np.ones((2, 3), dtype=complex), TypeError, "complex"),
        (np.array([["a", "b"], ["c", "d"]]), TypeError, "real numbers"),
        (np.array([[1, 2], [3, 4]], dtype=object), TypeError, "real numbers"),
    ],
)
def test_bad_dtypes_raise_type_error(value, exception, message):
    with pytest.raises(exception, match=message):
        bm.cholesky_banded(value)
    with pytest.raises(exception, match=f"b .*{message}|{message}"):
        bm.solveh_banded(np.array([[0.0, 1.0], [4.0, 4.0]]), value[..., :1].reshape(2, 1))


def test_malformed_factor_pair():
    with pytest.raises(ValueError, match=r"pair \(cb, lower\)"):
        bm.cho_solve_banded(np.ones((2, 3)), np.ones(3))


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend must be one of 'numba', 'cupy', 'numba-cuda'"):
        bm.solveh_banded(np.ones((1, 3)), np.ones(3), backend="magma")


def test_gpu_arrays_get_a_clear_type_error():
    class FakeDeviceArray:
        __cuda_array_interface__ = {"shape": (2, 3), "typestr": "<f8", "version": 3}

    with pytest.raises(TypeError, match="ab is a GPU array of type .*FakeDeviceArray.*CuPy"):
        bm.cholesky_banded(FakeDeviceArray())
    with pytest.raises(TypeError, match="b is a GPU array"):
        bm.solveh_banded(np.ones((1, 3)), FakeDeviceArray())
