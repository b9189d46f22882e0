"""S-MNN's algorithm in plain PyTorch: the baseline the torch benchmarks use.

Our own code, written to perform the operations of S-MNN's solver (Chen et
al., ICLR 2025; ``smnn.py`` of IST-DASLab/ScalableMNN, CPU path, default
options) in the same order and layout: the normal equations assembled as
batched ``n x n`` blocks with torch ops under autograd, step axis first
(T, B, ...); a per-step block Cholesky in place (``solve_triangular`` with
``left=False``, Schur update ``-=`` of a ``matmul``, ``cholesky_ex``), turned
into block ``L D L^T`` form by one batched ``solve_triangular``; block
substitution with one in-place ``matmul`` update per step and the diagonal
solve as two batched ``solve_triangular`` over all steps; the backward one
more substitution with the saved factor and the block gradients ``-lam x^T``.
Side by side with a local copy of S-MNN's ``ode_forward`` (B=16, T=2048,
D=O=E=3, float64, forward + backward) it takes 0.96x its time (see
docs/performance.md).  Central smoothness is not implemented here (the
benchmarks do not use it).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..mnn._kernels import smoothness_tables


def blocks(coefficients, rhs_equation, init_vars, steps, weights=(1.0, 1.0, 1.0)):
    """``(a0, a1, beta)``: diagonal (B, T, n, n) and sub-diagonal (B, T-1, n, n)
    blocks and the right-hand side (B, T, n), for canonical, unbroadcast inputs."""
    a0, a1 = lhs_blocks(coefficients, steps, init_vars.shape[1], init_vars.shape[-1], weights)
    return a0, a1, rhs_vector(coefficients, rhs_equation, init_vars, weights)


def lhs_blocks(coefficients, steps, n_init_steps, n_init_orders, weights=(1.0, 1.0, 1.0)):
    """``(a0, a1)``: the normal matrix's diagonal (B, T, n, n) and sub-diagonal
    (B, T-1, n, n) blocks, from coefficients (B, T, E, D, O) and steps (B, T-1),
    with ``u[t, d, o]`` pinned for ``t < n_init_steps`` and ``o < n_init_orders``."""
    weq2, wiv2, ws2 = (w * w for w in weights)
    B, T, E, D, O = coefficients.shape
    n = D * O
    dtype, device = coefficients.dtype, coefficients.device
    c = coefficients.reshape(B, T, E, n)
    a0 = weq2 * c.transpose(-1, -2) @ c
    pinned = torch.zeros(T, n, dtype=dtype, device=device)
    pinned.view(T, D, O)[:n_init_steps, :, :n_init_orders] = 1.0
    a0 = a0 + wiv2 * torch.diag_embed(pinned)
    p0, p1, q = (
        torch.as_tensor(t, dtype=dtype, device=device) for t in smoothness_tables(O, False)
    )
    orders = torch.arange(O, device=device)
    hp = steps[..., None, None] ** (orders[:, None] + orders)  # (B, T-1, O, O)
    eye = torch.eye(D, dtype=dtype, device=device)

    def per_dim(block):  # (B, T-1, O, O) -> block-diagonal over dims (B, T-1, n, n)
        return torch.einsum("btij,de->btdiej", block, eye).reshape(B, T - 1, n, n)

    zero = torch.zeros(B, 1, n, n, dtype=dtype, device=device)
    a0 = (
        a0
        + torch.cat([per_dim(ws2 * hp * p0), zero], 1)
        + torch.cat([zero, per_dim(ws2 * hp * p1)], 1)
    )
    a1 = per_dim(ws2 * hp * q)
    return a0, a1


def rhs_vector(coefficients, rhs_equation, init_vars, weights=(1.0, 1.0, 1.0)):
    """The right-hand side ``beta`` (B, T, n) of the normal equations, from
    coefficients (B, T, E, D, O), rhs_equation (B, T, E) and init_vars (B, S, D, I)."""
    weq2, wiv2 = weights[0] ** 2, weights[1] ** 2
    B, T, E, D, O = coefficients.shape
    n = D * O
    c = coefficients.reshape(B, T, E, n)
    beta = weq2 * (c * rhs_equation[..., None]).sum(-2)
    S, I = init_vars.shape[1], init_vars.shape[-1]
    values = torch.zeros(B, T, D, O, dtype=coefficients.dtype, device=coefficients.device)
    values[:, :S, :, :I] = init_vars
    return beta + wiv2 * values.reshape(B, T, n)


def _factor_inplace(d0: Tensor, d1: Tensor) -> None:
    """Per-step block Cholesky, then LDL^T form, in place (S-MNN's default path).

    ``d0`` (T, B, n, n) and ``d1`` (T-1, B, n, n) are the diagonal and
    sub-diagonal blocks, step axis first.  Step by step: the sub-diagonal block
    times the previous diagonal factor's inverse transpose
    (``solve_triangular(..., left=False, out=...)``), the Schur update
    ``d0[t] -= d1[t-1] @ d1[t-1]^T`` and ``cholesky_ex`` of the updated block
    (no error checks) written over it.  Then one batched ``solve_triangular``
    over all steps turns the sub-diagonal blocks into those of the unit block
    factor of ``A = L D L^T`` (``d1[t] <- d1[t] C_t^{-1}``, ``C_t C_t^T = D_t``).
    """
    info = torch.empty(d0.shape[1:-2], dtype=torch.int32, device=d0.device)
    for t in range(d0.shape[0]):
        if t:
            torch.linalg.solve_triangular(
                d0[t - 1].transpose(-2, -1), d1[t - 1], upper=True, left=False, out=d1[t - 1]
            )
            d0[t] -= d1[t - 1] @ d1[t - 1].transpose(-2, -1)
        torch.linalg.cholesky_ex(d0[t], check_errors=False, out=(d0[t], info))
    torch.linalg.solve_triangular(d0[:-1], d1, upper=False, left=False, out=d1)


def _substitute_inplace(d0: Tensor, d1: Tensor, r: Tensor) -> None:
    """Solve ``L D L^T x = r`` in place with the factor of :func:`_factor_inplace`;
    ``r`` is (T, B, n, 1).  Block forward substitution (per step, ``r[t] -=
    d1[t-1] @ r[t-1]``), the block-diagonal solve as two batched
    ``solve_triangular`` over all steps, block backward substitution
    (``r[t] -= d1[t]^T @ r[t+1]``)."""
    T = d0.shape[0]
    for t in range(1, T):
        r[t] -= d1[t - 1] @ r[t - 1]
    torch.linalg.solve_triangular(d0, r, upper=False, out=r)
    torch.linalg.solve_triangular(d0.transpose(-2, -1), r, upper=True, out=r)
    for t in range(T - 2, -1, -1):
        r[t] -= d1[t].transpose(-2, -1) @ r[t + 1]


def block_solve(a0: Tensor, a1: Tensor, beta: Tensor) -> Tensor:
    """``x`` (B, T, n) solving the block-tridiagonal system with diagonal blocks
    ``a0`` (B, T, n, n), sub-diagonal blocks ``a1`` (B, T-1, n, n) and right-hand
    side ``beta`` (B, T, n) by S-MNN's per-step algorithm (inputs left unchanged)."""
    d0 = a0.transpose(0, 1).contiguous()
    d1 = a1.transpose(0, 1).contiguous()
    r = beta.transpose(0, 1)[..., None].contiguous()
    _factor_inplace(d0, d1)
    _substitute_inplace(d0, d1, r)
    return r[..., 0].transpose(0, 1)


class BlockSolve(torch.autograd.Function):
    """``x = A^{-1} beta`` for block-tridiagonal SPD ``A``, step axis first:
    ``d0`` (T, B, n, n), ``d1`` (T-1, B, n, n), ``r`` (T, B, n, 1).  As S-MNN's
    solver, the forward factors the blocks and solves in place (the inputs are
    overwritten: they are intermediates of the assembly, which autograd does
    not save); the backward is one more substitution with that factor, and the
    block gradients are ``-lam x^T`` (diagonal) and ``-(lam_{t+1} x_t^T +
    x_{t+1} lam_t^T)`` (sub-diagonal)."""

    @staticmethod
    def forward(ctx, d0: Tensor, d1: Tensor, r: Tensor) -> Tensor:
        _factor_inplace(d0, d1)
        _substitute_inplace(d0, d1, r)
        ctx.factor, ctx.x = (d0, d1), r
        return r.clone()

    @staticmethod
    def backward(ctx, grad_x: Tensor):
        minus_x = -ctx.x
        lam = grad_x.clone()
        _substitute_inplace(*ctx.factor, lam)
        d_d0 = lam * minus_x[..., None, :, 0]
        d_d1 = lam[1:] * minus_x[:-1, ..., None, :, 0] + minus_x[1:] * lam[:-1, ..., None, :, 0]
        return d_d0, d_d1, lam


def step_first_blocks(coefficients, rhs_equation, init_vars, steps, weights=(1.0, 1.0, 1.0)):
    """``(d0, d1, r)``: the normal equations' diagonal (T, B, n, n) and
    sub-diagonal (T-1, B, n, n) blocks and right-hand side (T, B, n, 1), step
    axis first, assembled by torch ops under autograd in S-MNN's order: the
    step axis moved to the front (views), ``c^T c`` and ``c^T rhs`` per step
    (copied to their own storage), the initial-value weights added in place at
    the pinned entries, the smoothness blocks of one dimension (``(w h^i)(w
    h^j)`` times constant tables) accumulated into a zero tensor and copied
    into each dimension's diagonal block in a loop."""
    weq2, wiv2, ws = weights[0] ** 2, weights[1] ** 2, weights[2]
    B, T, E, D, O = coefficients.shape
    S, I = init_vars.shape[1], init_vars.shape[-1]
    n = D * O
    dtype, device = coefficients.dtype, coefficients.device
    c = coefficients.permute(1, 0, 2, 3, 4).flatten(start_dim=-2)  # (T, B, E, n)
    ct = c.transpose(-2, -1) * weq2
    d0 = (ct @ c).clone(memory_format=torch.contiguous_format)
    r = (ct @ rhs_equation.permute(1, 0, 2)[..., None]).clone(memory_format=torch.contiguous_format)
    pinned = (
        torch.arange(D, device=device)[:, None] * O + torch.arange(I, device=device)
    ).flatten()
    d0[:S, :, pinned, pinned] += wiv2
    values = torch.zeros(S, B, D, O - I, dtype=dtype, device=device)
    r[:S, :, :, 0] += torch.cat([init_vars.permute(1, 0, 2, 3) * wiv2, values], -1).flatten(-2)
    p0, p1, q = (
        torch.as_tensor(t, dtype=dtype, device=device) for t in smoothness_tables(O, False)
    )
    e = steps.permute(1, 0)[..., None] ** torch.arange(O, device=device) * ws  # (T-1, B, O)
    e_outer = e[..., :, None] * e[..., None, :]
    s0 = torch.zeros(T, B, O, O, dtype=dtype, device=device)
    s0[:-1] += e_outer * p0
    s0[1:] += e_outer * p1
    s1 = e_outer * q
    d1 = torch.zeros(T - 1, B, n, n, dtype=dtype, device=device)
    for dim in range(D):
        block = slice(dim * O, (dim + 1) * O)
        d0[..., block, block] += s0
        d1[..., block, block] = s1
    return d0, d1, r


def ode_forward_blockwise(coefficients, rhs_equation, init_vars, steps, weights=(1.0, 1.0, 1.0)):
    """``u`` (B, T, D, O) by S-MNN's per-step algorithm; differentiable.

    Canonical, unbroadcast inputs: coefficients (B, T, E, D, O), rhs_equation
    (B, T, E), init_vars (B, S, D, I), steps (B, T-1).  Returns a step-first
    tensor moved back (a view), as S-MNN's ``ode_forward`` does."""
    B, T, E, D, O = coefficients.shape
    x = BlockSolve.apply(*step_first_blocks(coefficients, rhs_equation, init_vars, steps, weights))
    return x.reshape(T, B, D, O).permute(1, 0, 2, 3)


def bench_steps(case=(16, 2048, 3, 3, 3), seed: int = 0) -> dict:
    """One training step's solver work, three ways, for the benchmarks
    (``banded-mnn bench-torch`` and ``asv_benchmarks/bench_torch.py``):
    name -> function running forward + backward at ``case = (B, T, E, D, O)``
    (float64, one initial value, a fixed upstream gradient).

    * ``"banded_mnn.torch"``: :func:`banded_mnn.torch.ode_forward`;
    * ``"NumPy-level"``: the public calls it stands for (``ode_forward(...,
      return_system=True)`` and ``OdeSystem.vjp``; the latter validates its
      inputs again, about 20 us, which the adapter's backward skips: it calls
      the VJP on the inputs it validated in the forward);
    * ``"per-step torch"``: :func:`ode_forward_blockwise`.
    """
    import numpy as np

    from ..mnn import ode_forward as numpy_ode_forward
    from ..mnn.baselines import bench_inputs
    from . import ode_forward as torch_ode_forward

    batch, steps, equations, dims, orders = case
    rng = np.random.default_rng(seed)
    arrays = bench_inputs(batch, steps, equations, dims, orders, False, rng)
    grad = rng.standard_normal((batch, steps, dims, orders))
    tensors = [torch.from_numpy(a) for a in arrays]
    grad_t = torch.from_numpy(grad)

    def torch_step(function):
        leaves = [t.detach().requires_grad_() for t in tensors]
        function(*leaves).backward(grad_t)

    def numpy_level():
        u, system = numpy_ode_forward(*arrays, return_system=True)
        system.vjp(grad, u, *arrays)

    return {
        "banded_mnn.torch": lambda: torch_step(torch_ode_forward),
        "NumPy-level": numpy_level,
        "per-step torch": lambda: torch_step(ode_forward_blockwise),
    }
