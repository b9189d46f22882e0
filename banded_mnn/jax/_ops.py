"""JAX wrappers: ``jax.custom_vjp`` functions over buffer callbacks.

Every function runs banded_mnn's array-level routine through
``jax.experimental.buffer_callback`` (so it works eagerly and under
``jax.jit``), with ``vmap_method="expand_dims"``: under ``jax.vmap`` the
callback receives the mapped axes as leading batch axes, which the routines
broadcast over natively.  Derivatives come from :mod:`banded_mnn._vjp` and
:meth:`banded_mnn.mnn.OdeSystem.vjp`, as in the PyTorch adapter.

Where the arrays live decides what runs (:func:`_placement`):

* CPU: the callback sees XLA's buffers as NumPy arrays (no copy) and runs the
  CPU backend; results are written into XLA's output buffers.
* CUDA: the buffers are taken as CuPy arrays (``__cuda_array_interface__``,
  no copy), XLA's stream becomes CuPy's current stream, and the band routines
  run on the GPU backend in that stream order, as do the MNN layer
  (:func:`ode_forward`: the GPU layer, :mod:`banded_mnn.mnn._gpu`) and the
  ``cholesky_banded`` gradient (its reverse sweep compiled for the GPU).

Sharding (several devices): arguments sharded along batch axes over a mesh
of explicit axes (``jax.sharding.AxisType.Explicit``, the default of
``jax.make_mesh``) run through ``jax.shard_map`` (:func:`_sharded_callback`):
each device solves its own shard and the results keep the batch sharding.
Inside a user's ``jax.shard_map`` the callbacks see the per-device buffers;
their results are typed as varying along the manual axes their arguments
vary along, and the gradients of arguments shared across devices are summed
over them (:func:`_retype`).  Under a mesh of ``Auto`` axes the sharding is
not known while tracing, and XLA's partitioner, which cannot split a
callback, gathers the batch onto every device.

JAX convention (as ``jnp.linalg.cholesky``), unlike the NumPy and torch
functions: a system that is not positive definite, or holds NaN or inf, is
not an exception (inside a callback it could only surface as an opaque
``JaxRuntimeError``); its results are NaN, and the ``*_ex`` functions return
the per-system status.  Nothing in the callbacks waits for the device.
With ``jax_enable_x64`` float64 stays float64.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.buffer_callback import buffer_callback
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from .. import _api, _vjp
from .._strided import namespace
from ..mnn import _layer

_MNN_NAMES = ("coefficients", "rhs_equation", "init_vars", "steps")
_CORE_NDIM = {"coefficients": 4, "rhs_equation": 2, "init_vars": 3, "steps": 1}

#: DLPack device types of XLA's buffers.
_DLPACK_CPU, _DLPACK_CUDA = 1, 2

#: Tests set this to a GPU backend name ("cupy", whose kernels they run on the
#: host) to send CPU buffers through the band routines' GPU path.
_BACKEND_FOR_CPU_BUFFERS: str | None = None


def _floating(x: Any, name: str, dtype=None) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating) or x.dtype.itemsize < 4:
        raise TypeError(f"{name} must be float32 or float64; got {x.dtype}")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{name} has dtype {x.dtype}, but the other inputs are {dtype}")
    return x


def _placement(ctx, buffer) -> tuple[ModuleType, contextlib.AbstractContextManager]:
    """The array module for XLA's buffers like ``buffer`` and the context to
    run in: NumPy on the CPU; CuPy on a CUDA device, with the buffers' device
    and XLA's stream made CuPy's current ones."""
    device_type, ordinal = buffer.__dlpack_device__()
    if device_type == _DLPACK_CPU:
        return np, contextlib.nullcontext()
    if device_type != _DLPACK_CUDA:
        raise NotImplementedError(f"banded_mnn.jax: no backend for DLPack device {device_type}")
    import cupy

    from .._backends._cupy import on_stream

    stream = ctx.stream
    if callable(stream):  # a method before JAX made it a property
        stream = stream()
    return cupy, on_stream(ordinal, stream)


def _view(xp: ModuleType, buffer, writeable: bool) -> Any:
    """An array over an XLA buffer, without a copy (read-only for inputs on the CPU)."""
    a = xp.asarray(buffer)
    if xp is np and not writeable:
        a = a.view()
        a.flags.writeable = False  # XLA's input buffers are never written
    return a


def _backend(x: Any) -> str | None:
    """The core backend for the band routines on ``x`` (None: the default for its kind)."""
    return _BACKEND_FOR_CPU_BUFFERS if namespace(x) is np else None


def _callback(
    host: Callable,
    shapes,
    *args,
    core: tuple[int, ...] | None = None,
    like: tuple[int | None, ...] | None = None,
    summed: bool = False,
):
    """``host(*arrays)`` as a buffer callback (see :func:`_run`).

    ``core``: the number of trailing core axes of each argument and then of
    each output; the axes in front of them are batch axes, which broadcast
    (aligned on the right).  When arguments are sharded along batch axes over
    a mesh of explicit axes, the callback runs on each device's shard (see
    :func:`_sharded_callback`).

    ``like`` and ``summed`` type the results inside ``jax.shard_map`` (see
    :func:`_retype`): for each output, the index of the one argument it
    depends on (None: all of them); with ``summed``, the outputs are
    gradients, each shaped like the argument ``like`` names and summed over
    the batch positions that argument broadcasts along.
    """
    single = not isinstance(shapes, tuple)
    n_out = 1 if single else len(shapes)
    like = (None,) * n_out if like is None else like
    if core is not None:
        layout = _batch_layout(args, core[: len(args)])
        if layout is not None:
            return _sharded_callback(host, shapes, args, core, like, summed, *layout)
    logical = [s.shape for s in ([shapes] if single else shapes)]
    run = functools.partial(_run, host, single, logical)
    outs = buffer_callback(run, shapes, vmap_method="expand_dims")(*args)
    outs = _retype([outs] if single else list(outs), args, like, summed)
    return outs[0] if single else tuple(outs)


def _varying(x: Any) -> frozenset[str]:
    """The manual mesh axes along which ``x`` varies (inside ``jax.shard_map``)."""
    axis_type = getattr(jax.typeof(x), "manual_axis_type", None)
    return frozenset(getattr(axis_type, "varying", ()))


def _retype(outs: list, args, like: tuple[int | None, ...], summed: bool) -> list:
    """Inside ``jax.shard_map`` a callback's results are typed as equal on
    every device; they vary along the manual axes their arguments vary
    along (``like``: the argument each depends on, None for all).  Gradients
    (``summed``) of an argument that varies along fewer axes than the others
    are partial sums on each device: they are summed over the rest (``psum``)."""
    every = frozenset().union(*map(_varying, args))
    if not every:
        return outs
    typed = []
    for out, source in zip(outs, like, strict=True):
        target = every if source is None else _varying(args[source])
        out = jax.lax.pcast(out, tuple(sorted(every if summed else target)), to="varying")
        spread = every - target if summed else frozenset()
        typed.append(jax.lax.psum(out, tuple(sorted(spread))) if spread else out)
    return typed


# --------------------------------------------------------------------------
# Sharding along batch axes
# --------------------------------------------------------------------------


def _spec_axes(entry: Any) -> tuple[str, ...]:
    """The mesh axes of one entry of a ``PartitionSpec``."""
    if entry is None or entry is PartitionSpec.UNCONSTRAINED:
        return ()
    return tuple(entry) if isinstance(entry, tuple) else (entry,)


def _batch_layout(args, core: tuple[int, ...]) -> tuple[Any, list[tuple[str, ...]]] | None:
    """The mesh and, for each position of the broadcast batch shape, the mesh
    axes that shard it -- or None when no argument is sharded along a batch
    axis over a mesh whose axes are all explicit (``AxisType.Explicit``: the
    sharding is part of the arrays' types, known while tracing).

    A position takes the axes of the first argument sharded there (evenly,
    with axes no other position uses); arguments of length 1 there broadcast
    and are replicated.  Sharding along core axes is ignored here (those
    axes are gathered by :func:`_sharded_callback`).
    """
    n_batch = max(a.ndim - n for a, n in zip(args, core, strict=True))
    axes: list[tuple[str, ...]] = [()] * n_batch
    mesh = None
    for a, n in zip(args, core, strict=True):
        sharding = getattr(jax.typeof(a), "sharding", None)
        spec, m = getattr(sharding, "spec", None), getattr(sharding, "mesh", None)
        if spec is None or m is None or not m.axis_names:
            continue
        if any(t != AxisType.Explicit for t in m.axis_types) or (mesh is not None and m != mesh):
            continue
        sizes = dict(zip(m.axis_names, m.axis_sizes, strict=True))
        lead = n_batch - (a.ndim - n)
        for d in range(a.ndim - n):
            names = _spec_axes(spec[d] if d < len(spec) else None)
            k = lead + d
            if not names or axes[k] or a.shape[d] == 1:
                continue
            if any(names_k and set(names_k) & set(names) for names_k in axes):
                continue
            if a.shape[d] % math.prod(sizes[name] for name in names):
                continue
            axes[k], mesh = names, m
    return None if mesh is None else (mesh, axes)


def _batch_spec(shape: tuple[int, ...], n_core: int, axes: list[tuple[str, ...]]) -> PartitionSpec:
    """The spec of an array of ``shape`` in the batch layout ``axes``: sharded
    along its batch axes of full length, replicated along the others."""
    lead = len(axes) - (len(shape) - n_core)
    entries: list[Any] = []
    for d in range(len(shape) - n_core):
        names = axes[lead + d] if shape[d] != 1 else ()
        entries.append(None if not names else names[0] if len(names) == 1 else names)
    return PartitionSpec(*entries, *([None] * n_core))


def _local_shape(shape: tuple[int, ...], spec: PartitionSpec, sizes: dict[str, int]):
    """One device's shard of an array of ``shape`` laid out by ``spec``."""
    return tuple(
        n // math.prod(sizes[a] for a in _spec_axes(e)) for n, e in zip(shape, spec, strict=True)
    )


def _sharded_callback(host, shapes, args, core, like, summed, mesh, axes):
    """The callback under ``jax.shard_map`` over ``mesh``: each device runs
    it on its own shard of the batch, so no device sees the whole batch.

    Arguments are resharded to the batch layout first (``jax.sharding.reshard``;
    a no-op when they are laid out so already, a gather along sharded core
    axes).  Outputs are sharded along their batch axes of full length
    (:func:`_retype`: gradients of arguments that broadcast along a sharded
    batch axis are summed over its devices).
    """
    single = not isinstance(shapes, tuple)
    out_structs = [shapes] if single else list(shapes)
    core_out = core[len(args) :]
    sizes = dict(zip(mesh.axis_names, mesh.axis_sizes, strict=True))
    in_specs = [_batch_spec(a.shape, n, axes) for a, n in zip(args, core[: len(args)], strict=True)]
    out_specs = [_batch_spec(s.shape, n, axes) for s, n in zip(out_structs, core_out, strict=True)]
    local = [
        jax.ShapeDtypeStruct(_local_shape(s.shape, spec, sizes), s.dtype)
        for s, spec in zip(out_structs, out_specs, strict=True)
    ]
    args = [
        a if jax.typeof(a).sharding.spec == spec
        else jax.sharding.reshard(a, NamedSharding(mesh, spec))
        for a, spec in zip(args, in_specs, strict=True)
    ]  # fmt: skip
    run = functools.partial(_run, host, single, [s.shape for s in local])

    def body(*shards):
        outs = buffer_callback(run, local[0] if single else tuple(local),
                               vmap_method="expand_dims")(*shards)  # fmt: skip
        outs = _retype([outs] if single else list(outs), shards, like, summed)
        return outs[0] if single else tuple(outs)

    mapped = jax.shard_map(body, mesh=mesh, in_specs=tuple(in_specs),
                           out_specs=out_specs[0] if single else tuple(out_specs))  # fmt: skip
    return mapped(*args)


def _run(host: Callable, single: bool, logical: list[tuple[int, ...]], ctx, outs, *buffers) -> None:
    """The body of every callback: ``host`` receives views of XLA's input
    buffers and returns arrays of the array module it was given, which are
    written into XLA's output buffers.  Under ``vmap`` the arguments carry the
    mapped axes in front (length 1 where not mapped) and every output has
    them at full length: results that do not depend on a mapped argument are
    broadcast by the assignment -- over those axes only (``logical``: the
    outputs' shapes without them)."""
    outs = [outs] if single else list(outs)
    xp, context = _placement(ctx, outs[0])
    with context:
        out_arrays = [_view(xp, b, True) for b in outs]
        results = host(*(_view(xp, b, False) for b in buffers))
        results = [results] if single else list(results)
        for out, result, shape in zip(out_arrays, results, logical, strict=True):
            core = result.shape[result.ndim - len(shape) :] if result.ndim >= len(shape) else None
            if core != shape or result.ndim > out.ndim:
                raise ValueError(f"banded_mnn.jax: internal error: a result of shape "
                                 f"{result.shape} for an output of shape {out.shape}")  # fmt: skip
            out[...] = xp.asarray(result)


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
    # No finiteness pass: it would wait for the device, and NaN or inf is
    # reported as a failed pivot (status, NaN factor) all the same.
    c, info = _api.cholesky_banded_ex(ab, lower=lower, check_finite=False, backend=_backend(ab))
    return c, info.reshape(ab.shape[:-2])


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _cholesky(ab, lower):
    shapes = (
        jax.ShapeDtypeStruct(ab.shape, ab.dtype),
        jax.ShapeDtypeStruct(ab.shape[:-2], jnp.int32),
    )
    return _callback(functools.partial(_host_cholesky, lower=lower), shapes, ab, core=(2, 2, 0))


def _cholesky_fwd(ab, lower):
    c, info = _cholesky(ab, lower)
    return (c, info), c


def _cholesky_bwd(lower, c, cotangents):
    grad_c, _ = cotangents

    def host(c_, g_):
        return _vjp.cholesky_gradient(c_, g_, lower, _backend(c_))

    shape = jax.ShapeDtypeStruct(c.shape, c.dtype)
    return (_callback(host, shape, c, grad_c, core=(2, 2, 2), like=(0,), summed=True),)


_cholesky.defvjp(_cholesky_fwd, _cholesky_bwd)


def _host_cho_solve(c, b, lower):
    return _api.cho_solve_banded((c, lower), b, check_finite=False, backend=_backend(c))


def _mapped(args: list[np.ndarray], logical_ndims: list[int]) -> tuple[int, ...]:
    """Under ``vmap`` (``expand_dims``) every argument carries the mapped axes
    in front, of length 1 where it is not mapped: their broadcast shape."""
    extra = args[0].ndim - logical_ndims[0]
    return np.broadcast_shapes(*(a.shape[: a.ndim - n] for a, n in zip(args, logical_ndims,
                                                                    strict=True)))[:extra]  # fmt: skip


def _solve_gradients(c, lam, x, b, ndims, lower, factored):
    """Callback part of the solve VJPs: (dL/d band, dL/d b), each with its
    argument's shape -- except along mapped axes, where gradients are per
    sample."""
    mapped = _mapped([c, b], list(ndims))
    if factored:
        g = _vjp.cho_solve_gradient(c, lam, x, lower)
    else:
        g = _vjp.solve_gradient(lam, x, c.shape[-2] - 1, lower)
    extra = len(mapped)
    return _sum_to(g, mapped + c.shape[extra:]), _sum_to(lam, mapped + b.shape[extra:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _cho_solve(c, b, lower):
    shape = jax.ShapeDtypeStruct(_solve_shape(c, b), c.dtype)
    return _callback(functools.partial(_host_cho_solve, lower=lower), shape, c, b, core=(2, 2, 2))


def _cho_solve_fwd(c, b, lower):
    x = _cho_solve(c, b, lower)
    return x, (c, b, x)


def _cho_solve_bwd(lower, residuals, grad_x):
    c, b, x = residuals
    lam = _cho_solve(c, grad_x, lower)
    host = functools.partial(_solve_gradients, ndims=(c.ndim, b.ndim), lower=lower, factored=True)
    shapes = (jax.ShapeDtypeStruct(c.shape, c.dtype), jax.ShapeDtypeStruct(b.shape, b.dtype))
    return _callback(host, shapes, c, lam, x, b, core=(2,) * 6, like=(0, 3), summed=True)


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
    x, c, info = _callback(host, shapes, ab, b, core=(2, 2, 2, 2, 0), like=(None, 0, 0))
    return (x, info), (c, b, x)


def _solveh_bwd(lower, residuals, cotangents):
    c, b, x = residuals
    grad_x, _ = cotangents
    lam = _cho_solve(c, grad_x, lower)
    host = functools.partial(_solve_gradients, ndims=(c.ndim, b.ndim), lower=lower, factored=False)
    shapes = (jax.ShapeDtypeStruct(c.shape, c.dtype), jax.ShapeDtypeStruct(b.shape, b.dtype))
    return _callback(host, shapes, c, lam, x, b, core=(2,) * 6, like=(0, 3), summed=True)


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
    """u for canonical inputs (extra leading axes are batch axes), by the MNN
    layer on the arrays' device (the GPU layer for CuPy views of XLA's
    buffers, in XLA's stream order)."""
    n_steps, n_init_var_steps, weights, central = static
    backend = _backend(arrays[0])
    inputs = _layer._prepare(*arrays, n_steps, n_init_var_steps, False, weights, central, backend)
    return _layer._forward(inputs, False, False, backend, None)[0]  # failed systems: NaN


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _ode(coefficients, rhs_equation, init_vars, steps, static):
    spec, lhs_batch, batch = static[4]
    shape = jax.ShapeDtypeStruct(batch + (spec.n_steps, spec.n_dims, spec.n_orders),
                                 coefficients.dtype)  # fmt: skip
    return _callback(functools.partial(_host_ode, static[:4]), shape,
                     coefficients, rhs_equation, init_vars, steps,
                     core=(*_CORE_NDIM.values(), 3))  # fmt: skip


def _ode_fwd(coefficients, rhs_equation, init_vars, steps, static):
    u = _ode(coefficients, rhs_equation, init_vars, steps, static)
    return u, (coefficients, rhs_equation, init_vars, steps, u)


def _ode_bwd(static, residuals, grad_u):
    *arrays, u = residuals
    logical = [a.ndim for a in arrays]

    def host(grad_u_, u_, *arrays_):
        n_steps, n_init_var_steps, weights, central = static[:4]
        xp, backend = namespace(arrays_[0]), _backend(arrays_[0])
        extra = arrays_[0].ndim - logical[0]
        if extra:
            # Per-sample gradients along the mapped axes: broadcast them.
            mapped = np.broadcast_shapes(*(a.shape[:extra] for a in arrays_))
            arrays_ = [xp.broadcast_to(a, mapped + a.shape[extra:]) for a in arrays_]
        inputs = _layer._prepare(*arrays_, n_steps, n_init_var_steps, False, weights, central,
                                 backend)  # fmt: skip
        system, _ = _layer.OdeSystem._factor(inputs, False, False, backend)
        return system.vjp(grad_u_, u_, *arrays_)

    shapes = tuple(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in arrays)
    core = tuple(_CORE_NDIM.values())
    return _callback(
        host, shapes, grad_u, u, *arrays, core=(3, 3, *core, *core), like=(2, 3, 4, 5), summed=True
    )


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
