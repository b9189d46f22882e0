"""Ill-conditioned systems: residuals at rounding level, errors bounded by the condition number."""

from __future__ import annotations

import numpy as np
import pytest

import banded_mnn as bm
from conftest import dense_from_band, eps, scipy_solve


def _laplacian_power_band(m: int, power: int, shift: float) -> np.ndarray:
    """Upper-form band of T**power + shift*I, T = tridiag(-1, 2, -1): cond ~ (m / pi)^(2 power)."""
    t = 2 * np.eye(m) - np.eye(m, k=1) - np.eye(m, k=-1)
    a = np.linalg.matrix_power(t, power) + shift * np.eye(m)
    u = power
    ab = np.zeros((u + 1, m))
    for d in range(u + 1):
        ab[u - d, d:] = np.diag(a, k=d)
    return ab


@pytest.mark.parametrize(
    ("m", "power", "dtype"),
    [
        (200, 2, np.float64),  # pentadiagonal, cond ~ 2.6e8
        (500, 2, np.float64),  # cond ~ 1e10
        (120, 3, np.float64),  # heptadiagonal, cond ~ 3e10
        (100, 1, np.float32),  # tridiagonal, cond ~ 4e3
        (30, 2, np.float32),  # cond ~ 1e5
    ],
)
def test_ill_conditioned(m, power, dtype, lanes, rng):
    base = _laplacian_power_band(m, power, shift=0.0)
    # A batch of random SPD perturbations keeps the conditioning but varies the systems.
    ab = np.stack([base + 1e-9 * rng.random(base.shape) * (base != 0) for _ in range(3)])
    ab = ab.astype(dtype)
    b = rng.standard_normal((3, m, 2)).astype(dtype)
    dense = dense_from_band(ab.astype(np.float64), lower=False)
    cond = np.linalg.cond(dense).max()
    assert cond > (1e3 if dtype == np.float32 else 1e8)  # the test is about ill-conditioning

    x = bm.solveh_banded(ab, b)
    # Backward error: Cholesky is backward stable whatever the conditioning.
    residual = np.einsum("bij,bjk->bik", dense, x.astype(np.float64)) - b
    scale = np.linalg.norm(dense, 2, axis=(1, 2))[:, None] * np.abs(x).max(axis=1) + np.abs(b).max(
        axis=1
    )
    backward = np.abs(residual).max(axis=1) / scale
    assert backward.max() < 20 * (power + 1) * eps(dtype), backward.max()
    # Forward error against SciPy, scaled by the condition number.
    reference = scipy_solve(ab, b, lower=False)
    forward = np.abs(x - reference).max() / np.abs(reference).max()
    assert forward < 10 * cond * eps(dtype), (forward, cond)
