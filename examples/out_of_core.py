"""Larger than memory: solve a batch of band systems whose bands total twice
the machine's RAM with Dask, reducing each system to its residual norm.

The batch is never held anywhere: each task of a ``dask.distributed`` cluster
(a LocalCluster of one single-threaded worker process per core by default,
the scheduler given by ``--scheduler ADDRESS``, or with ``--scheduler
threads`` Dask's local threaded scheduler in this process) generates its chunk of band matrices
(``M = 2304``, ``u = 17``, the demo's MNN-sized systems, float64), solves them
with :func:`banded_mnn.solveh_banded` on the Dask arrays, and keeps only each
system's relative residual ``||A x - b|| / ||b||``.  A chunk's band lives in
one worker's memory from its generation to its residual, then is dropped;
the scheduler keeps a few chunks in flight per worker.

Printed: Dask's progress bar, the peak resident memory of the client and all
workers together (sampled every 20 ms; target at most 25% of RAM), the
throughput in GB/s of band processed, and for comparison (a) the throughput
of ``solveh_banded`` alone on a batch already in memory, in this process,
and (b) what the same work per chunk (generate, solve, residual) reaches
without Dask: one chunk on one thread, times the cores.  Generating a band
(writing it) and its residual (reading it again) cost about 40% of the
solve each, so (a) bounds the example at roughly 60%; (b) is what Dask's
own overhead is measured against.

Run ``python examples/out_of_core.py`` (``--quick``: 0.25 GB, for the tests;
``--total-gb`` to choose the size).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import threading
import time

import dask
import dask.array as da
import distributed
import numba
import numpy as np
import psutil

import banded_mnn as bm

M, U = 2304, 17  # the demo's MNN-sized band: T = 256 steps of block size 9
BAND_BYTES = (U + 1) * M * 8  # one system's band, float64


def _scale(index: np.ndarray) -> np.ndarray:
    """A per-system factor in [1, 2) from the global system index (so every
    system is different and the batch does not depend on the chunking)."""
    return 1.0 + (index * 0.6180339887498949) % 1.0


def _base_band() -> np.ndarray:
    """One random SPD band (upper form), the same in every task."""
    from banded_mnn.problems import random_spd_band

    return random_spd_band((), M, U, rng=np.random.default_rng(2026))


def generate_bands(index: np.ndarray) -> np.ndarray:
    """The band matrices of systems ``index``: the base band scaled by a
    per-system factor, its diagonal shifted by another (still SPD)."""
    s = _scale(index)
    ab = _base_band()[None] * s[:, None, None]
    ab[:, U, :] += s[:, None] - 1.0
    return ab


def generate_rhs(index: np.ndarray) -> np.ndarray:
    """Right-hand sides ``b`` of systems ``index``, shape (n, M, 1)."""
    base = np.sin(np.arange(M) * 0.01)
    return (base[None, :] * _scale(index * 7 + 3)[:, None])[..., None]


# Not cached on disk: this file also runs as a script and through runpy,
# whose module names Numba's cache cannot resolve when it loads.
@numba.njit(nogil=True)
def _residual_norms(ab, x, b, out):  # pragma: no cover (compiled)
    # (A x)_i from the upper band: a[i, i + d] = a[i + d, i] = ab[u - d, i + d].
    # One pass per stored diagonal, each loop free of dependences (vectorised).
    n, u1, m = ab.shape
    u = u1 - 1
    y = np.empty(m)
    for s in range(n):
        xs, bs = x[s, :, 0], b[s, :, 0]
        diagonal = ab[s, u]
        for i in range(m):
            y[i] = diagonal[i] * xs[i] - bs[i]
        for d in range(1, min(u, m - 1) + 1):
            row = ab[s, u - d]
            for i in range(m - d):  # above the diagonal
                y[i] += row[i + d] * xs[i + d]
            for i in range(m - d):  # below it
                y[i + d] += row[i + d] * xs[i]
        out[s] = np.sqrt(np.sum(y * y) / np.sum(bs * bs))


def residual_norms(ab: np.ndarray, x: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``||A x - b|| / ||b||`` of every system of a chunk, shape (n,)."""
    out = np.empty(ab.shape[0])
    _residual_norms(ab, x, b, out)
    return out


def pipeline(n_systems: int, systems_per_chunk: int) -> da.Array:
    """The lazy per-system residual norms of the whole batch."""
    index = da.arange(n_systems, chunks=systems_per_chunk, dtype=np.int64)
    ab = index.map_blocks(
        generate_bands, new_axis=[1, 2], chunks=(index.chunks[0], (U + 1,), (M,)), dtype=float
    )
    b = index.map_blocks(generate_rhs, new_axis=[1, 2], chunks=(index.chunks[0], (M,), (1,)),
                         dtype=float)  # fmt: skip
    x = bm.solveh_banded(ab, b)
    return da.map_blocks(residual_norms, ab, x, b, drop_axis=[1, 2], dtype=float)


class PeakMemory:
    """Peak resident memory of this process and all its descendants (the
    LocalCluster's nannies and workers), sampled in a background thread."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for process in [me, *me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):  # a process that just ended
                    total += process.memory_info().rss
            self.peak = max(self.peak, total)
            time.sleep(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def in_memory_throughput(systems: int, repeat: int = 3) -> float:
    """GB/s of band of ``solveh_banded`` alone on a batch already in memory,
    in this process with all of Numba's threads (best of ``repeat``)."""
    index = np.arange(systems)
    ab, b = generate_bands(index), generate_rhs(index)
    bm.solveh_banded(ab[:2], b[:2])  # compile / load the kernels
    best = np.inf
    for _ in range(repeat):
        start = time.perf_counter()
        bm.solveh_banded(ab, b)
        best = min(best, time.perf_counter() - start)
    return ab.nbytes / best / 1e9


def same_work_throughput(systems_per_chunk: int, cores: int, repeat: int = 3) -> float:
    """GB/s of band that the example's work per chunk (generate, solve,
    residual) reaches without Dask: one chunk timed on one thread in this
    process (best of ``repeat``), times ``cores`` (perfect scaling, an upper
    bound)."""
    import numba

    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        best = np.inf
        for r in range(repeat + 1):  # the first round compiles
            index = np.arange(r * systems_per_chunk, (r + 1) * systems_per_chunk)
            start = time.perf_counter()
            ab, b = generate_bands(index), generate_rhs(index)
            residual_norms(ab, bm.solveh_banded(ab, b), b)
            if r:
                best = min(best, time.perf_counter() - start)
    finally:
        numba.set_num_threads(previous)
    return cores * systems_per_chunk * BAND_BYTES / best / 1e9


def main(quick: bool = False, total_gb: float | None = None, chunk_mb: float = 64.0,
         scheduler: str | None = None, workers: int | None = None) -> dict:  # fmt: skip
    ram = psutil.virtual_memory().total
    if total_gb is None:
        total_gb = 0.25 if quick else 2.0 * ram / 1e9
    if quick:
        chunk_mb = min(chunk_mb, 16.0)
    per_chunk = max(1, int(chunk_mb * 1e6 // BAND_BYTES))
    n_systems = max(per_chunk, int(total_gb * 1e9 // BAND_BYTES))
    band_gb = n_systems * BAND_BYTES / 1e9
    print(f"{n_systems} systems (M = {M}, u = {U}, float64): {band_gb:.1f} GB of band, "
          f"{band_gb * 1e9 / ram:.2f}x this machine's RAM ({ram / 2**30:.1f} GiB); chunks of "
          f"{per_chunk} systems ({per_chunk * BAND_BYTES / 1e6:.0f} MB)")  # fmt: skip
    residuals = pipeline(n_systems, per_chunk)
    tasks = len(dask.optimize(residuals)[0].__dask_graph__())
    if scheduler == "threads":  # Dask's local threaded scheduler, no cluster
        from dask.diagnostics import ProgressBar

        pipeline(4, 2).compute(scheduler="threads")  # compile / load the kernels
        with PeakMemory() as memory, ProgressBar():
            start = time.perf_counter()
            norms = residuals.compute(scheduler="threads")
            elapsed = time.perf_counter() - start
    else:
        cluster = None
        if scheduler is None:
            cluster = distributed.LocalCluster(
                n_workers=workers or len(os.sched_getaffinity(0)), threads_per_worker=1,
                dashboard_address=None, silence_logs=logging.ERROR,
            )  # fmt: skip
        with distributed.Client(cluster or scheduler) as client:
            # Warm up every worker (Numba loads its compiled kernels once per process).
            client.compute(pipeline(2 * len(client.scheduler_info()["workers"]), 1)).result()
            with PeakMemory() as memory:
                start = time.perf_counter()
                future = client.compute(residuals)
                distributed.progress(future)
                norms = future.result()
                elapsed = time.perf_counter() - start
        if cluster is not None:
            cluster.close()
    throughput = band_gb / elapsed
    reference = in_memory_throughput(min(n_systems, 4 * per_chunk))
    same_work = same_work_throughput(per_chunk, len(os.sched_getaffinity(0)))
    result = {
        "systems": n_systems,
        "band_gb": band_gb,
        "ram_gb": ram / 1e9,
        "tasks": tasks,
        "chunks": len(residuals.chunks[0]),
        "seconds": elapsed,
        "throughput_gbs": throughput,
        "in_memory_gbs": reference,
        "throughput_ratio": throughput / reference,
        "same_work_gbs": same_work,
        "same_work_ratio": throughput / same_work,
        "peak_rss_gb": memory.peak / 1e9,
        "peak_fraction_of_ram": memory.peak / ram,
        "max_residual": float(norms.max()),
    }
    print(f"\n{elapsed:.1f} s: {throughput:.2f} GB/s of band; solveh_banded alone in memory "
          f"{reference:.2f} GB/s ({100 * result['throughput_ratio']:.0f}%); the same work "
          f"without Dask at most {same_work:.2f} GB/s ({100 * result['same_work_ratio']:.0f}%); "
          f"peak resident memory "
          f"{memory.peak / 1e9:.2f} GB = {100 * result['peak_fraction_of_ram']:.1f}% of RAM; "
          f"{tasks} tasks for {result['chunks']} chunks; largest relative residual "
          f"{result['max_residual']:.1e}")  # fmt: skip
    result["passed"] = (
        norms.shape == (n_systems,)
        and result["max_residual"] < 1e-12
        and result["peak_fraction_of_ram"] <= 0.25
    )
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="0.25 GB, runs in seconds")
    parser.add_argument("--total-gb", type=float, help="GB of band (default: 2x the RAM)")
    parser.add_argument("--chunk-mb", type=float, default=64.0, help="MB of band per chunk")
    parser.add_argument(
        "--scheduler",
        help="address of a running Dask scheduler, or 'threads' "
        "for Dask's local threaded scheduler (default: a LocalCluster)",
    )
    parser.add_argument("--workers", type=int, help="LocalCluster workers (default: cores)")
    args = parser.parse_args()
    main(args.quick, args.total_gb, args.chunk_mb, args.scheduler, args.workers)
