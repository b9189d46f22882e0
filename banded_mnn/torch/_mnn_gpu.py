"""``ode_forward`` for CUDA tensors: S-MNN's assembly as batched torch ops, banded_mnn's solve.

The MNN layer's own kernels (:mod:`banded_mnn.mnn`) are CPU code.  On a CUDA
device the adapter composes the layer from pieces that run there:

1. the normal equations' blocks, assembled for every step at once with
   batched torch ops (:func:`.baselines.lhs_blocks`, :func:`.baselines.rhs_vector`:
   S-MNN's formulation, without its loop over the steps), differentiable by
   autograd;
2. the blocks gathered into LAPACK's lower band form, with the layer's
   bandwidth ``n + O - 1``;
3. banded_mnn's GPU ``solveh_banded`` operator (factor and solve, one left-hand
   side per distinct matrix), whose autograd formula is the band VJP -- or,
   with ``algorithm="cyclic"``, block cyclic reduction of the blocks
   (:class:`CyclicSolve`, parallel in time: about log2 T levels instead of a
   chain of T steps).

So the gradient with respect to every input is exact, as on the CPU, and no
step of the computation loops over the time steps in Python.  Differences
from the CPU layer, stated in ``docs/adapters.md``: central smoothness is not
available, and a normal matrix that is singular to working precision is not
detected (only a pivot that is not positive is), as in S-MNN.

Everything here is device-agnostic torch code; the tests run it on CPU
tensors against the CPU layer.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .. import _cyclic
from .._errors import NotPositiveDefiniteError
from .._strided import namespace
from ..mnn import _layer
from . import baselines


def cyclic_factor(a0: Tensor, a1: Tensor) -> _cyclic.BlockFactor:
    """Block cyclic reduction of the block-tridiagonal matrices with diagonal
    blocks ``a0`` (*L, T, n, n) and sub-diagonal blocks ``a1`` (*L, T-1, n, n)."""
    from . import _ops

    with _ops._on_device(a0):
        return _cyclic.factor_blocks([_ops._np(a0), _ops._np(a1)])


class CyclicSolve(torch.autograd.Function):
    """``x = A^{-1} beta`` with ``factor`` (:func:`cyclic_factor` of ``a0``,
    ``a1``); ``beta`` (*B, T, n, 1) with the blocks' batch ``L`` broadcasting
    to ``B``.  Gradients: ``lam = A^{-1} g`` (one more solve with the kept
    factor), ``dA = -lam x^T`` restricted to the blocks (a sub-diagonal block
    gets both of its mirror images).  With ``a0 = a1 = None`` (a frozen factor)
    only ``beta`` gets a gradient."""

    @staticmethod
    def forward(ctx: Any, a0: Tensor | None, a1: Tensor | None, beta: Tensor, factor: Any):
        from . import _ops

        with _ops._on_device(beta):
            info = factor.info
            if bool(info.any()):  # the answer is needed to raise: waits for the device
                raise NotPositiveDefiniteError(info.get() if hasattr(info, "get") else info,
                                               "ode_forward")  # fmt: skip
            x = _cyclic.solve_blocks(factor, _ops._np(beta))
            x = _ops._t(namespace(x).ascontiguousarray(x))
        ctx.factor = factor
        ctx.shapes = None if a0 is None else (a0.shape, a1.shape)
        ctx.save_for_backward(x)
        return x

    @staticmethod
    def backward(ctx: Any, grad_x: Tensor):
        from . import _ops

        (x,) = ctx.saved_tensors
        with _ops._on_device(grad_x):
            lam = _cyclic.solve_blocks(ctx.factor, _ops._np(grad_x.contiguous()))
            lam = _ops._t(namespace(lam).ascontiguousarray(lam))
        if ctx.shapes is None:
            return None, None, lam, None
        t = torch.transpose
        d_a0 = -(lam @ t(x, -1, -2))
        d_a1 = -(lam[..., 1:, :, :] @ t(x[..., :-1, :, :], -1, -2)
                 + x[..., 1:, :, :] @ t(lam[..., :-1, :, :], -1, -2))  # fmt: skip
        return _ops._sum_to(d_a0, ctx.shapes[0]), _ops._sum_to(d_a1, ctx.shapes[1]), lam, None


def band_from_blocks(a0: Tensor, a1: Tensor, bandwidth: int) -> Tensor:
    """Lower band ``ab`` (L, bandwidth + 1, T n) of the block-tridiagonal matrix
    with diagonal blocks ``a0`` (L, T, n, n) and sub-diagonal blocks ``a1``
    (L, T-1, n, n): ``ab[r, t n + q] = A[t n + q + r, t n + q]``."""
    L, T, n, _ = a0.shape
    # Rows t n + p' of block column t, p' < 3 n: a0 (p' < n), a1 (n <= p' < 2 n), zero.
    column = torch.cat(
        [a0, torch.cat([a1, a0.new_zeros(L, 1, n, n)], 1), a0.new_zeros(L, T, n, n)], dim=2
    )
    r = torch.arange(bandwidth + 1, device=a0.device)[:, None]
    q = torch.arange(n, device=a0.device)[None, :]
    band = column[:, :, r + q, q]  # (L, T, bandwidth + 1, n)
    return band.permute(0, 2, 1, 3).reshape(L, bandwidth + 1, T * n)


def ode_forward(
    tensors: list[Tensor],
    spec: _layer.OdeSpec,
    lhs_batch: tuple[int, ...],
    batch: tuple[int, ...],
    weights: tuple[float, float, float],
    solveh,
    frozen: Any,
    cyclic: bool = False,
) -> tuple[Tensor, Any]:
    """``(u, factor)`` for canonical tensors (step axis not first).

    ``solveh(ab, b, factor)`` is the adapter's factor-and-solve (returning the
    solution and the band factor), ``frozen`` a factor kept from an earlier
    call (then only the right-hand side is assembled, from detached
    coefficients, so that no gradient reaches coefficients and steps, as in
    S-MNN).  With ``cyclic`` the blocks are solved by block cyclic reduction
    and the factor is a :class:`banded_mnn._cyclic.BlockFactor`.
    """
    coefficients, rhs_equation, init_vars, steps = tensors
    T, E, D, O = spec.n_steps, spec.n_equations, spec.n_dims, spec.n_orders
    S, I = spec.n_init_var_steps, spec.n_init_var_orders
    n = D * O

    def flat(t: Tensor, shape: tuple[int, ...], core: tuple[int, ...]) -> Tensor:
        return t.expand(*shape, *core).reshape(math.prod(shape), *core)

    c_full = flat(coefficients, batch, (T, E, D, O))
    beta = baselines.rhs_vector(
        c_full.detach() if frozen is not None else c_full,
        flat(rhs_equation, batch, (T, E)),
        flat(init_vars, batch, (S, D, I)),
        weights,
    ).reshape(*batch, T * n, 1)
    if cyclic:
        beta = beta.reshape(*batch, T, n, 1)
        if frozen is not None:
            x, factor = CyclicSolve.apply(None, None, beta, frozen), frozen
        else:
            a0, a1 = baselines.lhs_blocks(
                flat(coefficients, lhs_batch, (T, E, D, O)),
                flat(steps, lhs_batch, (max(T - 1, 0),)),
                S,
                I,
                weights,
            )
            a0 = a0.reshape(*lhs_batch, T, n, n)
            a1 = a1.reshape(*lhs_batch, max(T - 1, 0), n, n)
            factor = cyclic_factor(a0, a1)
            x = CyclicSolve.apply(a0, a1, beta, factor)
    elif frozen is not None:
        factor = frozen
        x = solveh(None, beta, factor)
    else:
        a0, a1 = baselines.lhs_blocks(
            flat(coefficients, lhs_batch, (T, E, D, O)),
            flat(steps, lhs_batch, (max(T - 1, 0),)),
            S,
            I,
            weights,
        )
        ab = band_from_blocks(a0, a1, spec.bandwidth).reshape(*lhs_batch, spec.bandwidth + 1, -1)
        x, factor = solveh(ab, beta, None)
    return x.reshape(*batch, T, D, O), factor
