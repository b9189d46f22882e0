"""Benchmarks of ``solveh_block_banded`` and of the MNN layer with the
sequential and the parallel-in-time (block cyclic reduction) algorithm.

Block-tridiagonal SPD systems with blocks of n = 9, float64, one right-hand
side, at the batch sizes and lengths where the choice matters (few, long
sequences against many); and ``banded_mnn.mnn.ode_forward`` forward + VJP at
E = D = O = 3.  ``track_*`` give cyclic time / sequential time measured side
by side (alternating calls, median of 5).  ``banded-mnn bench-blocks`` prints
the same comparison as tables (``docs/performance.md``).
"""

from __future__ import annotations

import time

import numpy as np

import banded_mnn as bm
from banded_mnn.mnn import ode_forward
from banded_mnn.mnn.baselines import bench_inputs

ALGORITHMS = ("sequential", "cyclic")
#: (B, T) of the block systems.
CASES = ("1x10000", "4x10000", "16x1000", "64x1000")


def _case(case: str) -> tuple[int, int]:
    batch, steps = case.split("x")
    return int(batch), int(steps)


def _ratio(cyclic, sequential, repeat: int = 5) -> float:
    times = {"cyclic": [], "sequential": []}
    for _ in range(repeat):
        for name, function in (("cyclic", cyclic), ("sequential", sequential)):
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return float(np.median(times["cyclic"]) / np.median(times["sequential"]))


class SolvehBlockBanded:
    params = (ALGORITHMS, CASES)
    param_names = ("algorithm", "case")
    timeout = 300

    def setup(self, algorithm, case):
        batch, steps = _case(case)
        rng = np.random.default_rng(0)
        n = 9
        a0 = rng.uniform(-1, 1, (batch, steps, n, n))
        self.blocks = (a0 + np.swapaxes(a0, -1, -2) + 4 * n * np.eye(n),
                       rng.uniform(-1, 1, (batch, steps - 1, n, n)))  # fmt: skip
        self.b = rng.standard_normal((batch, steps, n))
        self.solve(algorithm)  # warm up (compilation)

    def solve(self, algorithm):
        return bm.solveh_block_banded(self.blocks, self.b, check_finite=False, algorithm=algorithm)

    def time_solve(self, algorithm, case):
        self.solve(algorithm)

    def peakmem_solve(self, algorithm, case):
        self.solve(algorithm)

    def track_cyclic_over_sequential(self, algorithm, case):
        if algorithm != "cyclic":
            raise NotImplementedError("one ratio per case (shown under 'cyclic')")
        return _ratio(lambda: self.solve("cyclic"), lambda: self.solve("sequential"))

    track_cyclic_over_sequential.unit = "x"


class OdeForwardAlgorithm:
    params = (ALGORITHMS, ("1x10000", "4x10000", "16x2048"))
    param_names = ("algorithm", "case")
    timeout = 300

    def setup(self, algorithm, case):
        batch, steps = _case(case)
        rng = np.random.default_rng(0)
        self.arrays = bench_inputs(batch, steps, 3, 3, 3, False, rng)
        self.grad = rng.standard_normal((batch, steps, 3, 3))
        self.step(algorithm)

    def step(self, algorithm):
        u, system = ode_forward(*self.arrays, return_system=True, algorithm=algorithm)
        system.vjp(self.grad, u, *self.arrays)

    def time_forward_vjp(self, algorithm, case):
        self.step(algorithm)

    def peakmem_forward_vjp(self, algorithm, case):
        self.step(algorithm)

    def track_cyclic_over_sequential(self, algorithm, case):
        if algorithm != "cyclic":
            raise NotImplementedError("one ratio per case (shown under 'cyclic')")
        return _ratio(lambda: self.step("cyclic"), lambda: self.step("sequential"))

    track_cyclic_over_sequential.unit = "x"
