"""KdV at reduced scale: next-frame prediction with a small convolutional
network that emits, for every grid point, a fifth-order ODE in time solved by
``banded_mnn.torch.ode_forward`` (S-MNN's KdV experiment, on the CPU).

Data: trajectories of u_t + u u_x + u_xxx = 0 on periodic domains of length
L ~ U[115.2, 140.8] with 256 points, from random sums of ten sine waves
(amplitudes U[-0.5, 0.5), wavenumbers 1 or 2 periods per domain, random
phases), as in the LPSDA "easy" set; generated here by a pseudo-spectral
exponential time-differencing scheme (ETDRK4: the linear term exactly in
Fourier space, the nonlinear term to fourth order), frames every 0.2 time
units.

Model: 10 input frames -> a 1-D convolutional network over the grid (circular
padding) -> per grid point, the coefficients (five orders) and right-hand side
of an ODE at each of 10 output steps, and the first three derivatives at the
start; the value at the start is the last input frame.  The MNN layer solves
the 256 ODEs of every sample; the prediction is the next 10 frames (the first
one overlaps the input).  Loss: L1.  Evaluation: an autoregressive rollout
from the first 10 frames of unseen trajectories, NMSE against the true
frames (normalised by the true energy), and the same for the persistence
baseline (the last frame repeated).  Saves ``kdv.png``.

Run ``python examples/kdv.py`` (``--quick``: seconds).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from banded_mnn.torch import ode_forward

POINTS = 256
FRAME_DT = 0.2
WINDOW = 10
ORDERS = 5


# --------------------------------------------------------------------------
# Data: ETDRK4 pseudo-spectral solver, batched over trajectories
# --------------------------------------------------------------------------


def generate(trajectories: int, frames: int, rng: np.random.Generator, dt: float = 0.005):
    """``(frames, trajectories, POINTS)`` KdV solutions, frames FRAME_DT apart
    (after a burn-in of 10 time units, so that the waves have steepened)."""
    length = rng.uniform(115.2, 140.8, (trajectories, 1))
    x = np.arange(POINTS) / POINTS * length
    amplitude = rng.uniform(-0.5, 0.5, (trajectories, 10, 1))
    periods = rng.integers(1, 3, (trajectories, 10, 1))
    phase = rng.uniform(0, 2 * np.pi, (trajectories, 10, 1))
    u = np.sum(amplitude * np.sin(2 * np.pi * periods * x[:, None, :] / length[:, None] + phase), 1)
    k = 2 * np.pi * np.fft.rfftfreq(POINTS, d=1.0 / POINTS) / length  # (trajectories, 129)
    lin = 1j * k**3  # u_t = -u_xxx  ->  (ik)^3 = -i k^3, negated
    # ETDRK4 coefficients by contour integrals (Kassam & Trefethen, 2005).
    e, e2 = np.exp(dt * lin), np.exp(dt * lin / 2)
    roots = np.exp(1j * np.pi * (np.arange(1, 33) - 0.5) / 32)
    lr = dt * lin[..., None] + roots
    q = dt * np.mean((np.exp(lr / 2) - 1) / lr, -1).real
    f1 = dt * np.mean((-4 - lr + np.exp(lr) * (4 - 3 * lr + lr**2)) / lr**3, -1).real
    f2 = dt * np.mean((2 + lr + np.exp(lr) * (-2 + lr)) / lr**3, -1).real
    f3 = dt * np.mean((-4 - 3 * lr - lr**2 + np.exp(lr) * (4 - lr)) / lr**3, -1).real
    g = -0.5j * k  # N(u) = -(u^2 / 2)_x

    def nonlinear(v):
        return g * np.fft.rfft(np.fft.irfft(v, n=POINTS) ** 2)

    v = np.fft.rfft(u)
    per_frame = int(round(FRAME_DT / dt))
    burn_in = int(round(10.0 / dt))
    out = np.empty((frames, trajectories, POINTS))
    for step in range(burn_in + frames * per_frame):
        if step >= burn_in and (step - burn_in) % per_frame == 0:
            out[(step - burn_in) // per_frame] = np.fft.irfft(v, n=POINTS)
        nv = nonlinear(v)
        a = e2 * v + q * nv
        na = nonlinear(a)
        b = e2 * v + q * na
        nb = nonlinear(b)
        c = e2 * a + q * (2 * nb - nv)
        nc = nonlinear(c)
        v = e * v + nv * f1 + 2 * (na + nb) * f2 + nc * f3
    return out


# --------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------


class MechanisticKdV(torch.nn.Module):
    def __init__(self, width: int = 48):
        super().__init__()

        def conv(i, o, k=5):
            return torch.nn.Conv1d(i, o, k, padding=k // 2, padding_mode="circular",
                                   dtype=torch.float64)  # fmt: skip

        self.body = torch.nn.Sequential(
            conv(WINDOW, width), torch.nn.GELU(), conv(width, width), torch.nn.GELU(),
            conv(width, width), torch.nn.GELU(),
        )  # fmt: skip
        self.coefficients = conv(width, WINDOW * ORDERS)
        self.rhs = conv(width, WINDOW)
        self.derivatives = conv(width, ORDERS - 2)
        self.step_logit = torch.nn.Parameter(torch.tensor(-2.0, dtype=torch.float64))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 10, 256) input frames -> (B, 10, 256) predicted frames."""
        batch = frames.shape[0]
        h = self.body(frames)
        coefficients = self.coefficients(h).reshape(batch, WINDOW, ORDERS, POINTS)
        # Keep the highest order's coefficient away from zero (a fifth-order ODE).
        coefficients = torch.cat([coefficients[:, :, :-1], 1 + coefficients[:, :, -1:]], 2)
        coefficients = coefficients.permute(0, 3, 1, 2)[
            :, :, :, None, None, :
        ]  # (B, 256, 10, 1, 1, 5)
        rhs = self.rhs(h).permute(0, 2, 1)[..., None]  # (B, 256, 10, 1)
        init = torch.cat([frames[:, -1:, :], self.derivatives(h)], 1)  # (B, 4, 256)
        init = init.permute(0, 2, 1)[:, :, None, None, :]  # (B, 256, 1, 1, 4)
        steps = (0.01 + torch.sigmoid(self.step_logit)).expand(1, 1, WINDOW - 1)
        u = ode_forward(coefficients, rhs, init, steps)  # (B, 256, 10, 1, 5)
        return u[..., 0, 0].permute(0, 2, 1)


def windows(data: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (frames t..t+9) and targets (frames t+9..t+18) of every trajectory."""
    frames = data.shape[0]
    starts = range(frames - 2 * WINDOW + 2)
    x = np.stack([data[s : s + WINDOW] for s in starts], 0)  # (S, 10, N, 256)
    y = np.stack([data[s + WINDOW - 1 : s + 2 * WINDOW - 1] for s in starts], 0)
    flat = lambda a: torch.from_numpy(a.transpose(0, 2, 1, 3).reshape(-1, WINDOW, POINTS))  # noqa: E731
    return flat(x), flat(y)


def nmse(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Mean over trajectories and frames of sum_x (pred - true)^2 / sum_x true^2."""
    return float(np.mean(np.sum((prediction - truth) ** 2, -1) / np.sum(truth**2, -1)))


def rollout(model, data: np.ndarray, horizon: int) -> np.ndarray:
    """Predict frames WINDOW .. WINDOW + horizon - 1 from the first WINDOW frames."""
    frames = torch.from_numpy(data[:WINDOW].transpose(1, 0, 2))  # (N, 10, 256)
    out = []
    with torch.no_grad():
        while sum(o.shape[1] for o in out) < horizon:
            pred = model(frames)[:, 1:]  # the first output frame repeats the input's last
            out.append(pred)
            frames = torch.cat([frames, pred], 1)[:, -WINDOW:]
    return torch.cat(out, 1)[:, :horizon].numpy().transpose(1, 0, 2)


def main(quick: bool = False, plot: bool = True, seed: int = 0) -> dict:
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    start = time.perf_counter()
    n_train, n_test, frames = (4, 2, 40) if quick else (48, 8, 140)
    train = generate(n_train, frames, rng)
    test = generate(n_test, WINDOW + 40, rng)
    print(f"generated {n_train} + {n_test} trajectories in {time.perf_counter() - start:.1f} s")
    x, y = windows(train)
    model = MechanisticKdV()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    iterations, batch = (40, 8) if quick else (3000, 16)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, iterations)
    losses = []
    bar = tqdm(range(iterations), desc="KdV", mininterval=2.0)
    for _ in bar:
        index = torch.from_numpy(rng.integers(0, len(x), batch))
        loss = torch.mean(torch.abs(model(x[index]) - y[index]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", refresh=False)
    train_seconds = time.perf_counter() - start
    horizon = 40
    prediction = rollout(model, test, horizon)
    truth = test[WINDOW : WINDOW + horizon]
    error = nmse(prediction, truth)
    persistence = nmse(np.broadcast_to(test[WINDOW - 1], truth.shape), truth)
    first = nmse(prediction[:9], truth[:9])
    print(f"L1 loss {np.mean(losses[:10]):.4f} -> {np.mean(losses[-50:]):.4f}; "
          f"{iterations} steps in {train_seconds:.0f} s")  # fmt: skip
    print(f"rollout NMSE over {horizon} frames ({horizon * FRAME_DT:g} time units): {error:.4f} "
          f"(first 9 frames {first:.4f}); persistence baseline {persistence:.4f}")  # fmt: skip
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(10, 3.6), sharey=True)
        extent = (0, POINTS, horizon * FRAME_DT, 0)
        for ax, image, title in zip(axes, (truth[:, 0], prediction[:, 0],
                                           prediction[:, 0] - truth[:, 0]),
                                    ("true", "MNN rollout", "error"), strict=True):  # fmt: skip
            ax.imshow(image, aspect="auto", extent=extent, cmap="RdBu_r", vmin=-1.5, vmax=1.5)
            ax.set_title(title)
            ax.set_xlabel("grid point")
        axes[0].set_ylabel("time after the input window")
        fig.tight_layout()
        fig.savefig(Path("kdv.png"), dpi=110)
        plt.close(fig)
        print("saved kdv.png")
    passed = bool(np.mean(losses[-10:]) < np.mean(losses[:10]) and np.isfinite(error)
                  and (quick or error < persistence))  # fmt: skip
    print("PASSED" if passed else "FAILED")
    return {"nmse": error, "nmse_first_9": first, "persistence": persistence,
            "seconds": train_seconds, "passed": passed}  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny run")
    main(quick=parser.parse_args().quick)
