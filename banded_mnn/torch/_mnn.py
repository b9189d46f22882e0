"""PyTorch custom operators of the MNN layer: ``ode_forward`` over the CPU or GPU layer.

The operators (forward, solve with a kept factor, backward) run the NumPy-level
layer (:mod:`banded_mnn.mnn`) on NumPy views of CPU tensors or on CuPy views of
CUDA tensors (the GPU layer, :mod:`banded_mnn.mnn._gpu`), on torch's current
stream; the factor kept between the forward and the backward pass is one flat
tensor and its kind (:meth:`banded_mnn.mnn.OdeSystem.kept_factor`), whatever
the device and algorithm.  In plain eager mode on CPU tensors a leaner
``torch.autograd.Function`` skips the operators (:class:`_OdeForwardEager`).
The crossing between torch and the arrays and the operator machinery are in
:mod:`._ops`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .._strided import namespace
from ..mnn import _layer
from ._ops import (
    _FLOATS,
    _PLAIN_TYPES,
    _call,
    _check,
    _first_order,
    _function,
    _no_transform,
    _np,
    _on_device,
    _operator,
    _same_device,
    _t,
    _vmap_rule,
)


def _plain_cpu(tensors: tuple) -> bool:
    """Whether ``tensors`` are plain CPU tensors or parameters of one floating
    dtype in plain eager mode: the CPU layer's shortcut (:class:`_OdeForwardEager`)."""
    if not _no_transform():  # (first: torch.compile traces no further)
        return False
    dtype = getattr(tensors[0], "dtype", None)
    for t in tensors:
        if type(t) not in _PLAIN_TYPES or t.dtype is not dtype or not t.is_cpu:
            return False
        if torch._C._functorch.is_functorch_wrapped_tensor(t):
            return False
    return dtype in _FLOATS


# --------------------------------------------------------------------------
# Operators: the MNN layer
# --------------------------------------------------------------------------

_MNN_NAMES = ("coefficients", "rhs_equation", "init_vars", "steps")


def _shapes(tensors, n_steps, n_init_var_steps, weights, central):
    """``(spec, lhs_batch, batch)`` from the tensors' shapes alone."""
    shapes = {name: tuple(t.shape) for name, t in zip(_MNN_NAMES, tensors, strict=True)}
    # (Memoised for plain-int sizes; symbolic ones, while tracing, are checked afresh.)
    return _layer.check_shapes_memo(shapes, n_steps, n_init_var_steps, tuple(weights), central)


def _gpu_layer_backend(t: Tensor) -> str | None:
    """The ``backend=`` of the MNN layer for tensors like ``t``: None (the CPU
    layer for CPU tensors, the GPU layer with the default GPU backend for
    CUDA tensors), or "numba-cuda" for CPU tensors sent down the CUDA path
    (:data:`_ROUTE_CPU_TENSORS_TO_GPU_PATH`, under the CUDA simulator)."""
    return "numba-cuda" if _ROUTE_CPU_TENSORS_TO_GPU_PATH and not t.is_cuda else None


def _on_gpu_layer(t: Tensor) -> bool:
    return t.is_cuda or _ROUTE_CPU_TENSORS_TO_GPU_PATH


def _inputs(tensors, n_steps, n_init_var_steps, step_first, weights, central):
    arrays = [_np(t) for t in tensors]
    return _layer._prepare(*arrays, n_steps, n_init_var_steps, step_first, weights, central,
                           _gpu_layer_backend(tensors[0]))  # fmt: skip


def _system(factor: Tensor, lanes: int, spec: _layer.OdeSpec, lhs_batch) -> _layer.OdeSystem:
    """The layer's system over a factor the forward returned (``lanes``: its
    kind, see :meth:`banded_mnn.mnn.OdeSystem.kept_factor`)."""
    return _layer.OdeSystem.from_kept(_np(factor), lanes, spec, tuple(lhs_batch),
                                      gpu=_on_gpu_layer(factor),
                                      backend=_gpu_layer_backend(factor))  # fmt: skip


def _keeps_cyclic(coefficients: Tensor, spec: _layer.OdeSpec, lhs_batch, algorithm) -> bool:
    """Whether the layer factors by cyclic reduction (the shape of the kept
    factor depends on it): asked for, or chosen by the GPU layer's rule."""
    if algorithm is not None or not _on_gpu_layer(coefficients):
        return algorithm == "cyclic"
    from ..mnn import _gpu

    kernels = _gpu.kernel_set(_gpu_layer_backend(coefficients))
    nsys = 1
    for n in lhs_batch:
        nsys *= n
    return _gpu.choose_algorithm(None, nsys, spec.n_steps, kernels) == "cyclic"


def _contiguous(a: Any) -> Tensor:
    """A tensor over ``a`` made C-contiguous (NumPy or CuPy)."""
    return _t(namespace(a).ascontiguousarray(a))


@_operator("ode_forward")
def _ode_forward(
    coefficients: Tensor,
    rhs_equation: Tensor,
    init_vars: Tensor,
    steps: Tensor,
    n_steps: int,
    n_init_var_steps: int,
    weights: list[float],
    central: bool,
    algorithm: str | None = None,
) -> tuple[Tensor, Tensor, int]:
    """Canonical layout (step axis not first).  Returns the solution, the
    kept factor (flat) and its kind (:meth:`OdeSystem.kept_factor`)."""
    tensors = (coefficients, rhs_equation, init_vars, steps)
    with _on_device(coefficients):
        inputs = _inputs(tensors, n_steps, n_init_var_steps, False, tuple(weights), central)
        backend = _gpu_layer_backend(coefficients)
        u, system = _layer._forward(inputs, False, True, backend, algorithm)
        factor, kind = system.kept_factor()
        return _contiguous(u), _t(factor), kind


@_ode_forward.register_fake
def _(coefficients, rhs_equation, init_vars, steps, n_steps, n_init_var_steps, weights, central,
      algorithm=None):  # fmt: skip
    tensors = (coefficients, rhs_equation, init_vars, steps)
    spec, lhs_batch, batch = _shapes(tensors, n_steps, n_init_var_steps, weights, central)
    u = coefficients.new_empty([*batch, spec.n_steps, spec.n_dims, spec.n_orders])
    gpu = _on_gpu_layer(coefficients)
    cyclic = _keeps_cyclic(coefficients, spec, lhs_batch, algorithm)
    factor = coefficients.new_empty([_layer.factor_size(spec, lhs_batch, gpu, cyclic)])
    lanes = torch.library.get_ctx().new_dynamic_size()
    return u, factor, lanes


@_operator("ode_solve")
def _ode_solve(
    factor: Tensor,
    lanes: int,
    coefficients: Tensor,
    rhs_equation: Tensor,
    init_vars: Tensor,
    steps: Tensor,
    n_steps: int,
    n_init_var_steps: int,
    weights: list[float],
    central: bool,
) -> Tensor:
    """Solve with a stored factor (S-MNN's frozen left-hand side)."""
    tensors = (coefficients, rhs_equation, init_vars, steps)
    with _on_device(coefficients):
        inputs = _inputs(tensors, n_steps, n_init_var_steps, False, tuple(weights), central)
        system = _system(factor, lanes, inputs.spec, inputs.lhs_batch)
        inputs.batch = torch.broadcast_shapes(inputs.batch, inputs.lhs_batch)
        return _contiguous(system._solve_inputs(inputs))


@_ode_solve.register_fake
def _(factor, lanes, coefficients, rhs_equation, init_vars, steps, n_steps, n_init_var_steps,
      weights, central):  # fmt: skip
    tensors = (coefficients, rhs_equation, init_vars, steps)
    spec, lhs_batch, batch = _shapes(tensors, n_steps, n_init_var_steps, weights, central)
    batch = torch.broadcast_shapes(batch, lhs_batch)
    return coefficients.new_empty([*batch, spec.n_steps, spec.n_dims, spec.n_orders])


@_operator("ode_backward")
def _ode_backward(
    grad_u: Tensor,
    u: Tensor,
    factor: Tensor,
    lanes: int,
    coefficients: Tensor,
    rhs_equation: Tensor,
    init_vars: Tensor,
    steps: Tensor,
    n_steps: int,
    n_init_var_steps: int,
    weights: list[float],
    central: bool,
    lhs_gradients: bool,
) -> list[Tensor]:
    """Gradients of the four inputs (zeros for the left-hand side's when
    ``lhs_gradients`` is false: a frozen left-hand side)."""
    tensors = (coefficients, rhs_equation, init_vars, steps)
    # The shapes suffice here: OdeSystem.vjp validates and prepares the arrays.
    spec, lhs_batch, _ = _shapes(tensors, n_steps, n_init_var_steps, weights, central)
    with _on_device(coefficients):
        system = _system(factor, lanes, spec, lhs_batch)
        arrays = [_np(t) for t in tensors]
        grads = system.vjp(_np(grad_u), _np(u), *arrays[:3], arrays[3] if lhs_gradients else None)
        return [
            _contiguous(g) if g is not None else torch.zeros_like(t)
            for g, t in zip(grads, tensors, strict=True)
        ]


@_ode_backward.register_fake
def _(grad_u, u, factor, lanes, coefficients, rhs_equation, init_vars, steps, *args):
    return [torch.empty_like(t) for t in (coefficients, rhs_equation, init_vars, steps)]


def _ode_setup(ctx, inputs, output):
    ctx.set_materialize_grads(False)  # the factor's gradient would be a 0-filled copy of it
    u, factor, lanes = output
    ctx.static = inputs[4:8]  # (not the algorithm: the factor's kind tells)
    ctx.lanes = lanes
    ctx.save_for_backward(u, factor, *inputs[:4])


def _ode_bwd(ctx, grad_u, grad_factor, grad_lanes):
    u, factor, *tensors = ctx.saved_tensors
    if grad_u is None:
        return (None,) * 9
    grads = _call(_ode_backward, grad_u, u, factor, ctx.lanes, *tensors, *ctx.static, True)
    return (*grads, None, None, None, None, None)


_ode_forward.register_autograd(_ode_bwd, setup_context=_ode_setup)


def _ode_solve_setup(ctx, inputs, output):
    ctx.lanes = inputs[1]
    ctx.static = inputs[6:]
    ctx.save_for_backward(output, inputs[0], *inputs[2:6])


def _ode_solve_bwd(ctx, grad_u):
    u, factor, *tensors = ctx.saved_tensors
    grads = _call(_ode_backward, grad_u, u, factor, ctx.lanes, *tensors, *ctx.static, False)
    # A frozen left-hand side: no gradient for coefficients and steps (as S-MNN).
    return (None, None, None, grads[1], grads[2], None, None, None, None, None)


_ode_solve.register_autograd(_ode_solve_bwd, setup_context=_ode_solve_setup)
_OdeForward = _function(_ode_forward, _ode_setup, _ode_bwd, "_OdeForward", "ode_forward")
_OdeSolve = _function(_ode_solve, _ode_solve_setup, _ode_solve_bwd, "_OdeSolve", "ode_forward")


torch.library.register_vmap(
    _ode_forward, _vmap_rule(_ode_forward, (0, 1, 2, 3), flat_outputs=(1, 2))
)


class _OdeForwardEager(torch.autograd.Function):
    """``ode_forward`` on plain CPU tensors in plain eager mode (see
    :func:`_plain_cpu`): the operator's body and derivative without the
    operator, in as few Python steps as they take, since at full size they
    run with the caches cold after the kernels.  The tensors are validated
    once, by :func:`ode_forward` (``shapes``: :func:`_shapes`' result), for
    the forward and the backward; the factor is a saved tensor rather than an
    output.  See ``docs/performance.md`` for the overhead."""

    @staticmethod
    def forward(ctx, coefficients, rhs_equation, init_vars, steps, shapes):
        tensors = (coefficients, rhs_equation, init_vars, steps)
        u, system = _layer._forward(_validated(tensors, shapes), False, True, None, None)
        u = _t(u)  # our own, C-contiguous
        # The factor as a saved tensor, so that torch frees it with the graph
        # (after the backward unless retain_graph), not with the output.
        ctx.shapes, ctx.lanes = shapes, system.lanes
        ctx.save_for_backward(*tensors, u, _t(system.workspace.reshape(-1)))
        return u

    @staticmethod
    @_first_order("ode_forward")
    def backward(ctx, grad_u):
        *tensors, u, factor = ctx.saved_tensors
        spec, lhs_batch, _ = ctx.shapes
        system = _system(factor, ctx.lanes, spec, lhs_batch)
        # No left-hand-side gradients when neither coefficients nor steps need
        # one.  (The engine gives grad_u the solution's shape and dtype.)
        lhs = ctx.needs_input_grad[0] or ctx.needs_input_grad[3]
        grads = system._vjp(_validated(tensors, ctx.shapes), _np(grad_u), _np(u), lhs)
        return (*(None if g is None else _t(g) for g in grads), None)


def _validated(tensors: tuple, shapes: tuple) -> _layer._Inputs:
    """The layer's inputs over NumPy views of plain CPU ``tensors`` of one
    dtype, in the canonical layout, whose shapes :func:`_shapes` validated."""
    arrays = {name: _np(t) for name, t in zip(_MNN_NAMES, tensors, strict=True)}
    dtype = arrays["coefficients"].dtype
    return _layer._Inputs(arrays, dict.fromkeys(arrays, dtype), *shapes, dtype)


torch.library.register_vmap(_ode_solve, _vmap_rule(_ode_solve, (2, 3, 4, 5)))
torch.library.register_vmap(_ode_backward, _vmap_rule(_ode_backward, (0, 1, 4, 5, 6, 7)))


# --------------------------------------------------------------------------
# Public MNN function
# --------------------------------------------------------------------------

#: Tests set this, under Numba's CUDA simulator, to send CPU tensors through
#: the CUDA tensors' path (the GPU layer with the "numba-cuda" backend on NumPy
#: views) and compare it with the CPU layer.
_ROUTE_CPU_TENSORS_TO_GPU_PATH = False


#: Frozen left-hand sides: version -> (factor, kind, spec, lhs batch, dtype,
#: device, algorithm); the factor and its kind as the layer keeps them
#: (:meth:`banded_mnn.mnn.OdeSystem.kept_factor`).
_FROZEN: dict[int, tuple] = {}


def _step_axis_last(tensors: Sequence[Tensor]) -> list[Tensor]:
    """``is_step_dim_first`` inputs as views in the canonical layout."""
    return [
        t.movedim(0, t.ndim - _layer._CORE_NDIM[name]) if t.ndim >= _layer._CORE_NDIM[name] else t
        for t, name in zip(tensors, _MNN_NAMES, strict=True)
    ]


def clear_frozen_lhs_cache() -> None:
    """Forget the left-hand sides frozen with ``frozen_lhs_cache_version``."""
    _FROZEN.clear()


def ode_forward(
    coefficients: Tensor,
    rhs_equation: Tensor,
    init_vars: Tensor,
    steps: Tensor,
    n_steps: int | None = None,
    n_init_var_steps: int | None = None,
    is_step_dim_first: bool = False,
    weight_equation: float = 1.0,
    weight_init_var: float = 1.0,
    weight_smooth: float = 1.0,
    enable_central_smoothness: bool = False,
    prefer_cuda_graph: bool = True,
    frozen_lhs_cache_version: int = 0,
    *,
    algorithm: str | None = None,
) -> Tensor:
    """S-MNN's ``ode_forward`` on torch tensors: a drop-in replacement.

    Same arguments, defaults, shapes and broadcasting as
    :func:`banded_mnn.mnn.ode_forward` (and S-MNN's function); differentiable
    with respect to all four tensors, except that a frozen left-hand side
    (``frozen_lhs_cache_version > 0`` after its first call) gives no gradient
    to ``coefficients`` and ``steps``, as in S-MNN.  ``prefer_cuda_graph`` is
    accepted; on a CUDA device a call made while torch's stream is capturing a
    CUDA graph never waits for the device (failed systems then give NaN
    instead of an error).  Tensors are float32 or float64 (all four of one
    dtype), on the CPU (the CPU layer) or on one CUDA device (the GPU layer,
    see ``docs/adapters.md``).

    ``algorithm`` (keyword only, not in S-MNN): ``None`` or ``"sequential"``
    (the band Cholesky) or ``"cyclic"`` (block cyclic reduction, parallel in
    time), as in :func:`banded_mnn.mnn.ode_forward`.  ``None`` is
    "sequential" on the CPU; on a CUDA device the GPU layer chooses (block
    cyclic reduction for few, long sequences).

    Examples
    --------
    >>> import torch
    >>> from banded_mnn.torch import ode_forward
    >>> c = torch.tensor([[[[1.0, 0.0, 1.0]]]], dtype=torch.float64, requires_grad=True)
    >>> u = ode_forward(c, torch.zeros(1, 1, dtype=torch.float64),
    ...                 torch.tensor([[[0.0, 1.0]]], dtype=torch.float64),
    ...                 torch.full((99,), 0.01, dtype=torch.float64))
    >>> u.shape
    torch.Size([100, 1, 3])
    >>> u[:, 0, 0].sum().backward()
    """
    del prefer_cuda_graph
    weights = (weight_equation, weight_init_var, weight_smooth)
    tensors = (coefficients, rhs_equation, init_vars, steps)
    if (
        _plain_cpu(tensors)
        and type(frozen_lhs_cache_version) is int
        and frozen_lhs_cache_version == 0
        and _layer._choose_algorithm(algorithm) == "sequential"
        and not _ROUTE_CPU_TENSORS_TO_GPU_PATH
    ):  # The common case on the CPU, with the fewest Python steps.
        if is_step_dim_first:
            tensors = _step_axis_last(tensors)
        shapes = _shapes(tensors, n_steps, n_init_var_steps, weights, enable_central_smoothness)
        u = _OdeForwardEager.apply(*tensors, shapes)
        return u.movedim(-3, 0) if is_step_dim_first else u
    dtype = _check(coefficients, "coefficients", gpu=True).dtype
    tensors = [coefficients] + [
        _check(t, name, dtype, gpu=True)
        for t, name in zip((rhs_equation, init_vars, steps), _MNN_NAMES[1:], strict=True)
    ]
    _same_device(*zip(_MNN_NAMES, tensors, strict=True))
    if algorithm is not None:
        _layer._choose_algorithm(algorithm)  # (validates it)
    if is_step_dim_first:
        tensors = _step_axis_last(tensors)
    # Validate and fix the sizes on shapes alone (same rules and messages as NumPy).
    spec, lhs_batch, batch = _layer.check_shapes(
        {name: tuple(t.shape) for name, t in zip(_MNN_NAMES, tensors, strict=True)},
        n_steps, n_init_var_steps, weights, enable_central_smoothness,
    )  # fmt: skip
    static = (spec.n_steps, spec.n_init_var_steps, [float(w) for w in weights],
              spec.enable_central_smoothness)  # fmt: skip
    version = _layer._count(frozen_lhs_cache_version, "frozen_lhs_cache_version", 0)
    frozen = _FROZEN.get(version) if version else None
    key = (spec, lhs_batch, dtype, coefficients.device, algorithm)
    if frozen is not None and frozen[2:] != key:
        raise ValueError(
            f"frozen_lhs_cache_version={version} holds a left-hand side of a different "
            "problem (or device, or algorithm); use a new version or clear_frozen_lhs_cache()"
        )
    if frozen is not None:
        factor, lanes = frozen[:2]
        u = _OdeSolve(factor, lanes, *tensors, *static)
    else:
        u, factor, lanes = _OdeForward(*tensors, *static, algorithm)
    if version and frozen is None:
        kept = factor.detach() if isinstance(factor, Tensor) else factor
        _FROZEN[version] = (kept, lanes, *key)
    return u.movedim(-3, 0) if is_step_dim_first else u
