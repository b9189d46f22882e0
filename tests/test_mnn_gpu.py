"""The MNN layer on the GPU (:mod:`banded_mnn.mnn._gpu`) against the CPU layer.

The layer's own kernels are Numba CUDA, so without a GPU they run in Numba's
CUDA simulator: :func:`test_gpu_layer_under_the_simulator` runs this file
again with ``NUMBA_ENABLE_CUDASIM=1``, where the layer runs on NumPy arrays
with each band backend:

* ``numba-cuda-sim``: the "numba-cuda" band kernels in the simulator too;
* ``cupy-host-sim``: the "cupy" backend's CUDA C++ band kernels compiled as
  host C++ (:class:`gpu_host.HostKernels`), the layer's kernels simulated.

Where a CUDA GPU is usable, the tests also run on CuPy arrays with both
backends (``tools/gpu_check.py``).  Every test runs in both regimes of the GPU
driver (a thread per system, a warp per system) where the regime matters.
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
from mnn_oracle import oracle_forward
from test_mnn import random_problem

from banded_mnn import NotPositiveDefiniteError, _backends
from banded_mnn._backends import _gpu
from banded_mnn.mnn import OdeSystem, clear_frozen_lhs_cache, ode_forward

SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"

if SIMULATED:
    from cudasim import prepare_simulator

    prepare_simulator()


def _variants() -> list[str]:
    if SIMULATED:
        return ["numba-cuda-sim", "cupy-host-sim"]
    if _backends.usable("cupy")[0]:
        return ["cupy", "numba-cuda"]
    return []


@pytest.fixture(params=_variants())
def device(request, monkeypatch):
    return device_for(request.param, monkeypatch)


def tolerance(dtype) -> float:
    return 1e-11 if np.dtype(dtype) == np.float64 else 1e-4


def assert_close(got, want, dtype, rtol=None) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype
    scale = max(float(np.abs(want).max()), 1e-30) if want.size else 1.0
    rtol = tolerance(dtype) if rtol is None else rtol
    np.testing.assert_allclose(got, want, rtol=0, atol=rtol * scale)


def conditioned_tolerance(inputs, dtype, weights=(1.0, 1.0, 1.0), central=False) -> float:
    """Both layers solve the normal equations, so they differ by rounding of
    order eps cond(rows)^2 (the dense oracle gives the condition number)."""
    _, condition = oracle_forward(*inputs, weights=weights, central=central,
                                  return_condition=True)  # fmt: skip
    return max(tolerance(dtype), 10 * np.finfo(dtype).eps * condition**2)


def compare(device, inputs, *, grad_seed=1, rtol=None, **options) -> None:
    """``ode_forward`` and its VJP on the device against the CPU layer, to
    ``rtol`` of each result's largest magnitude."""
    dtype = np.result_type(*inputs)
    want, cpu = ode_forward(*inputs, return_system=True, **options)
    got, gpu = ode_forward(*[device.put(x) for x in inputs], return_system=True,
                           backend=device.backend, **options)  # fmt: skip
    assert gpu.on_gpu and not cpu.on_gpu
    assert_close(device.get(got), want, dtype, rtol)
    grad = np.random.default_rng(grad_seed).standard_normal(want.shape).astype(want.dtype)
    expected = cpu.vjp(grad, want, *inputs)
    grads = gpu.vjp(device.put(grad), got, *[device.put(x) for x in inputs])
    for name, g, e in zip(expected._fields, grads, expected, strict=True):
        assert (g is None) == (e is None), name
        if e is not None:
            assert_close(device.get(g), e, dtype, rtol)


# --------------------------------------------------------------------------
# Results against the CPU layer
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("central", [False, True])
def test_forward_and_vjp(device, regime, rng, central, dtype):
    inputs = random_problem(rng, batch=(3,), T=7, E=2, D=2, O=3, S=1, I=2, dtype=dtype)
    compare(device, inputs, enable_central_smoothness=central,
            rtol=conditioned_tolerance(inputs, dtype, central=central))  # fmt: skip


@pytest.mark.parametrize("T,E,D,O,S,I,central", [
    (5, 1, 1, 2, 1, 1, True),  # O = 2: the central rows' a = 1 / H
    (4, 2, 1, 1, 1, 1, False),  # O = 1
    (6, 2, 2, 4, 2, 3, True),
    (1, 3, 2, 2, 1, 1, False),  # one step: no smoothness rows
    (3, 1, 2, 5, 3, 2, True),
])  # fmt: skip
def test_sizes_and_weights(device, rng, T, E, D, O, S, I, central):
    inputs = random_problem(rng, batch=(2,), T=T, E=E, D=D, O=O, S=S, I=I)
    weights = (0.7, 3.0, 1.9)
    rtol = conditioned_tolerance(inputs, np.float64, weights, central)
    compare(device, inputs, enable_central_smoothness=central, weight_equation=weights[0],
            weight_init_var=weights[1], weight_smooth=weights[2], rtol=rtol)  # fmt: skip


def test_broadcasting_and_step_first(device, regime, rng):
    """Batch axes broadcast (a left-hand side shared by several right-hand
    sides), inputs with a length-1 step axis, step axis first."""
    c, r, v, h = random_problem(rng, batch=(2, 1), T=5, coefficients=True)
    r = rng.standard_normal((2, 3, 5, 2))
    inputs = [np.moveaxis(x, -1 - k, 0) for x, k in ((c, 3), (r, 1), (v, 2), (h, 0))]
    compare(device, inputs, is_step_dim_first=True)


def test_strided_inputs(device, rng):
    c, r, v, h = random_problem(rng, batch=(4,), T=6)
    inputs = [c[::2], r[1::2], v[::-2], np.asfortranarray(h)[::2]]
    compare(device, inputs)


def test_factor_once_solve_many(device, regime, rng):
    c, r, v, h = random_problem(rng, batch=(2,), T=6)
    options = {"n_init_var_steps": 1, "n_init_var_orders": 2}
    cpu = OdeSystem.factor(c, h, **options)
    gpu = OdeSystem.factor(device.put(c), device.put(h), backend=device.backend, **options)
    r_many = rng.standard_normal((3, 2, 6, 2))
    want = cpu.solve(c, r_many, v)
    got = gpu.solve(device.put(c), device.put(r_many), device.put(v))
    assert_close(device.get(got), want, np.float64)
    assert_close(device.get(gpu.factor_band), cpu.factor_band, np.float64)


def test_frozen_lhs(device, rng):
    clear_frozen_lhs_cache()
    c, r, v, h = random_problem(rng, batch=(2,), T=6)
    put = device.put
    u1 = ode_forward(put(c), put(r), put(v), put(h), frozen_lhs_cache_version=7,
                     backend=device.backend)  # fmt: skip
    r2 = rng.standard_normal(r.shape)
    u2, system = ode_forward(put(c), put(r2), put(v), put(h * 5), frozen_lhs_cache_version=7,
                             backend=device.backend, return_system=True)  # fmt: skip
    want = ode_forward(c, r2, v, h)  # steps are ignored: the frozen factor is used
    assert_close(device.get(u2), want, np.float64)
    assert_close(device.get(u1), ode_forward(c, r, v, h), np.float64)
    grads = system.vjp(put(np.ones(want.shape)), u2, put(c), put(r2), put(v))
    assert grads.coefficients is None and grads.steps is None
    with pytest.raises(ValueError, match="factored on the GPU"):
        ode_forward(c, r, v, h, frozen_lhs_cache_version=7)
    clear_frozen_lhs_cache()


def test_empty_batch(device, rng):
    c, r, v, h = random_problem(rng, batch=(0,), T=4)
    u, system = ode_forward(*[device.put(x) for x in (c, r, v, h)], backend=device.backend,
                            return_system=True)  # fmt: skip
    assert u.shape == (0, 4, 2, 3)
    grads = system.vjp(device.put(np.ones(u.shape)), u, *[device.put(x) for x in (c, r, v, h)])
    assert grads.coefficients.shape == c.shape and grads.steps.shape == h.shape


# --------------------------------------------------------------------------
# Errors, as the CPU layer reports them
# --------------------------------------------------------------------------


def test_singular_problem_is_reported_like_the_cpu(device, regime):
    """No initial values: the solution is determined only up to a constant
    (u' = 0 leaves u free); the CPU layer's singular-pivot test names it."""
    c = np.array([0.0, 1.0]).reshape(1, 1, 1, 1, 2).repeat(2, 0)
    inputs = (c, np.zeros((2, 1, 1)), np.zeros((2, 0, 1, 0)), np.full((2, 5), 0.1))
    with pytest.raises(NotPositiveDefiniteError) as cpu:
        ode_forward(*inputs)
    with pytest.raises(NotPositiveDefiniteError) as gpu:
        ode_forward(*[device.put(x) for x in inputs], backend=device.backend)
    assert str(gpu.value) == str(cpu.value)
    assert gpu.value.__notes__ == cpu.value.__notes__


def test_failed_system_without_check(device, regime, rng):
    """check=False: the status stays in info; only the failed system's
    results are NaN."""
    c, r, v, h = random_problem(rng, batch=(3,), T=5)
    c[1] = 0.0  # no equations
    v = v[:, :0, :, :0]  # and no initial values: system 1 is singular
    options = {"n_init_var_steps": 0, "n_init_var_orders": 0, "check": False}
    want = OdeSystem.factor(c, h, **options)
    system = OdeSystem.factor(device.put(c), device.put(h), backend=device.backend, **options)
    np.testing.assert_array_equal(device.get(system.info), want.info)
    assert device.get(system.info)[1] != 0
    u = device.get(system.solve(*[device.put(x) for x in (c, r, v)]))
    assert np.isnan(u[1]).all() and np.isfinite(u[[0, 2]]).all()
    assert np.isnan(device.get(system.factor_band)[1, 0]).all()  # (its diagonal)
    grads = system.vjp(device.put(np.ones(u.shape)), device.put(u),
                       *[device.put(x) for x in (c, r, v, h)])  # fmt: skip
    for g in grads:
        g = device.get(g)
        assert np.isnan(g[1]).all() and np.isfinite(g[[0, 2]]).all()


def test_nonfinite_coefficients_are_named(device, rng):
    c, r, v, h = random_problem(rng, batch=(2,), T=5)
    c[1, 2, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="coefficients must not contain infs or NaNs"):
        ode_forward(*[device.put(x) for x in (c, r, v, h)], backend=device.backend)


@pytest.mark.parametrize("central", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cyclic_reduction(device, rng, central, dtype):
    """algorithm="cyclic" on the GPU: values and gradients as the CPU layer's
    band path gives them, a shared left-hand side included."""
    c, r, v, h = random_problem(rng, batch=(2,), T=9, dtype=dtype)
    rtol = conditioned_tolerance((c, r, v, h), dtype, central=central)
    compare(device, (c, r, v, h), algorithm="cyclic", enable_central_smoothness=central,
            rtol=rtol)  # fmt: skip
    r3 = rng.standard_normal((3, 2, 9, 2)).astype(dtype)
    compare(device, (c, r3, v, h), algorithm="cyclic", enable_central_smoothness=central,
            rtol=rtol)  # fmt: skip


def test_cyclic_reduction_is_chosen_for_few_long_sequences(device, rng, monkeypatch):
    from banded_mnn.mnn import _gpu as gpu_layer

    chosen = []
    original = gpu_layer.choose_algorithm

    def spy(*args):
        chosen.append(original(*args))
        return chosen[-1]

    monkeypatch.setattr(gpu_layer, "choose_algorithm", spy)
    monkeypatch.setattr(_gpu, "CYCLIC_MIN_STEPS", 8)
    monkeypatch.setattr(_gpu, "choose_regime", lambda nsys, sms: "warp" if nsys < 3 else "thread")
    for batch, T, expected in [((2,), 9, "cyclic"), ((2,), 7, "sequential"),
                               ((3,), 9, "sequential")]:  # fmt: skip
        inputs = random_problem(rng, batch=batch, T=T)
        compare(device, inputs)
        assert chosen[-1] == expected
    u, system = ode_forward(*[device.put(x) for x in random_problem(rng, batch=(2,), T=9)],
                            backend=device.backend, return_system=True)  # fmt: skip
    assert system.cyclic is not None
    with pytest.raises(AttributeError, match="cyclic reduction"):
        system.factor_band  # noqa: B018


def test_cyclic_reduction_reports_singular_problems(device):
    c = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]).reshape(1, 2, 1, 3)
    inputs = (c, np.array([[1.0, 0.0]]), np.zeros((0, 1, 0)), np.full(29, 0.1))
    with pytest.raises(NotPositiveDefiniteError) as cpu:
        ode_forward(*inputs, algorithm="cyclic")
    with pytest.raises(NotPositiveDefiniteError) as gpu:
        ode_forward(*[device.put(x) for x in inputs], algorithm="cyclic", backend=device.backend)
    assert str(gpu.value) == str(cpu.value)


@pytest.mark.skipif(not SIMULATED, reason="the reverse sweep's CUDA kernel, simulated")
@pytest.mark.parametrize("lower", [True, False])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cholesky_gradient_on_the_gpu(rng, lower, dtype):
    """The band Cholesky VJP's reverse sweep as a CUDA kernel (a thread per
    system) against the CPU kernel: the same core, compiled twice."""
    from banded_mnn import _vjp
    from banded_mnn.problems import random_spd_band

    ab = random_spd_band((3,), 11, 3, lower=lower, rng=rng).astype(dtype)
    import banded_mnn as bm

    c = bm.cholesky_banded(ab, lower=lower)
    cbar = rng.standard_normal(c.shape).astype(dtype)
    want = _vjp.cholesky_gradient(c, cbar, lower)
    got = _vjp.cholesky_gradient(c, cbar, lower, backend="numba-cuda")
    assert got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=tolerance(dtype) * 10, atol=tolerance(dtype) * 10)


def test_dask_chunks_through_the_gpu_layer(device, rng):
    """``ode_forward`` on Dask arrays runs the GPU layer in every task (chunks
    of NumPy arrays standing in for CuPy ones, the synchronous scheduler)."""
    da = pytest.importorskip("dask.array")
    from banded_mnn.mnn import _gpu as gpu_layer

    c, r, v, h = random_problem(rng, batch=(4,), T=6)
    lazy = ode_forward(*(da.from_array(device.put(x), chunks=(2,) + x.shape[1:])
                         for x in (c, r, v, h)), backend=device.backend)  # fmt: skip
    factored = []
    original = gpu_layer.GpuOdeSystem._factor.__func__
    gpu_layer.GpuOdeSystem._factor = classmethod(
        lambda cls, *a, **k: factored.append(1) or original(cls, *a, **k)
    )
    try:
        got = lazy.compute(scheduler="sync")
    finally:
        gpu_layer.GpuOdeSystem._factor = classmethod(original)
    assert len(factored) == 2  # one per chunk
    assert_close(device.get(got), ode_forward(c, r, v, h), np.float64)


# --------------------------------------------------------------------------
# CUDA graphs: no waits, copies or foreign allocations
# --------------------------------------------------------------------------


@pytest.mark.skipif(not SIMULATED, reason="the stand-in runs the simulated kernels")
def test_gpu_paths_are_cuda_graph_safe(rng, monkeypatch):
    """With a stand-in CuPy that records every wait for the device, copy
    between host and device and allocation (``device_double.py``): once warm,
    ``ode_forward``, the VJP, a solve with a kept factor (band Cholesky and
    cyclic reduction) and the band routines' ``_ex`` functions
    (``check_finite=False``) do none of them while the stream is capturing,
    and allocate only through the framework's allocator.  Outside capture the layer's status check is the one wait."""
    from device_double import recording_cupy

    import banded_mnn as bm
    from banded_mnn import _cyclic
    from banded_mnn._backends import _numba_cuda

    events, capturing = [], [False]
    fake = recording_cupy(events, capturing)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(_numba_cuda.kernels(), "xp", fake)
    # Cyclic reduction's Numba CUDA level kernels, as on a GPU (simulated).
    monkeypatch.setattr(_cyclic, "_numba_cuda_compiles", lambda: True)
    inputs = [fake.to_device(x) for x in random_problem(rng, batch=(3,), T=6)]
    grad = fake.to_device(rng.standard_normal((3, 6, 2, 3)))
    ab = fake.to_device(np.tile(np.array([[0.0, 1.0, 1.0], [4.0, 4.0, 4.0]]), (2, 1, 1)))
    b = fake.to_device(np.ones((2, 3, 1)))

    def step():
        u, system = ode_forward(*inputs, backend="numba-cuda", return_system=True)
        grads = system.vjp(grad, u, *inputs)
        again = system.solve(*inputs[:3])
        u_cyclic, cyclic = ode_forward(*inputs, backend="numba-cuda", return_system=True,
                                       algorithm="cyclic")  # fmt: skip
        grads_cyclic = cyclic.vjp(grad, u_cyclic, *inputs)
        x, info = bm.solveh_banded_ex(ab, b, check_finite=False, backend="numba-cuda")
        c, info = bm.cholesky_banded_ex(ab, check_finite=False, backend="numba-cuda")
        return [u, *grads, again, x, c, u_cyclic, *grads_cyclic]

    with fake.cuda.using_allocator(object()):  # as the torch adapter installs torch's
        warm = step()
        warm_events, events[:] = list(events), []
        capturing[0] = True
        captured = step()
        captured_events = list(events)
    assert ("wait", "bool") in warm_events  # the status check, outside capture
    assert "h2d" in warm_events  # the smoothness tables, on the first call
    assert set(captured_events) == {"alloc"}, captured_events
    for a, b_ in zip(warm, captured, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b_))
    # The stand-in does see allocations made without the framework's allocator.
    events.clear()
    ode_forward(*inputs, backend="numba-cuda")
    assert "foreign alloc" in events


# --------------------------------------------------------------------------
# The torch adapter over the GPU layer
# --------------------------------------------------------------------------


@pytest.fixture
def torch_routed(monkeypatch):
    """CPU tensors sent down the CUDA tensors' path: the GPU layer with the
    "numba-cuda" backend (simulated).  Returns the GPU layer's factor calls."""
    torch = pytest.importorskip("torch")
    from banded_mnn.mnn import _gpu as gpu_layer
    from banded_mnn.torch import _mnn

    calls = []
    original = gpu_layer.GpuOdeSystem._factor.__func__

    def spy(cls, *args, **kwargs):
        calls.append(1)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(gpu_layer.GpuOdeSystem, "_factor", classmethod(spy))
    monkeypatch.setattr(_mnn, "_ROUTE_CPU_TENSORS_TO_GPU_PATH", True)
    return torch, calls


@pytest.mark.skipif(not SIMULATED, reason="CUDA tensors: test_torch_cuda.py")
@pytest.mark.parametrize("algorithm", [None, "cyclic"])
@pytest.mark.parametrize("central", [False, True])
def test_torch_through_the_gpu_layer(rng, torch_routed, central, algorithm):
    torch, calls = torch_routed
    from banded_mnn.torch import _mnn
    from banded_mnn.torch import ode_forward as torch_ode_forward

    arrays = random_problem(rng, batch=(2,), T=6)
    arrays[1] = rng.standard_normal((3, 2, 6, 2))  # a shared left-hand side
    leaves = [torch.tensor(x, requires_grad=True) for x in arrays]
    u = torch_ode_forward(*leaves, enable_central_smoothness=central, algorithm=algorithm)
    assert calls
    probe = torch.tensor(rng.standard_normal(u.shape))
    grads = torch.autograd.grad((u * probe).sum(), leaves)
    _mnn._ROUTE_CPU_TENSORS_TO_GPU_PATH = False  # the CPU layer, for reference
    ref_leaves = [torch.tensor(x, requires_grad=True) for x in arrays]
    ref = torch_ode_forward(*ref_leaves, enable_central_smoothness=central)
    ref_grads = torch.autograd.grad((ref * probe).sum(), ref_leaves)
    torch.testing.assert_close(u, ref, rtol=1e-10, atol=1e-10)
    for g, g_ref in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-10)


@pytest.mark.skipif(not SIMULATED, reason="CUDA tensors: test_torch_cuda.py")
def test_torch_frozen_lhs_through_the_gpu_layer(rng, torch_routed):
    torch, calls = torch_routed
    import banded_mnn.torch as bt

    c, r, v, h = (torch.tensor(x) for x in random_problem(rng, batch=(2,), T=6))
    r2 = torch.tensor(rng.standard_normal(tuple(r.shape)), requires_grad=True)
    bt.clear_frozen_lhs_cache()
    try:
        bt.ode_forward(c, r, v, h, frozen_lhs_cache_version=3)
        u = bt.ode_forward(c, r2, v, h * 2, frozen_lhs_cache_version=3)
    finally:
        bt.clear_frozen_lhs_cache()
    assert len(calls) == 1  # factored once
    want = ode_forward(c.numpy(), r2.detach().numpy(), v.numpy(), h.numpy())
    np.testing.assert_allclose(u.detach().numpy(), want, rtol=1e-10, atol=1e-10)
    u.sum().backward()
    assert r2.grad is not None and torch.isfinite(r2.grad).all()


@pytest.mark.skipif(not SIMULATED, reason="CUDA tensors: test_torch_cuda.py")
@pytest.mark.parametrize("cyclic_from", [1000, 4])
def test_torch_compile_through_the_gpu_layer(rng, torch_routed, monkeypatch, cyclic_from):
    """The operator's shape function gives the size of the factor the GPU
    layer keeps -- its workspace (9 systems: the CPU layer's lane slots would
    be 16) or, when its rule picks cyclic reduction, the flattened factor."""
    torch, calls = torch_routed
    import banded_mnn.torch as bt

    monkeypatch.setattr(_gpu, "CYCLIC_MIN_STEPS", cyclic_from)
    tensors = [torch.tensor(x, requires_grad=True)
               for x in random_problem(rng, batch=(9,), T=5, E=1, D=1, O=2)]  # fmt: skip
    compiled = torch.compile(lambda *t: bt.ode_forward(*t), fullgraph=True, backend="eager")
    got = compiled(*tensors)
    torch.testing.assert_close(got, bt.ode_forward(*tensors))
    got.sum().backward()
    assert calls and all(torch.isfinite(t.grad).all() for t in tensors)


@pytest.mark.skipif(not SIMULATED, reason="JAX GPU arrays: test_jax_cuda.py")
def test_jax_through_the_gpu_layer(rng, monkeypatch):
    """XLA's CPU buffers sent down the GPU path (the GPU layer with the
    "numba-cuda" backend, simulated): jit, grad and vmap against the CPU layer."""
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import banded_mnn.jax as bj
    from banded_mnn.jax import _ops
    from banded_mnn.mnn import _gpu as gpu_layer

    calls = []
    original = gpu_layer.GpuOdeSystem._factor.__func__
    monkeypatch.setattr(gpu_layer.GpuOdeSystem, "_factor",
                        classmethod(lambda cls, *a, **k: calls.append(1) or original(cls, *a, **k)))  # fmt: skip
    arrays = [jax.numpy.asarray(x) for x in random_problem(rng, batch=(3,), T=5)]

    def loss(c, r, v, h):
        return (bj.ode_forward(c, r, v, h, enable_central_smoothness=True) ** 2).sum()

    want = jax.value_and_grad(loss, argnums=(0, 1, 2, 3))(*arrays)
    want_vmapped = jax.vmap(loss)(*arrays)
    monkeypatch.setattr(_ops, "_BACKEND_FOR_CPU_BUFFERS", "numba-cuda")
    got = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))(*arrays)
    got_vmapped = jax.vmap(loss)(*arrays)
    assert len(calls) >= 3  # the forward, the backward's factorisation, vmap's forward
    np.testing.assert_allclose(got[0], want[0], rtol=1e-10)
    np.testing.assert_allclose(got_vmapped, want_vmapped, rtol=1e-10)
    for g, w in zip(got[1], want[1], strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------
# The simulator run, from the normal test run
# --------------------------------------------------------------------------


@pytest.mark.skipif(SIMULATED, reason="this is the simulator run itself")
def test_gpu_layer_under_the_simulator(tmp_path):
    """Run this file again with NUMBA_ENABLE_CUDASIM=1 (see the module docstring)."""
    pytest.importorskip("numba_cuda", reason="numba-cuda is a dependency")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider",
         "-k", "not simulator"],
        capture_output=True, text=True, env=env, cwd=root, timeout=1500,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-3000:]
    summary = result.stdout.strip().splitlines()[-1]
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    assert "passed" in summary and "skipped" not in summary and "failed" not in summary, summary


def test_cpu_arrays_stay_on_the_cpu_layer(rng):
    """Without a GPU backend, NumPy input never imports the GPU layer's kernels."""
    inputs = random_problem(rng, batch=(2,), T=4)
    u, system = ode_forward(*inputs, return_system=True)
    assert not system.on_gpu and type(system) is OdeSystem
