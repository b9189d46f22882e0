"""The one-system kernel against the plain loops and the lane kernels.

``_column_kernels.forward_strided`` / ``backward_strided`` (``cho_solve_banded``
on one or two systems, and through ``backward_compact`` the one-system and
twisted ``solveh_banded``) run :func:`window_substitution` for bandwidths up
to ``WINDOW_BANDWIDTH``: every row must receive the same operations in the
same order as in the loops written out below, so the results agree bit for
bit -- for every bandwidth around the unrolled range, orders from one row to
several bands, the strided views of both band forms, and several right-hand
sides.  The finiteness test that rides on the results must flag exactly the
factors with an element that is not finite.  The left-looking, pipelined
factorisation (``factor_columns``) must give the lane kernels' factor and
solution bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

import banded_mnn as bm
from banded_mnn._backends._column_kernels import (
    WINDOW_BANDWIDTH,
    backward_compact,
    backward_strided,
    forward_strided,
)
from banded_mnn.problems import random_spd_band


@njit(cache=False, fastmath={"contract"})  # the library's loops contract to FMAs
def _forward_reference(band, off, sj, st, n, bw, Y, ny, nrhs):
    """L y = b by columns: y[j] *= 1 / L[j, j]; y[j + t] -= L[j + t, j] y[j]."""
    one = np.ones(1, dtype=band.dtype)[0]
    for k in range(nrhs):
        for j in range(n):
            yj = Y[k * ny + j] * (one / band[off + j * sj])
            Y[k * ny + j] = yj
            for t in range(1, min(bw, n - 1 - j) + 1):
                Y[k * ny + j + t] -= band[off + j * sj + t * st] * yj


@njit(cache=False, fastmath={"contract"})  # the library's loops contract to FMAs
def _backward_reference(band, off, sj, st, n, bw, Y, ny, nrhs):
    """L^T x = y by columns of L^T, from the last row: x[j] = y[j] / L[j, j];
    y[j - t] -= L[j, j - t] x[j]."""
    for k in range(nrhs):
        for j in range(n - 1, -1, -1):
            xj = Y[k * ny + j] / band[off + j * sj]
            Y[k * ny + j] = xj
            for t in range(1, min(bw, j) + 1):
                Y[k * ny + j - t] -= band[off + (j - t) * sj + t * st] * xj


def _factor_view(rng, n, bw, layout, dtype):
    """A random factor (diagonal in [1, 2], off-diagonals in [-1, 1]/bw) as a
    flat buffer and the strided view ``band[off + j*sj + t*st] = L[j + t, j]``
    of ``layout``; cells outside the matrix hold NaN (never read)."""
    L = np.full((bw + 1, n), np.nan)
    for t in range(min(bw, n - 1) + 1):
        L[t, : n - t] = (1 + rng.random(n - t)) if t == 0 else rng.uniform(-1, 1, n - t) / bw
    if layout == "lower":  # SciPy's lower form, C order: row t is diagonal t
        buf = L.astype(dtype).ravel()
        return buf, 0, 1, n
    if layout == "fortran":  # the same array in Fortran order
        buf = np.asfortranarray(L.astype(dtype)).ravel(order="K")
        return buf, 0, bw + 1, 1
    if layout == "upper":  # SciPy's upper form: ab[bw - t, j + t] = U[j, j + t]
        U = np.full((bw + 1, n), np.nan)
        for t in range(min(bw, n - 1) + 1):
            U[bw - t, t:] = L[t, : n - t]
        buf = U.astype(dtype).ravel()
        return buf, bw * n, 1, 1 - n
    if layout == "reversed":  # columns stored last first, with a gap
        R = np.full((bw + 1, 2 * n + 3), np.nan)
        R[:, 2 * n - 1 :: -2][:, :n] = L
        buf = R.astype(dtype).ravel()
        return buf, 2 * n - 1, -2, R.shape[1]
    raise AssertionError(layout)


BANDS = sorted({0, 1, 2, 3, 7, 8, 16, 17, 23, WINDOW_BANDWIDTH, WINDOW_BANDWIDTH + 1, 30})


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("layout", ["lower", "fortran", "upper", "reversed"])
@pytest.mark.parametrize("bw", BANDS)
def test_substitutions_bitwise_as_loops(rng, bw, layout, dtype):
    for n in sorted({1, 2, bw, bw + 1, bw + 2, 3 * bw + 5} - {0}):
        buf, off, sj, st = _factor_view(rng, n, bw, layout, dtype)
        nrhs, ny = 1 + n % 3, n + 2
        b = rng.standard_normal(nrhs * ny).astype(dtype)
        got, want = b.copy(), b.copy()
        assert forward_strided(buf, off, sj, st, n, bw, got, ny, nrhs)
        _forward_reference(buf, off, sj, st, n, bw, want, ny, nrhs)
        np.testing.assert_array_equal(got, want, err_msg=f"forward, n={n}")
        backward_strided(buf, off, sj, st, n, bw, got, ny, nrhs)
        _backward_reference(buf, off, sj, st, n, bw, want, ny, nrhs)
        np.testing.assert_array_equal(got, want, err_msg=f"backward, n={n}")
        # Padding after each right-hand side is never written.
        np.testing.assert_array_equal(got.reshape(nrhs, ny)[:, n:], b.reshape(nrhs, ny)[:, n:])


@pytest.mark.parametrize("bw", [1, 5, 17, WINDOW_BANDWIDTH])
def test_backward_compact_with_solved_rows(rng, bw):
    """The twisted factorisation's interface rows (``>= solved``) are already
    solved: they update the rows above, then the leading rows are solved."""
    for n, solved in ((bw + 1, 1), (4 * bw + 3, 2 * bw + 1), (5 * bw, 5 * bw)):
        w = bw + 1
        buf, off, sj, st = _factor_view(rng, n, bw, "fortran", np.float64)
        assert (off, sj, st) == (0, w, 1)
        F = np.concatenate([np.nan_to_num(buf), np.zeros(8)])
        got = rng.standard_normal(n)
        want = got.copy()
        backward_compact(F, n, bw, got, n, 1, solved)
        for j in range(n - 1, -1, -1):
            xj = want[j] if j >= solved else want[j] / F[j * w]
            want[j] = xj
            for t in range(max(1, j - solved + 1), min(bw, j) + 1):
                want[j - t] -= F[(j - t) * w + t] * xj
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("bw", [1, 4, 17, WINDOW_BANDWIDTH + 2])
def test_finiteness_flag(rng, bw, dtype):
    """One inf or NaN anywhere in the factor -- a diagonal, an off-diagonal,
    the first and last columns, the band's outer row -- is reported; cells
    outside the matrix are not read; results that overflow from a finite
    factor are not mistaken for it."""
    n = 3 * bw + 4
    buf, off, sj, st = _factor_view(rng, n, bw, "lower", dtype)
    b = rng.standard_normal(n).astype(dtype)
    assert forward_strided(buf, off, sj, st, n, bw, b.copy(), n, 1)  # NaN padding unread
    cells = {(0, 0), (0, n - 1), (1, 0), (bw, 0), (bw, n - 1 - bw), (1, n - 2), (bw, n // 2)}
    cells |= {(int(rng.integers(bw + 1)), int(rng.integers(n - bw))) for _ in range(4)}
    for t, j in sorted(cells):
        for bad in (np.inf, -np.inf, np.nan):
            poisoned = buf.copy()
            poisoned[off + j * sj + t * st] = bad
            for x in (b, np.zeros_like(b)):  # zero results too: inf * 0 is NaN
                assert not forward_strided(poisoned, off, sj, st, n, bw, x.copy(), n, 1), (t, j)
    # No right-hand side: the factor is read element by element.
    poisoned = buf.copy()
    poisoned[off + (n - 1) * sj] = np.inf
    assert not forward_strided(poisoned, off, sj, st, n, bw, b.copy(), n, 0)
    assert forward_strided(buf, off, sj, st, n, bw, b.copy(), n, 0)
    # Finite but overflowing: a tiny diagonal makes y = inf; the factor is fine.
    tiny = buf.copy()
    tiny[off + 0 * sj] = np.finfo(dtype).tiny
    big = np.full(n, np.finfo(dtype).max / 4, dtype=dtype)
    with np.errstate(over="ignore"):
        y = big.copy()
        assert forward_strided(tiny, off, sj, st, n, bw, y, n, 1)
    assert not np.isfinite(y).all()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    ("bw", "extra"),
    [(0, 37), (1, 1), (3, 2), (17, 37), (17, 1), (WINDOW_BANDWIDTH, 2),
     (WINDOW_BANDWIDTH + 3, 37), (70, 5)],
)  # fmt: skip
def test_one_system_kernel_bitwise_as_lanes(rng, monkeypatch, bw, extra, dtype):
    """The one-system kernel -- left-looking, pipelined two rows ahead, its
    row updates unrolled up to ``UNROLLED_ROW_BANDWIDTH`` and in loops where
    the ring of rows wraps, near the ends and beyond; the forward
    substitution block by block of gathered rows (:func:`forward_compact`,
    the window carried over in ``Y``) -- gives bit for bit the 2-lane
    kernel's factor and solution (right-looking, column by column), over
    several blocks and laps of the ring, with a last block of 1, 2 or more
    rows, and a band wider than a block (the ring then holds ``2 bw``
    rows)."""
    from banded_mnn._backends import _numba_cpu

    n = max(3, bw // _numba_cpu.ROW_BLOCK + 3) * _numba_cpu.ROW_BLOCK + extra
    ab = random_spd_band((3,), n, bw, lower=True, dtype=dtype, rng=rng)
    b = rng.standard_normal((3, n, 2)).astype(dtype)
    results = []
    for lanes in (1, 2):
        monkeypatch.setattr(_numba_cpu, "choose_lanes", lambda nsys, lanes=lanes, **_: lanes)
        monkeypatch.setattr(_numba_cpu, "use_twisted", lambda *args: False)
        results.append((bm.solveh_banded(ab, b, lower=True), bm.cholesky_banded(ab, lower=True)))
    for one, two in zip(*results, strict=True):
        np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_workspaces_start_on_a_cache_line(dtype):
    """The drivers' workspaces (``aligned_empty``) start at a multiple of
    ``WORKSPACE_ALIGNMENT`` bytes whatever Numba's allocator returns, and
    hold the size asked for."""
    from banded_mnn._backends import WORKSPACE_ALIGNMENT
    from banded_mnn._backends._numba_cpu import aligned_empty

    like = np.zeros(1, dtype=dtype)
    for size in (0, 1, 7, 1000, 123457):
        for _ in range(3):
            work = aligned_empty(size, like)
            assert work.shape == (size,) and work.dtype == dtype
            assert work.ctypes.data % WORKSPACE_ALIGNMENT == 0
