"""The JAX adapter: gradients, jit, vmap, eager parity."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

import banded_mnn  # noqa: E402
import banded_mnn.mnn  # noqa: E402
from banded_mnn import jax as bj  # noqa: E402
from banded_mnn._vjp import _upper_to_lower  # noqa: E402
from banded_mnn.problems import random_spd_band  # noqa: E402

#: Reverse mode; central differences with a small step (the gradients are exact,
#: the tolerance is the finite differences').
REV = {"order": 1, "modes": ["rev"], "eps": 1e-6, "rtol": 1e-4, "atol": 1e-6}


def spd(rng, batch, m, u, lower=False):
    ab = random_spd_band(batch, m, u, rng=rng)
    return jnp.asarray(_upper_to_lower(ab) if lower else ab)


def mnn_inputs(rng, batch=(2,), T=6, E=2, D=2, O=3, S=1, I=2):
    return [
        jnp.asarray(rng.standard_normal(batch + (T, E, D, O))),
        jnp.asarray(rng.standard_normal(batch + (T, E))),
        jnp.asarray(rng.standard_normal(batch + (S, D, I))),
        jnp.asarray(rng.uniform(0.2, 0.6, batch + (T - 1,))),
    ]


def test_values_match_numpy(rng):
    ab = spd(rng, (3,), 8, 2)
    b = jnp.asarray(rng.standard_normal((3, 8, 2)))
    np.testing.assert_allclose(bj.solveh_banded(ab, b), banded_mnn.solveh_banded(ab, b))
    c = bj.cholesky_banded(ab)
    np.testing.assert_allclose(c, banded_mnn.cholesky_banded(np.asarray(ab)))
    np.testing.assert_allclose(bj.cho_solve_banded((c, False), b), bj.solveh_banded(ab, b))
    inputs = mnn_inputs(rng)
    u = bj.ode_forward(*inputs, enable_central_smoothness=True)
    ref = banded_mnn.mnn.ode_forward(*map(np.asarray, inputs), enable_central_smoothness=True)
    np.testing.assert_allclose(u, ref, rtol=1e-12, atol=1e-12)
    assert u.dtype == jnp.float64


@pytest.mark.parametrize("lower", [False, True])
def test_check_grads_band_functions(rng, lower):
    ab = spd(rng, (2,), 6, 2, lower)
    b = jnp.asarray(rng.standard_normal((2, 6, 2)))
    bvec = jnp.asarray(rng.standard_normal(6))
    check_grads(lambda a: bj.cholesky_banded(a, lower), (ab,), **REV)
    check_grads(lambda a, y: bj.solveh_banded(a, y, lower), (ab, b), **REV)
    check_grads(lambda a, y: bj.solveh_banded(a, y, lower), (ab, bvec), **REV)
    check_grads(lambda a, y: bj.solveh_banded(a, y, lower), (ab[:1], b), **REV)
    c = bj.cholesky_banded(ab, lower)
    check_grads(lambda f, y: bj.cho_solve_banded((f, lower), y), (c, b), **REV)


@pytest.mark.parametrize("central", [False, True], ids=["default", "central"])
def test_check_grads_ode_forward(rng, central):
    inputs = mnn_inputs(rng, (2,), 5, 2, 2, 3, 1, 2)

    def f(*a):
        return bj.ode_forward(*a, enable_central_smoothness=central, weight_equation=1.2,
                              weight_init_var=0.7, weight_smooth=1.4)  # fmt: skip

    check_grads(f, inputs, **REV)
    # Broadcast [b] axes and a left-hand side shared by three right-hand sides.
    c, _, v, h = mnn_inputs(rng, (1,), 5, 1, 1, 3, 1, 1)
    r = jnp.asarray(rng.standard_normal((3, 5, 1)))
    check_grads(lambda *a: bj.ode_forward(*a, n_steps=5), (c[:, :1], r, v, h), **REV)  # fmt: skip


def test_jit_vmap_eager_agree(rng):
    ab = spd(rng, (4,), 7, 2)
    b = jnp.asarray(rng.standard_normal((4, 7)))
    eager = bj.solveh_banded(ab, b[..., None])[..., 0]
    np.testing.assert_array_equal(jax.jit(bj.solveh_banded)(ab, b[..., None])[..., 0], eager)
    np.testing.assert_allclose(jax.vmap(bj.solveh_banded)(ab, b), eager, rtol=1e-14)
    np.testing.assert_allclose(jax.vmap(bj.solveh_banded, in_axes=(None, 0))(ab[0], b),
                               bj.solveh_banded(ab[0], b.T).T, rtol=1e-14)  # fmt: skip
    inputs = mnn_inputs(rng, (3,))
    eager = bj.ode_forward(*inputs)
    np.testing.assert_array_equal(jax.jit(bj.ode_forward)(*inputs), eager)
    np.testing.assert_allclose(jax.vmap(bj.ode_forward)(*inputs), eager, rtol=1e-13)
    first = [jnp.moveaxis(x, x.ndim - k, 0) for x, k in zip(inputs, (4, 2, 3, 1), strict=True)]
    u = jax.jit(lambda *a: bj.ode_forward(*a, is_step_dim_first=True))(*first)
    np.testing.assert_allclose(jnp.moveaxis(u, 0, -3), eager, rtol=1e-13)


def test_grad_under_jit_and_vmap(rng):
    inputs = mnn_inputs(rng, (3,))

    def loss(c, r, v, h):
        return jnp.sum(bj.ode_forward(c, r, v, h) ** 2)

    grads = jax.grad(loss, argnums=(0, 1, 2, 3))(*inputs)
    jitted = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(*inputs)
    for g, j in zip(grads, jitted, strict=True):
        np.testing.assert_allclose(j, g, rtol=1e-12)
    # Per-sample gradients: vmap of grad, against a loop.
    per_sample = jax.vmap(jax.grad(loss, argnums=(0, 3)))(*inputs)
    for i in range(3):
        g = jax.grad(loss, argnums=(0, 3))(*(x[i] for x in inputs))
        np.testing.assert_allclose(per_sample[0][i], g[0], rtol=1e-10)
        np.testing.assert_allclose(per_sample[1][i], g[1], rtol=1e-10)
    # vmap over right-hand sides only, with one shared left-hand side.
    c, h = inputs[0][0], inputs[3][0]
    per_sample = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0, None))(c, inputs[1], inputs[2], h)
    for i in range(3):
        np.testing.assert_allclose(per_sample[i], jax.grad(loss)(c, inputs[1][i], inputs[2][i], h),
                                   rtol=1e-10)  # fmt: skip
    ab = spd(rng, (3,), 6, 2)
    b = jnp.asarray(rng.standard_normal((3, 6)))
    g = jax.vmap(jax.grad(lambda a, y: bj.solveh_banded(a, y).sum()))(ab, b)
    single = jax.grad(lambda a, y: bj.solveh_banded(a, y).sum())
    for i in range(3):
        np.testing.assert_allclose(g[i], single(ab[i], b[i]), rtol=1e-10)


def test_float32_and_status(rng):
    ab = spd(rng, (2,), 6, 2).astype(jnp.float32)
    b = jnp.asarray(rng.standard_normal((2, 6, 1)), dtype=jnp.float32)
    assert bj.solveh_banded(ab, b).dtype == jnp.float32
    bad = ab.at[1, -1, 2].set(-5.0)
    x, info = bj.solveh_banded_ex(bad, b)
    assert info.tolist() == [0, 3]
    assert bool(jnp.isnan(x[1]).all()) and bool(jnp.isfinite(x[0]).all())
    # NaN input: a failed system, not an exception (also under jit).
    poisoned = ab.at[0, -1, 4].set(jnp.nan)
    for function in (bj.solveh_banded_ex, jax.jit(bj.solveh_banded_ex)):
        x, info = function(poisoned, b)
        assert info.tolist() == [5, 0]
        assert bool(jnp.isnan(x[0]).all()) and bool(jnp.isfinite(x[1]).all())


def test_errors(rng):
    ab = spd(rng, (2,), 6, 2)
    with pytest.raises(TypeError, match="b has dtype float32"):
        bj.solveh_banded(ab, jnp.ones((2, 6, 1), dtype=jnp.float32))
    with pytest.raises(TypeError, match="ab must be float32 or float64"):
        bj.cholesky_banded(jnp.ones((2, 3), dtype=jnp.int32))
    c, r, v, h = mnn_inputs(rng)
    with pytest.raises(ValueError, match="rhs_equation must have shape"):
        bj.ode_forward(c, r[..., :1], v, h)


# --------------------------------------------------------------------------
# Zero copy, and the GPU path
# --------------------------------------------------------------------------


def test_callbacks_see_xla_buffers_without_copies(rng, monkeypatch):
    """The band routines receive read-only views of XLA's own input buffers."""
    from banded_mnn.jax import _ops

    seen = {}
    original = _ops._host_cholesky

    def spy(ab, lower):
        seen["pointer"] = ab.__array_interface__["data"][0]
        seen["writeable"] = ab.flags.writeable
        return original(ab, lower)

    monkeypatch.setattr(_ops, "_host_cholesky", spy)
    ab = spd(rng, (2,), 6, 2)
    c = bj.cholesky_banded(ab)
    assert seen == {"pointer": ab.unsafe_buffer_pointer(), "writeable": False}
    np.testing.assert_allclose(c, banded_mnn.cholesky_banded(np.asarray(ab)))


@pytest.fixture
def gpu_path(monkeypatch):
    """CPU buffers through the band routines' GPU path: the "cupy" backend,
    its CUDA kernels run on the host (see gpu_host.py)."""
    from gpu_host import HostKernels

    from banded_mnn import _api
    from banded_mnn._backends import _cupy, _gpu
    from banded_mnn.jax import _ops

    monkeypatch.setattr(_cupy, "_kernels", HostKernels())
    monkeypatch.setattr(_ops, "_BACKEND_FOR_CPU_BUFFERS", "cupy")
    calls = {"run": 0, "wait": 0}

    def count(module, name, key):
        original = getattr(module, name)

        def counted(*args, **kwargs):
            calls[key] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)

    count(_gpu, "run", "run")
    # Whatever would wait for the device: a copy to the host, a host-side test.
    count(_gpu, "_to_host", "wait")
    count(_api, "_check_unread_cells", "wait")
    return calls


@pytest.mark.parametrize("lower", [False, True])
def test_band_functions_on_the_gpu_path(rng, gpu_path, lower):
    ab = spd(rng, (3,), 9, 2, lower)
    b = jnp.asarray(rng.standard_normal((3, 9, 2)))
    x = bj.solveh_banded(ab, b, lower)
    reference = banded_mnn.solveh_banded(np.asarray(ab), np.asarray(b), lower=lower)
    gpu_path["wait"] = 0  # (the reference's own checks above)
    np.testing.assert_allclose(x, reference, rtol=1e-11)
    np.testing.assert_array_equal(jax.jit(bj.solveh_banded, static_argnums=2)(ab, b, lower), x)
    np.testing.assert_allclose(jax.vmap(bj.solveh_banded, in_axes=(0, 0, None))(ab, b, lower), x,
                               rtol=1e-13)  # fmt: skip
    c = bj.cholesky_banded(ab, lower)
    np.testing.assert_allclose(bj.cho_solve_banded((c, lower), b), x, rtol=1e-11)
    check_grads(lambda a, y: bj.solveh_banded(a, y, lower), (ab, b), **REV)
    check_grads(lambda f, y: bj.cho_solve_banded((f, lower), y), (c, b), **REV)
    bad = ab.at[1, 0 if lower else -1, 4].set(-9.0)
    x, info = bj.solveh_banded_ex(bad, b, lower)
    assert info.tolist() == [0, 5, 0]
    assert bool(jnp.isnan(x[1]).all()) and bool(jnp.isfinite(x[::2]).all())
    assert gpu_path["run"] > 10  # the solves and factorisations ran the GPU driver
    assert gpu_path["wait"] == 0  # ... and never waited for the device
    # NaN is a failed system too (status and NaN results), not an exception.
    poisoned = ab.at[2, 0, 3].set(jnp.nan)
    for function in (bj.solveh_banded_ex, jax.jit(bj.solveh_banded_ex, static_argnums=2)):
        x, info = function(poisoned, b, lower)
        assert info[2] > 0 and info[0] == 0 and bool(jnp.isnan(x[2]).all())
    c, info = bj.cholesky_banded_ex(poisoned, lower)
    diagonal = 0 if lower else -1  # (the band's unused corner cells keep their zeros)
    assert info[2] > 0 and bool(jnp.isnan(c[2, diagonal]).all()) and bool(jnp.isfinite(c[0]).all())
    assert gpu_path["wait"] == 0


def test_gpu_buffers_become_cupy_arrays_on_xlas_stream(monkeypatch):
    """The CUDA branch of the buffer conversion, with a stand-in CuPy: the
    buffers are taken through ``__cuda_array_interface__`` by ``cupy.asarray``
    and XLA's stream (a raw address) reaches CuPy through the CUDA stream
    protocol, on the buffers' device."""
    import sys
    import types

    from stand_in_cupy import stand_in_cupy

    from banded_mnn.jax import _ops

    events = []

    class Buffer:
        def __init__(self, name):
            self.name = name

        def __dlpack_device__(self):
            return (_ops._DLPACK_CUDA, 3)

    fake = stand_in_cupy(events, asarray=lambda b: events.append(("view", b.name)) or b.name)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    ctx = types.SimpleNamespace(stream=0x7F00)
    xp, context = _ops._placement(ctx, Buffer("out"))
    assert xp is fake and events == []
    with context:
        assert _ops._view(xp, Buffer("a"), False) == "a"
    assert events == [("device", 3), ("stream", (0, 0x7F00)), ("view", "a"), ("exit device", 3)]


def test_callback_body_on_gpu_buffers(monkeypatch):
    """The whole callback body (:func:`_ops._run`) on stand-in CUDA buffers: the
    views are made inside the device/stream context, results are written into
    the output buffers with broadcasting over leading (vmap) axes only, and a
    result of a wrong shape is an error, not a silent broadcast."""
    import sys
    import types

    from stand_in_cupy import stand_in_cupy

    from banded_mnn.jax import _ops

    events = []

    class Buffer:
        def __init__(self, array):
            self.array = array

        def __dlpack_device__(self):
            return (_ops._DLPACK_CUDA, 0)

    def asarray(x):
        events.append("view")
        return x.array if isinstance(x, Buffer) else x

    monkeypatch.setitem(sys.modules, "cupy", stand_in_cupy(events, asarray))
    ctx = types.SimpleNamespace(stream=1)
    outs = (Buffer(np.zeros((2, 3, 4))), Buffer(np.zeros((2, 3), np.int32)))
    source = Buffer(np.arange(12.0).reshape(3, 4))

    def host(x):
        assert events == [("device", 0), ("stream", (0, 1)), "view", "view", "view"]
        return x + 1, np.ones((1, 3), np.int64)  # the second broadcast over a vmap axis

    _ops._run(host, False, [(3, 4), (3,)], ctx, outs, source)
    assert events[-1] == ("exit device", 0)
    np.testing.assert_array_equal(outs[0].array, np.broadcast_to(np.arange(12.0).reshape(3, 4) + 1,
                                                                 (2, 3, 4)))  # fmt: skip
    assert outs[1].array.dtype == np.int32 and (outs[1].array == 1).all()
    with pytest.raises(ValueError, match="internal error"):
        _ops._run(lambda x: x[:, :1], True, [(3, 4)], ctx, Buffer(np.zeros((3, 4))), source)
