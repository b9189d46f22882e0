"""The twisted factorisation: one system's solve split over two threads.

``solveh_banded`` on one long system (two or more threads per system) factors
the top half from the top and the bottom half from the bottom, in parallel,
and joins them through a ``u x u`` interface (``_numba_cpu._twisted_driver``).
These tests force that path at every size, against SciPy.  The last ones
cover the register-tile gathers that the one-system and lane kernels share
(``lane_transpose``): every cell's finiteness check, reversed and repeated
systems.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

import banded_mnn as bm
from banded_mnn._backends import _numba_cpu
from banded_mnn.problems import mnn_normal_band, random_spd_band
from conftest import dense_from_band, eps, scipy_cholesky, scipy_solve


@pytest.fixture
def twisted(monkeypatch):
    """Every factor-and-solve call takes the twisted path (size and thread
    count notwithstanding); anything else stays as it is."""
    chosen = []

    def always(nsys, n, bw, solve_only):
        use = solve_only and n >= bw + 2
        chosen.append(use)
        return use

    monkeypatch.setattr(_numba_cpu, "use_twisted", always)
    monkeypatch.setattr(_numba_cpu, "choose_lanes", lambda nsys, **_: 1)
    return chosen


# (batch, M, u): the smallest splits (M = u + 2: one pivot per part), odd and
# even M, u = 0 (no interface), u larger than the row block, several systems.
SHAPES = [
    ((), 2, 0),
    ((), 3, 1),
    ((), 7, 5),
    ((), 8, 5),
    ((), 40, 3),
    ((), 41, 3),
    ((), 301, 17),
    ((), 2001, 17),
    ((2,), 203, 70),
    ((3,), 500, 9),
    ((2, 2), 64, 2),
]


@pytest.mark.parametrize("lower", [False, True], ids=["upper", "lower"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nrhs", [None, 1, 3])
@pytest.mark.parametrize(("batch", "m", "u"), SHAPES)
def test_matches_scipy(batch, m, u, nrhs, dtype, lower, twisted, rng):
    ab = random_spd_band(batch, m, u, lower=lower, dtype=dtype, rng=rng)
    b = rng.standard_normal((m,) if nrhs is None else batch + (m, nrhs)).astype(dtype)
    ab0, b0 = ab.copy(), b.copy()
    x, info = bm.solveh_banded_ex(ab, b, lower=lower)
    assert twisted and all(twisted)
    expected = scipy_solve(ab, b, lower)
    assert x.dtype == dtype and x.shape == expected.shape
    assert info.shape == batch and not info.any()
    tol = 40 * (u + 1) * eps(dtype)
    np.testing.assert_allclose(x, expected, rtol=tol, atol=tol * np.abs(expected).max())
    np.testing.assert_array_equal(ab, ab0)
    np.testing.assert_array_equal(b, b0)


def test_only_for_solves():
    """cholesky_banded and cho_solve_banded return or use LAPACK's factor,
    which the twisted factorisation does not compute."""
    threads = _numba_cpu.numba.get_num_threads()
    many = 10**6
    assert not _numba_cpu.use_twisted(1, many, 17, solve_only=False)
    assert _numba_cpu.use_twisted(1, many, 17, solve_only=True) == (threads >= 2)
    assert not _numba_cpu.use_twisted(threads, many, 17, solve_only=True)  # one thread each
    assert not _numba_cpu.use_twisted(1, 100, 17, solve_only=True)  # too little work
    assert not _numba_cpu.use_twisted(1, 18, 17, solve_only=True)  # too few rows
    wide = 200  # the dense interface (bw^3 / 6) would cost more than the split saves
    assert not _numba_cpu.use_twisted(1, 5 * wide, wide, solve_only=True)
    assert _numba_cpu.use_twisted(1, 20 * wide, wide, solve_only=True) == (threads >= 2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ill_conditioned(dtype, twisted, rng):
    """S-MNN's normal equations (block 9): the error within cond * eps of SciPy's."""
    ab = mnn_normal_band((), steps=60, block=9, rng=rng).astype(dtype)
    b = rng.standard_normal((540, 2)).astype(dtype)
    x = bm.solveh_banded(ab, b)
    dense = dense_from_band(ab.astype(np.float64), lower=False)
    cond = np.linalg.cond(dense)
    reference = scipy_solve(ab.astype(np.float64), b.astype(np.float64), lower=False)
    error = np.abs(x - reference).max() / np.abs(reference).max()
    assert error < 10 * cond * eps(dtype), (error, cond)
    residual = dense @ x.astype(np.float64) - b
    scale = np.linalg.norm(dense, 2) * np.abs(x).max() + np.abs(b).max()
    assert np.abs(residual).max() / scale < 200 * eps(dtype)


def test_strided_and_overwritten_operands(twisted, rng):
    m, u = 257, 6
    ab = random_spd_band((), m, u, rng=rng)
    expected = scipy.linalg.solveh_banded(ab, rng.standard_normal((m, 2)))  # warm-up shape
    wide_ab = np.zeros((u + 1, 2 * m))
    wide_ab[:, ::2] = ab
    b = rng.standard_normal((m, 4))[::-1, ::2]  # negative and non-unit strides
    expected = scipy.linalg.solveh_banded(ab, b)
    x = bm.solveh_banded(wide_ab[:, ::2], b)
    np.testing.assert_allclose(x, expected, rtol=1e-12, atol=1e-12 * np.abs(expected).max())
    own = np.array(b, order="F")
    x = bm.solveh_banded(ab, own, overwrite_b=True)
    np.testing.assert_allclose(x, expected, rtol=1e-12, atol=1e-12 * np.abs(expected).max())
    # Columns of ab in reverse memory order: the band's rows run backwards, so
    # the top part's tiles are read backwards and the bottom part's forwards.
    backwards = np.ascontiguousarray(ab[:, ::-1])[:, ::-1]
    x = bm.solveh_banded(backwards, b)
    np.testing.assert_allclose(x, expected, rtol=1e-12, atol=1e-12 * np.abs(expected).max())


def _singular_band(m: int, u: int, rng: np.random.Generator) -> np.ndarray:
    """Upper band (half-bandwidth 2u) of B B^T, B lower banded (width u) with
    one column zeroed: positive semi-definite and exactly singular."""
    lower = np.tril(np.triu(rng.standard_normal((m, m)), -u))
    lower[:, rng.integers(m)] = 0.0
    a = lower @ lower.T
    w = 2 * u
    ab = np.zeros((w + 1, m))
    for d in range(w + 1):
        ab[w - d, d:] = np.diagonal(a, d)
    return ab


def test_singular_matrices(monkeypatch, rng):
    """Singular to working precision, whether a pivot comes out positive is
    rounding luck (SciPy's answer too), and the twisted order draws it
    differently from the sequential one.  A failure anywhere, or a pivot below
    sqrt(eps) of its diagonal, reruns the system sequentially: then ``info``
    and the result are the sequential path's.  Measured on 2000 such systems:
    3 where the sequential path fails and the twisted one returns (like SciPy
    in 850 of them) a huge finite result, against 60 without the rerun on
    small pivots."""
    monkeypatch.setattr(_numba_cpu, "choose_lanes", lambda nsys, **_: 1)
    trials, failed, luck = 200, 0, 0
    for _ in range(trials):
        m, u = int(rng.integers(6, 60)), int(rng.integers(1, 4))
        ab, b = _singular_band(m, u, rng), rng.standard_normal(m)
        monkeypatch.setattr(_numba_cpu, "use_twisted", lambda *_: False)
        x_seq, info_seq = bm.solveh_banded_ex(ab, b)
        monkeypatch.setattr(
            _numba_cpu, "use_twisted", lambda nsys, n, bw, solve_only: solve_only and n >= bw + 2
        )
        x, info = bm.solveh_banded_ex(ab, b)
        if info > 0:
            assert info == info_seq
            assert np.isnan(x).all()
        luck += info != info_seq
        failed += info_seq > 0
    assert failed > trials // 4  # the family is singular enough to fail often
    assert luck <= trials // 50


def _lapack_info(ab: np.ndarray) -> int:
    _, info = scipy.linalg.lapack.dpbtrf(ab)
    return int(info)


@pytest.mark.parametrize("where", ["top", "interface", "bottom"])
def test_not_positive_definite_reports_lapacks_minor(where, twisted, rng):
    """A failure in either part or in the interface gives LAPACK's ``info``
    (the first leading minor that is not positive definite), and NaN."""
    m, u = 300, 5
    top = (m - u) // 2
    row = {"top": 40, "interface": top + 2, "bottom": m - 60}[where]
    ab = random_spd_band((3,), m, u, rng=rng)
    ab[1, u, row] = -1.0  # a negative diagonal entry in system 1
    b = rng.standard_normal((3, m, 1))
    x, info = bm.solveh_banded_ex(ab, b)
    assert info[1] == _lapack_info(ab[1]) > 0
    assert info[0] == info[2] == 0
    assert np.isnan(x[1]).all()
    for i in (0, 2):
        expected = scipy.linalg.solveh_banded(ab[i], b[i])
        np.testing.assert_allclose(x[i], expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(bm.NotPositiveDefiniteError, match=f"{info[1]}-th leading minor"):
        bm.solveh_banded(ab, b)


@pytest.mark.parametrize("operand", ["ab", "b"])
@pytest.mark.parametrize("where", [10, 250])
def test_non_finite_input_is_named(operand, where, twisted, rng):
    m, u = 300, 5
    ab = random_spd_band((), m, u, rng=rng)
    b = rng.standard_normal(m)
    (ab[u] if operand == "ab" else b)[where] = np.nan
    with pytest.raises(ValueError, match=f"^{operand} must not contain"):
        bm.solveh_banded(ab, b)


def test_ab_script_runs(capsys):
    """``tools/twisted_ab.py`` (the figures in docs/performance.md) runs and
    prints its table."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tools" / "twisted_ab.py"
    spec = importlib.util.spec_from_file_location("twisted_ab", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    saved = _numba_cpu.TWISTED_MIN_WORK
    module.main(["--quick", "--repeat", "1"])
    assert saved == _numba_cpu.TWISTED_MIN_WORK  # restored
    out = capsys.readouterr().out
    assert "| 100000 | 17 |" in out and "twisted / SciPy" in out


@pytest.mark.parametrize(
    ("u", "dtype"), [(2, np.float64), (5, np.float64), (9, np.float64), (16, np.float32)]
)
@pytest.mark.parametrize("lower", [False, True], ids=["upper", "lower"])
@pytest.mark.parametrize("path", ["sequential", "twisted", "lanes4", "lanes8"])
def test_every_band_cell_is_checked(u, dtype, lower, path, monkeypatch, rng):
    """The gathers move tiles of the band through registers -- in the
    one-system kernel 8 x 8 (4 x 4 for u < 7, none for u < 3) cells of one
    system, forwards
    or, for the twisted bottom part, backwards; in the lane kernels L rows of
    L systems -- and the rest cell by cell: an inf or NaN anywhere in the
    matrix is found, cells outside it are ignored."""
    lanes = int(path[5:]) if path.startswith("lanes") else 1
    monkeypatch.setattr(_numba_cpu, "choose_lanes", lambda nsys, **_: lanes)
    # (cho_solve_banded on lanes: _solve_chunk, the factor read block by block)
    monkeypatch.setattr(
        _numba_cpu,
        "use_twisted",
        lambda nsys, n, bw, solve_only: path == "twisted" and solve_only,
    )
    m, batch = 45, (lanes,)
    ab = random_spd_band(batch, m, u, lower=lower, dtype=dtype, rng=rng)
    b = rng.standard_normal(batch + (m, 1)).astype(dtype)
    rows, cols = np.indices(ab.shape[1:])
    inside = (cols < m - rows) if lower else (cols >= u - rows)
    outside = ab.copy()
    outside[:, ~inside] = np.nan  # cells outside the matrix are not read (nor checked, then)
    expected, tol = scipy_solve(ab, b, lower), 40 * (u + 1) * eps(dtype)
    np.testing.assert_allclose(bm.solveh_banded(outside, b, lower=lower, check_finite=False),
                               expected, rtol=tol, atol=tol * np.abs(expected).max())  # fmt: skip
    for r, c in zip(rows[inside], cols[inside], strict=True):
        bad = ab.copy()
        bad[-1, r, c] = np.inf if (r + c) % 2 else np.nan
        with pytest.raises(ValueError, match="^ab must not contain"):
            bm.solveh_banded(bad, b, lower=lower)
    for r in range(m):  # the right-hand sides go through tiles too (lane kernels)
        bad = b.copy()
        bad[-1, r, 0] = np.nan
        with pytest.raises(ValueError, match="^b must not contain"):
            bm.solveh_banded(ab, bad, lower=lower)
    # cho_solve_banded reads a given factor block by block, twice (lane
    # kernels) or in place (one-system kernel).
    factor = bm.cholesky_banded(ab, lower=lower)
    expected, tol = scipy_solve(factor, b, lower, factored=True), 40 * (u + 1) * eps(dtype)
    outside = factor.copy()
    outside[:, ~inside] = np.nan
    np.testing.assert_allclose(bm.cho_solve_banded((outside, lower), b, check_finite=False),
                               expected, rtol=tol, atol=tol * np.abs(expected).max())  # fmt: skip
    for r, c in zip(rows[inside], cols[inside], strict=True):
        bad = factor.copy()
        bad[-1, r, c] = np.inf if (r + c) % 2 else np.nan
        with pytest.raises(ValueError, match="^cb must not contain"):
            bm.cho_solve_banded((bad, lower), b)


@pytest.mark.parametrize("lanes", [4, 8])
def test_lane_tiles_with_repeated_systems_and_overwritten_b(lanes, monkeypatch, rng):
    """Lane tiles read L systems by their offsets: a matrix broadcast over the
    batch (every offset the same) and a batch given backwards (negative
    offsets' order); the solution written over ``b`` through the same tiles."""
    monkeypatch.setattr(_numba_cpu, "choose_lanes", lambda nsys, **_: lanes)
    m, u = 150, 9
    one = random_spd_band((), m, u, rng=rng)
    b = rng.standard_normal((2 * lanes, m, 1))
    expected = scipy_solve(one, b, lower=False)
    shared = np.broadcast_to(one, (2 * lanes,) + one.shape)
    np.testing.assert_allclose(bm.solveh_banded(shared, b), expected, rtol=1e-12, atol=1e-12)
    many = random_spd_band((2 * lanes,), m, u, rng=rng)[::-1]
    expected = scipy_solve(many, b, lower=False)
    np.testing.assert_allclose(bm.solveh_banded(many, b), expected, rtol=1e-12, atol=1e-12)
    own = b.copy()
    x = bm.solveh_banded(many, own, overwrite_b=True)
    np.testing.assert_allclose(x, expected, rtol=1e-12, atol=1e-12)
    factor = bm.cholesky_banded(many)
    np.testing.assert_allclose(factor, scipy_cholesky(many, False), rtol=1e-12, atol=1e-12)
