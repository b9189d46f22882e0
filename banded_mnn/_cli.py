"""The ``banded-mnn`` command: ``info`` and ``demo``."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import platform
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np

from . import _backends
from ._api import cho_solve_banded, cholesky_banded, solveh_banded
from .problems import mnn_normal_band


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _backend_status(name: str) -> str:
    """'usable' after a tiny solve checked against the exact answer, else why not."""
    try:
        ab = np.array([[0.0, 1.0, 1.0], [4.0, 4.0, 4.0]])
        x = solveh_banded(ab, np.array([5.0, 6.0, 5.0]), backend=name)
        if not np.allclose(x, 1.0):
            return f"NOT usable: wrong result {x}"
        return "usable"
    except Exception as exc:  # report, do not crash: this is a diagnostic
        return f"NOT usable: {type(exc).__name__}: {exc}"


def info(out: Callable[[str], None] = print) -> None:
    """Print versions, threads and which backends are usable (and why not)."""
    from . import __version__

    out(f"banded_mnn {__version__}")
    out(f"python     {platform.python_version()} ({sys.executable})")
    for dist in ("numpy", "numba", "llvmlite", "scipy"):
        out(f"{dist:<10} {_version(dist)}")
    out(f"machine    {platform.machine()}, {platform.processor() or 'unknown processor'}")
    for name in _backends.available():
        status = _backend_status(name)
        out(f"backend {name!r} (CPU): {status}")
        if name == "numba" and status == "usable":
            import numba

            out(f"  threads: {numba.get_num_threads()} (set NUMBA_NUM_THREADS to change)")
    for name, module in (("numba-cuda", "numba_cuda"), ("cupy", "cupy")):
        present = importlib.util.find_spec(module) is not None
        out(
            f"backend {name!r} (GPU): NOT usable: GPU backends are not part of this version "
            f"({module} is {'installed' if present else 'not installed'})"
        )


def _median_time(function: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def demo(
    batch: int = 256,
    steps: int = 256,
    block: int = 9,
    dtype: str = "float64",
    repeat: int = 3,
    seed: int = 0,
    out: Callable[[str], None] = print,
) -> dict[str, float]:
    """Solve MNN-sized batched band systems, check against SciPy, time both.

    Returns the measured numbers (seconds and errors) for programmatic use.
    """
    import scipy.linalg

    rng = np.random.default_rng(seed)
    ab = mnn_normal_band((batch,), steps, block, dtype=np.dtype(dtype), rng=rng)
    b = rng.standard_normal((batch, steps * block, 1)).astype(dtype)
    m, u = ab.shape[-1], ab.shape[-2] - 1
    out(
        f"problem: {batch} block-tridiagonal SPD systems, {steps} steps x block {block} "
        f"-> band M = {m}, u = {u}, {dtype}, 1 right-hand side"
    )

    def ours() -> np.ndarray:
        return solveh_banded(ab, b)

    def scipy_loop() -> np.ndarray:
        return np.stack([scipy.linalg.solveh_banded(ab[i], b[i]) for i in range(batch)])

    start = time.perf_counter()
    x = ours()  # first call compiles (or loads Numba's cache)
    first = time.perf_counter() - start
    reference = scipy_loop()
    t_ours = _median_time(ours, repeat)
    t_scipy = _median_time(scipy_loop, repeat)

    def rel_err(a: np.ndarray, ref: np.ndarray) -> float:
        return float(np.abs(a - ref).max() / np.abs(ref).max())

    err_solve = rel_err(x, reference)
    c = cholesky_banded(ab)
    err_factor = rel_err(c, np.stack([scipy.linalg.cholesky_banded(ab[i]) for i in range(batch)]))
    err_cho = rel_err(cho_solve_banded((c, False), b), reference)
    out(f"first call (compile or cache load): {first:.2f} s")
    out(f"{'':24}{'banded_mnn':>12}{'scipy loop':>12}{'speed-up':>10}")
    out(
        f"{'solveh_banded [ms]':24}{t_ours * 1e3:12.2f}{t_scipy * 1e3:12.2f}"
        f"{t_scipy / t_ours:9.1f}x"
    )
    out(
        f"max relative difference to SciPy: solveh {err_solve:.1e}, "
        f"cholesky {err_factor:.1e}, cho_solve {err_cho:.1e}"
    )
    tolerance = 1e-8 if np.dtype(dtype) == np.float64 else 1e-3
    ok = max(err_solve, err_factor, err_cho) < tolerance
    out("check against SciPy: " + ("PASSED" if ok else f"FAILED (tolerance {tolerance})"))
    return {
        "time_banded_mnn": t_ours,
        "time_scipy": t_scipy,
        "speedup": t_scipy / t_ours,
        "err_solve": err_solve,
        "err_factor": err_factor,
        "err_cho_solve": err_cho,
        "passed": float(ok),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``banded-mnn`` command."""
    parser = argparse.ArgumentParser(
        prog="banded-mnn", description="Batched banded Cholesky solvers for MNN layers."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="versions, threads and usable backends")
    demo_parser = commands.add_parser(
        "demo", help="solve an MNN-sized batch, check it against SciPy and time both"
    )
    demo_parser.add_argument("--batch", type=int, default=256, help="number of systems")
    demo_parser.add_argument("--steps", type=int, default=256, help="time steps T")
    demo_parser.add_argument("--block", type=int, default=9, help="block size n = D * O")
    demo_parser.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    demo_parser.add_argument("--repeat", type=int, default=3, help="timed repetitions")
    args = parser.parse_args(argv)
    if args.command == "info":
        info()
        return 0
    result = demo(args.batch, args.steps, args.block, args.dtype, args.repeat)
    return 0 if result["passed"] else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
