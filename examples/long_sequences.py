"""Long sequences: time and memory of the MNN layer against the sequence
length, banded_mnn against a dense solve of the same normal equations.

Data: a synthetic sea-surface-temperature-like weekly series (annual and
semi-annual cycles, an El Nino-like 4-year cycle, a slow trend and noise),
four sequences at a time.  Model: the layer fits each sequence as the smooth
solution of ``u = y`` (equation rows on the data) with S-MNN's smoothness rows
(three orders, weekly steps) -- one forward pass and one VJP per length, i.e.
one training step's solver work.  The dense reference builds the same normal
matrix densely and calls ``numpy.linalg.solve``; it stops once the next
length would need more than 1.5 GB or 30 s.  Prints a table, saves the
log-log plot ``long_sequences.png`` and checks that banded_mnn grows linearly
(and the dense solve much faster).

Run ``python examples/long_sequences.py`` (``--quick``: up to 3,000 steps).
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from pathlib import Path

import numpy as np

from banded_mnn.mnn import ode_forward
from banded_mnn.mnn.baselines import dense_forward

BATCH = 4
ORDERS = 3


def series(steps: int, rng: np.random.Generator) -> np.ndarray:
    """``BATCH`` weekly SST-like anomalies of ``steps`` weeks (standardised)."""
    t = np.arange(steps)[None, :] / 52.18  # years
    phase = rng.uniform(0, 2 * np.pi, (BATCH, 3))
    y = (
        np.sin(2 * np.pi * t + phase[:, :1])
        + 0.3 * np.sin(4 * np.pi * t + phase[:, 1:2])
        + 0.4 * np.sin(2 * np.pi * t / 4.0 + phase[:, 2:3])
        + 0.02 * t
        + 0.2 * rng.standard_normal((BATCH, steps))
    )
    return (y - y.mean()) / y.std()


def inputs(steps: int, rng: np.random.Generator):
    y = series(steps, rng)
    coefficients = np.zeros((1, 1, 1, 1, ORDERS))
    coefficients[..., 0] = 1.0  # u = y
    step = np.full((1, steps - 1), 1.0 / 52.18)
    init = np.zeros((BATCH, 0, 1, 0))
    return coefficients, y[..., None], init, step


def measure(function, repeat: int = 3) -> tuple[float, float]:
    """(best of ``repeat`` times in seconds, peak bytes of NumPy allocations
    during one call above those alive before it).  The kernels' large arrays
    are NumPy's; Numba's small per-thread scratch is not traced."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    function()
    peak = tracemalloc.get_traced_memory()[1] - before
    tracemalloc.stop()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times), peak


def main(quick: bool = False, plot: bool = True, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    lengths = [100, 300, 1000, 3000] + ([] if quick else [10_000, 30_000, 100_000])
    ode_forward(*inputs(100, rng))  # compile (or load the cache)
    rows = []
    dense_ok = True
    dense_time = None
    for steps in lengths:
        args = inputs(steps, rng)

        def banded(args=args):
            u, system = ode_forward(*args, return_system=True)
            system.vjp(np.ones_like(u), u, *args)
            return u

        t_band, m_band = measure(banded)
        m = steps * ORDERS
        dense_bytes = 8.0 * BATCH * m * m * 3  # the matrix, its blocks' copy and LAPACK's
        if dense_ok and dense_bytes < 1.5e9 and (dense_time is None or dense_time * 27 < 30):
            full = (np.broadcast_to(args[0], (BATCH, steps, 1, 1, ORDERS)), args[1], args[2],
                    np.broadcast_to(args[3], (BATCH, steps - 1)))  # fmt: skip
            dense_time, m_dense = measure(lambda full=full: dense_forward(*full), repeat=1)
            error = float(np.abs(dense_forward(*full) - banded()).max())
        else:
            dense_ok, dense_time, m_dense, error = False, None, None, None
        rows.append((steps, t_band, m_band, dense_time, m_dense, error))
        dense = (f"{dense_time * 1e3:10.1f} ms {m_dense / 2**20:8.1f} MiB"
                 if dense_time is not None else "       (not run: too large/slow)")  # fmt: skip
        print(f"T = {steps:6d}: banded {t_band * 1e3:8.1f} ms {m_band / 2**20:7.1f} MiB | dense {dense}"
              + (f" | max |diff| {error:.1e}" if error is not None else ""))  # fmt: skip
    t = np.array([r[0] for r in rows], float)
    band_time = np.array([r[1] for r in rows])
    band_memory = np.array([r[2] for r in rows], float)
    # Growth over the three longest sequences (fixed costs fade there).
    slope = float(np.polyfit(np.log(t[-3:]), np.log(band_time[-3:]), 1)[0])
    memory_slope = float(np.polyfit(np.log(t[-3:]), np.log(band_memory[-3:]), 1)[0])
    dense_rows = [r for r in rows if r[3] is not None]
    dense_slope = (
        float(np.polyfit(np.log([r[0] for r in dense_rows][-3:]), np.log([r[3] for r in dense_rows][-3:]), 1)[0])
        if len(dense_rows) >= 3 else float("nan")
    )  # fmt: skip
    print(f"banded_mnn: time ~ T^{slope:.2f}, memory ~ T^{memory_slope:.2f} (three longest); "
          f"dense solve: time ~ T^{dense_slope:.2f}")  # fmt: skip
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
        axes[0].loglog(t, band_time, "o-", label="banded_mnn")
        axes[1].loglog(t, [max(r[2], 1) / 2**20 for r in rows], "o-", label="banded_mnn")
        if dense_rows:
            dt = [r[0] for r in dense_rows]
            axes[0].loglog(dt, [r[3] for r in dense_rows], "s-", label="dense")
            axes[1].loglog(dt, [max(r[4], 1) / 2**20 for r in dense_rows], "s-", label="dense")
        axes[0].loglog(t, band_time[0] * t / t[0], ":", color="gray", label="∝ T")
        axes[0].set_ylabel("forward + VJP time [s]")
        axes[1].set_ylabel("peak memory [MiB]")
        for ax in axes:
            ax.set_xlabel("sequence length T (weeks)")
            ax.legend()
        fig.suptitle(f"{BATCH} sequences, 3 orders: linear (banded) against cubic (dense)")
        fig.tight_layout()
        fig.savefig(Path("long_sequences.png"), dpi=120)
        plt.close(fig)
        print("saved long_sequences.png")
    agree = all(r[5] < 1e-6 for r in dense_rows)
    linear = 0.8 < memory_slope < 1.2 and (quick or 0.7 < slope < 1.4)
    passed = bool(linear and (quick or dense_slope > 2.0) and agree)
    print("PASSED" if passed else "FAILED")
    return {"rows": rows, "slope": slope, "memory_slope": memory_slope, "dense_slope": dense_slope,
            "passed": passed}  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="lengths up to 3,000 only")
    main(quick=parser.parse_args().quick)
