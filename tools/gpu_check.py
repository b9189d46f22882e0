"""GPU check: tests and timings of the GPU backends on a machine with an NVIDIA GPU.

Run from the repository root, after ``pip install -e ".[test,cuda12,torch]"``
(or ``cuda13``; for the JAX tests also ``pip install "jax[cuda12]"``)::

    python tools/gpu_check.py            # aimed at under 8 minutes (never run on a GPU yet)
    python tools/gpu_check.py --quick    # fewer repeats, no test run

It

1. runs the GPU test subset (``tests/test_gpu_backends.py`` on CuPy arrays
   through both GPU backends and the cyclic-reduction kernels,
   ``tests/test_mnn_gpu.py``: the MNN layer on CuPy arrays against the CPU
   layer, ``tests/test_cuda_kernels.py``, ``tests/test_torch_cuda.py``,
   ``tests/test_jax_cuda.py``);
2. measures the device-to-device copy bandwidth (CuPy copy, CUDA events);
3. times ``solveh_banded`` (fused factor and solve, no checks, the status
   left on the device) through both GPU backends in both regimes (and, where
   the "cupy" backend's warp regime holds the band window in registers, the
   window on a band with contiguous columns, read without the gather, and
   the general warp kernel: what the window and the direct read gain), against
   (a) S-MNN's algorithm as batched torch ops -- per step ``cholesky_ex``,
   ``solve_triangular`` and matmul on ``n x n`` blocks -- captured in a CUDA
   graph (run eagerly past 20,000 steps, where capturing is impractical), and
   (b) the CPU backend on the host;

and prints one table: median time, speed-ups, and the achieved bandwidth
(the bytes ``solveh_banded`` must move at least -- read the band and the
right-hand side, write the solution -- over the time) as a fraction of the
copy bandwidth;
4. for few systems (B <= 4), times block cyclic reduction (the Numba CUDA
   kernels, and the CuPy array-operation reference) against the sequential
   band kernel -- what the GPU rule for ``algorithm=None`` needs;
5. times the MNN layer on CuPy arrays (``banded_mnn.mnn.ode_forward`` and
   its VJP; sequential, cyclic and the automatic choice) and
   ``banded_mnn.torch.ode_forward`` forward + backward on CUDA tensors against
   S-MNN's per-step torch algorithm captured in CUDA graphs;
6. calibrates the two size rules (``_gpu.WARP_REGIME_SYSTEMS_PER_SM``,
   ``_backends._gpu.CYCLIC_MIN_STEPS``) by sweeping the size across them, and
7. prints the three targets of the GPU performance model
   (``docs/performance.md``) as measured, each met or not.

GPU times are CUDA-event medians of warm runs; CPU times are wall-clock
medians.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from banded_mnn.mnn.baselines import BENCH_CASES

ROOT = Path(__file__).resolve().parents[1]

#: (label, B, T, n, dtype): the band has M = T n columns and u = 2 n - 1.
CASES = [
    ("Lorenz", 1536, 50, 3, np.float64),
    ("MNN", 16, 2048, 9, np.float64),
    ("many-f32", 1024, 1000, 12, np.float32),
    ("long-1e4", 1, 10_000, 9, np.float64),
    ("long", 1, 100_000, 9, np.float64),
    ("few-long", 4, 10_000, 9, np.float64),
]

GRAPH_MAX_STEPS = 20_000

#: The MNN layer on CuPy arrays: (label, B, T, E, D, O).
LAYER_CASES = [
    ("MNN", 16, 2048, 3, 3, 3),
    ("Lorenz", 1536, 50, 1, 1, 3),
    ("long", 1, 100_000, 3, 3, 3),
]

#: Sweeps for the size rules: systems for the regime rule (T, n fixed), and
#: steps for the cyclic rule (one system, D = O = E = 3).
REGIME_SWEEP = (256, 1024, 4096, 16384, 65536)
REGIME_SWEEP_SHAPE = (100, 9)
CYCLIC_SWEEP = (16, 64, 256, 1024, 4096)


def gpu_events_median(function, repeat: int) -> float:
    import cupy

    function()  # warm (compiles on first use)
    times = []
    for _ in range(repeat):
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        function()
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop) / 1e3)
    return statistics.median(times)


def copy_bandwidth() -> float:
    import cupy

    src = cupy.ones(1 << 27, dtype=np.float64)  # 1 GiB
    dst = cupy.empty_like(src)
    seconds = gpu_events_median(lambda: dst.__setitem__(Ellipsis, src), 10)
    return 2 * src.nbytes / seconds


def torch_baseline(lower: np.ndarray, b: np.ndarray, steps: int, n: int, repeat: int) -> float:
    """S-MNN's per-step block Cholesky in torch on the GPU (CUDA graph when it fits)."""
    import torch

    from banded_mnn._blocks import band_to_blocks
    from banded_mnn.torch.baselines import block_solve

    a0, a1 = (torch.as_tensor(x, device="cuda") for x in band_to_blocks(lower, steps, n, 2))
    beta = torch.as_tensor(b.reshape(b.shape[0], steps, n), device="cuda")
    if steps <= GRAPH_MAX_STEPS:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            block_solve(a0, a1, beta)  # warm-up before capture
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            block_solve(a0, a1, beta)
        run = graph.replay
    else:

        def run():
            block_solve(a0, a1, beta)

    return torch_events_median(run, repeat)


def torch_events_median(run, repeat: int) -> float:
    """Median seconds of ``run()`` on torch's current CUDA stream (CUDA events,
    after one warm-up run)."""
    import torch

    run()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) / 1e3)
    return statistics.median(times)


def time_cyclic(lower: np.ndarray, b: np.ndarray, steps: int, n: int, repeat: int):
    """(sequential, cyclic, cyclic as array operations) GPU seconds for the
    block form of the same systems: the band kernel, block cyclic reduction
    with the Numba CUDA level kernels, and with the CuPy array-operation
    reference (what runs without numba-cuda)."""
    import cupy

    import banded_mnn as bm
    from banded_mnn import _cyclic
    from banded_mnn._blocks import band_to_blocks

    blocks = [cupy.asarray(x) for x in band_to_blocks(lower, steps, n, 2)]
    rhs = cupy.asarray(b.reshape(b.shape[0], steps, n, 1))
    times = []
    for algorithm, reference in (("sequential", False), ("cyclic", False), ("cyclic", True)):
        _cyclic._USE_REFERENCE = reference
        try:
            times.append(gpu_events_median(
                lambda algorithm=algorithm: bm.solveh_block_banded_ex(
                    blocks, rhs, check_finite=False, algorithm=algorithm), max(1, repeat // 3)))  # fmt: skip
        finally:
            _cyclic._USE_REFERENCE = False
    x_seq, _ = bm.solveh_block_banded_ex(blocks, rhs, algorithm="sequential")
    x_cyc, _ = bm.solveh_block_banded_ex(blocks, rhs, algorithm="cyclic")
    error = float(abs(x_seq - x_cyc).max() / abs(x_seq).max())
    if error > 1e3 * np.finfo(lower.dtype).eps:
        print(f"# cyclic and sequential disagree: relative difference {error:.1e}")
    return tuple(times)


#: The MNN layer through the torch adapter: the cases of ``banded-mnn bench-mnn``.
MNN_CASES = BENCH_CASES


def torch_layer_times(repeat: int) -> list[str]:
    """``banded_mnn.torch.ode_forward`` forward + backward on CUDA tensors (the
    automatic choice and cyclic reduction) against S-MNN's per-step torch algorithm on the
    same device, and the CPU layer on the host: table rows."""
    import torch

    from banded_mnn.mnn.baselines import bench_inputs
    from banded_mnn.torch import ode_forward
    from banded_mnn.torch.baselines import ode_forward_blockwise

    rows = []
    for label, (B, T, E, D, O, shared) in MNN_CASES.items():
        rng = np.random.default_rng(0)
        arrays = bench_inputs(B, T, E, D, O, shared, rng)
        grad = torch.as_tensor(rng.standard_normal((B, T, D, O)))

        def step(function, device, arrays=arrays, grad=grad, **options):
            leaves = [torch.as_tensor(a, device=device).requires_grad_() for a in arrays]
            upstream = grad.to(device)

            def run():
                function(*leaves, **options).backward(upstream)

            return run

        baseline = torch_events_median(step(ode_forward_blockwise, "cuda"), repeat)
        automatic = torch_events_median(step(ode_forward, "cuda"), repeat)
        cyclic = torch_events_median(step(ode_forward, "cuda", algorithm="cyclic"), repeat)
        host = step(ode_forward, "cpu")
        host()
        start = time.perf_counter()
        host()
        cpu = time.perf_counter() - start
        rows.append(
            f"| {label} | {automatic * 1e3:.2f} ms | {cyclic * 1e3:.2f} ms | "
            f"{baseline * 1e3:.2f} ms | {baseline / automatic:.1f}x | {cpu * 1e3:.1f} ms |"
        )
    return rows


def layer_times(repeat: int) -> tuple[list[str], dict[str, float]]:
    """The MNN layer on CuPy arrays, forward (``ode_forward``) + VJP, per
    algorithm, for each backend: table rows, and the times the targets use."""
    import cupy

    from banded_mnn.mnn import _gpu as gpu_layer
    from banded_mnn.mnn import ode_forward
    from banded_mnn.mnn.baselines import bench_inputs

    rows, times = [], {}
    for label, B, T, E, D, O in LAYER_CASES:
        rng = np.random.default_rng(0)
        arrays = [cupy.asarray(a) for a in bench_inputs(B, T, E, D, O, False, rng)]
        grad = cupy.asarray(rng.standard_normal((B, T, D, O)))
        for backend in ("cupy", "numba-cuda"):
            cells = []
            for algorithm in (None, "sequential", "cyclic"):

                def run(algorithm=algorithm, backend=backend, arrays=arrays, grad=grad):
                    u, system = ode_forward(*arrays, algorithm=algorithm, backend=backend,
                                            return_system=True)  # fmt: skip
                    system.vjp(grad, u, *arrays)

                seconds = gpu_events_median(run, max(1, repeat // 3))
                times[(label, backend, algorithm)] = seconds
                cells.append(f"{seconds * 1e3:.2f} ms")
            kernels = gpu_layer.kernel_set(backend)
            chosen = gpu_layer.choose_algorithm(None, B, T, kernels)
            rows.append(f"| {label} | {B} | {T} | {D * O} | {backend} | {chosen} | "
                        + " | ".join(cells) + " |")  # fmt: skip
    return rows, times


def torch_graph_baseline(arrays, grad, repeat: int) -> float:
    """S-MNN's per-step algorithm (``torch.baselines.ode_forward_blockwise``),
    forward + backward, captured in CUDA graphs (``make_graphed_callables``)
    where the step count allows, on CUDA tensors: median seconds."""
    import torch

    from banded_mnn.torch.baselines import ode_forward_blockwise

    leaves = tuple(torch.as_tensor(a, device="cuda").requires_grad_() for a in arrays)
    upstream = grad.to("cuda")
    function = ode_forward_blockwise
    if arrays[0].shape[1] <= GRAPH_MAX_STEPS:

        class Baseline(torch.nn.Module):
            def forward(self, *inputs):
                return ode_forward_blockwise(*inputs)

        function = torch.cuda.make_graphed_callables(Baseline(), leaves)

    def run():
        function(*leaves).backward(upstream)

    return torch_events_median(run, repeat)


def calibrate(repeat: int) -> list[str]:
    """Sweep the sizes across the two rules; the suggested values."""
    import cupy

    import banded_mnn as bm
    from banded_mnn._backends import _gpu
    from banded_mnn.mnn import ode_forward
    from banded_mnn.mnn.baselines import bench_inputs
    from banded_mnn.problems import mnn_normal_band

    lines = ["| systems | thread regime | warp regime |", "|---|---|---|"]
    rng = np.random.default_rng(1)
    sms = cupy.cuda.Device().attributes["MultiProcessorCount"]
    crossover = None
    T, n = REGIME_SWEEP_SHAPE
    for B in REGIME_SWEEP:
        ab = cupy.asarray(mnn_normal_band((B,), T, n, lower=True, rng=rng))
        b = cupy.asarray(rng.standard_normal((B, T * n, 1)))
        cells = []
        for regime in ("thread", "warp"):
            original = _gpu.choose_regime
            _gpu.choose_regime = lambda nsys, sms, regime=regime: regime
            try:
                cells.append(gpu_events_median(lambda ab=ab, b=b: bm.solveh_banded_ex(
                    ab, b, lower=True, check_finite=False, backend="cupy"), max(1, repeat // 3)))  # fmt: skip
            finally:
                _gpu.choose_regime = original
        if crossover is None and cells[0] < cells[1]:
            crossover = B
        lines.append(f"| {B} | {cells[0] * 1e3:.2f} ms | {cells[1] * 1e3:.2f} ms |")
    suggestion = "beyond the sweep" if crossover is None else f"{max(1, crossover // sms)}"
    lines.append(f"# thread regime faster from {crossover} systems: "
                 f"WARP_REGIME_SYSTEMS_PER_SM ~ {suggestion} (now {_gpu.WARP_REGIME_SYSTEMS_PER_SM})")  # fmt: skip
    lines += ["", "| steps (B = 1) | sequential | cyclic |", "|---|---|---|"]
    crossover = None
    for T in CYCLIC_SWEEP:
        arrays = [cupy.asarray(a) for a in bench_inputs(1, T, 3, 3, 3, False, rng)]
        cells = [gpu_events_median(lambda algorithm=algorithm, arrays=arrays: ode_forward(
            *arrays, algorithm=algorithm, backend="cupy"), max(1, repeat // 3))
            for algorithm in ("sequential", "cyclic")]  # fmt: skip
        if crossover is None and cells[1] < cells[0]:
            crossover = T
        lines.append(f"| {T} | {cells[0] * 1e3:.2f} ms | {cells[1] * 1e3:.2f} ms |")
    lines.append(f"# cyclic faster from {crossover} steps: CYCLIC_MIN_STEPS "
                 f"(now {_gpu.CYCLIC_MIN_STEPS})")  # fmt: skip
    return lines


def cpu_time(ab: np.ndarray, b: np.ndarray, repeat: int) -> float:
    import banded_mnn as bm

    bm.solveh_banded_ex(ab, b, lower=True, check_finite=False)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        bm.solveh_banded_ex(ab, b, lower=True, check_finite=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, no test run")
    args = parser.parse_args(argv)
    repeat = 3 if args.quick else 10

    import cupy

    import banded_mnn as bm
    from banded_mnn._backends import _cupy, _gpu
    from banded_mnn.problems import mnn_normal_band

    device = cupy.cuda.Device()
    name = cupy.cuda.runtime.getDeviceProperties(device.id)["name"].decode()
    print(f"# GPU check, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"# {name}, CuPy {cupy.__version__}, {platform.processor() or platform.machine()}")

    if not args.quick:
        tests = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k",
             "not simulator and not asv", "tests/test_gpu_backends.py", "tests/test_mnn_gpu.py",
             "tests/test_cuda_kernels.py", "tests/test_package.py", "tests/test_torch_cuda.py",
             "tests/test_jax_cuda.py"],
            cwd=ROOT, capture_output=True, text=True,
        )  # fmt: skip
        summary = (tests.stdout.strip().splitlines() or ["(no output)"])[-1]
        print(f"# GPU tests: {summary} (exit status {tests.returncode})")
        if tests.returncode:
            print(tests.stdout[-4000:])

    bandwidth = copy_bandwidth()
    print(f"# device-to-device copy bandwidth: {bandwidth / 1e9:.0f} GB/s")
    print(
        "| case | B | T | n | dtype | backend | regime | GPU time | vs torch per-step | "
        "vs CPU backend | bandwidth / copy |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    cyclic_rows = []
    fractions = {}
    for label, B, T, n, dtype in CASES:
        ab = mnn_normal_band((B,), T, n, lower=True, dtype=dtype, rng=rng)
        b = rng.standard_normal((B, T * n, 1)).astype(dtype)
        ab_d, b_d = cupy.asarray(ab), cupy.asarray(b)
        minimal_bytes = ab.nbytes + 2 * b.nbytes
        try:
            baseline = torch_baseline(ab, b, T, n, max(1, repeat // 3))
        except Exception as error:
            print(f"# torch baseline failed for {label}: {error}")
            baseline = float("nan")
        cpu = cpu_time(ab, b, max(1, repeat // 3))
        automatic = _gpu.choose_regime(B, device.attributes["MultiProcessorCount"])
        # Every backend in both regimes; for the "cupy" backend's warp regime
        # also its general kernel where the register window applies, so that
        # one run measures what the window gains.
        window = _cupy.window_applies(ab.shape[-2] - 1)
        # ("warp-columns": the window reading a band whose columns are
        # contiguous where it lies, without the gather.)
        variants = [("cupy", "thread"), ("cupy", "warp")]
        variants += [("cupy", "warp-columns"), ("cupy", "warp-general")] if window else []
        columns_d = (
            cupy.asarray(np.ascontiguousarray(np.swapaxes(ab, -1, -2))).swapaxes(-1, -2)
            if window
            else None
        )
        variants += [("numba-cuda", "thread"), ("numba-cuda", "warp")]
        for backend, variant in variants:
            regime = "warp" if variant.startswith("warp") else variant
            original, original_window = _gpu.choose_regime, _cupy.window_applies
            _gpu.choose_regime = lambda nsys, sms, regime=regime: regime
            if variant == "warp-general":
                _cupy.window_applies = lambda bw: False
            band_d = columns_d if variant == "warp-columns" else ab_d
            try:
                seconds = gpu_events_median(
                    lambda backend=backend, band_d=band_d, b_d=b_d: bm.solveh_banded_ex(
                        band_d, b_d, lower=True, check_finite=False, backend=backend
                    ),
                    repeat,
                )
                x, info = bm.solveh_banded_ex(band_d, b_d, lower=True, backend=backend)
            finally:
                _gpu.choose_regime, _cupy.window_applies = original, original_window
            reference = bm.solveh_banded(ab, b, lower=True)
            error = float(abs(cupy.asnumpy(x) - reference).max() / abs(reference).max())
            chosen = regime == automatic and variant in ("thread", "warp")
            mark = "*" if chosen else ""
            if backend == "cupy" and variant == "warp" and window:
                mark += " (window)"  # the register-window kernels
            if chosen:
                fractions[(label, backend)] = minimal_bytes / seconds / bandwidth
            print(
                f"| {label} | {B} | {T} | {n} | {np.dtype(dtype).name} | {backend} | "
                f"{variant}{mark} | {seconds * 1e3:.3f} ms | {baseline / seconds:.1f}x | "
                f"{cpu / seconds:.1f}x | {minimal_bytes / seconds / bandwidth:.1%} |"
                + (
                    f" max diff vs CPU {error:.1e}, info {int(info.max())}"
                    if error > 1e3 * np.finfo(dtype).eps or int(info.max())
                    else ""
                )  # fmt: skip
            )
        print(f"# {label}: torch per-step {baseline * 1e3:.2f} ms, CPU backend {cpu * 1e3:.2f} ms")
        if B <= 4:  # few long sequences: block cyclic reduction against the sequential kernel
            cyclic_rows.append((label, B, T, n, *time_cyclic(ab, b, T, n, repeat)))
    print("# * = the regime chosen automatically at this size")
    print()
    print("| case | B | T | n | sequential (band kernel) | cyclic reduction (kernels) | "
          "speed-up | cyclic as CuPy array operations |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for label, B, T, n, sequential, cyclic, array_ops in cyclic_rows:
        print(f"| {label} | {B} | {T} | {n} | {sequential * 1e3:.2f} ms | {cyclic * 1e3:.2f} ms | "
              f"{sequential / cyclic:.1f}x | {array_ops * 1e3:.2f} ms |")  # fmt: skip
    print()
    print("# the MNN layer on CuPy arrays: ode_forward + OdeSystem.vjp, float64")
    print("| case | B | T | n | backend | automatic choice | automatic | sequential | cyclic |")
    print("|---|---|---|---|---|---|---|---|---|")
    layer_rows, layer = layer_times(repeat)
    for row in layer_rows:
        print(row)
    print()
    print("# calibration of the size rules (cupy backend)")
    for line in calibrate(repeat):
        print(line)
    print()
    print("# targets of the GPU performance model (docs/performance.md)")
    graph = float("nan")
    try:
        from banded_mnn.mnn.baselines import bench_inputs

        rng = np.random.default_rng(0)
        arrays = bench_inputs(16, 2048, 3, 3, 3, False, rng)
        import torch

        grad = torch.as_tensor(rng.standard_normal((16, 2048, 3, 3)))
        graph = torch_graph_baseline(arrays, grad, max(1, repeat // 3))
    except Exception as error:
        print(f"# per-step baseline in CUDA graphs failed: {type(error).__name__}: {error}")
    best = max((v for (label, _), v in fractions.items() if label == "many-f32"), default=0.0)
    mnn = min(layer.get(("MNN", b, None), float("inf")) for b in ("cupy", "numba-cuda"))
    seq = layer.get(("long", "cupy", "sequential"), float("nan"))
    cyc = layer.get(("long", "cupy", "cyclic"), float("nan"))
    print("| target | measured | met |")
    print("|---|---|---|")
    print(f"| solveh_banded B=1024 M=12000 u=23 float32 >= 50% of copy bandwidth | "
          f"{best:.1%} | {'yes' if best >= 0.5 else 'no'} |")  # fmt: skip
    print(f"| ode_forward fwd+bwd B=16 T=2048 >= 10x per-step in CUDA graphs | "
          f"{graph / mnn:.1f}x ({mnn * 1e3:.2f} ms vs {graph * 1e3:.2f} ms) | "
          f"{'yes' if graph / mnn >= 10 else 'no'} |")  # fmt: skip
    print(f"| ode_forward fwd+bwd B=1 T=1e5 >= 20x the sequential kernel | {seq / cyc:.1f}x | "
          f"{'yes' if seq / cyc >= 20 else 'no'} |")  # fmt: skip
    print()
    print("# banded_mnn.torch.ode_forward, forward + backward, float64, CUDA tensors")
    print("| case | automatic | cyclic | per-step torch (S-MNN, eager) | speed-up (automatic) | "
          "CPU layer |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    try:
        for row in torch_layer_times(max(1, repeat // 3)):
            print(row)
    except Exception as error:
        print(f"# torch layer timings failed: {type(error).__name__}: {error}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
