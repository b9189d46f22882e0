"""Shared fixtures and the SciPy oracle."""

from __future__ import annotations

import os
import secrets

import numpy as np
import pytest
import scipy.linalg

import banded_mnn._api as api
import banded_mnn.mnn._layer as mnn_layer
from banded_mnn._backends import _numba_cpu


@pytest.fixture
def rng(request):
    """A generator with a fresh seed per test (printed on failure).

    Set BANDED_MNN_TEST_SEED to replay a failure.
    """
    seed = int(os.environ.get("BANDED_MNN_TEST_SEED", secrets.randbits(32)))
    request.node.user_properties.append(("seed", seed))
    print(f"random seed: {seed} (BANDED_MNN_TEST_SEED={seed} replays it)")
    return np.random.default_rng(seed)


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    """Fresh outputs start as NaN, so any element the kernels do not write shows up."""

    def empty(shape, dtype=float, xp=np):
        return xp.full(shape, np.nan, dtype=dtype)

    monkeypatch.setattr(api, "_empty", empty)
    monkeypatch.setattr(mnn_layer, "_empty", empty)


@pytest.fixture(params=[1, 2, 4, 8], ids=["lanes1", "lanes2", "lanes4", "lanes8"])
def lanes(request, monkeypatch):
    """Run the CPU backend with a forced lane count (both code paths, any batch size)."""
    monkeypatch.setattr(_numba_cpu, "choose_lanes", lambda nsys, **_: request.param)
    return request.param


def eps(dtype) -> float:
    return float(np.finfo(dtype).eps)


def dense_from_band(ab: np.ndarray, lower: bool) -> np.ndarray:
    """Dense symmetric matrices from band storage (for small oracles only)."""
    u = ab.shape[-2] - 1
    m = ab.shape[-1]
    a = np.zeros(ab.shape[:-2] + (m, m), dtype=np.float64)
    for d in range(min(u, m - 1) + 1):
        j = np.arange(m - d)
        values = ab[..., d, : m - d] if lower else ab[..., u - d, d:]
        a[..., j + d, j] = values
        a[..., j, j + d] = values
    return a


def scipy_cholesky(ab: np.ndarray, lower: bool) -> np.ndarray:
    """The oracle: a loop of scipy.linalg.cholesky_banded over the batch."""
    out = np.empty(ab.shape, dtype=np.result_type(ab.dtype, np.float32))
    for index in np.ndindex(ab.shape[:-2]):
        out[index] = scipy.linalg.cholesky_banded(ab[index], lower=lower)
    return out


def scipy_solve(ab: np.ndarray, b: np.ndarray, lower: bool, factored: bool = False):
    """The oracle for solveh_banded / cho_solve_banded, with batch broadcasting."""
    b_batch = () if b.ndim == 1 else b.shape[:-2]
    batch = np.broadcast_shapes(ab.shape[:-2], b_batch)
    core = b.shape if b.ndim == 1 else b.shape[-2:]
    abb = np.broadcast_to(ab, batch + ab.shape[-2:])
    bb = b if b.ndim == 1 else np.broadcast_to(b, batch + core)
    out = None
    for index in np.ndindex(batch):
        rhs = b if b.ndim == 1 else bb[index]
        if factored:
            x = scipy.linalg.cho_solve_banded((abb[index], lower), rhs)
        elif abb.shape[-2:] == (2, 1):
            # SciPy's ?ptsv path fails for M = 1 ("unexpected array size"):
            # the 1 x 1 system is solved directly instead.
            x = rhs / abb[index][0 if lower else 1, 0]
        else:
            x = scipy.linalg.solveh_banded(abb[index], rhs, lower=lower)
        if out is None:
            out = np.empty(batch + x.shape, dtype=x.dtype)
        out[index] = x
    return out


@pytest.fixture(params=["thread", "warp"])
def regime(request, monkeypatch):
    """Force one regime of the GPU driver (the size-based choice is tested on
    its own): the GPU tests run in both."""
    from banded_mnn._backends import _gpu

    monkeypatch.setattr(_gpu, "choose_regime", lambda nsys, sms: request.param)
    return request.param
