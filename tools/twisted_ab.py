"""Side by side: ``solveh_banded`` of one long system, twisted against sequential.

Run from the repository root::

    python tools/twisted_ab.py            # the speed-up table and the break-even sweep
    python tools/twisted_ab.py --quick    # the speed-up table only

For each shape it times, in one process on the same arrays (medians after a
warm-up call), banded_mnn's ``solveh_banded`` on one system as it chooses
(the twisted factorisation on two threads, when Numba has two), the same call
with the twisted path switched off (``TWISTED_MIN_WORK`` out of reach: the
one-system kernel on one thread), and SciPy's ``solveh_banded`` with BLAS
limited to one thread in-process.  The sweep then prints, for small systems,
the ratio sequential / twisted with the twisted path forced, from which
``TWISTED_MIN_WORK`` was set (docs/performance.md).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import scipy.linalg
from threadpoolctl import threadpool_limits

import banded_mnn as bm
from banded_mnn._backends import _numba_cpu
from banded_mnn.problems import random_spd_band


def median_seconds(call: Callable[[], object], repeat: int) -> float:
    call()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def sequential(call: Callable[[], object]) -> Callable[[], object]:
    """``call`` with the twisted path switched off."""

    def run():
        saved = _numba_cpu.TWISTED_MIN_WORK
        _numba_cpu.TWISTED_MIN_WORK = np.iinfo(np.int64).max
        try:
            return call()
        finally:
            _numba_cpu.TWISTED_MIN_WORK = saved

    return run


def solve_times(ab: np.ndarray, b: np.ndarray, repeat: int, force: bool) -> tuple[float, float]:
    """``(twisted or as chosen, sequential)`` seconds for ``solveh_banded(ab, b)``;
    with ``force`` the twisted path is taken whatever the size."""
    saved = _numba_cpu.TWISTED_MIN_WORK
    if force:
        _numba_cpu.TWISTED_MIN_WORK = 0
    try:
        twisted = median_seconds(lambda: bm.solveh_banded(ab, b), repeat)
    finally:
        _numba_cpu.TWISTED_MIN_WORK = saved
    return twisted, median_seconds(sequential(lambda: bm.solveh_banded(ab, b)), repeat)


def scipy_seconds(ab: np.ndarray, b: np.ndarray, repeat: int) -> float:
    with threadpool_limits(1):
        return median_seconds(lambda: scipy.linalg.solveh_banded(ab, b), repeat)


def speedups(repeat: int, rng: np.random.Generator) -> None:
    print(f"Numba threads: {_numba_cpu.numba.get_num_threads()}; SciPy: 1 BLAS thread")
    print(
        "| M | u | twisted [ms] | sequential [ms] | SciPy [ms] | twisted / SciPy | sequential / SciPy |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for m, u in [(100_000, 17), (1_000_000, 5), (18_432, 17), (4_096, 17)]:
        ab = random_spd_band((), m, u, rng=rng)
        b = rng.standard_normal(m)
        twisted, alone = solve_times(ab, b, repeat, force=False)
        scipy_time = scipy_seconds(ab, b, repeat)
        print(
            f"| {m} | {u} | {1e3 * twisted:.2f} | {1e3 * alone:.2f} | {1e3 * scipy_time:.2f} "
            f"| {scipy_time / twisted:.2f}x | {scipy_time / alone:.2f}x |"
        )


def break_even(repeat: int, rng: np.random.Generator) -> None:
    print("\nsequential / twisted, the twisted path forced (above 1: twisted is faster)")
    print("| u | M | twisted [us] | sequential [us] | ratio |")
    print("|---:|---:|---:|---:|---:|")
    for u in (1, 5, 17, 40):
        for m in (128, 256, 512, 1024, 2048):
            if m < 4 * u:
                continue
            ab = random_spd_band((), m, u, rng=rng)
            b = rng.standard_normal(m)
            twisted, alone = solve_times(ab, b, repeat, force=True)
            print(
                f"| {u} | {m} | {1e6 * twisted:.0f} | {1e6 * alone:.0f} | {alone / twisted:.2f} |"
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the speed-up table only")
    parser.add_argument("--repeat", type=int, default=9, help="timed calls per figure")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    speedups(args.repeat, rng)
    if not args.quick:
        break_even(4 * args.repeat, rng)


if __name__ == "__main__":
    main()
