"""The GPU backends through the public functions, against SciPy.

Which GPU backend runs depends on the process (chosen at collection, so
nothing here is ever skipped for want of a GPU):

* ``cupy-host`` (the normal test run): the "cupy" backend with its kernel set
  swapped for :class:`gpu_host.HostKernels`, which runs the very same
  ``band_cholesky.cu`` compiled as host C++ -- every line of the backend's
  Python (layouts, regimes, launches, argument typing, status) is the
  production code;
* ``numba-cuda-sim`` (this file run again with ``NUMBA_ENABLE_CUDASIM=1`` by
  :func:`test_numba_cuda_backend_under_the_simulator`): the "numba-cuda"
  backend, unmodified, on NumPy arrays in Numba's CUDA simulator;
* ``cupy`` and ``numba-cuda`` on CuPy arrays, only where a CUDA GPU is usable
  (``tools/gpu_check.py`` runs them).

Every test runs in both regimes (one thread per system, one warp per system).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gpu_devices import device_for

import banded_mnn as bm
from banded_mnn import _backends
from banded_mnn._backends import _gpu
from banded_mnn._strided import to_numpy
from banded_mnn.problems import lower_to_upper, random_spd_band
from conftest import scipy_cholesky, scipy_solve

# In the simulator run (see the last test) tests named *_host are deselected.
SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


if SIMULATED:
    from cudasim import prepare_simulator

    prepare_simulator()


def _variants() -> list[str]:
    if SIMULATED:
        return ["numba-cuda-sim"]
    variants = ["cupy-host"]
    if _backends.usable("cupy")[0]:
        variants += ["cupy", "numba-cuda"]
    return variants


@pytest.fixture(params=_variants())
def device(request, monkeypatch):
    return device_for(request.param, monkeypatch)


def tolerance(dtype) -> float:
    return 1e-10 if np.dtype(dtype) == np.float64 else 2e-4


def make_band(rng, batch, m, u, lower, dtype=np.float64):
    return random_spd_band(batch, m, u, lower=lower, rng=rng).astype(dtype)


# --------------------------------------------------------------------------
# Results against SciPy
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("lower", [False, True])
@pytest.mark.parametrize("batch,m,u,k", [((5,), 12, 3, 2), ((2, 3), 7, 1, 1), ((4,), 3, 5, 3)])
def test_solveh_banded(device, regime, rng, dtype, lower, batch, m, u, k):
    ab = make_band(rng, batch, m, u, lower, dtype)
    b = rng.standard_normal(batch + (m, k)).astype(dtype)
    x = bm.solveh_banded(device.put(ab), device.put(b), lower=lower, backend=device.backend)
    assert x.dtype == dtype and x.shape == b.shape
    ref = scipy_solve(ab.astype(np.float64), b.astype(np.float64), lower)
    np.testing.assert_allclose(device.get(x), ref, rtol=tolerance(dtype), atol=tolerance(dtype))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("lower", [False, True])
def test_cholesky_then_cho_solve(device, regime, rng, dtype, lower):
    ab = make_band(rng, (6,), 15, 4, lower, dtype)
    b = rng.standard_normal((6, 15, 2)).astype(dtype)
    c = bm.cholesky_banded(device.put(ab), lower=lower, backend=device.backend)
    tol = tolerance(dtype)
    np.testing.assert_allclose(device.get(c), scipy_cholesky(ab, lower), rtol=tol, atol=tol)
    x = bm.cho_solve_banded((c, lower), device.put(b), backend=device.backend)
    np.testing.assert_allclose(device.get(x), scipy_solve(ab, b, lower), rtol=tol, atol=tol)


def test_default_backend_and_vector_rhs(device, regime, rng):
    """One vector b for the whole batch; results agree with the CPU backend."""
    ab = make_band(rng, (4,), 9, 2, False)
    b = rng.standard_normal(9)
    x = bm.solveh_banded(device.put(ab), device.put(b), backend=device.backend)
    assert x.shape == (4, 9)
    np.testing.assert_allclose(device.get(x), bm.solveh_banded(ab, b), rtol=1e-12, atol=1e-12)


def test_broadcasting_and_shared_matrix(device, regime, rng):
    ab = make_band(rng, (3, 1), 8, 2, True)
    b = rng.standard_normal((1, 4, 8, 2))
    x = bm.solveh_banded(device.put(ab), device.put(b), lower=True, backend=device.backend)
    assert x.shape == (3, 4, 8, 2)
    np.testing.assert_allclose(device.get(x), scipy_solve(ab, b, True), rtol=1e-10)
    one = make_band(rng, (), 8, 2, True)  # one matrix, many right-hand sides (factored once)
    x = bm.solveh_banded(device.put(one), device.put(b[0]), lower=True, backend=device.backend)
    np.testing.assert_allclose(device.get(x), scipy_solve(one, b[0], True), rtol=1e-10)


def test_strided_inputs(device, regime, rng):
    ab = make_band(rng, (5,), 10, 2, False)
    b = rng.standard_normal((5, 10, 6))
    ab_s = device.put(np.asfortranarray(ab))[::-1]  # Fortran order, reversed batch
    b_s = device.put(b)[..., ::2]  # every other column
    x = bm.solveh_banded(ab_s, b_s, backend=device.backend)
    np.testing.assert_allclose(device.get(x), scipy_solve(ab[::-1], b[..., ::2], False), rtol=1e-10)


def test_wide_band_uses_the_unspecialised_kernels(device, regime, rng):
    ab = make_band(rng, (2,), 40, 34, False)  # u = 34 > SPECIALISED_MAX_BW
    b = rng.standard_normal((2, 40, 1))
    x = bm.solveh_banded(device.put(ab), device.put(b), backend=device.backend)
    np.testing.assert_allclose(device.get(x), scipy_solve(ab, b, False), rtol=1e-9)


def test_band_wider_than_the_matrix(device, regime, rng):
    ab = make_band(rng, (3,), 4, 3, False)
    wide = np.concatenate([np.full((3, 2, 4), np.pi), ab], axis=1)  # u + 1 = 6 > M = 4
    b = rng.standard_normal((3, 4, 1))
    x = bm.solveh_banded(device.put(wide), device.put(b), backend=device.backend)
    np.testing.assert_allclose(device.get(x), scipy_solve(ab, b, False), rtol=1e-10)


def test_integer_input_is_converted(device, regime):
    ab = np.array([[0, 1, 1], [4, 4, 4]])
    x = bm.solveh_banded(device.put(ab), device.put(np.array([5, 6, 5])), backend=device.backend)
    assert x.dtype == np.float64
    np.testing.assert_allclose(device.get(x), [1.0, 1.0, 1.0], rtol=1e-14)


def test_empty_inputs(device, regime):
    ab = np.ones((0, 2, 5))
    x = bm.solveh_banded(device.put(ab), device.put(np.ones((0, 5, 1))), backend=device.backend)
    assert x.shape == (0, 5, 1)
    c, info = bm.cholesky_banded_ex(device.put(ab), backend=device.backend)
    assert c.shape == (0, 2, 5) and info.shape == (0,)
    x = bm.solveh_banded(device.put(np.ones((2, 2, 5)) * [[0.0], [2.0]]),
                         device.put(np.ones((2, 5, 0))), backend=device.backend)  # fmt: skip
    assert x.shape == (2, 5, 0)


# --------------------------------------------------------------------------
# Overwrite flags, errors, status
# --------------------------------------------------------------------------


def test_overwrite_flags(device, regime, rng):
    ab = make_band(rng, (3,), 8, 2, False)
    b = rng.standard_normal((3, 8, 2))
    ab_d, b_d = device.put(ab), device.put(b)
    c = bm.cholesky_banded(ab_d, overwrite_ab=True, backend=device.backend)
    assert c is ab_d
    np.testing.assert_allclose(device.get(ab_d), scipy_cholesky(ab, False), rtol=1e-10)
    x = bm.cho_solve_banded((c, False), b_d, overwrite_b=True, backend=device.backend)
    assert x is b_d
    np.testing.assert_allclose(device.get(b_d), scipy_solve(ab, b, False), rtol=1e-10)
    # Without the flags the inputs are left alone.
    ab_d, b_d = device.put(ab), device.put(b)
    bm.solveh_banded(ab_d, b_d, backend=device.backend)
    assert np.array_equal(device.get(ab_d), ab) and np.array_equal(device.get(b_d), b)


@pytest.mark.parametrize("where", ["ab", "b"])
def test_non_finite_input_raises_and_writes_nothing(device, regime, rng, where):
    ab = make_band(rng, (3,), 8, 2, False)
    b = rng.standard_normal((3, 8, 1))
    (ab if where == "ab" else b)[1, 1, 4 if where == "ab" else 0] = np.nan
    ab_d, b_d = device.put(ab), device.put(b)
    with pytest.raises(ValueError, match=f"{where} must not contain infs or NaNs"):
        bm.solveh_banded(ab_d, b_d, overwrite_b=True, backend=device.backend)
    assert np.array_equal(device.get(b_d), b, equal_nan=True)
    with pytest.raises(ValueError, match=f"{where} must not contain infs or NaNs"):
        bm.solveh_banded(ab_d, b_d, backend=device.backend)
    if where == "ab":
        with pytest.raises(ValueError, match="ab must not contain"):
            bm.cholesky_banded(ab_d, overwrite_ab=True, backend=device.backend)
        assert np.array_equal(device.get(ab_d), ab, equal_nan=True)


def test_not_positive_definite(device, regime, rng):
    ab = make_band(rng, (4,), 10, 2, False)
    ab[2, -1, 6] = -1.0  # system 2: the 7th leading minor fails
    b = rng.standard_normal((4, 10, 1))
    x, info = bm.solveh_banded_ex(device.put(ab), device.put(b), backend=device.backend)
    assert device.get(info).tolist() == [0, 0, 7, 0]
    x = device.get(x)
    assert np.isnan(x[2]).all()
    np.testing.assert_allclose(np.delete(x, 2, 0), scipy_solve(np.delete(ab, 2, 0),
                                                               np.delete(b, 2, 0), False))  # fmt: skip
    c, info = bm.cholesky_banded_ex(device.put(ab), backend=device.backend)
    assert device.get(info).tolist() == [0, 0, 7, 0] and np.isnan(device.get(c)[2, -1]).all()
    with pytest.raises(bm.NotPositiveDefiniteError) as caught:
        bm.solveh_banded(device.put(ab), device.put(b), backend=device.backend)
    assert caught.value.batch_index == (2,) and caught.value.order == 7
    ab[1, -1, 3] = np.inf  # an infinite pivot fails too (check_finite=False lets it through)
    _, info = bm.cholesky_banded_ex(device.put(ab), check_finite=False, backend=device.backend)
    assert device.get(info).tolist() == [0, 4, 7, 0]


def test_no_wait_for_the_device_without_checks(device, regime, rng, monkeypatch):
    """The _ex functions with check_finite=False never copy to the host."""
    waits = []
    real = _gpu._to_host
    monkeypatch.setattr(_gpu, "_to_host", lambda x: waits.append(1) or real(x))
    ab = make_band(rng, (3,), 8, 2, False)
    b = rng.standard_normal((3, 8, 1))
    bm.solveh_banded_ex(device.put(ab), device.put(b), check_finite=False, backend=device.backend)
    bm.cholesky_banded_ex(device.put(ab), check_finite=False, backend=device.backend)
    assert waits == []
    bm.solveh_banded_ex(device.put(ab), device.put(b), backend=device.backend)
    assert waits  # checking needs the answer


@pytest.mark.parametrize("algorithm", ["sequential", "cyclic"])
@pytest.mark.parametrize("levels", [2, 3])
def test_solveh_block_banded(device, regime, rng, algorithm, levels):
    """Blocks on the device: the band path through the GPU backend, or block
    cyclic reduction as array operations of the blocks' array module."""
    from test_blocks import random_blocks

    blocks = random_blocks(rng, (3,), 7, 2, levels)
    blocks[0][1, 3] = -np.eye(2)  # system 1: block row 4 is not positive definite
    b = rng.standard_normal((3, 7, 2, 2))
    x, info = bm.solveh_block_banded_ex([device.put(a) for a in blocks], device.put(b),
                                        algorithm=algorithm, backend=device.backend)  # fmt: skip
    ref, ref_info = bm.solveh_block_banded_ex(blocks, b, algorithm=algorithm)
    np.testing.assert_array_equal(device.get(info), ref_info)
    np.testing.assert_allclose(device.get(x), ref, rtol=1e-10, atol=1e-12)
    assert np.isnan(device.get(x)[1]).all()


def test_block_algorithm_is_chosen_by_shape(device, rng, monkeypatch):
    """algorithm=None: block cyclic reduction for few systems (the warp
    regime) with at least CYCLIC_MIN_STEPS block rows, else the band path;
    the same solution either way, and ``info`` in the same units."""
    from test_blocks import random_blocks

    from banded_mnn import _blocks

    chosen = []
    original = _blocks._solve_blocks
    monkeypatch.setattr(_blocks, "_solve_blocks",
                        lambda *args: chosen.append(args[7]) or original(*args))  # fmt: skip
    monkeypatch.setattr(_gpu, "CYCLIC_MIN_STEPS", 6)
    monkeypatch.setattr(_gpu, "choose_regime", lambda nsys, sms: "warp" if nsys < 3 else "thread")
    for batch, steps, expected in [((2,), 7, "cyclic"), ((2,), 5, "sequential"),
                                   ((3,), 7, "sequential")]:  # fmt: skip
        blocks = random_blocks(rng, batch, steps, 2, 2)
        blocks[0][0, 3] = -np.eye(2)  # system 0 fails at block row 3 (0-based)
        b = rng.standard_normal(batch + (steps, 2))
        x, info = bm.solveh_block_banded_ex([device.put(a) for a in blocks], device.put(b),
                                            backend=device.backend)  # fmt: skip
        assert chosen[-1] == expected
        ref, ref_info = bm.solveh_block_banded_ex(blocks, b, algorithm="sequential")
        np.testing.assert_array_equal(device.get(info), ref_info)  # (block 3's first pivot)
        np.testing.assert_allclose(device.get(x), ref, rtol=1e-10, atol=1e-12, equal_nan=True)


def _cyclic_variants() -> list[str]:
    """Where block cyclic reduction's level kernels run in this process: the
    Numba CPU drivers (normal run), the Numba CUDA kernels under the
    simulator (simulator run), and on a GPU where one is usable."""
    if SIMULATED:
        return ["numba-cuda-sim"]
    return ["cpu"] + (["numba-cuda"] if _backends.usable("numba-cuda")[0] else [])


@pytest.fixture(params=_cyclic_variants())
def cyclic_kernels(request):
    """(array module, level runner) of one variant."""
    if request.param == "cpu":
        from banded_mnn._backends._cyclic_cpu import run_level

        return np, run_level
    from banded_mnn._backends._numba_cuda import run_cyclic_level

    if request.param == "numba-cuda-sim":
        return np, run_cyclic_level
    import cupy

    return cupy, run_cyclic_level


@pytest.mark.parametrize("rhs_batch,nrhs", [((4, 1, 3), 2), ((3,), 1), ((2, 3), 0)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("steps", [1, 2, 3, 6, 9])
def test_cyclic_level_kernels_against_the_reference(cyclic_kernels, monkeypatch, rng, steps,
                                                    dtype, rhs_batch, nrhs):  # fmt: skip
    """The compiled levels (shared per-node cores) against the array-operation
    reference: every block of the factor, the status (a system with an
    indefinite block row) and the solution for right-hand sides whose batch
    broadcasts with the factor's (a shared factor; a factor batch larger than
    the right-hand sides'), K = 0 included."""
    from test_blocks import random_blocks

    from banded_mnn import _cyclic

    xp, run = cyclic_kernels
    n = 3
    a0, a1 = (a.astype(dtype) for a in random_blocks(rng, (2, 3), steps, n, 2))
    a0[1, 2, steps // 2] = -np.eye(n, dtype=dtype)  # system (1, 2) fails at that block row
    b = rng.standard_normal(rhs_batch + (steps, n, nrhs)).astype(dtype)
    host = {}
    for name, runner in (("reference", None), ("kernels", run)):
        monkeypatch.setattr(_cyclic, "_level_kernels", lambda _, runner=runner: runner)
        factor = _cyclic.factor_tridiagonal(xp.asarray(a0), xp.asarray(a1))
        x = _cyclic.solve_tridiagonal(factor, xp.asarray(b))
        blocks = [a for level in factor.levels for a in level] + [factor.last]
        host[name] = ([to_numpy(a) for a in blocks], to_numpy(factor.info), to_numpy(x))
    (ref_blocks, ref_info, ref_x), (blocks, info, x) = host["reference"], host["kernels"]
    tol = tolerance(dtype)
    assert len(blocks) == len(ref_blocks)
    for got, want in zip(blocks, ref_blocks, strict=True):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * abs(want).max())
    np.testing.assert_array_equal(info, ref_info)
    assert info[1, 2] == steps // 2 + 1 and info.sum() == info[1, 2]
    assert x.shape == ref_x.shape == np.broadcast_shapes((2, 3), rhs_batch) + (steps, n, nrhs)
    ok = np.broadcast_to(info == 0, x.shape[:-3])
    scale = abs(ref_x).max() if ref_x.size else 1.0
    np.testing.assert_allclose(x[ok], ref_x[ok], rtol=tol, atol=tol * scale)


# --------------------------------------------------------------------------
# Regime choice, backend selection (no kernels needed)
# --------------------------------------------------------------------------


def test_regime_rule():
    sms = 132
    assert _gpu.choose_regime(16, sms) == "warp"
    assert _gpu.choose_regime(_gpu.WARP_REGIME_SYSTEMS_PER_SM * sms - 1, sms) == "warp"
    assert _gpu.choose_regime(_gpu.WARP_REGIME_SYSTEMS_PER_SM * sms, sms) == "thread"


@pytest.mark.skipif(SIMULATED, reason="uses the host runner of the .cu")
def test_regime_follows_the_batch_size_host(rng, monkeypatch):
    from gpu_host import HostKernels

    from banded_mnn._backends import _cupy

    kernels = HostKernels(multiprocessors=1)
    monkeypatch.setattr(_cupy, "_kernels", kernels)
    few = _gpu.WARP_REGIME_SYSTEMS_PER_SM - 1
    for nsys, u, expected in (
        (few, 1, "band_factor_window"),  # the band in a warp's registers
        (few, 31, "band_factor_window"),
        (few, 32, "band_factor_solve_warp"),  # 33 diagonals: wider than a warp
        (few + 1, 1, "band_factor_solve"),
    ):
        ab = make_band(rng, (nsys,), 40, u, False)
        bm.cholesky_banded(ab, backend="cupy")
        assert [k for k, _, _ in kernels.launches if k.startswith("band_factor")][-1] == expected


def test_lower_and_upper_agree(device, regime, rng):
    ab_lower = make_band(rng, (3,), 9, 3, True)
    ab_upper = lower_to_upper(ab_lower)
    b = rng.standard_normal((3, 9, 1))
    x_lower = bm.solveh_banded(device.put(ab_lower), device.put(b), lower=True,
                               backend=device.backend)  # fmt: skip
    x_upper = bm.solveh_banded(device.put(ab_upper), device.put(b), backend=device.backend)
    np.testing.assert_allclose(device.get(x_lower), device.get(x_upper), rtol=1e-12)


# --------------------------------------------------------------------------
# The simulator run, from the normal test run
# --------------------------------------------------------------------------


@pytest.mark.skipif(SIMULATED, reason="this is the simulator run itself")
def test_numba_cuda_backend_under_the_simulator(tmp_path):
    """Run this file again with NUMBA_ENABLE_CUDASIM=1 (the "numba-cuda" backend)."""
    pytest.importorskip("numba_cuda", reason="numba-cuda is in the test extra")
    report = tmp_path / "report.json"
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider",
         "-k", "not simulator and not _host", f"--junitxml={report.with_suffix('.xml')}"],
        capture_output=True, text=True, env=env, cwd=root, timeout=1500,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-3000:]
    summary = result.stdout.strip().splitlines()[-1]
    report.write_text(json.dumps(summary))
    assert "passed" in summary and "skipped" not in summary and "failed" not in summary, summary


@pytest.mark.skipif(SIMULATED, reason="about the production kernel set, not the simulator's")
def test_gpu_backend_with_numpy_input_is_refused_host(monkeypatch):
    """Without the test runner, backend="cupy" wants CuPy arrays (or CuPy itself)."""
    from banded_mnn._backends import _cupy

    monkeypatch.setattr(_cupy, "_kernels", None)
    try:
        import cupy  # noqa: F401
    except ImportError:
        expected = (ImportError, "backend 'cupy' needs CuPy: pip install 'banded-mnn\\[cuda12\\]'")
    else:
        expected = (TypeError, "ab must be a CuPy array for GPU backend 'cupy'")
    with pytest.raises(expected[0], match=expected[1]):
        bm.cholesky_banded(np.ones((2, 3)), backend="cupy")
    a0 = np.broadcast_to(np.eye(2) * 4, (3, 2, 2))
    with pytest.raises(expected[0], match=expected[1].replace("ab", "blocks\\[0\\]")):
        bm.solveh_block_banded((a0, np.zeros((2, 2, 2))), np.ones((3, 2)), backend="cupy")
    from banded_mnn.mnn import ode_forward

    with pytest.raises(expected[0], match=expected[1].replace("ab", "coefficients")):
        ode_forward(np.ones((1, 4, 1, 1, 2)), np.ones((1, 4, 1)), np.ones((1, 1, 1, 1)),
                    np.full((1, 3), 0.1), backend="cupy")  # fmt: skip


@pytest.mark.parametrize("kind", ["protocol", "attribute", "address"])
def test_on_stream_accepts_every_stream_spelling(monkeypatch, kind):
    """``_cupy.on_stream`` with a stand-in CuPy: a stream implementing the CUDA
    stream protocol (recent torch), one with only ``cuda_stream`` (older torch)
    and a raw address (JAX) all reach ``Stream.from_external`` through the
    protocol, inside the device's context."""
    import types

    from stand_in_cupy import stand_in_cupy

    from banded_mnn._backends import _cupy

    events = []
    monkeypatch.setitem(sys.modules, "cupy", stand_in_cupy(events))
    stream = {
        "protocol": types.SimpleNamespace(__cuda_stream__=lambda: (0, 0xABC)),
        "attribute": types.SimpleNamespace(cuda_stream=0xABC),
        "address": 0xABC,
    }[kind]
    with _cupy.on_stream(2, stream):
        events.append("inside")
    assert events == [("device", 2), ("stream", (0, 0xABC)), "inside", ("exit device", 2)]


# --------------------------------------------------------------------------
# The register-window kernels (warp regime, 1 <= u < 32), host build
# --------------------------------------------------------------------------


def _ill_conditioned_band(rng, nsys: int, m: int, u: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Lower-form bands of D^T D + delta I, D the lower band Toeplitz matrix of
    a random zero-sum stencil of length u + 1 (a random difference operator,
    nearly singular), delta set for a condition number near 10^4 (float32) or
    10^8 (float64); and the dense matrices."""
    target = 1e4 if np.dtype(dtype) == np.float32 else 1e8
    dense = np.zeros((nsys, m, m))
    for i in range(nsys):
        stencil = rng.uniform(-1, 1, u + 1)
        stencil -= stencil.mean()
        difference = sum(np.diag(np.full(m - t, stencil[t]), -t) for t in range(min(u + 1, m)))
        gram = difference.T @ difference
        dense[i] = gram + np.linalg.norm(gram, 2) / target * np.eye(m)
    ab = np.zeros((nsys, u + 1, m))
    for t in range(min(u + 1, m)):
        ab[:, t, : m - t] = np.diagonal(dense, -t, axis1=1, axis2=2)
    return ab.astype(dtype), dense


@pytest.mark.skipif(SIMULATED, reason="uses the host runner of the .cu")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("u", [1, 4, 23, 31])
def test_window_kernels_host(rng, monkeypatch, dtype, u):
    """The warp regime's register-window kernels against SciPy: factor, solve
    with one right-hand side (forward substitution fused) and with three (a
    warp per right-hand side), solve with a given factor (one and three
    right-hand sides), the band in both forms and at strides (gathered) and
    with contiguous columns (read where it is, no gather); orders from one row to several windows, one step into a
    second window, exact multiples of the window and not; ill-conditioned
    systems with the tolerance scaled by the condition number (errors seen
    over many seeds: below 1 eps cond for the solutions, below 1.1
    eps sqrt(cond) for the factor)."""
    from gpu_host import HostKernels

    from banded_mnn._backends import _cupy

    kernels = HostKernels()
    monkeypatch.setattr(_cupy, "_kernels", kernels)
    monkeypatch.setattr(_gpu, "choose_regime", lambda nsys, sms: "warp")
    copies = []  # (mask, writes): contiguous columns are read where they are
    copy = kernels.copy
    monkeypatch.setattr(
        kernels, "copy", lambda src, dst, *a, **k: copies.append((a[2], dst is not None))
        or copy(src, dst, *a, **k)
    )  # fmt: skip
    eps = np.finfo(dtype).eps
    w = u + 1
    for m in sorted({1, u, w, w + 1, 2 * w, 2 * w + 1, 3 * w + 5}):
        ab, dense = _ill_conditioned_band(rng, 2, m, u, dtype)
        cond = np.linalg.cond(dense).max()
        b = rng.standard_normal((2, m, 3)).astype(dtype)
        reference = np.linalg.solve(dense, b.astype(np.float64))
        scale = np.abs(reference).max()
        for k in (1, 3):
            x = bm.solveh_banded(ab, b[..., :k], lower=True, backend="cupy")
            assert np.abs(x - reference[..., :k]).max() <= 8 * eps * cond * scale, (m, k)
        # the upper form, Fortran-ordered and every other column of a wider array
        upper = np.zeros((2, ab.shape[1], 2 * m), dtype, order="F")[..., ::2]
        upper[...] = lower_to_upper(ab)
        x = bm.solveh_banded(upper, b, backend="cupy")
        assert np.abs(x - reference).max() <= 8 * eps * cond * scale, m
        # each column contiguous (the workspace's layout): read where it is
        columns = np.ascontiguousarray(np.swapaxes(ab, -1, -2)).swapaxes(-1, -2)
        before = len(copies)
        x = bm.solveh_banded(columns, b, lower=True, backend="cupy")
        assert np.abs(x - reference).max() <= 8 * eps * cond * scale, m
        gathered = (_gpu.GATHER_BAND, True) in copies[before:]
        assert gathered == (m == 1), m  # (m = 1 trims the band to u = 0: general kernel)
        assert (_gpu.GATHER_BAND, False) in copies[before:] or m == 1  # the probe alone
        c = bm.cholesky_banded(ab, lower=True, backend="cupy")
        expected = scipy_cholesky(ab.astype(np.float64), True)
        assert np.abs(c - expected).max() <= 16 * eps * np.sqrt(cond) * np.abs(expected).max()
        kept = c.copy()
        for factor in (c, np.ascontiguousarray(np.swapaxes(c, -1, -2)).swapaxes(-1, -2)):
            for k in (1, 3):  # (the second factor is read where it lies)
                x = bm.cho_solve_banded((factor, True), b[..., :k], backend="cupy")
                assert np.abs(x - reference[..., :k]).max() <= 8 * eps * cond * scale, (m, k)
            np.testing.assert_array_equal(factor, kept)  # the caller's factor is left alone
    launched = {kernel for kernel, _, _ in kernels.launches}
    assert {"band_factor_window", "band_substitute_window"} <= launched
    assert "band_factor_solve" not in launched


@pytest.mark.skipif(SIMULATED, reason="uses the host runner of the .cu")
@pytest.mark.parametrize("u", [3, 23])
def test_window_kernels_report_the_first_failed_minor_host(rng, monkeypatch, u):
    from gpu_host import HostKernels

    from banded_mnn._backends import _cupy

    monkeypatch.setattr(_cupy, "_kernels", HostKernels())
    monkeypatch.setattr(_gpu, "choose_regime", lambda nsys, sms: "warp")
    w = u + 1
    m = 3 * w + 2
    ab = make_band(rng, (7,), m, u, True)
    ab[1, 0, m - 1] = -1.0  # the last minor
    ab[2, 0, u + 5] = 0.0  # a minor in the second window
    ab[2, 0, 2 * u + 7] = -1.0  # a later one does not count
    ab[3, 0, 0] = np.nan
    for system, column in ((4, w - 1), (5, w), (6, 2 * w - 1)):  # the windows' edges
        ab[system, 0, column] = -1.0
    expected = [0, m, u + 6, 1, w, w + 1, 2 * w]
    for k in (0, 1, 3):  # factor only, fused forward substitution, a warp per column
        b = rng.standard_normal((7, m, k))
        if k == 0:
            c, info = bm.cholesky_banded_ex(ab, lower=True, check_finite=False, backend="cupy")
            inside = np.arange(m) < m - np.arange(u + 1)[:, None]  # cells of the matrix
            assert np.isnan(c[1:, inside]).all() and not np.isnan(c[0]).any()
        else:
            x, info = bm.solveh_banded_ex(ab, b, lower=True, check_finite=False, backend="cupy")
            assert np.isnan(x[1:]).all()
            np.testing.assert_allclose(x[0], scipy_solve(ab[0], b[0], True), rtol=1e-10)
        assert info.tolist() == expected, k


@pytest.mark.skipif(SIMULATED, reason="uses the host runner of the .cu")
def test_window_substitution_grid_in_chunks_host(rng, monkeypatch):
    """Right-hand sides x systems beyond CUDA's grid limit go in chunks of systems."""
    from gpu_host import HostKernels

    from banded_mnn._backends import _cupy

    kernels = HostKernels()
    monkeypatch.setattr(_cupy, "_kernels", kernels)
    monkeypatch.setattr(_cupy, "MAX_GRID", 7)  # two systems of three columns a launch
    monkeypatch.setattr(_gpu, "choose_regime", lambda nsys, sms: "warp")
    ab = make_band(rng, (5,), 11, 3, True)
    b = rng.standard_normal((5, 11, 3))
    x = bm.solveh_banded(ab, b, lower=True, backend="cupy")
    np.testing.assert_allclose(x, scipy_solve(ab, b, True), rtol=1e-10)
    grids = [grid for kernel, grid, _ in kernels.launches if kernel == "band_substitute_window"]
    assert grids == [6, 6, 3]
    # solving with a given factor, shared by the batch (equal offsets), in
    # reversed order (negative strides)
    c = bm.cholesky_banded(ab[0], lower=True)
    reversed_c = np.empty_like(c)[::-1, ::-1]  # stored back to front
    reversed_c[...] = c
    assert all(stride < 0 for stride in reversed_c.strides)
    shared = np.broadcast_to(reversed_c, (5, *c.shape))
    kernels.launches.clear()
    x = bm.cho_solve_banded((shared, True), b, backend="cupy")
    np.testing.assert_allclose(x, scipy_solve(ab[[0] * 5], b, True), rtol=1e-10)
    grids = [grid for kernel, grid, _ in kernels.launches if kernel == "band_substitute_window"]
    assert grids == [6, 6, 3]
