"""The lane factorisation's look-ahead and unrolled updates against the plain
column-by-column order.

``_band_kernels.factor`` issues the next column's pivot before the rest of a
column's update, and for bandwidths up to ``UNROLLED_BANDWIDTH`` updates the
trailing triangle with two columns at once in unrolled code.  Every element
must still receive the same fused multiply-adds in the same order as in the
right-looking loop written out below, so the results agree bit for bit: for
every bandwidth around the unrolled range, every order from one column to
several bands, column ranges split as the MNN layer's window splits them,
fused right-hand sides, and failed pivots.
"""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from banded_mnn._backends._band_kernels import (
    UNROLLED_BANDWIDTH,
    _forward_column,
    factor,
    lane_fnmadd_run,
    lane_marker,
    lane_mul,
    lane_pivot,
)


@njit(cache=False)
def _reference(W, Y, n, bw, nrhs, info, recip, lanes):
    """The right-looking band Cholesky, column by column: pivot, scale, the
    whole trailing update, the fused forward substitution step."""
    L = len(lanes)
    R = (bw + 1) * L
    for j in range(n):
        m = min(bw, n - 1 - j)
        p = j * R
        lane_pivot(W, p, recip, recip[L:], lanes)
        for l in range(L):
            d = recip[L + l]
            if not (d > 0.0 and d < np.inf) and info[l] == 0:
                info[l] = j + 1
        for t in range(1, m + 1):
            lane_mul(W, p + t * L, W, p + t * L, recip, 0, lanes)
        for s in range(1, m + 1):
            lane_fnmadd_run(W, (j + s) * R, L, W, p + s * L, L, W, p + s * L, m - s + 1, lanes)
        if nrhs > 0:
            _forward_column(W, Y, j, m, bw, nrhs, recip, lanes)


@njit(cache=False)
def _in_ranges(W, Y, n, bw, nrhs, info, recip, lanes, cuts):
    """``factor`` called on consecutive column ranges ``[cuts[k], cuts[k+1])``."""
    for k in range(len(cuts) - 1):
        factor(W, Y, n, bw, nrhs, info, recip, lanes, cuts[k], cuts[k + 1])


def _workspace(rng, n, bw, lanes, dtype):
    """A lane workspace of SPD bands (diagonally dominant), and right-hand sides."""
    w = bw + 1
    W = np.zeros((n, w, lanes), dtype=dtype)
    for j in range(n):
        for t in range(1, min(w, n - j)):
            W[j, t] = rng.uniform(-1, 1, lanes)
    W[:, 0] = 2 * w + rng.uniform(0, 1, (n, lanes))
    return W.reshape(-1), rng.standard_normal(n * 2 * lanes).astype(dtype)


def _both(W, Y, n, bw, nrhs, lanes, cuts):
    L = len(lanes)
    results = []
    for run in ("reference", "factor"):
        w, y = W.copy(), Y[: n * nrhs * L].copy()
        info = np.zeros(L, dtype=np.int32)
        recip = np.empty(2 * L, dtype=W.dtype)
        if run == "reference":
            _reference(w, y, n, bw, nrhs, info, recip, lanes)
        else:
            _in_ranges(w, y, n, bw, nrhs, info, recip, lanes, np.asarray(cuts, dtype=np.int64))
        results.append((w, y, info))
    return results


BANDWIDTHS = (0, 1, 2, 3, 5, 11, 17, UNROLLED_BANDWIDTH - 1, UNROLLED_BANDWIDTH,
              UNROLLED_BANDWIDTH + 1)  # fmt: skip


@pytest.mark.parametrize("bw", BANDWIDTHS)
@pytest.mark.parametrize(("lanes", "dtype"), [(4, np.float64), (8, np.float64), (8, np.float32)])
def test_factor_matches_the_column_order_bit_for_bit(rng, bw, lanes, dtype):
    marker = lane_marker(lanes)
    for n in sorted({1, bw + 1, bw + 2, bw + 3, bw + 4, 2 * bw + 5, 3 * bw + 8}):
        W, Y = _workspace(rng, n, bw, lanes, dtype)
        # Whole, and in ranges of odd and even lengths (pairs cut at every parity).
        splits = [[0, n], [0, 1, n], sorted({0, n // 3, n // 3 + 1, (2 * n) // 3, n})]
        for cuts in splits:
            for nrhs in (0, 1, 2):
                (w0, y0, i0), (w1, y1, i1) = _both(W, Y, n, bw, nrhs, marker, cuts)
                where = f"n={n} cuts={cuts} nrhs={nrhs}"
                np.testing.assert_array_equal(w1, w0, err_msg=where)
                np.testing.assert_array_equal(y1, y0, err_msg=where)
                np.testing.assert_array_equal(i1, i0, err_msg=where)


@pytest.mark.parametrize("bw", (2, 11, UNROLLED_BANDWIDTH))
def test_failed_pivots_are_reported_as_in_the_column_order(rng, bw):
    """A pivot that fails inside a pair (either column), or in the column the
    look-ahead pivots early, gives the same ``info`` and the same (finite)
    values in the other lanes."""
    lanes = 8
    marker = lane_marker(lanes)
    n = 4 * bw + 9
    W, Y = _workspace(rng, n, bw, lanes, np.float64)
    cube = W.reshape(n, bw + 1, lanes)
    for lane, column in enumerate((0, 1, 2, bw, bw + 1, n - bw - 2, n - 2, n - 1)):
        cube[column, 0, lane] = -1.0 if lane % 2 else np.nan
    (w0, y0, i0), (w1, y1, i1) = _both(W, Y, n, bw, 1, marker, [0, bw + 1, n])
    np.testing.assert_array_equal(i1, i0)
    assert np.all(i1 > 0)
    np.testing.assert_array_equal(w1, w0)
    np.testing.assert_array_equal(y1, y0)
