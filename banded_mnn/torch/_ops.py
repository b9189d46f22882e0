"""PyTorch custom operators over banded_mnn's band routines, and the machinery the MNN operators share.

Each public function is a thin Python wrapper around a
``torch.library.custom_op`` in the ``banded_mnn`` namespace, with a fake
(shape) implementation for ``torch.compile``, an autograd formula
(``register_autograd``) and a vmap rule; in eager mode the call goes through a
``torch.autograd.Function`` with the same derivative (for ``torch.func``, see
:func:`_function`), under ``torch.compile`` to the operator itself.  In plain
eager mode (:func:`_plain_eager`) that Function runs the operator's body
without the operator's dispatch (:func:`_call`).  Tensor data crosses to NumPy
without a copy (``Tensor.numpy()`` on a detached, conjugation-resolved view:
any strides); results come back with ``torch.from_numpy``, also without a
copy.  CUDA tensors cross to CuPy the same way, through DLPack, and the GPU
kernels run on torch's current stream of the tensors' device.  The MNN
layer's operators are in :mod:`._mnn`.  The derivative formulas live in
:mod:`banded_mnn._vjp` and :meth:`banded_mnn.mnn.OdeSystem.vjp`, shared with
the JAX adapter.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import _api, _backends, _vjp

# --------------------------------------------------------------------------
# Crossing between torch and NumPy
# --------------------------------------------------------------------------

_FLOATS = (torch.float32, torch.float64)


def _check(t: Any, name: str, dtype: torch.dtype | None = None, *, gpu: bool = False) -> Tensor:
    """Validate a tensor argument: floating, on the CPU (or, with ``gpu``, on a
    CUDA device), and (if given) of ``dtype``."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
    if t.dtype not in _FLOATS:
        raise TypeError(f"{name} must be float32 or float64; got {t.dtype}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{name} has dtype {t.dtype}, but the other inputs are {dtype}")
    if t.device.type == "cuda" and gpu:
        pass  # whether CuPy can run is checked inside the operators (_on_device)
    elif t.device.type != "cpu":
        where = "the band routines take CPU or CUDA tensors" if gpu else "it runs on the CPU"
        raise NotImplementedError(f"{name} is on {t.device}: {where} in this version")
    return t


def _same_device(*tensors: tuple[str, Tensor]) -> None:
    devices = {t.device for _, t in tensors}
    if len(devices) > 1:
        where = ", ".join(f"{name} on {t.device}" for name, t in tensors)
        raise ValueError(f"the tensors must be on one device; got {where}")


def _on_device(t: Tensor):
    """For a CUDA tensor: make its device and torch's current stream there
    CuPy's current ones, so that the kernels run in torch's stream order, and
    take CuPy's allocations (outputs and temporaries) from torch's caching
    allocator on that stream (:func:`_torch_allocator`)."""
    if t.device.type != "cuda":
        return contextlib.nullcontext()
    usable, why = _cuda_usable()
    if not usable:
        raise RuntimeError(f"a tensor is on {t.device}, but the GPU backend cannot run: {why}")
    import cupy

    from .._backends._cupy import on_stream

    index = t.device.index
    stream = torch.cuda.current_stream(t.device)
    context = contextlib.ExitStack()
    context.enter_context(on_stream(index, stream))
    context.enter_context(cupy.cuda.using_allocator(_torch_allocator(index, stream)))
    return context


class _TorchBlock:
    """Owner of a block from torch's caching allocator, given back to it when
    CuPy releases the memory (the last array or tensor over it is gone)."""

    __slots__ = ("address",)

    def __init__(self, address: int) -> None:
        self.address = address

    def __del__(self) -> None:
        torch.cuda.caching_allocator_delete(self.address)


def _torch_allocator(device_index: int, stream: Any) -> Callable[[int], Any]:
    """A CuPy allocator (``cupy.cuda.using_allocator``) drawing from torch's
    caching allocator on ``stream`` of device ``device_index``: results come
    back to torch as torch allocations (counted by
    ``torch.cuda.memory_allocated``, reused by torch after they die), and
    CuPy's own pool does not hold GPU memory beside torch's."""
    import cupy

    def allocate(size: int) -> Any:
        if size == 0:  # (torch has no empty block to give)
            return cupy.cuda.MemoryPointer(cupy.cuda.UnownedMemory(0, 0, None, device_index), 0)
        address = torch.cuda.caching_allocator_alloc(size, device_index, stream)
        owner = _TorchBlock(address)
        memory = cupy.cuda.UnownedMemory(address, size, owner, device_index)
        return cupy.cuda.MemoryPointer(memory, 0)

    return allocate


@functools.cache
def _cuda_usable() -> tuple[bool, str]:
    return _backends.usable("cupy")


def _np(t: Tensor) -> Any:
    """A NumPy view of a CPU ``t``, or a CuPy view of a CUDA ``t`` (no copy;
    conjugate/negative bits resolved first)."""
    t = t.detach()
    if t.is_conj() or t.is_neg():  # (tested first: each resolve is a dispatched call)
        t = t.resolve_conj().resolve_neg()
    if t.is_cuda:
        import cupy

        return cupy.from_dlpack(t)
    return t.numpy()


def _t(a: Any) -> Tensor:
    """A tensor over ``a`` (no copy; ``a`` must be our own, writable array)."""
    if isinstance(a, np.ndarray):
        return torch.from_numpy(a if a.flags.writeable else a.copy())
    return torch.from_dlpack(a)  # a CuPy array


def _sum_to(g: Tensor, shape: torch.Size) -> Tensor:
    """Sum a gradient over the axes along which an input of ``shape`` was broadcast."""
    lead = g.ndim - len(shape)
    if lead:
        g = g.sum(dim=tuple(range(lead)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    if axes:
        g = g.sum(dim=axes, keepdim=True)
    return g.reshape(shape)


def _solve_shape(ab: Tensor, b: Tensor) -> list[int]:
    batch = torch.broadcast_shapes(ab.shape[:-2], b.shape[:-2] if b.ndim > 1 else ())
    return [*batch, *(b.shape[-2:] if b.ndim > 1 else b.shape)]


def _as_matrix(x: Tensor) -> Tensor:
    """Right-hand sides as (..., M, K): a vector b of shape (M,) becomes (M, 1)."""
    return x[:, None] if x.ndim == 1 else x


# --------------------------------------------------------------------------
# Operators and how they are called
# --------------------------------------------------------------------------

#: operator -> its Python body.
_BODIES: dict[Any, Callable] = {}


def _operator(name: str) -> Callable:
    """``torch.library.custom_op("banded_mnn::<name>")`` (no mutated
    arguments), remembering the body for :func:`_call`."""

    def define(body: Callable) -> Any:
        op = torch.library.custom_op(f"banded_mnn::{name}", body, mutates_args=())
        _BODIES[op] = body
        return op

    return define


def _dispatch_mode_active() -> bool:
    """Whether a Python dispatch mode (fake tensors, export, ...) is active
    (what ``torch.utils._python_dispatch._get_current_dispatch_mode`` tests)."""
    return torch._C._len_torch_dispatch_stack() > 0


_PLAIN_TYPES = (Tensor, torch.nn.Parameter)


def _no_transform() -> bool:
    """Not compiling, and no torch.func transform or dispatch mode active."""
    return not (
        torch.compiler.is_compiling()
        or torch._C._functorch.peek_interpreter_stack() is not None
        or _dispatch_mode_active()
    )


def _plain_eager(args: tuple) -> bool:
    """Whether a call with ``args`` happens in plain eager mode
    (:func:`_no_transform`), every tensor an ordinary CPU or CUDA tensor or
    parameter (no subclass)."""
    return _no_transform() and all(
        type(a) in _PLAIN_TYPES
        and a.device.type in ("cpu", "cuda")
        and not torch._C._functorch.is_functorch_wrapped_tensor(a)
        for a in args
        if isinstance(a, Tensor)
    )


def _call(op: Any, *args: Any) -> Any:
    """``op(*args)``; in plain eager mode its body directly.

    The operator's dispatch (schema handling, the Python kernel's wrappers)
    costs about 45 us per call, as much again as the bodies' own Python; the
    operator is needed only where its registrations are: its vmap rule under
    torch.func, its fake implementation under torch.compile and export."""
    if _plain_eager(args):
        return _BODIES[op](*args)
    return op(*args)


# --------------------------------------------------------------------------
# Operators: band routines
# --------------------------------------------------------------------------


@_operator("cholesky_banded")
def _cholesky(ab: Tensor, lower: bool, check: bool) -> tuple[Tensor, Tensor]:
    """Factor and status; with ``check``, raise for a failed system."""
    with _on_device(ab):
        # No finiteness pass (it would wait for the device): a NaN or inf
        # reaching a pivot is reported in info, as torch.linalg.cholesky_ex does.
        c, info = _api.cholesky_banded_ex(_np(ab), lower=lower, check_finite=False)
        if check:
            _api._raise_if_failed(info, "cholesky_banded")
        return _t(c), _t(info.astype(np.int32).reshape(ab.shape[:-2]))


@_cholesky.register_fake
def _(ab, lower, check):
    return torch.empty_like(ab), ab.new_empty(ab.shape[:-2], dtype=torch.int32)


@_operator("cholesky_banded_backward")
def _cholesky_backward(c: Tensor, grad_c: Tensor, lower: bool) -> Tensor:
    with _on_device(c):  # (CUDA tensors: the reverse sweep runs on the GPU)
        return _t(_vjp.cholesky_gradient(_np(c), _np(grad_c), lower))


@_cholesky_backward.register_fake
def _(c, grad_c, lower):
    return torch.empty_like(c)


def _cholesky_setup(ctx, inputs, output):
    ctx.set_materialize_grads(False)  # no zero tensors for the unused outputs
    ctx.lower = inputs[1]
    ctx.save_for_backward(output[0])


def _cholesky_bwd(ctx, grad_c, grad_info):
    (c,) = ctx.saved_tensors
    if grad_c is None:
        return None, None, None
    return _call(_cholesky_backward, c, grad_c, ctx.lower), None, None


_cholesky.register_autograd(_cholesky_bwd, setup_context=_cholesky_setup)


@_operator("cho_solve_banded")
def _cho_solve(cb: Tensor, b: Tensor, lower: bool) -> Tensor:
    with _on_device(cb):
        return _t(_api.cho_solve_banded((_np(cb), lower), _np(b), check_finite=False))


@_cho_solve.register_fake
def _(cb, b, lower):
    return cb.new_empty(_solve_shape(cb, b))


@_operator("band_gradient")
def _band_gradient(c: Tensor, lam: Tensor, x: Tensor, lower: bool, factored: bool) -> Tensor:
    """dL/d(band) for x = A^{-1} b: of the factor (``factored``) or of A."""
    with _on_device(c):
        c_, lam_, x_ = _np(c), _np(_as_matrix(lam)), _np(_as_matrix(x))
        if factored:
            g = _vjp.cho_solve_gradient(c_, lam_, x_, lower)
        else:
            g = _vjp.solve_gradient(lam_, x_, c_.shape[-2] - 1, lower)
        return _t(g)


@_band_gradient.register_fake
def _(c, lam, x, lower, factored):
    batch = torch.broadcast_shapes(c.shape[:-2], x.shape[:-2] if x.ndim > 1 else ())
    return c.new_empty([*batch, *c.shape[-2:]])


def _solve_setup(ctx, inputs, output):
    ctx.lower = inputs[2]
    ctx.shapes = (inputs[0].shape, inputs[1].shape)
    ctx.save_for_backward(inputs[0], output if isinstance(output, Tensor) else output[0])


def _matrices(grad_x: Tensor, x: Tensor, b_shape: torch.Size) -> tuple[Tensor, Tensor]:
    """With a vector b (M,), x and its gradient have shape batch + (M,): make
    them (batch..., M, 1)."""
    if len(b_shape) == 1:
        return grad_x.unsqueeze(-1), x.unsqueeze(-1)
    return grad_x, x


def _rhs_gradient(lam: Tensor, b_shape: torch.Size) -> Tensor:
    if len(b_shape) == 1:
        lam = lam.squeeze(-1)
    return _sum_to(lam, b_shape)


def _cho_solve_bwd(ctx, grad_x):
    cb, x = ctx.saved_tensors
    grad_x, x = _matrices(grad_x, x, ctx.shapes[1])
    lam = _call(_cho_solve, cb, grad_x, ctx.lower)
    g_cb = _call(_band_gradient, cb, lam, x, ctx.lower, True)
    return _sum_to(g_cb, ctx.shapes[0]), _rhs_gradient(lam, ctx.shapes[1]), None


_cho_solve.register_autograd(_cho_solve_bwd, setup_context=_solve_setup)


@_operator("solveh_banded")
def _solveh(ab: Tensor, b: Tensor, lower: bool, check: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Solution, factor (for the backward) and per-system status; with
    ``check``, raise for a failed system."""
    with _on_device(ab):
        c, info = _api.cholesky_banded_ex(_np(ab), lower=lower, check_finite=False)
        if check:
            _api._raise_if_failed(info, "solveh_banded")
        x = _api.cho_solve_banded((c, lower), _np(b), check_finite=False)
        return _t(x), _t(c), _t(info.astype(np.int32).reshape(ab.shape[:-2]))


@_solveh.register_fake
def _(ab, b, lower, check):
    return (
        ab.new_empty(_solve_shape(ab, b)),
        torch.empty_like(ab),
        ab.new_empty(ab.shape[:-2], dtype=torch.int32),
    )


def _solveh_setup(ctx, inputs, output):
    ctx.set_materialize_grads(False)
    ctx.lower = inputs[2]
    ctx.shapes = (inputs[0].shape, inputs[1].shape)
    ctx.save_for_backward(output[1], output[0])


def _solveh_bwd(ctx, grad_x, grad_c, grad_info):
    c, x = ctx.saved_tensors
    if grad_x is None:
        return None, None, None, None
    grad_x, x = _matrices(grad_x, x, ctx.shapes[1])
    lam = _call(_cho_solve, c, grad_x, ctx.lower)
    g_ab = _call(_band_gradient, c, lam, x, ctx.lower, False)
    return _sum_to(g_ab, ctx.shapes[0]), _rhs_gradient(lam, ctx.shapes[1]), None, None


_solveh.register_autograd(_solveh_bwd, setup_context=_solveh_setup)


# vmap: the operators are batched already.  A vmap rule moves the vmapped
# axis of every tensor argument to the front (expanding unbatched ones, without
# copying), so that it is one more leading batch axis and every output has it
# in front too.  A right-hand side given as a vector (M,) is made (M, 1) first,
# so that the new axis is not mistaken for its core.


def _vmap_rule(op, tensor_args: tuple[int, ...], vector_arg: int | None = None,
               flat_outputs: tuple[int, ...] = ()):  # fmt: skip
    """A vmap rule for ``op``; ``vector_arg`` may be a vector right-hand side,
    ``flat_outputs`` are outputs without the batch axis (flat workspaces, ints)."""

    def rule(info, in_dims, *args):
        size = info.batch_size
        args = list(args)
        vector = (
            vector_arg is not None
            and (args[vector_arg].ndim - (in_dims[vector_arg] is not None)) == 1
        )
        for k in tensor_args:
            t, d = args[k], in_dims[k]
            args[k] = t.movedim(d, 0) if d is not None else t.expand(size, *t.shape)
        if vector:
            args[vector_arg] = args[vector_arg].unsqueeze(-1)
        out = op(*args)
        single = isinstance(out, Tensor)
        outs = [out] if single else list(out)
        if vector:
            outs[0] = outs[0].squeeze(-1)
        dims = [None if k in flat_outputs else 0 for k in range(len(outs))]
        return (outs[0], dims[0]) if single else (tuple(outs), tuple(dims))

    return rule


class _NotDifferentiable(torch.autograd.Function):
    """First-order gradients computed with ``create_graph=True`` (or inside a
    torch.func transform), passed through unchanged but linked to the tensors
    they depend on, so that differentiating them again raises.  Our backward
    formulas are not differentiable; without the link, a gradient that does
    not depend on the upstream gradient (a loss linear in the output) would
    come back without a graph, and a second differentiation would silently
    leave its dependence on the inputs out."""

    generate_vmap_rule = True

    @staticmethod
    def forward(name, count, *tensors):
        return tuple(t.clone() for t in tensors[:count])

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.name = inputs[0]

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(
            f"banded_mnn.torch.{ctx.name}: a gradient computed with create_graph=True is being "
            "differentiated again; higher-order derivatives are not supported (the backward "
            "formulas are not differentiable)"
        )


def _first_order(name: str) -> Callable:
    """Decorate an autograd.Function's backward like ``once_differentiable``
    (it runs without recording a graph), and link its results to the tensors
    it depends on when a graph is being recorded (:class:`_NotDifferentiable`):
    to the saved tensors and the upstream gradients that require grad."""

    def decorate(derivative: Callable) -> Callable:
        @functools.wraps(derivative)
        def backward(ctx, *grads):
            with torch.no_grad():
                results = derivative(ctx, *grads)
            if not torch.is_grad_enabled():
                return results
            links = [
                t for t in (*ctx.saved_tensors, *grads) if isinstance(t, Tensor) and t.requires_grad
            ]
            single = not isinstance(results, tuple)
            results = [results] if single else list(results)
            present = [k for k, g in enumerate(results) if isinstance(g, Tensor)]
            if links and present:
                guarded = _NotDifferentiable.apply(
                    name, len(present), *(results[k] for k in present), *links
                )
                for k, g in zip(present, guarded, strict=True):
                    results[k] = g
            return results[0] if single else tuple(results)

        return backward

    return decorate


def _function(op, setup_context, backward, name: str, public: str) -> Callable:
    """Call ``op`` so that both torch.func's transforms and torch.compile work
    (``public``: the function's name in error messages).

    Eagerly: through a ``torch.autograd.Function`` with the operator's
    derivative (the functions given to ``register_autograd``), which
    torch.func accepts -- it defines ``setup_context``, functorch generates
    its vmap rule from the operators' own, and its backward is not
    differentiated again (as for the operators).  torch's generated autograd
    for custom operators has no ``setup_context``, so ``torch.func.grad``
    cannot go through the operator itself.  Under torch.compile: the operator
    itself, opaque to Dynamo, with its registered autograd (Dynamo's tracing
    of an autograd.Function instantiates it and warns, in torch 2.13)."""

    def derivative(ctx, *grads):
        return backward(ctx, *grads)

    function = type(name, (torch.autograd.Function,), {
        "generate_vmap_rule": True,
        "forward": staticmethod(lambda *args: _call(op, *args)),
        "setup_context": staticmethod(setup_context),
        "backward": staticmethod(_first_order(public)(derivative)),
    })  # fmt: skip

    def call(*args):
        if torch.compiler.is_compiling():
            return op(*args)
        return function.apply(*args)

    return call


_Cholesky = _function(_cholesky, _cholesky_setup, _cholesky_bwd, "_Cholesky", "cholesky_banded")
_ChoSolve = _function(_cho_solve, _solve_setup, _cho_solve_bwd, "_ChoSolve", "cho_solve_banded")
_Solveh = _function(_solveh, _solveh_setup, _solveh_bwd, "_Solveh", "solveh_banded")

torch.library.register_vmap(_cholesky, _vmap_rule(_cholesky, (0,)))
torch.library.register_vmap(_cholesky_backward, _vmap_rule(_cholesky_backward, (0, 1)))
torch.library.register_vmap(_cho_solve, _vmap_rule(_cho_solve, (0, 1), vector_arg=1))
torch.library.register_vmap(_solveh, _vmap_rule(_solveh, (0, 1), vector_arg=1))
torch.library.register_vmap(_band_gradient, _vmap_rule(_band_gradient, (0, 1, 2)))


# --------------------------------------------------------------------------
# Public band functions
# --------------------------------------------------------------------------


def cholesky_banded(ab: Tensor, lower: bool = False) -> Tensor:
    """Band Cholesky factor of a batch of SPD matrices (differentiable).

    Torch counterpart of :func:`banded_mnn.cholesky_banded`: ``ab`` is a
    float32/float64 CPU or CUDA tensor ``(..., u+1, M)`` in LAPACK band form (upper
    by default).  Raises :class:`~banded_mnn.NotPositiveDefiniteError` naming
    the first failed system (:func:`cholesky_banded_ex` returns the status
    instead).

    Examples
    --------
    >>> import torch
    >>> from banded_mnn.torch import cholesky_banded
    >>> ab = torch.tensor([[0.0, 1.0, 1.0], [4.0, 4.0, 4.0]], requires_grad=True)
    >>> c = cholesky_banded(ab)
    >>> c.sum().backward()
    """
    return _Cholesky(_check(ab, "ab", gpu=True), lower, True)[0]


def cholesky_banded_ex(ab: Tensor, lower: bool = False) -> tuple[Tensor, Tensor]:
    """:func:`cholesky_banded` with a per-system status instead of an exception.

    Parameters
    ----------
    ab : Tensor, shape (..., u+1, M), float32 or float64, CPU
        SPD matrices in LAPACK band form.
    lower : bool
        Lower (``True``) or upper (default) band form.

    Returns
    -------
    c : Tensor
        The factors (NaN for failed systems), differentiable in ``ab``.
    info : Tensor of int32, the batch shape
        0, or the order of the first leading minor that is not positive definite.

    Examples
    --------
    >>> import torch
    >>> from banded_mnn.torch import cholesky_banded_ex
    >>> c, info = cholesky_banded_ex(torch.tensor([[0.0, 1.0], [4.0, -4.0]]))
    >>> info.item()
    2
    """
    return _Cholesky(_check(ab, "ab", gpu=True), lower, False)


def cho_solve_banded(cb_and_lower: tuple[Tensor, bool], b: Tensor) -> Tensor:
    """Solve ``A x = b`` given the band Cholesky factor of ``A`` (differentiable
    in the factor and ``b``).

    Parameters
    ----------
    cb_and_lower : (Tensor, bool)
        The factor ``(..., u+1, M)`` from :func:`cholesky_banded` and its form.
    b : Tensor, shape (M,) or (..., M, K), same dtype as the factor
        Right-hand sides; batch axes broadcast.

    Returns
    -------
    x : Tensor
        Shape of ``b`` with the broadcast batch shape.

    Raises
    ------
    TypeError, NotImplementedError
        For a dtype mix, non-floating or non-CPU tensors (naming the argument).

    Examples
    --------
    >>> import torch
    >>> from banded_mnn.torch import cho_solve_banded, cholesky_banded
    >>> ab = torch.tensor([[0.0, 1.0, 1.0], [4.0, 4.0, 4.0]], dtype=torch.float64)
    >>> x = cho_solve_banded((cholesky_banded(ab), False), torch.ones(3, dtype=torch.float64))
    >>> x.shape
    torch.Size([3])
    """
    if not (isinstance(cb_and_lower, tuple | list) and len(cb_and_lower) == 2):
        raise ValueError(
            f"cb_and_lower must be a pair (cb, lower); got {type(cb_and_lower).__name__}"
        )
    cb, lower = cb_and_lower
    cb, b = _check(cb, "cb", gpu=True), _check(b, "b", cb.dtype, gpu=True)
    _same_device(("cb", cb), ("b", b))
    return _ChoSolve(cb, b, bool(lower))


def solveh_banded(ab: Tensor, b: Tensor, lower: bool = False) -> Tensor:
    """Solve ``A x = b`` for SPD band ``A`` (differentiable in ``ab`` and ``b``).

    Raises :class:`~banded_mnn.NotPositiveDefiniteError` for a system that
    is not positive definite (use :func:`solveh_banded_ex` to get the status
    instead).

    Examples
    --------
    >>> import torch
    >>> from banded_mnn.torch import solveh_banded
    >>> ab = torch.tensor([[0.0, 1.0, 1.0], [4.0, 4.0, 4.0]], dtype=torch.float64)
    >>> x = solveh_banded(ab, torch.tensor([5.0, 6.0, 5.0], dtype=torch.float64))
    >>> x.round(decimals=8).tolist()
    [1.0, 1.0, 1.0]
    """
    ab, b = _check(ab, "ab", gpu=True), _check(b, "b", ab.dtype, gpu=True)
    _same_device(("ab", ab), ("b", b))
    return _Solveh(ab, b, lower, True)[0]


def solveh_banded_ex(ab: Tensor, b: Tensor, lower: bool = False) -> tuple[Tensor, Tensor]:
    """:func:`solveh_banded` with a per-system status instead of an exception.

    Parameters
    ----------
    ab : Tensor, shape (..., u+1, M)
        SPD matrices in LAPACK band form (float32/float64, CPU).
    b : Tensor, shape (M,) or (..., M, K), same dtype
        Right-hand sides; batch axes broadcast.
    lower : bool
        Band form of ``ab``.

    Returns
    -------
    x : Tensor
        Solutions (NaN for failed systems), differentiable in ``ab`` and ``b``.
    info : Tensor of int32, the batch shape of ``ab``
        0, or the order of the first leading minor that is not positive definite.

    Examples
    --------
    >>> import torch
    >>> from banded_mnn.torch import solveh_banded_ex
    >>> ab = torch.tensor([[0.0, 1.0, 1.0], [4.0, 4.0, 4.0]], dtype=torch.float64)
    >>> x, info = solveh_banded_ex(ab, torch.ones(3, dtype=torch.float64))
    >>> int(info)
    0
    """
    ab, b = _check(ab, "ab", gpu=True), _check(b, "b", ab.dtype, gpu=True)
    _same_device(("ab", ab), ("b", b))
    x, _, info = _Solveh(ab, b, lower, False)
    return x, info
