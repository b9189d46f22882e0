"""Factor once, solve many: the shared left-hand side of S-MNN's Lorenz discovery.

In equation discovery every window shares one ODE (one left-hand side) while the
right-hand sides differ.  The band Cholesky factor is computed once with
``cholesky_banded`` and reused by ``cho_solve_banded`` for every batch of
right-hand sides; the result is checked against a fresh ``solveh_banded``.

Run ``python examples/factor_once_solve_many.py`` (``--quick`` for a small size).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import banded_mnn as bm
from banded_mnn.problems import mnn_normal_band


def main(quick: bool = False) -> dict[str, float]:
    steps, block, windows, batches = (20, 3, 64, 3) if quick else (50, 9, 1536, 10)
    rng = np.random.default_rng(0)
    ab = mnn_normal_band((), steps, block, rng=rng)  # one system: (2 * block, steps * block)
    m = ab.shape[-1]
    print(
        f"one shared system: M = {m}, u = {ab.shape[0] - 1}; {windows} right-hand sides per batch"
    )

    start = time.perf_counter()
    factor = bm.cholesky_banded(ab)
    worst = 0.0
    for _ in range(batches):
        rhs = rng.standard_normal((windows, m, 1))
        x = bm.cho_solve_banded((factor, False), rhs)  # the factor broadcasts over the batch
        worst = max(worst, float(np.abs(x - bm.solveh_banded(ab, rhs)).max()))
    elapsed = time.perf_counter() - start
    print(
        f"{batches} batches solved in {elapsed:.3f} s; max difference to solveh_banded {worst:.1e}"
    )
    return {"max_difference": worst, "seconds": elapsed, "passed": worst < 1e-10}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small problem, runs in seconds")
    main(parser.parse_args().quick)
