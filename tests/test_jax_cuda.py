"""The JAX adapter's band routines on a CUDA device (needs a CUDA GPU, JAX with
CUDA and CuPy).

Collected everywhere, run only where JAX sees a GPU and CuPy is usable
(``tools/gpu_check.py`` runs this file); elsewhere every test here is reported
as skipped, never as passed.  The same code is tested without a GPU in
test_jax.py, through the GPU backend with its kernels run on the host.
"""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402

import banded_mnn  # noqa: E402
import banded_mnn.mnn  # noqa: E402
from banded_mnn import _backends  # noqa: E402
from banded_mnn.problems import random_spd_band  # noqa: E402


def _jax_gpus() -> list:
    try:
        return jax.devices("gpu")
    except RuntimeError:
        return []


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not (_jax_gpus() and _backends.usable("cupy")[0]),
        reason="needs a CUDA GPU, JAX with CUDA and CuPy",
    ),
]


@pytest.fixture
def gpu():
    return _jax_gpus()[0]


@pytest.mark.parametrize("lower", [False, True])
def test_values_gradients_jit_vmap_on_the_gpu(rng, gpu, lower):
    from banded_mnn import jax as bj

    ab_h = random_spd_band((4,), 40, 3, lower=lower, rng=rng)
    b_h = rng.standard_normal((4, 40, 2))
    ab, b = jax.device_put(ab_h, gpu), jax.device_put(b_h, gpu)
    x = bj.solveh_banded(ab, b, lower)
    assert x.devices() == {gpu}
    np.testing.assert_allclose(np.asarray(x), banded_mnn.solveh_banded(ab_h, b_h, lower=lower),
                               rtol=1e-10)  # fmt: skip
    np.testing.assert_array_equal(jax.jit(bj.solveh_banded, static_argnums=2)(ab, b, lower), x)
    np.testing.assert_allclose(jax.vmap(bj.solveh_banded, in_axes=(0, 0, None))(ab, b, lower), x,
                               rtol=1e-12)  # fmt: skip

    def loss(a, y):
        return jnp.sum(bj.solveh_banded(a, y, lower) ** 2)

    grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(ab, b)
    cpu = jax.devices("cpu")[0]
    reference = jax.grad(loss, argnums=(0, 1))(jax.device_put(ab_h, cpu), jax.device_put(b_h, cpu))
    for g, r in zip(grads, reference, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-9, atol=1e-12)
    c, info = bj.cholesky_banded_ex(ab, lower)
    assert int(info.max()) == 0
    np.testing.assert_allclose(np.asarray(bj.cho_solve_banded((c, lower), b)), np.asarray(x),
                               rtol=1e-10)  # fmt: skip


def test_the_kernels_read_xlas_buffers(rng, gpu, monkeypatch):
    from banded_mnn.jax import _ops

    seen = {}
    original = _ops._host_cholesky

    def spy(ab, lower):
        seen["pointer"] = ab.data.ptr
        seen["module"] = type(ab).__module__.split(".")[0]
        return original(ab, lower)

    monkeypatch.setattr(_ops, "_host_cholesky", spy)
    ab = jax.device_put(random_spd_band((3,), 20, 2, rng=rng), gpu)
    _ops.cholesky_banded(ab).block_until_ready()
    assert seen == {"pointer": ab.unsafe_buffer_pointer(), "module": "cupy"}


def test_ode_forward_on_gpu_arrays(rng, gpu):
    from banded_mnn import jax as bj

    inputs = [
        rng.standard_normal((2, 6, 2, 2, 3)),
        rng.standard_normal((2, 6, 2)),
        rng.standard_normal((2, 1, 2, 2)),
        rng.uniform(0.2, 0.6, (2, 5)),
    ]
    u = bj.ode_forward(*(jax.device_put(a, gpu) for a in inputs))
    assert u.devices() == {gpu}
    # (The GPU layer against the CPU layer: the same algorithm, other rounding.)
    np.testing.assert_allclose(np.asarray(u), banded_mnn.mnn.ode_forward(*inputs), rtol=1e-9)


def test_more_gpu_paths(rng, gpu):
    """Cholesky gradient (its reverse sweep on the GPU), an unmapped argument under vmap,
    float32, and an indefinite system (NaN and status)."""
    from banded_mnn import jax as bj

    cpu = jax.devices("cpu")[0]
    ab_h = random_spd_band((3,), 30, 2, rng=rng)
    b_h = rng.standard_normal((3, 30))
    ab, b = jax.device_put(ab_h, gpu), jax.device_put(b_h, gpu)

    def loss(a):
        return jnp.sum(bj.cholesky_banded(a) ** 2)

    np.testing.assert_allclose(np.asarray(jax.grad(loss)(ab)),
                               np.asarray(jax.grad(loss)(jax.device_put(ab_h, cpu))),
                               rtol=1e-10)  # fmt: skip
    shared = jax.vmap(bj.solveh_banded, in_axes=(None, 0))(ab[0], b)
    np.testing.assert_allclose(np.asarray(shared),
                               banded_mnn.solveh_banded(ab_h[0], b_h.T).T, rtol=1e-10)  # fmt: skip
    x32 = bj.solveh_banded(ab.astype(jnp.float32), b.astype(jnp.float32))
    assert x32.dtype == jnp.float32
    bad = ab.at[1, -1, 7].set(-5.0)
    x, info = bj.solveh_banded_ex(bad, b)
    assert info.tolist() == [0, 8, 0]
    assert bool(jnp.isnan(x[1]).all()) and bool(jnp.isfinite(x[0]).all())


def test_ode_forward_gradients_on_gpu_arrays(rng, gpu):
    from banded_mnn import jax as bj

    inputs = [
        rng.standard_normal((2, 6, 2, 2, 3)),
        rng.standard_normal((2, 6, 2)),
        rng.standard_normal((2, 1, 2, 2)),
        rng.uniform(0.2, 0.6, (2, 5)),
    ]

    def loss(*a):
        return jnp.sum(bj.ode_forward(*a) ** 2)

    cpu = jax.devices("cpu")[0]
    on_gpu = jax.grad(loss, argnums=(0, 1, 2, 3))(*(jax.device_put(a, gpu) for a in inputs))
    on_cpu = jax.grad(loss, argnums=(0, 1, 2, 3))(*(jax.device_put(a, cpu) for a in inputs))
    for g, c in zip(on_gpu, on_cpu, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(c), rtol=1e-8, atol=1e-11)
