"""ODE validation, no learning: ``ode_forward`` against closed-form solutions
and ``scipy.integrate.solve_ivp``.

Five linear ODEs from S-MNN's standalone experiments (constants of ODEBench):
an RC circuit, population growth, the harmonic oscillator, the damped harmonic
oscillator and a third-order linear system, each written as one equation
``sum_o c_o u^(o) = 0`` of order up to 3 with the initial values pinned.  For
several step sizes ``h`` the layer's solution on [0, 10] (default and central
smoothness) is compared with the exact solution, and so is RK45 at its default
tolerance.  Prints a table of maximum errors, saves a log-log plot of error
against step size (``ode_validation.png``) and checks that the error falls
with ``h``.

Run ``python examples/ode_validation.py`` (``--quick``: two step sizes).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import scipy.integrate

from banded_mnn.mnn import ode_forward

T_END = 10.0


def _third_order_exact(t):
    # u''' + u'' + u' = 0 (x0' = x1, x1' = x2, x2' = -x1 - x2), u = (0, -1, 1) at 0.
    w = np.sqrt(3) / 2
    m = np.array([[1, 1, 0], [0, -0.5, w], [0, 0.25 - w * w, -w]])
    a, b, c = np.linalg.solve(m, [0.0, -1.0, 1.0])
    return a + np.exp(-t / 2) * (b * np.cos(w * t) + c * np.sin(w * t))


def _damped(t, k=4.5, c=0.43, u0=0.12, v0=0.043):
    a = -c / 2
    w = np.sqrt(k - a * a)
    return np.exp(a * t) * (u0 * np.cos(w * t) + (v0 - a * u0) / w * np.sin(w * t))


#: name -> (coefficients c_0..c_{O-1} of sum_o c_o u^(o) = 0, initial values, exact u(t))
SYSTEMS = {
    "RC circuit": ([0.7, 1.0, 0.0], [10.0], lambda t: 10.0 * np.exp(-0.7 * t)),
    "population growth": ([-0.23, 1.0, 0.0], [4.78], lambda t: 4.78 * np.exp(0.23 * t)),
    "harmonic oscillator": (
        [2.1, 0.0, 1.0],
        [0.4, -0.03],
        lambda t: 0.4 * np.cos(np.sqrt(2.1) * t) - 0.03 / np.sqrt(2.1) * np.sin(np.sqrt(2.1) * t),
    ),
    "damped oscillator": ([4.5, 0.43, 1.0], [0.12, 0.043], _damped),
    "third-order linear": ([0.0, 1.0, 1.0, 1.0], [0.0, -1.0, 1.0], _third_order_exact),
}


def solve_mnn(coefficients, init, h, central):
    steps = int(round(T_END / h))
    c = np.asarray(coefficients, dtype=float).reshape(1, 1, 1, -1)
    u = ode_forward(c, np.zeros((1, 1)), np.asarray(init, float).reshape(1, 1, -1),
                    np.full(steps, h), enable_central_smoothness=central)  # fmt: skip
    return h * np.arange(steps + 1), u[:, 0, 0]


def solve_rk45(coefficients, init, t):
    order = len(coefficients) - 1
    while coefficients[order] == 0:
        order -= 1
    c = np.asarray(coefficients[: order + 1], float)

    def rhs(_, y):  # y = (u, u', ..., u^(order-1))
        top = -np.dot(c[:order], y) / c[order]
        return np.append(y[1:], top)

    y0 = np.zeros(order)
    y0[: len(init)] = init[:order]
    return scipy.integrate.solve_ivp(rhs, (0, T_END), y0, t_eval=t).y[0]


def main(quick: bool = False, plot: bool = True) -> dict:
    step_sizes = (0.04, 0.02) if quick else (0.08, 0.04, 0.02, 0.01, 0.005)
    errors = {}
    rows = []
    start = time.perf_counter()
    for name, (coefficients, init, exact) in SYSTEMS.items():
        for central in (False, True):
            errs = []
            for h in step_sizes:
                t, u = solve_mnn(coefficients, init, h, central)
                scale = np.abs(exact(t)).max()
                errs.append(float(np.abs(u - exact(t)).max() / scale))
            errors[(name, central)] = errs
        t, _ = solve_mnn(coefficients, init, step_sizes[-1], False)
        rk = solve_rk45(coefficients, init, t)
        rk_err = float(np.abs(rk - exact(t)).max() / np.abs(exact(t)).max())
        rows.append((name, errors[(name, False)][-1], errors[(name, True)][-1], rk_err))
    elapsed = time.perf_counter() - start
    h_last = step_sizes[-1]
    print(f"relative max error on [0, {T_END:g}] at h = {h_last} (RK45: default tolerances)")
    print("| system | ode_forward default | ode_forward central | RK45 |")
    print("|---|---:|---:|---:|")
    for name, default, central, rk in rows:
        print(f"| {name} | {default:.1e} | {central:.1e} | {rk:.1e} |")
    print(f"{len(SYSTEMS) * 2 * len(step_sizes)} solves in {elapsed:.2f} s")
    # Convergence: the error must fall as h falls (down to h = 0.01), and every
    # system and variant must get below the tolerance at some step size.
    resolved = [i for i, h in enumerate(step_sizes) if h >= 0.01]
    converges = all(np.all(np.diff(np.take(e, resolved)) < 0) for e in errors.values())
    accurate = all(min(e) < (5e-2 if quick else 2e-3) for e in errors.values())
    for (name, central), errs in errors.items():
        rises = [h for h, a, b in zip(step_sizes[1:], errs, errs[1:], strict=False) if b > a]
        if rises:
            print(f"note: {name} ({'central' if central else 'default'}) error rises at h = "
                  f"{rises}: its smoothness rows are scaled by h^k up to h^{len(SYSTEMS[name][0]) - 1}, "
                  "so the normal equations lose that row's information in float64")  # fmt: skip
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4.5))
        for (name, central), errs in errors.items():
            ax.loglog(step_sizes, errs, "o-" if not central else "s--",
                      label=f"{name}{' (central)' if central else ''}")  # fmt: skip
        ax.set_xticks(step_sizes, [f"{h:g}" for h in step_sizes])
        ax.minorticks_off()
        ax.set_xlabel("step size h")
        ax.set_ylabel("relative max error")
        ax.set_title("ode_forward against closed-form solutions")
        ax.legend(fontsize=6, loc="lower right", ncol=2)
        fig.tight_layout()
        out = Path("ode_validation.png")
        fig.savefig(out, dpi=120)
        plt.close(fig)
        print(f"saved {out}")
    passed = bool(converges and accurate)
    print("PASSED" if passed else "FAILED")
    return {"errors": errors, "rk45": {r[0]: r[3] for r in rows}, "passed": passed}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two step sizes only")
    main(quick=parser.parse_args().quick)
