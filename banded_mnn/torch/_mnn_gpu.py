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
   side per distinct matrix), whose autograd formula is the band VJP.

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

import torch
from torch import Tensor

from ..mnn import _layer
from . import baselines


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
    frozen: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """``(u, factor)`` for canonical tensors (step axis not first).

    ``solveh(ab, b)`` is the adapter's factor-and-solve (returning the solution
    and the factor), ``frozen`` a factor kept from an earlier call (then only
    the right-hand side is assembled, from detached coefficients, so that no
    gradient reaches coefficients and steps, as in S-MNN).
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
    if frozen is not None:
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
