"""Benchmarks of the MNN layer, ``banded_mnn.mnn.ode_forward``, against its baselines.

Parametrised over the implementation and the two sizes of
:data:`banded_mnn.mnn.baselines.BENCH_CASES` (float64):

* ``"banded_mnn"``: :func:`banded_mnn.mnn.ode_forward` (the VJP from the
  :class:`~banded_mnn.mnn.OdeSystem` it returns);
* ``"per-step"``: S-MNN's algorithm in batched NumPy -- per-step block
  Cholesky / LDL^T and substitution (:mod:`banded_mnn.mnn.baselines`);
* ``"dense"``: the dense normal matrix and ``numpy.linalg.solve`` (forward
  only; skipped where its matrices exceed 4 GB).

``track_speedup_*`` report the per-step time over the banded_mnn time, both
measured in one process, block by block.  ``banded-mnn bench-mnn`` prints the
same comparison as a table.
"""

from __future__ import annotations

import time

import numpy as np

from banded_mnn.mnn import ode_forward
from banded_mnn.mnn.baselines import (
    BENCH_CASES,
    bench_inputs,
    blockwise_forward,
    blockwise_vjp,
    dense_forward,
)

IMPLEMENTATIONS = ("banded_mnn", "per-step", "dense")
CASE_NAMES = tuple(BENCH_CASES)


class _Case:
    def setup_case(self, case):
        batch, steps, equations, dims, orders, shared = BENCH_CASES[case]
        rng = np.random.default_rng(0)
        self.inputs = bench_inputs(batch, steps, equations, dims, orders, shared, rng)
        c = self.inputs[0]
        self.full = (np.broadcast_to(c, c.shape[:1] + (steps,) + c.shape[2:]),) + self.inputs[1:]
        self.grad = rng.standard_normal((batch, steps, dims, orders))
        self.dense_bytes = 8 * (steps * dims * orders) ** 2 * batch

    def forward(self, implementation):
        if implementation == "banded_mnn":
            return ode_forward(*self.inputs)
        if implementation == "per-step":
            return blockwise_forward(*self.full)
        return dense_forward(*self.full)

    def forward_vjp(self, implementation):
        if implementation == "banded_mnn":
            u, system = ode_forward(*self.inputs, return_system=True)
            return system.vjp(self.grad, u, *self.inputs)
        u, fac = blockwise_forward(*self.full)
        return blockwise_vjp(fac, u, self.grad, self.full[0], self.full[1])


class OdeForward(_Case):
    """Forward solve, and forward plus vector-Jacobian product."""

    params = (IMPLEMENTATIONS, CASE_NAMES)
    param_names = ("implementation", "case")
    timeout = 300

    def setup(self, implementation, case):
        self.setup_case(case)
        if implementation == "dense" and self.dense_bytes > 4e9:
            raise NotImplementedError("dense normal matrices would not fit in memory")
        self.forward(implementation)  # compile / warm up

    def time_forward(self, implementation, case):
        self.forward(implementation)

    def peakmem_forward(self, implementation, case):
        self.forward(implementation)

    def time_forward_vjp(self, implementation, case):
        if implementation == "dense":
            raise NotImplementedError("no VJP for the dense reference")
        self.forward_vjp(implementation)


class SpeedupVsPerStep(_Case):
    """Per-step (S-MNN algorithm) time / banded_mnn time, measured side by side."""

    params = (CASE_NAMES,)
    param_names = ("case",)
    timeout = 300
    repeat = 5

    def setup(self, case):
        self.setup_case(case)
        self.forward("banded_mnn")
        self.forward_vjp("banded_mnn")

    def _median(self, function, *args):
        function(*args)
        times = []
        for _ in range(self.repeat):
            start = time.perf_counter()
            function(*args)
            times.append(time.perf_counter() - start)
        return float(np.median(times))

    def track_speedup_forward(self, case):
        ours = self._median(self.forward, "banded_mnn")
        return self._median(self.forward, "per-step") / ours

    def track_speedup_forward_vjp(self, case):
        ours = self._median(self.forward_vjp, "banded_mnn")
        return self._median(self.forward_vjp, "per-step") / ours

    track_speedup_forward.unit = "x"
    track_speedup_forward_vjp.unit = "x"
