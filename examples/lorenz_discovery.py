"""Lorenz equation discovery with an MNN layer (S-MNN's Lorenz experiment, on
the CPU, in PyTorch).

Data: the Lorenz system (sigma = 10, rho = 28, beta = 8/3) from x0 = (1, 1, 1),
10,000 points at dt = 0.01 (``scipy.integrate.solve_ivp``), cut into windows
of 50 steps.  Model: each coordinate is a one-dimensional ODE u' = rhs, of
three orders, whose right-hand side is a degree-2 polynomial library of the
state, Theta(x) = (1, x, y, z, x^2, xy, xz, y^2, yz, z^2), times learnable
coefficients xi (10 x 3).  All 1,536 ODEs of a batch of 512 windows share one
left-hand side, factored once and frozen (``frozen_lhs_cache_version``); only
substitutions run per step.  Loss: the mean squared error of u against the
window, u(0) pinned to its start.  Sparsity by iterative thresholding (coefficients below 0.1 in magnitude are set to zero and frozen)
between training cycles (L-BFGS in each: the loss is quadratic in xi).  Prints the discovered equations and each true
coefficient's relative error; saves true-against-learned trajectories as
``lorenz_discovery.png``.

Run ``python examples/lorenz_discovery.py`` (``--quick``: a few seconds).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import scipy.integrate
import torch

from banded_mnn.torch import clear_frozen_lhs_cache, ode_forward

SIGMA, RHO, BETA = 10.0, 28.0, 8.0 / 3.0
DT = 0.01
WINDOW = 50
TERMS = ["1", "x", "y", "z", "x^2", "xy", "xz", "y^2", "yz", "z^2"]
#: The true coefficients: (term, coordinate) -> value.
TRUE = {
    ("x", 0): -SIGMA, ("y", 0): SIGMA,
    ("x", 1): RHO, ("y", 1): -1.0, ("xz", 1): -1.0,
    ("z", 2): -BETA, ("xy", 2): 1.0,
}  # fmt: skip


def lorenz(_, s):
    x, y, z = s
    return [SIGMA * (y - x), x * (RHO - z) - y, x * y - BETA * z]


def trajectory(points: int) -> np.ndarray:
    t = DT * np.arange(points)
    sol = scipy.integrate.solve_ivp(lorenz, (0, t[-1]), [1.0, 1.0, 1.0], t_eval=t,
                                    rtol=1e-10, atol=1e-10)  # fmt: skip
    return sol.y.T  # (points, 3)


def library(x: torch.Tensor) -> torch.Tensor:
    """Theta(x): (..., 3) -> (..., 10)."""
    a, b, c = x.unbind(-1)
    one = torch.ones_like(a)
    return torch.stack([one, a, b, c, a * a, a * b, a * c, b * b, b * c, c * c], -1)


def fit_coefficients(
    xi, mask, theta, target, init, coefficients, steps, iterations
) -> torch.Tensor:
    """Minimise the windows' squared error over the active coefficients (L-BFGS)."""
    optimizer = torch.optim.LBFGS([xi], max_iter=iterations, history_size=20,
                                  tolerance_grad=1e-12, tolerance_change=1e-14,
                                  line_search_fn="strong_wolfe")  # fmt: skip

    def closure():
        optimizer.zero_grad()
        rhs = theta @ (xi * mask)  # (batch, 50, 3)
        u = ode_forward(
            coefficients,
            rhs.permute(0, 2, 1)[..., None],  # (batch, 3, 50, 1): one ODE per coordinate
            init,
            steps,
            frozen_lhs_cache_version=1,  # one shared left-hand side, factored once
        )  # (batch, 3, 50, 1, 3)
        loss = torch.mean((u[..., 0, 0] - target) ** 2)
        loss.backward()
        return loss

    return optimizer.step(closure)


def main(quick: bool = False, plot: bool = True, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    data = torch.from_numpy(trajectory(2_000 if quick else 10_000))
    windows = data.unfold(0, WINDOW, 1).transpose(1, 2)  # (N - 49, 50, 3)
    xi = torch.nn.Parameter(0.01 * torch.randn(10, 3, dtype=torch.float64))
    mask = torch.ones(10, 3, dtype=torch.float64)
    coefficients = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64).reshape(1, 1, 1, 1, 3)
    steps = torch.full((1, 1, WINDOW - 1), DT, dtype=torch.float64)
    # The loss is quadratic in xi (u is linear in the right-hand side), so a
    # quasi-Newton method converges in few steps where Adam would need many
    # thousands; the library's columns are scaled to unit size first.
    scale = library(data).abs().mean(0)[:, None]  # (10, 1)
    cycles, iterations, batch = (2, 300, 256) if quick else (4, 300, 1024)
    clear_frozen_lhs_cache()
    start = time.perf_counter()
    for cycle in range(cycles):
        x = windows[torch.from_numpy(rng.choice(len(windows), batch, replace=False))]
        theta = library(x) / scale.T  # (batch, 50, 10)
        target = x.permute(0, 2, 1)  # (batch, 3, 50)
        init = x[:, :1, :].permute(0, 2, 1)[..., None, None]  # u(0) = x(0): (batch, 3, 1, 1, 1)
        loss = fit_coefficients(xi, mask, theta, target, init, coefficients, steps, iterations)
        with torch.no_grad():  # sequential thresholding, on the unscaled coefficients
            mask *= ((xi / scale).abs() >= 0.1).to(mask.dtype)
            xi *= mask
        print(f"cycle {cycle + 1}/{cycles}: loss {loss.item():.3e}, "
              f"{int(mask.sum())} active terms, {time.perf_counter() - start:.1f} s")  # fmt: skip
    clear_frozen_lhs_cache()
    elapsed = time.perf_counter() - start
    learned = (xi * mask / scale).detach().numpy()
    for k, name in enumerate("xyz"):
        terms = [f"{learned[i, k]:+.4f} {TERMS[i]}" for i in range(10) if learned[i, k] != 0]
        print(f"d{name}/dt = {' '.join(terms) or '0'}")
    errors = {
        key: abs(learned[TERMS.index(key[0]), key[1]] - v) / abs(v) for key, v in TRUE.items()
    }
    true_mask = np.zeros((10, 3), bool)
    for term, k in TRUE:
        true_mask[TERMS.index(term), k] = True
    spurious = int(np.count_nonzero(learned[~true_mask]))
    mean_error = float(np.mean(list(errors.values())))
    print("| term | equation | true | learned | relative error |")
    print("|---|---|---:|---:|---:|")
    for (term, k), v in TRUE.items():
        got = learned[TERMS.index(term), k]
        print(f"| {term} | d{'xyz'[k]}/dt | {v:.4f} | {got:.4f} | {100 * errors[(term, k)]:.2f}% |")
    print(f"mean relative error {100 * mean_error:.2f}%, spurious terms {spurious}, "
          f"{elapsed:.1f} s")  # fmt: skip
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        def learned_rhs(_, s):
            return (library(torch.tensor(s)).numpy() @ learned).tolist()

        t = DT * np.arange(300)
        truth = trajectory(300)
        fit = scipy.integrate.solve_ivp(learned_rhs, (0, t[-1]), [1.0, 1.0, 1.0], t_eval=t,
                                        rtol=1e-9, atol=1e-9).y.T  # fmt: skip
        fig, axes = plt.subplots(3, 1, figsize=(7, 6), sharex=True)
        for k, ax in enumerate(axes):
            ax.plot(t, truth[:, k], label="true")
            ax.plot(t, fit[:, k], "--", label="learned equations")
            ax.set_ylabel("xyz"[k])
        axes[0].legend()
        axes[-1].set_xlabel("t")
        fig.suptitle("Lorenz: true trajectory and the discovered equations' trajectory")
        fig.tight_layout()
        fig.savefig(Path("lorenz_discovery.png"), dpi=120)
        plt.close(fig)
        print("saved lorenz_discovery.png")
    target = 0.05 if quick else 0.01
    passed = bool(mean_error <= target and spurious == 0)
    print("PASSED" if passed else "FAILED")
    return {"mean_relative_error": mean_error, "spurious": spurious, "errors": errors,
            "seconds": elapsed, "passed": passed}  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    main(quick=parser.parse_args().quick)
