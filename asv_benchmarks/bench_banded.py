"""Benchmarks of the three routines, against a SciPy loop, and the headline speed-up.

``time_*`` and ``peakmem_*`` are parametrised over (backend, (B, M, u), dtype)
-- see :mod:`.common` -- with one right-hand side, ``b`` of shape ``(B, M, 1)``:

* ``CholeskyBanded``: factorisation (``cholesky_banded``);
* ``ChoSolveBanded``: solve with a factor computed in ``setup``
  (``cho_solve_banded``);
* ``SolvehBanded``: fused factor-and-solve (``solveh_banded``).

``SpeedupVsScipy.track_speedup_solveh`` is the number the project reports:
median SciPy-loop time (BLAS limited to one thread in-process, SciPy's best
configuration) over median banded_mnn time for ``solveh_banded``, float64,
measured side by side in one process; ``track_percent_of_floor_solveh`` is a
streaming copy of the operands over banded_mnn's time, in %.
"""

from __future__ import annotations

import time

import numpy as np

from .common import CASES, BackendBenchmark, get_backend, make_problem


class CholeskyBanded(BackendBenchmark):
    """``cholesky_banded(ab)``: the factor of every system."""

    def call(self):
        return self.backend.cholesky_banded(self.ab)

    def time_cholesky_banded(self, backend, case, dtype):
        self.run()

    def peakmem_cholesky_banded(self, backend, case, dtype):
        self.run()


class ChoSolveBanded(BackendBenchmark):
    """``cho_solve_banded((cb, False), b)`` with the factor ``cb`` precomputed."""

    def prepare(self):
        self.cb = self.backend.cholesky_banded(self.ab)
        self.synchronize()

    def call(self):
        return self.backend.cho_solve_banded(self.cb, self.b)

    def time_cho_solve_banded(self, backend, case, dtype):
        self.run()

    def peakmem_cho_solve_banded(self, backend, case, dtype):
        self.run()


class SolvehBanded(BackendBenchmark):
    """``solveh_banded(ab, b)``: factor and solve in one call."""

    def call(self):
        return self.backend.solveh_banded(self.ab, self.b)

    def time_solveh_banded(self, backend, case, dtype):
        self.run()

    def peakmem_solveh_banded(self, backend, case, dtype):
        self.run()


class SpeedupVsScipy:
    """banded_mnn (CPU backend) against the SciPy loop, in the same process.

    ``setup`` makes the float64 problem, warms both up and checks that they
    agree.  The benchmark then times each in a block -- one untimed call, then
    ``_REPEATS`` timed calls -- and returns the ratio of the medians, as
    ``banded-mnn demo`` does.  The two are not alternated call by call: after
    each LAPACK call OpenBLAS's worker threads keep spinning for a while and
    would take the cores from Numba's threads, charging the baseline's
    threading to banded_mnn (on a 2-core machine that halves the ratio).

    banded_mnn uses Numba's default thread count (all cores); SciPy runs with
    BLAS limited to one thread in-process, its best configuration (see
    :mod:`.common`).
    """

    params = (CASES,)
    param_names = ("(B, M, u)",)
    unit = "x"
    timeout = 300

    _OURS = "numba"
    _BASELINE = "scipy"
    _REPEATS = 5

    def setup(self, case):
        self.ours = get_backend(self._OURS)
        self.baseline = get_backend(self._BASELINE)
        ab, b = make_problem(case, "float64")
        self.ab_ours, self.b_ours = self.ours.asarray(ab), self.ours.asarray(b)
        self.ab_base, self.b_base = self.baseline.asarray(ab), self.baseline.asarray(b)
        x = np.asarray(self._solve(self.ours, self.ab_ours, self.b_ours))
        reference = np.asarray(self._solve(self.baseline, self.ab_base, self.b_base))
        error = float(np.abs(x - reference).max() / np.abs(reference).max())
        if not error < 1e-8:
            raise RuntimeError(
                f"banded_mnn and SciPy disagree on {case}: max relative difference {error:.1e}"
            )

    @staticmethod
    def _solve(backend, ab, b):
        x = backend.solveh_banded(ab, b)
        backend.synchronize()
        return x

    @staticmethod
    def _timed(backend, ab, b):
        start = time.perf_counter()
        SpeedupVsScipy._solve(backend, ab, b)
        return time.perf_counter() - start

    def _median_time(self, backend, ab, b):
        self._solve(backend, ab, b)  # untimed: settle the thread pools
        return float(np.median([self._timed(backend, ab, b) for _ in range(self._REPEATS)]))

    def track_speedup_solveh(self, case):
        t_ours = self._median_time(self.ours, self.ab_ours, self.b_ours)
        t_base = self._median_time(self.baseline, self.ab_base, self.b_base)
        return t_base / t_ours

    def track_percent_of_floor_solveh(self, case):
        """A streaming copy of the band and the right-hand sides (the floor)
        over banded_mnn's ``solveh_banded`` time, in %, measured side by side."""
        from banded_mnn._cli import copy_floor

        t_ours = self._median_time(self.ours, self.ab_ours, self.b_ours)
        floor = copy_floor(np.asarray(self.ab_base), np.asarray(self.b_base), repeat=self._REPEATS)
        return 100 * floor / t_ours

    track_percent_of_floor_solveh.unit = "%"
