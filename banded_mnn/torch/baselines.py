"""S-MNN's algorithm in plain PyTorch: the baseline the torch benchmarks use.

The normal equations are assembled as batched ``n x n`` blocks with torch ops
(differentiable by autograd), then solved by a per-step block Cholesky —
``cholesky_ex``, ``solve_triangular`` and ``matmul`` on the batch of blocks of
one step at a time — and block substitution; the backward pass is one more
substitution with the saved factor (and the block gradients ``-lam x^T``),
as S-MNN's solver does.  Central smoothness is not implemented here (the
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


def lhs_blocks(
    coefficients, steps, n_init_steps, n_init_orders, weights=(1.0, 1.0, 1.0), central=False
):
    """``(a0, a1)``: the normal matrix's diagonal (B, T, n, n) and sub-diagonal
    (B, T-1, n, n) blocks, from coefficients (B, T, E, D, O) and steps (B, T-1),
    with ``u[t, d, o]`` pinned for ``t < n_init_steps`` and ``o < n_init_orders``.
    With ``central`` the forward/backward smoothness rows stop one order short
    (the central rows themselves are added by the caller)."""
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
        torch.as_tensor(t, dtype=dtype, device=device) for t in smoothness_tables(O, central)
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


def block_cholesky(a0: Tensor, a1: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """Per-step block Cholesky of the block-tridiagonal matrix with diagonal
    blocks ``a0`` (B, T, n, n) and sub-diagonal blocks ``a1`` (B, T-1, n, n):
    lists of the factor's diagonal and sub-diagonal blocks, one per step."""
    l0, l1 = [], []
    for t in range(a0.shape[1]):
        d = a0[:, t]
        if t:
            m = torch.linalg.solve_triangular(l0[t - 1], a1[:, t - 1].transpose(-1, -2),
                                              upper=False).transpose(-1, -2)  # fmt: skip
            l1.append(m)
            d = d - m @ m.transpose(-1, -2)
        l0.append(torch.linalg.cholesky_ex(d)[0])
    return l0, l1


def block_solve(a0: Tensor, a1: Tensor, beta: Tensor) -> Tensor:
    """``x`` (B, T, n) solving the block-tridiagonal system by S-MNN's per-step algorithm."""
    return _substitute(*block_cholesky(a0, a1), beta)


def _substitute(l0: list[Tensor], l1: list[Tensor], rhs: Tensor) -> Tensor:
    """Solve with the block Cholesky factor, one step at a time."""
    T = rhs.shape[1]
    y = []
    for t in range(T):
        r = rhs[:, t, :, None]
        if t:
            r = r - l1[t - 1] @ y[t - 1]
        y.append(torch.linalg.solve_triangular(l0[t], r, upper=False))
    x = [None] * T
    for t in range(T - 1, -1, -1):
        r = y[t]
        if t + 1 < T:
            r = r - l1[t].transpose(-1, -2) @ x[t + 1]
        x[t] = torch.linalg.solve_triangular(l0[t].transpose(-1, -2), r, upper=True)
    return torch.stack(x, 1)[..., 0]


class BlockCholeskySolve(torch.autograd.Function):
    """``x = A^{-1} beta`` for block-tridiagonal SPD ``A`` given as blocks."""

    @staticmethod
    def forward(ctx, a0: Tensor, a1: Tensor, beta: Tensor) -> Tensor:
        l0, l1 = block_cholesky(a0, a1)
        x = _substitute(l0, l1, beta)
        ctx.factor = (l0, l1)
        ctx.save_for_backward(x)
        return x

    @staticmethod
    def backward(ctx, grad_x: Tensor):
        (x,) = ctx.saved_tensors
        lam = _substitute(*ctx.factor, grad_x)
        d_a0 = -lam[..., :, None] * x[..., None, :]
        d_a1 = -(
            lam[:, 1:, :, None] * x[:, :-1, None, :] + x[:, 1:, :, None] * lam[:, :-1, None, :]
        )
        return d_a0, d_a1, lam


def ode_forward_blockwise(coefficients, rhs_equation, init_vars, steps, weights=(1.0, 1.0, 1.0)):
    """``u`` (B, T, D, O) by S-MNN's per-step algorithm; differentiable."""
    a0, a1, beta = blocks(coefficients, rhs_equation, init_vars, steps, weights)
    x = BlockCholeskySolve.apply(a0, a1, beta)
    return x.reshape(coefficients.shape[:2] + coefficients.shape[-2:])


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
