"""JAX wrappers: ``jax.custom_vjp`` functions over host callbacks.

Every function runs banded_mnn's NumPy-level routine through
``jax.pure_callback`` (so it works eagerly and under ``jax.jit``), with
``vmap_method="expand_dims"``: under ``jax.vmap`` the callback receives the
mapped axis as one more leading batch axis, which the routines broadcast over
natively.  Derivatives come from :mod:`banded_mnn._vjp` and
:meth:`banded_mnn.mnn.OdeSystem.vjp`, as in the PyTorch adapter.

JAX convention, unlike the NumPy and torch functions: a system that is not
positive definite is not an exception (exceptions inside callbacks are
undefined behaviour under ``jit``); its results are NaN, and the ``*_ex``
functions return the per-system status.  CPU arrays only (the callbacks run
on the host).  With ``jax_enable_x64`` float64 stays float64.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import _api, _vjp
from ..mnn import _layer

_MNN_NAMES = ("coefficients", "rhs_equation", "init_vars", "steps")
_CORE_NDIM = {"coefficients": 4, "rhs_equation": 2, "init_vars": 3, "steps": 1}


def _floating(x: Any, name: str, dtype=None) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating) or x.dtype.itemsize < 4:
        raise TypeError(f"{name} must be float32 or float64; got {x.dtype}")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{name} has dtype {x.dtype}, but the other inputs are {dtype}")
    return x


def _callback(host: Callable, shapes, *args):
    """``host(*arrays)`` as a pure callback.  Under ``vmap`` the arguments
    carry the mapped axes in front (length 1 where not mapped) and every
    result must carry them at full length: results that do not depend on a
    mapped argument are broadcast (no copy is made before the callback
    returns them)."""
    ndims = [a.ndim for a in args]  # per-sample ranks, known while tracing

    def run(*arrays):
        arrays = [np.asarray(a) for a in arrays]
        outputs = host(*arrays)
        extra = arrays[0].ndim - ndims[0]
        if not extra:
            return outputs
        mapped = np.broadcast_shapes(*(a.shape[:extra] for a in arrays))

        def full(o):
            return np.broadcast_to(o, mapped + o.shape[extra:])

        return tuple(map(full, outputs)) if isinstance(outputs, tuple) else full(outputs)

    return jax.pure_callback(run, shapes, *args, vmap_method="expand_dims")


def _sum_to(g: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and g.shape[lead + i] != 1
    )
    return (g.sum(axis=axes, keepdims=True) if axes else g).reshape(shape)


# --------------------------------------------------------------------------
# Band routines
# --------------------------------------------------------------------------


def _solve_shape(ab: jax.Array, b: jax.Array) -> tuple[int, ...]:
    return jnp.broadcast_shapes(ab.shape[:-2], b.shape[:-2]) + b.shape[-2:]


def _host_cholesky(ab, lower):
    c, info = _api.cholesky_banded_ex(np.asarray(ab), lower=lower)
    return c.astype(ab.dtype, copy=False), np.asarray(info, np.int32).reshape(ab.shape[:-2])


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _cholesky(ab, lower):
    shapes = (
        jax.ShapeDtypeStruct(ab.shape, ab.dtype),
        jax.ShapeDtypeStruct(ab.shape[:-2], jnp.int32),
    )
    return _callback(functools.partial(_host_cholesky, lower=lower), shapes, ab)


def _cholesky_fwd(ab, lower):
    c, info = _cholesky(ab, lower)
    return (c, info), c


def _cholesky_bwd(lower, c, cotangents):
    grad_c, _ = cotangents

    def host(c_, g_):
        return _vjp.cholesky_gradient(np.asarray(c_), np.asarray(g_), lower).astype(c_.dtype)

    return (_callback(host, jax.ShapeDtypeStruct(c.shape, c.dtype), c, grad_c),)


_cholesky.defvjp(_cholesky_fwd, _cholesky_bwd)


def _host_cho_solve(c, b, lower):
    return _api.cho_solve_banded((np.asarray(c), lower), np.asarray(b), check_finite=False)


def _mapped(args: list[np.ndarray], logical_ndims: list[int]) -> tuple[int, ...]:
    """Under ``vmap`` (``expand_dims``) every argument carries the mapped axes
    in front, of length 1 where it is not mapped: their broadcast shape."""
    extra = args[0].ndim - logical_ndims[0]
    return np.broadcast_shapes(*(a.shape[: a.ndim - n] for a, n in zip(args, logical_ndims,
                                                                    strict=True)))[:extra]  # fmt: skip


def _solve_gradients(c, lam, x, b, ndims, lower, factored):
    """Host part of the solve VJPs: (dL/d band, dL/d b), each with its
    argument's shape -- except along mapped axes, where gradients are per
    sample."""
    c_, lam_, x_, b_ = (np.asarray(a) for a in (c, lam, x, b))
    mapped = _mapped([c_, b_], list(ndims))
    extra = len(mapped)
    if factored:
        g = _vjp.cho_solve_gradient(c_, lam_, x_, lower)
    else:
        g = _vjp.solve_gradient(lam_, x_, c_.shape[-2] - 1, lower)
    band = _sum_to(g, mapped + c_.shape[extra:]).astype(c_.dtype)
    return band, _sum_to(lam_, mapped + b_.shape[extra:]).astype(c_.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _cho_solve(c, b, lower):
    shape = jax.ShapeDtypeStruct(_solve_shape(c, b), c.dtype)
    return _callback(functools.partial(_host_cho_solve, lower=lower), shape, c, b)


def _cho_solve_fwd(c, b, lower):
    x = _cho_solve(c, b, lower)
    return x, (c, b, x)


def _cho_solve_bwd(lower, residuals, grad_x):
    c, b, x = residuals
    lam = _cho_solve(c, grad_x, lower)
    host = functools.partial(_solve_gradients, ndims=(c.ndim, b.ndim), lower=lower, factored=True)
    shapes = (jax.ShapeDtypeStruct(c.shape, c.dtype), jax.ShapeDtypeStruct(b.shape, b.dtype))
    return _callback(host, shapes, c, lam, x, b)


_cho_solve.defvjp(_cho_solve_fwd, _cho_solve_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _solveh(ab, b, lower):
    """(x, info); the factor is a residual of the forward pass."""
    return _solveh_fwd(ab, b, lower)[0]


def _solveh_fwd(ab, b, lower):
    def host(ab_, b_):
        c, info = _host_cholesky(ab_, lower)
        return _host_cho_solve(c, b_, lower), c, info

    shapes = (
        jax.ShapeDtypeStruct(_solve_shape(ab, b), ab.dtype),
        jax.ShapeDtypeStruct(ab.shape, ab.dtype),
        jax.ShapeDtypeStruct(ab.shape[:-2], jnp.int32),
    )
    x, c, info = _callback(host, shapes, ab, b)
    return (x, info), (c, b, x)


def _solveh_bwd(lower, residuals, cotangents):
    c, b, x = residuals
    grad_x, _ = cotangents
    lam = _cho_solve(c, grad_x, lower)
    host = functools.partial(_solve_gradients, ndims=(c.ndim, b.ndim), lower=lower, factored=False)
    shapes = (jax.ShapeDtypeStruct(c.shape, c.dtype), jax.ShapeDtypeStruct(b.shape, b.dtype))
    return _callback(host, shapes, c, lam, x, b)


_solveh.defvjp(_solveh_fwd, _solveh_bwd)


def _matrix(b: jax.Array) -> tuple[jax.Array, bool]:
    return (b[:, None], True) if b.ndim == 1 else (b, False)


def cholesky_banded(ab, lower: bool = False) -> jax.Array:
    """Band Cholesky factor (differentiable); failed systems are NaN.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from banded_mnn.jax import cholesky_banded
    >>> cholesky_banded(jnp.array([[0.0, 1.0, 1.0], [4.0, 4.0, 4.0]])).shape
    (2, 3)
    """
    return _cholesky(_floating(ab, "ab"), bool(lower))[0]


def cholesky_banded_ex(ab, lower: bool = False) -> tuple[jax.Array, jax.Array]:
    """The band Cholesky factor and the per-system status.

    Parameters
    ----------
    ab : array, shape (..., u+1, M), float32 or float64
        SPD matrices in LAPACK band form.
    lower : bool
        Lower (``True``) or upper (default) band form.

    Returns
    -------
    c : jax.Array
        The factors (NaN for failed systems), differentiable in ``ab``.
    info : jax.Array of int32, the batch shape
        0, or the order of the first leading minor that is not positive definite.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from banded_mnn.jax import cholesky_banded_ex
    >>> c, info = cholesky_banded_ex(jnp.array([[0.0, 1.0], [4.0, -4.0]]))
    >>> int(info)
    2
    """
    return _cholesky(_floating(ab, "ab"), bool(lower))


def cho_solve_banded(cb_and_lower, b) -> jax.Array:
    """Solve ``A x = b`` with a band Cholesky factor of ``A`` (differentiable in
    the factor and ``b``).

    Parameters
    ----------
    cb_and_lower : (array, bool)
        The factor ``(..., u+1, M)`` from :func:`cholesky_banded` and its form.
    b : array, shape (M,) or (..., M, K), same dtype as the factor
        Right-hand sides; batch axes broadcast.

    Returns
    -------
    x : jax.Array
        Shape of ``b`` with the broadcast batch shape.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from banded_mnn.jax import cho_solve_banded, cholesky_banded
    >>> ab = jnp.array([[0.0, 1.0, 1.0], [4.0, 4.0, 4.0]])
    >>> cho_solve_banded((cholesky_banded(ab), False), jnp.ones(3)).shape
    (3,)
    """
    cb, lower = cb_and_lower
    cb = _floating(cb, "cb")
    b, vector = _matrix(_floating(b, "b", cb.dtype))
    x = _cho_solve(cb, b, bool(lower))
    return x[..., 0] if vector else x


def solveh_banded_ex(ab, b, lower: bool = False) -> tuple[jax.Array, jax.Array]:
    """Solve SPD band systems and report the per-system status.

    Parameters
    ----------
    ab : array, shape (..., u+1, M), float32 or float64
        SPD matrices in LAPACK band form.
    b : array, shape (M,) or (..., M, K), same dtype
        Right-hand sides; batch axes broadcast.
    lower : bool
        Band form of ``ab``.

    Returns
    -------
    x : jax.Array
        Solutions (NaN for failed systems), differentiable in ``ab`` and ``b``.
    info : jax.Array of int32, the batch shape of ``ab``
        0, or the order of the first leading minor that is not positive definite.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from banded_mnn.jax import solveh_banded_ex
    >>> x, info = solveh_banded_ex(jnp.array([[0.0, 1.0, 1.0], [4.0, 4.0, 4.0]]), jnp.ones(3))
    >>> int(info)
    0
    """
    ab = _floating(ab, "ab")
    b, vector = _matrix(_floating(b, "b", ab.dtype))
    x, info = _solveh(ab, b, bool(lower))
    return (x[..., 0] if vector else x), info


def solveh_banded(ab, b, lower: bool = False) -> jax.Array:
    """Solve SPD band systems (differentiable in ``ab`` and ``b``); failed
    systems are NaN (see :func:`solveh_banded_ex` for the status).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from banded_mnn.jax import solveh_banded
    >>> ab = jnp.array([[0.0, 1.0, 1.0], [4.0, 4.0, 4.0]])
    >>> [round(v, 5) for v in solveh_banded(ab, jnp.array([5.0, 6.0, 5.0])).tolist()]
    [1.0, 1.0, 1.0]
    """
    return solveh_banded_ex(ab, b, lower)[0]


# --------------------------------------------------------------------------
# The MNN layer
# --------------------------------------------------------------------------


def _host_ode(static, *arrays):
    """u for canonical inputs (extra leading axes are batch axes)."""
    n_steps, n_init_var_steps, weights, central = static
    inputs = _layer._prepare(*arrays, n_steps, n_init_var_steps, False, weights, central)
    u, _ = _layer._forward(inputs, False, False, None, None)  # failed systems: NaN
    return np.ascontiguousarray(u, dtype=arrays[0].dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _ode(coefficients, rhs_equation, init_vars, steps, static):
    spec, lhs_batch, batch = static[4]
    shape = jax.ShapeDtypeStruct(batch + (spec.n_steps, spec.n_dims, spec.n_orders),
                                 coefficients.dtype)  # fmt: skip
    return _callback(functools.partial(_host_ode, static[:4]), shape,
                     coefficients, rhs_equation, init_vars, steps)  # fmt: skip


def _ode_fwd(coefficients, rhs_equation, init_vars, steps, static):
    u = _ode(coefficients, rhs_equation, init_vars, steps, static)
    return u, (coefficients, rhs_equation, init_vars, steps, u)


def _ode_bwd(static, residuals, grad_u):
    *arrays, u = residuals
    logical = [a.ndim for a in arrays]

    def host(grad_u_, u_, *arrays_):
        arrays_ = [np.asarray(a) for a in arrays_]
        n_steps, n_init_var_steps, weights, central = static[:4]
        extra = arrays_[0].ndim - logical[0]
        if extra:
            # Per-sample gradients along the mapped axes: broadcast them.
            mapped = np.broadcast_shapes(*(a.shape[:extra] for a in arrays_))
            arrays_ = [np.broadcast_to(a, mapped + a.shape[extra:]) for a in arrays_]
        inputs = _layer._prepare(*arrays_, n_steps, n_init_var_steps, False, weights, central)
        system, _ = _layer.OdeSystem._factor(inputs, False, False, None)
        grads = system.vjp(np.asarray(grad_u_), np.asarray(u_), *arrays_)
        return tuple(np.asarray(g, dtype=a.dtype) for g, a in zip(grads, arrays_, strict=True))

    shapes = tuple(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in arrays)
    return _callback(host, shapes, grad_u, u, *arrays)


_ode.defvjp(_ode_fwd, _ode_bwd)


def ode_forward(
    coefficients,
    rhs_equation,
    init_vars,
    steps,
    n_steps: int | None = None,
    n_init_var_steps: int | None = None,
    is_step_dim_first: bool = False,
    weight_equation: float = 1.0,
    weight_init_var: float = 1.0,
    weight_smooth: float = 1.0,
    enable_central_smoothness: bool = False,
) -> jax.Array:
    """S-MNN's ``ode_forward`` on JAX arrays, differentiable in all four inputs.

    Same arguments, shapes and broadcasting as :func:`banded_mnn.mnn.ode_forward`;
    works eagerly and under ``jax.jit``, ``jax.vmap`` and ``jax.grad``.  The
    backward pass factors the left-hand side again (a factor kept from the
    forward pass would not survive ``vmap``'s batching of residuals), so a
    training step costs two factorisations.  Systems whose least-squares
    problem is singular give NaN.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from banded_mnn.jax import ode_forward
    >>> c = jnp.array([1.0, 0.0, 1.0]).reshape(1, 1, 1, 3)
    >>> u = ode_forward(c, jnp.zeros((1, 1)), jnp.array([[[0.0, 1.0]]]), jnp.full(99, 0.01))
    >>> u.shape
    (100, 1, 3)
    """
    coefficients = _floating(coefficients, "coefficients")
    arrays = [coefficients] + [
        _floating(x, name, coefficients.dtype)
        for x, name in zip((rhs_equation, init_vars, steps), _MNN_NAMES[1:], strict=True)
    ]
    if is_step_dim_first:
        arrays = [
            jnp.moveaxis(a, 0, a.ndim - _CORE_NDIM[name]) if a.ndim >= _CORE_NDIM[name] else a
            for a, name in zip(arrays, _MNN_NAMES, strict=True)
        ]
    weights = (weight_equation, weight_init_var, weight_smooth)
    checked = _layer.check_shapes(
        {name: tuple(a.shape) for name, a in zip(_MNN_NAMES, arrays, strict=True)},
        n_steps, n_init_var_steps, weights, enable_central_smoothness,
    )  # fmt: skip
    spec = checked[0]
    weights = (spec.weight_equation, spec.weight_init_var, spec.weight_smooth)
    static = (spec.n_steps, spec.n_init_var_steps, weights, spec.enable_central_smoothness,
              checked)  # fmt: skip
    u = _ode(*arrays, static)
    return jnp.moveaxis(u, -3, 0) if is_step_dim_first else u
