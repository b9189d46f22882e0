"""``ode_forward(..., algorithm="cyclic")`` on torch tensors: S-MNN's assembly as batched torch ops, block cyclic reduction.

The MNN layer (:mod:`banded_mnn.mnn`, on the CPU or the GPU) factors by the
band Cholesky.  For block cyclic reduction (about log2 T levels of parallel
block operations instead of a chain of T steps) the adapter composes the
layer from pieces:

1. the normal equations' blocks, assembled for every step at once with
   batched torch ops (:func:`.baselines.lhs_blocks`, :func:`.baselines.rhs_vector`:
   S-MNN's formulation, without its loop over the steps), differentiable by
   autograd;
2. block cyclic reduction of the blocks (:class:`CyclicSolve`), whose
   autograd formula is one more solve with the kept factor.

So the gradient with respect to every input is exact, and no step loops over
the time steps in Python.  Central smoothness adds the central rows' blocks
(:func:`central_blocks`), making the matrix block-pentadiagonal.  The
difference from the band path, stated in ``docs/adapters.md``: a normal
matrix that is singular to working precision is not detected (only a pivot
that is not positive is), as in S-MNN.

Everything here is device-agnostic torch code; the tests run it on CPU
tensors against the CPU layer.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .. import _api, _cyclic
from .._strided import namespace
from ..mnn import _layer
from . import baselines


def _flat(t: Tensor, shape: tuple[int, ...], core: tuple[int, ...]) -> Tensor:
    """``t`` broadcast to ``shape + core``, the batch flattened to one axis."""
    return t.expand(*shape, *core).reshape(math.prod(shape), *core)


def lhs_blocks(coefficients, steps, spec, lhs_batch, weights) -> list[Tensor]:
    """The normal matrix's blocks ``A[t+k, t]`` (flat batch, T-k, n, n): k < 2,
    or k < 3 with central smoothness."""
    T, E, D, O = spec.n_steps, spec.n_equations, spec.n_dims, spec.n_orders
    central = spec.enable_central_smoothness
    h = _flat(steps, lhs_batch, (max(T - 1, 0),))
    a0, a1 = baselines.lhs_blocks(
        _flat(coefficients, lhs_batch, (T, E, D, O)),
        h,
        spec.n_init_var_steps,
        spec.n_init_var_orders,
        weights,
        central=central,
    )
    if not central:
        return [a0, a1]
    d0, d1, a2 = central_blocks(h, T, D, O, weights[2] ** 2)
    return [a0 + d0, a1 + d1, a2]


def cyclic_factor(blocks: list[Tensor]) -> _cyclic.BlockFactor:
    """Block cyclic reduction of the block-tridiagonal (2 blocks) or
    -pentadiagonal (3) matrices ``blocks[k][..., t] = A[t+k, t]``."""
    from . import _ops

    with _ops._on_device(blocks[0]):
        return _cyclic.factor_blocks([_ops._np(block) for block in blocks])


class CyclicSolve(torch.autograd.Function):
    """``x = A^{-1} beta`` with ``factor`` (:func:`cyclic_factor` of the
    ``blocks``); ``beta`` (*B, T, n, 1) with the blocks' batch ``L``
    broadcasting to ``B``.  Gradients: ``lam = A^{-1} g`` (one more solve
    with the kept factor), ``dA = -lam x^T`` restricted to the blocks (an
    off-diagonal block gets both of its mirror images).  Without blocks (a
    frozen factor) only ``beta`` gets a gradient."""

    @staticmethod
    def forward(ctx: Any, beta: Tensor, factor: Any, *blocks: Tensor):
        from . import _ops

        with _ops._on_device(beta):
            _api._raise_if_failed(factor.info, "ode_forward")  # waits for the device
            x = _cyclic.solve_blocks(factor, _ops._np(beta))
            x = _ops._t(namespace(x).ascontiguousarray(x))
        ctx.factor = factor
        ctx.shapes = [block.shape for block in blocks]
        ctx.save_for_backward(x)
        return x

    @staticmethod
    def backward(ctx: Any, grad_x: Tensor):
        from . import _ops

        # First order only, like the other functions' backward formulas (the
        # solve for lam is not differentiable).
        return _ops._first_order("ode_forward")(CyclicSolve._gradients)(ctx, grad_x)

    @staticmethod
    def _gradients(ctx: Any, grad_x: Tensor):
        from . import _ops

        (x,) = ctx.saved_tensors
        with _ops._on_device(grad_x):
            lam = _cyclic.solve_blocks(ctx.factor, _ops._np(grad_x.contiguous()))
            lam = _ops._t(namespace(lam).ascontiguousarray(lam))
        grads = []
        for k, shape in enumerate(ctx.shapes):
            outer = lam[..., k:, :, :] @ x[..., : x.shape[-3] - k, :, :].transpose(-1, -2)
            if k:  # A[t+k, t] also stands for A[t, t+k] = its transpose
                outer = outer + x[..., k:, :, :] @ lam[..., : x.shape[-3] - k, :, :].transpose(
                    -1, -2
                )
            grads.append(_ops._sum_to(-outer, shape))
        return lam, None, *grads


def central_blocks(steps: Tensor, T: int, D: int, O: int, ws2: float):
    """The central rows' contributions ``(d0, d1, a2)`` to the diagonal, first
    and second sub-diagonal blocks (B, T - k, n, n), ``steps`` (B, T-1).

    Row ``s`` (``s <= T-3``, every ``d``): ``a u[s,d,O-2] + b u[s+1,d,O-1] -
    a u[s+2,d,O-2]``, ``a = H^(O-3)``, ``b = H^(O-2)``, ``H = h_s + h_(s+1)``
    (docs/mnn.md, rows 4); its outer product, weighted by ``ws2``, lands on
    the entries set below.
    """
    B, n = steps.shape[0], D * O
    if T < 3:  # no central rows
        return tuple(steps.new_zeros(B, max(T - k, 0), n, n) for k in range(3))
    lo = torch.arange(D, device=steps.device) * O + O - 2  # u[., d, O-2]
    hi = lo + 1  # u[., d, O-1]
    span = steps[:, :-1] + steps[:, 1:]  # H, (B, T-2)
    a, b = span ** (O - 3), span ** (O - 2)
    aa, bb, ab = (ws2 * v[..., None].expand(B, T - 2, D) for v in (a * a, b * b, a * b))

    def placed(k: int, entries: list[tuple[int, Tensor, Tensor, Tensor]]) -> Tensor:
        """Blocks (B, T-k, n, n) with ``values`` (B, T-2, D) added at rows
        ``rows[d]``, columns ``cols[d]`` of blocks ``first .. first + T-3``."""
        out = steps.new_zeros(B, T - k, n, n)
        batch = torch.arange(B, device=steps.device)[:, None, None]
        triple = torch.arange(T - 2, device=steps.device)[None, :, None]
        for first, rows, cols, values in entries:
            out = out.index_put((batch, triple + first, rows, cols), values, accumulate=True)
        return out

    d0 = placed(0, [(0, lo, lo, aa), (1, hi, hi, bb), (2, lo, lo, aa)])
    d1 = placed(1, [(0, hi, lo, ab), (1, lo, hi, -ab)])  # A[s+1, s] and A[s+2, s+1]
    a2 = placed(2, [(0, lo, lo, -aa)])  # A[s+2, s]
    return d0, d1, a2


def ode_forward(
    tensors: list[Tensor],
    spec: _layer.OdeSpec,
    lhs_batch: tuple[int, ...],
    batch: tuple[int, ...],
    weights: tuple[float, float, float],
    frozen: Any,
) -> tuple[Tensor, Any]:
    """``(u, factor)`` for canonical tensors (step axis not first), by block
    cyclic reduction; the factor is a :class:`banded_mnn._cyclic.BlockFactor`.
    ``frozen`` is a factor kept from an earlier call (then only the
    right-hand side is assembled, from detached coefficients, so that no
    gradient reaches coefficients and steps, as in S-MNN).
    """
    coefficients, rhs_equation, init_vars, steps = tensors
    T, E, D, O = spec.n_steps, spec.n_equations, spec.n_dims, spec.n_orders
    S, I = spec.n_init_var_steps, spec.n_init_var_orders
    n = D * O

    c_full = _flat(coefficients, batch, (T, E, D, O))
    beta = baselines.rhs_vector(
        c_full.detach() if frozen is not None else c_full,
        _flat(rhs_equation, batch, (T, E)),
        _flat(init_vars, batch, (S, D, I)),
        weights,
    ).reshape(*batch, T, n, 1)
    if frozen is not None:
        return CyclicSolve.apply(beta, frozen).reshape(*batch, T, D, O), frozen
    blocks = [
        block.reshape(*lhs_batch, *block.shape[1:])
        for block in lhs_blocks(coefficients, steps, spec, lhs_batch, weights)
    ]
    factor = cyclic_factor(blocks)
    x = CyclicSolve.apply(beta, factor, *blocks)
    return x.reshape(*batch, T, D, O), factor
