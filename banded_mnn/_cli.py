"""The ``banded-mnn`` command: ``info``, ``demo``, ``bench``, ``bench-mnn``, ``bench-torch``,
``bench-blocks``."""

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
from ._strided import to_numpy
from .problems import mnn_normal_band


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _backend_status(name: str) -> str:
    """'usable' after a tiny solve checked against the exact answer, else why not.

    GPU backends are first asked whether their libraries and a device are
    there (``_backends.usable``); the solve then runs on the device.
    """
    detail = ""
    try:
        ab = np.array([[0.0, 1.0, 1.0], [4.0, 4.0, 4.0]])
        b = np.array([5.0, 6.0, 5.0])
        if name in _backends.GPU_BACKENDS:
            ok, detail = _backends.usable(name)
            if not ok:
                return f"NOT usable: {detail}"
            xp = _backends.get(name).array_namespace()
            ab, b = xp.asarray(ab), xp.asarray(b)
        x = solveh_banded(ab, b, backend=name)
        x = to_numpy(x)
        if not np.allclose(x, 1.0):
            return f"NOT usable: wrong result {x}"
        return f"usable ({detail})" if detail else "usable"
    except Exception as exc:  # report, do not crash: this is a diagnostic
        return f"NOT usable: {type(exc).__name__}: {exc}"


def _adapter_status(name: str) -> str:
    """'usable' after a tiny differentiable solve through the adapter, else why not."""
    if importlib.util.find_spec(name) is None:
        return f"NOT usable: {name} is not installed (pip install torch==2.13.0 / jax, see README)"
    try:
        if name == "torch":
            import torch

            from .torch import solveh_banded as solve

            ab = torch.tensor([[0.0, 1.0, 1.0], [4.0, 4.0, 4.0]], dtype=torch.float64)
            x = solve(ab, torch.tensor([5.0, 6.0, 5.0], dtype=torch.float64)).numpy()
        else:
            import jax.numpy as jnp

            from .jax import solveh_banded as solve

            ab = jnp.array([[0.0, 1.0, 1.0], [4.0, 4.0, 4.0]])
            x = np.asarray(solve(ab, jnp.array([5.0, 6.0, 5.0])))
        if not np.allclose(x, 1.0, atol=1e-5):
            return f"NOT usable: wrong result {x}"
        return f"usable ({name} {_version(name)}, CPU)"
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
        kind = "GPU" if name in _backends.GPU_BACKENDS else "CPU"
        out(f"backend {name!r} ({kind}): {status}")
        if name == "numba" and status == "usable":
            import numba

            out(f"  threads: {numba.get_num_threads()} (set NUMBA_NUM_THREADS to change)")
    out(f"  default for CuPy arrays: {_backends.DEFAULT_GPU_BACKEND!r}")
    for name in ("torch", "jax"):
        out(f"adapter banded_mnn.{name}: {_adapter_status(name)}")


def _seconds(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def _median_time(function: Callable[[], object], repeat: int) -> float:
    return _interleaved_medians({"": function}, repeat)[""]


def _interleaved_medians(
    functions: dict[str, Callable[[], object]], repeat: int
) -> dict[str, float]:
    """Median time of each function over ``repeat`` rounds that call every
    function once in turn, so that a slow phase of the machine (another
    process, frequency changes) weighs on all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeat):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def one_blas_thread():
    """A context that limits BLAS (OpenBLAS, MKL, ...) to one thread in this
    process: SciPy's band routines make many small BLAS calls, which BLAS
    threads only slow down (about 3x on the project's 2-core machine), so
    this is the SciPy baseline at its best.  Set in-process with
    ``threadpoolctl``, whatever the environment says."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def copy_floor(*arrays: np.ndarray, repeat: int = 7) -> float:
    """Seconds of a streaming copy of ``arrays`` into preallocated arrays
    (median of ``repeat``): what reading the operands and writing results
    of the same size costs at best, the floor a memory-bound kernel works
    toward."""
    targets = [np.empty_like(a) for a in arrays]

    def copy() -> None:
        for target, a in zip(targets, arrays, strict=True):
            np.copyto(target, a)

    copy()
    return _median_time(copy, repeat)


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
    t_ours = _median_time(ours, repeat)
    with one_blas_thread():
        reference = scipy_loop()
        t_scipy = _median_time(scipy_loop, repeat)

    def rel_err(a: np.ndarray, ref: np.ndarray) -> float:
        return float(np.abs(a - ref).max() / np.abs(ref).max())

    err_solve = rel_err(x, reference)
    c = cholesky_banded(ab)
    err_factor = rel_err(c, np.stack([scipy.linalg.cholesky_banded(ab[i]) for i in range(batch)]))
    err_cho = rel_err(cho_solve_banded((c, False), b), reference)
    out(f"first call (compile or cache load): {first:.2f} s")
    out("SciPy: a loop of scipy.linalg.solveh_banded, BLAS limited to 1 thread in-process")
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


#: The sizes the performance table reports (B, M, u): an S-MNN batch (T = 256
#: steps, block 9), a long sequence with a small batch, the Lorenz-discovery
#: size (many short systems), and few or one long system (fewer systems than
#: threads: where S-MNN's long-sequence use lives).
BENCH_CASES = (
    (256, 2304, 17),
    (16, 18432, 17),
    (1536, 150, 5),
    (2, 100_000, 17),
    (1, 100_000, 17),
    (1, 1_000_000, 5),
)


def _routines_side_by_side(ab: np.ndarray, b: np.ndarray) -> dict[str, tuple[Callable, Callable]]:
    """(banded_mnn call, SciPy loop) for each routine, on one batch of problems."""
    import scipy.linalg

    c = cholesky_banded(ab)
    n = ab.shape[0]
    return {
        "solveh_banded": (
            lambda: solveh_banded(ab, b),
            lambda: [scipy.linalg.solveh_banded(ab[i], b[i]) for i in range(n)],
        ),
        "cholesky_banded": (
            lambda: cholesky_banded(ab),
            lambda: [scipy.linalg.cholesky_banded(ab[i]) for i in range(n)],
        ),
        "cho_solve_banded": (
            lambda: cho_solve_banded((c, False), b),
            lambda: [scipy.linalg.cho_solve_banded((c[i], False), b[i]) for i in range(n)],
        ),
    }


def bench(
    cases: Sequence[tuple[int, int, int]] = BENCH_CASES,
    dtype: str = "float64",
    repeat: int = 7,
    out: Callable[[str], None] = print,
) -> list[dict[str, float]]:
    """Time factor, solve and fused solve against a SciPy loop, side by side.

    For each case and routine: one untimed warm-up call each, then the median
    of ``repeat`` calls of banded_mnn, then of the SciPy loop with BLAS
    limited to one thread in-process (:func:`one_blas_thread`; SciPy at its
    best).  The floor is a streaming copy of the operands in the same run
    (:func:`copy_floor`: the band, and for the solves the right-hand sides);
    "% of floor" is floor time over banded_mnn time.  Prints a markdown table
    and returns its rows.
    """
    rows = []
    out("SciPy loop: scipy.linalg routines over the batch, BLAS limited to 1 thread in-process")
    out("| B | M | u | routine | banded_mnn [ms] | SciPy loop [ms] | speed-up | floor [ms] "
        "| % of floor |")  # fmt: skip
    out("|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    for batch, m, u in cases:
        rng = np.random.default_rng(0)
        block = (u + 1) // 2
        if m % block == 0 and 2 * block - 1 == u:
            ab = mnn_normal_band((batch,), m // block, block, dtype=np.dtype(dtype), rng=rng)
        else:
            from .problems import random_spd_band

            ab = random_spd_band((batch,), m, u, dtype=np.dtype(dtype), rng=rng)
        b = rng.standard_normal((batch, m, 1)).astype(dtype)
        floor_band, floor_all = copy_floor(ab, repeat=repeat), copy_floor(ab, b, repeat=repeat)
        routines = _routines_side_by_side(ab, b)
        for name, (ours, theirs) in routines.items():
            ours()
            t_ours = _median_time(ours, repeat)
            with one_blas_thread():
                theirs()
                t_scipy = _median_time(theirs, repeat)
            floor = floor_band if name == "cholesky_banded" else floor_all
            out(
                f"| {batch} | {m} | {u} | {name} | {t_ours * 1e3:.2f} | {t_scipy * 1e3:.2f} "
                f"| {t_scipy / t_ours:.1f}x | {floor * 1e3:.2f} | {100 * floor / t_ours:.0f}% |"
            )
            rows.append({"B": batch, "M": m, "u": u, "routine": name, "time_banded_mnn": t_ours,
                         "time_scipy": t_scipy, "time_floor": floor})  # fmt: skip
    return rows


def bench_mnn(
    cases: dict | None = None,
    repeat: int = 7,
    dense: bool = True,
    out: Callable[[str], None] = print,
) -> list[dict]:
    """Time ``ode_forward`` (forward, and forward + VJP) against S-MNN's
    per-step algorithm in batched NumPy and a dense solve, side by side.

    Same timing discipline as :func:`bench`.  The dense solve is skipped
    where its matrices would not fit in memory.  Prints a markdown table and
    returns its rows (seconds).  ``cases`` maps a name to ``(B, T, E, D, O,
    shared left-hand side)`` (default: the sizes ``docs/performance.md`` reports).
    """
    from .mnn import ode_forward
    from .mnn.baselines import (
        BENCH_CASES,
        bench_inputs,
        blockwise_forward,
        blockwise_vjp,
        dense_forward,
    )

    rows = []
    out(
        "| case | ode_forward [ms] | per-step blocks [ms] | speed-up | dense [ms] | speed-up "
        "| fwd+VJP [ms] | per-step fwd+VJP [ms] | speed-up |"
    )
    out("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, (batch, steps, equations, dims, orders, shared) in (cases or BENCH_CASES).items():
        rng = np.random.default_rng(0)
        c, r, v, h = bench_inputs(batch, steps, equations, dims, orders, shared, rng)
        # The baselines take full-length arrays (no broadcasting along steps).
        c_full = np.broadcast_to(c, c.shape[:1] + (steps,) + c.shape[2:])
        grad = rng.standard_normal((batch, steps, dims, orders))

        def ours_vjp(c=c, r=r, v=v, h=h, grad=grad):
            u, system = ode_forward(c, r, v, h, return_system=True)
            return system.vjp(grad, u, c, r, v, h)

        def blockwise_vjp_call(c=c_full, r=r, v=v, h=h, grad=grad):
            u, fac = blockwise_forward(c, r, v, h)
            return blockwise_vjp(fac, u, grad, c, r)

        n = steps * dims * orders
        dense_bytes = 8 * n * n * batch  # one dense matrix per instance, as MNN solves it
        timed = {
            "ours": lambda c=c, r=r, v=v, h=h: ode_forward(c, r, v, h),
            "blockwise": lambda c=c_full, r=r, v=v, h=h: blockwise_forward(c, r, v, h),
            "ours_vjp": ours_vjp,
            "blockwise_vjp": blockwise_vjp_call,
        }
        if dense and dense_bytes < 4e9:
            timed["dense"] = lambda c=c_full, r=r, v=v, h=h: dense_forward(c, r, v, h)
        times = {}
        for key, function in timed.items():
            function()
            times[key] = _median_time(function, repeat)
        d = times.get("dense")
        dense_cells = (
            f"{d * 1e3:.1f} | {d / times['ours']:.0f}x"
            if d is not None
            else f"not run ({dense_bytes / 1e9:.0f} GB) | -"
        )
        out(
            f"| {name} | {times['ours'] * 1e3:.2f} | {times['blockwise'] * 1e3:.1f} "
            f"| {times['blockwise'] / times['ours']:.1f}x | {dense_cells} "
            f"| {times['ours_vjp'] * 1e3:.2f} | {times['blockwise_vjp'] * 1e3:.1f} "
            f"| {times['blockwise_vjp'] / times['ours_vjp']:.1f}x |"
        )
        rows.append({"case": name, **times})
    return rows


#: ``banded-mnn bench-torch --case``: name -> ``(B, T, E, D, O)``.  S-MNN's
#: larger benchmark size, and the Lorenz-discovery size (windows of 50 steps
#: of one 3rd-order equation).
TORCH_CASES = {"b16-t2048": (16, 2048, 3, 3, 3), "lorenz": (512, 50, 1, 1, 3)}


def bench_torch(
    case: tuple[int, int, int, int, int] = TORCH_CASES["b16-t2048"],
    repeat: int = 7,
    out: Callable[[str], None] = print,
) -> dict[str, float]:
    """Time ``banded_mnn.torch.ode_forward`` forward + backward against S-MNN's
    per-step algorithm in PyTorch and against the NumPy-level calls it wraps.

    ``case`` is ``(B, T, E, D, O)``, float64, one initial value.  After a
    warm-up, ``repeat`` rounds each time the per-step baseline once and then
    (after a pause and an untimed call of each) the torch function and the
    NumPy-level calls five times in alternation, which goes first changing
    between rounds; medians of each (``repeat`` and ``5 * repeat`` samples),
    and the adapter's overhead as the median ratio of adjacent pairs.  Prints
    a markdown table and returns the times (seconds) and, under
    ``"overhead"``, that ratio minus one.
    """
    from .torch.baselines import bench_steps

    batch, steps, equations, dims, orders = case
    timed = bench_steps(case)
    for function in timed.values():
        function()  # warm-up
    # Side by side: each round runs the per-step baseline once, pauses so
    # that torch's OpenMP threads, which spin after its many small
    # operations, stop taking the cores from the Numba kernels, calls each
    # side of the adapter overhead once untimed (the first call after the
    # pause wakes the sleeping threads and finds the caches cold), and then
    # alternates the two sides five times, the side that goes first changing
    # from round to round (a ratio of a few per cent would otherwise be lost
    # in the machine's drift or in the order).
    ours_names = ("banded_mnn.torch", "NumPy-level")
    samples: dict[str, list[float]] = {name: [] for name in (*ours_names, "per-step torch")}
    for round_ in range(repeat):
        samples["per-step torch"].append(_seconds(timed["per-step torch"]))
        time.sleep(0.2)
        order = ours_names if round_ % 2 == 0 else ours_names[::-1]
        for name in order:
            timed[name]()
        for _ in range(5):
            for name in order:
                samples[name].append(_seconds(timed[name]))
    times = {name: float(np.median(t)) for name, t in samples.items()}
    # The overhead from the pairs of adjacent calls, whose ratio the drift
    # of the machine (seconds long) leaves alone: the median pair's.
    pair_ratio = float(np.median(np.divide(*(samples[name] for name in ours_names))))
    ours = times["banded_mnn.torch"]
    out(f"| B={batch} T={steps} E={equations} D={dims} O={orders}, float64, forward + backward "
        "| time [ms] | vs banded_mnn.torch |")  # fmt: skip
    out("|---|---:|---:|")
    for name, seconds in times.items():
        out(f"| {name} | {seconds * 1e3:.2f} | {seconds / ours:.2f}x |")
    out(
        f"adapter overhead over the NumPy-level calls: {100 * (pair_ratio - 1):.1f}% "
        f"(median of {len(samples['NumPy-level'])} adjacent pairs; "
        f"{100 * (ours / times['NumPy-level'] - 1):.1f}% from the medians above)"
    )
    return {**times, "overhead": pair_ratio - 1}


def bench_blocks(
    cases: Sequence[tuple[int, int, int]] = (
        (1, 1000, 9),
        (1, 10_000, 9),
        (1, 100_000, 9),
        (4, 1000, 9),
        (4, 10_000, 9),
        (4, 100_000, 9),
        (16, 1000, 9),
        (16, 10_000, 9),
        (64, 1000, 9),
        (64, 10_000, 9),
    ),
    repeat: int = 3,
    out: Callable[[str], None] = print,
    layer_cases: Sequence[tuple[int, int]] = (
        (1, 1000),
        (1, 10_000),
        (1, 100_000),
        (4, 1000),
        (4, 10_000),
        (16, 1000),
        (16, 10_000),
    ),
) -> list[dict]:
    """Time ``solveh_block_banded`` with the sequential and the cyclic-reduction
    algorithm on block-tridiagonal SPD systems ``(B, T, n)``, side by side
    (in alternation, median of ``repeat``); then the MNN layer
    (``ode_forward`` forward + VJP at E = D = O = 3, ``(B, T)`` from
    ``layer_cases``) with both algorithms, the comparison behind its
    automatic choice."""
    from ._blocks import solveh_block_banded

    rows = []
    out("| B | T | n | sequential [ms] | cyclic [ms] | cyclic / sequential |")
    out("|---:|---:|---:|---:|---:|---:|")
    for batch, steps, n in cases:
        rng = np.random.default_rng(0)
        a1 = rng.uniform(-1, 1, (batch, steps - 1, n, n))
        a0 = rng.uniform(-1, 1, (batch, steps, n, n))
        a0 = a0 + np.swapaxes(a0, -1, -2) + 4 * n * np.eye(n)
        b = rng.standard_normal((batch, steps, n))
        calls = {}
        for algorithm in ("sequential", "cyclic"):

            def call(algorithm=algorithm, blocks=(a0, a1), b=b):
                return solveh_block_banded(blocks, b, check_finite=False, algorithm=algorithm)

            call()
            calls[algorithm] = call
        times = _interleaved_medians(calls, repeat)
        seq, cyc = times["sequential"], times["cyclic"]
        out(f"| {batch} | {steps} | {n} | {seq * 1e3:.1f} | {cyc * 1e3:.1f} | {cyc / seq:.2f}x |")
        rows.append({"B": batch, "T": steps, "n": n, **times})
    if layer_cases:
        from .mnn import ode_forward
        from .mnn.baselines import bench_inputs

        out("")
        out("| MNN layer, forward + VJP: B | T | sequential [ms] | cyclic [ms] | "
            "cyclic / sequential |")  # fmt: skip
        out("|---:|---:|---:|---:|---:|")
        for batch, steps in layer_cases:
            rng = np.random.default_rng(0)
            arrays = bench_inputs(batch, steps, 3, 3, 3, False, rng)
            grad = rng.standard_normal((batch, steps, 3, 3))
            calls = {}
            for algorithm in ("sequential", "cyclic"):

                def step(algorithm=algorithm, arrays=arrays, grad=grad):
                    u, system = ode_forward(*arrays, return_system=True, algorithm=algorithm)
                    system.vjp(grad, u, *arrays)

                step()
                calls[algorithm] = step
            times = _interleaved_medians(calls, repeat)
            seq, cyc = times["sequential"], times["cyclic"]
            out(f"| {batch} | {steps} | {seq * 1e3:.1f} | {cyc * 1e3:.1f} | {cyc / seq:.2f}x |")
            rows.append({"layer": True, "B": batch, "T": steps, **times})
    return rows


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
    bench_parser = commands.add_parser(
        "bench", help="time factor / solve / fused solve against SciPy at the reported sizes"
    )
    bench_parser.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    bench_parser.add_argument("--repeat", type=int, default=7, help="timed repetitions")
    mnn_parser = commands.add_parser(
        "bench-mnn", help="time ode_forward against S-MNN's per-step algorithm and a dense solve"
    )
    mnn_parser.add_argument("--repeat", type=int, default=7, help="timed repetitions")
    torch_parser = commands.add_parser(
        "bench-torch", help="time banded_mnn.torch.ode_forward against S-MNN's per-step torch"
    )
    torch_parser.add_argument("--repeat", type=int, default=7, help="timed repetitions")
    torch_parser.add_argument(
        "--case", choices=tuple(TORCH_CASES), default="b16-t2048",
        help="B=16 T=2048 D=O=E=3, or the Lorenz size B=512 T=50 D=1 O=3 E=1",
    )  # fmt: skip
    blocks_parser = commands.add_parser(
        "bench-blocks",
        help="sequential against cyclic reduction: block-tridiagonal systems and the MNN layer",
    )
    blocks_parser.add_argument("--repeat", type=int, default=3, help="timed repetitions")
    dask_parser = commands.add_parser(
        "bench-dask",
        help="the Dask path (threaded scheduler, LocalCluster) against the in-memory call",
    )
    dask_parser.add_argument("--batch", type=int, default=2048, help="number of systems")
    dask_parser.add_argument("--chunk-mb", type=float, default=85.0, help="MB of band per chunk")
    dask_parser.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    dask_parser.add_argument("--rounds", type=int, default=7, help="timed rounds")
    args = parser.parse_args(argv)
    if args.command == "bench-dask":
        from ._bench_dask import bench_dask

        bench_dask(args.batch, args.chunk_mb, args.dtype, args.rounds)
        return 0
    if args.command == "bench-blocks":
        bench_blocks(repeat=args.repeat)
        return 0
    if args.command == "bench-torch":
        bench_torch(TORCH_CASES[args.case], repeat=args.repeat)
        return 0
    if args.command == "bench-mnn":
        bench_mnn(repeat=args.repeat)
        return 0
    if args.command == "info":
        info()
        return 0
    if args.command == "bench":
        bench(dtype=args.dtype, repeat=args.repeat)
        return 0
    result = demo(args.batch, args.steps, args.block, args.dtype, args.repeat)
    return 0 if result["passed"] else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
