"""``banded-mnn bench-dask``: the Dask path against the in-memory call, and
the per-task thread rule against oversubscription.

Measured side by side in one run (see docs/performance.md, "Dask"):

* the in-memory ``solveh_banded(ab, b)`` in this process, with all of
  Numba's threads;
* the same call on Dask arrays over the same data, chunked along the batch
  (``chunk_mb`` of band per chunk, at least 64 MB for the overhead figure):
  with Dask's local threaded scheduler over the in-memory arrays, and on a
  ``distributed.LocalCluster`` (one single-threaded worker process per core)
  holding the chunks in its workers' memory; both keep the results as
  chunks (``persist``: in this process, or in the workers);
* on the cluster, the thread rule (one kernel thread per task: Dask's Nanny
  sets ``OMP_NUM_THREADS=1``) against every task running all of Numba's
  threads (``BANDED_MNN_THREADS_PER_TASK`` = cores).

Each round calls every variant once in turn (the order alternating between
rounds); overheads are medians of the per-round ratios, so that the
machine's drift weighs on both sides alike.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable

import numpy as np

from . import _api, _dask
from .problems import random_spd_band

M, U = 2304, 17  # the demo's MNN-sized systems (T = 256 steps of block size 9)


def chunk_bands(index: np.ndarray, dtype: str = "float64") -> np.ndarray:
    """Band matrices (upper form) of systems ``index``, different per system
    and independent of the chunking (a task of the benchmark's graphs)."""
    base = random_spd_band((), M, U, rng=np.random.default_rng(7))
    scale = 1.0 + (index * 0.6180339887498949) % 1.0
    return (base[None] * scale[:, None, None]).astype(dtype)


def chunk_rhs(index: np.ndarray, dtype: str = "float64") -> np.ndarray:
    """Right-hand sides ``(n, M, 1)`` of systems ``index``."""
    return (np.cos(np.arange(M) * 0.01)[None, :] * (1.0 + index[:, None] % 5))[..., None].astype(
        dtype
    )


def _lazy_problem(batch: int, per_chunk: int, dtype: str):
    import dask.array as da

    index = da.arange(batch, chunks=per_chunk, dtype=np.int64)
    ab = index.map_blocks(chunk_bands, dtype, new_axis=[1, 2],
                          chunks=(index.chunks[0], (U + 1,), (M,)), dtype=dtype)  # fmt: skip
    b = index.map_blocks(chunk_rhs, dtype, new_axis=[1, 2],
                         chunks=(index.chunks[0], (M,), (1,)), dtype=dtype)  # fmt: skip
    return ab, b


def _same(block: np.ndarray) -> np.ndarray:
    return block


def _paired(
    functions: dict[str, Callable[[], object]],
    rounds: int,
    before: dict[str, Callable[[], object]] | None = None,
) -> dict[str, list[float]]:
    """Times of each function over ``rounds`` rounds, the order reversed
    every other round; ``before[name]``, if given, runs untimed first."""
    before = before or {}
    times: dict[str, list[float]] = {name: [] for name in functions}
    names = list(functions)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            if name in before:
                before[name]()
            start = time.perf_counter()
            functions[name]()
            times[name].append(time.perf_counter() - start)
    return times


def bench_dask(
    batch: int = 2048,
    chunk_mb: float = 85.0,
    dtype: str = "float64",
    rounds: int = 7,
    out: Callable[[str], None] = print,
) -> dict[str, float]:
    """Run the measurements; print a markdown table; return its figures
    (seconds, and ``overhead_*`` as fractions of the in-memory time)."""
    import dask.array as da
    import distributed

    itemsize = np.dtype(dtype).itemsize
    per_chunk = max(1, int(chunk_mb * 1e6 // ((U + 1) * M * itemsize)))
    cores = len(os.sched_getaffinity(0))
    lazy_ab, lazy_b = _lazy_problem(batch, per_chunk, dtype)
    ab, b = lazy_ab.compute(scheduler="sync"), lazy_b.compute(scheduler="sync")
    band_mb = per_chunk * (U + 1) * M * itemsize / 1e6
    out(f"solveh_banded, B = {batch}, M = {M}, u = {U}, {dtype}: {ab.nbytes / 1e9:.2f} GB of "
        f"band in chunks of {per_chunk} systems ({band_mb:.0f} MB); {cores} cores; "
        f"{rounds} rounds")  # fmt: skip
    dab = da.from_array(ab, chunks=(per_chunk, -1, -1))
    db = da.from_array(b, chunks=(per_chunk, -1, -1))
    cluster = distributed.LocalCluster(
        n_workers=cores, threads_per_worker=1, dashboard_address=None, silence_logs=logging.ERROR
    )
    with cluster, distributed.Client(cluster) as client:
        held_ab, held_b = client.persist([lazy_ab, lazy_b])  # the chunks in the workers
        distributed.wait([held_ab, held_b])

        def on_cluster():
            # Fresh keys each call (an identity layer under a new name, fused
            # into the solve's tasks), so that no call reuses the results of
            # the previous one that the scheduler may still hold.
            fresh = uuid.uuid4().hex
            ab_ = held_ab.map_blocks(_same, name=f"ab-{fresh}", meta=held_ab._meta)
            x = _api.solveh_banded(ab_, held_b).persist()
            distributed.wait(x)

        def set_threads(value: str | None) -> None:
            if value is None:
                os.environ.pop(_dask.THREADS_ENV, None)
            else:
                os.environ[_dask.THREADS_ENV] = value

        variants = {
            "in memory": lambda: _api.solveh_banded(ab, b),
            "Dask, threaded scheduler": lambda: _api.solveh_banded(dab, db).persist(
                scheduler="threads"
            ),
            "Dask, LocalCluster": on_cluster,
            "LocalCluster, all threads per task": on_cluster,
        }
        before = {  # the thread rule off (every task on all of Numba's threads) or on
            "Dask, LocalCluster": lambda: client.run(set_threads, None),
            "LocalCluster, all threads per task": lambda: client.run(set_threads, str(cores)),
        }
        for name, function in variants.items():  # warm-up: kernels loaded everywhere
            before.get(name, lambda: None)()
            function()
        times = _paired(variants, rounds, before)
        client.run(set_threads, None)
    base = np.array(times["in memory"])
    result: dict[str, float] = {"time_in_memory": float(np.median(base))}
    out("\n| variant | median [ms] | overhead over in memory (median of per-round ratios) |")
    out("|---|---:|---:|")
    out(f"| in memory, {cores} Numba threads | {np.median(base) * 1e3:.0f} | |")
    for name, key, label in (
        ("Dask, threaded scheduler", "threads", "Dask, threaded scheduler"),
        ("Dask, LocalCluster", "cluster", "Dask, LocalCluster (thread rule: 1 per task)"),
        ("LocalCluster, all threads per task", "cluster_oversubscribed",
         f"Dask, LocalCluster, {cores} kernel threads per task (rule off)"),
    ):  # fmt: skip
        t = np.array(times[name])
        overhead = float(np.median(t / base)) - 1.0
        result[f"time_{key}"], result[f"overhead_{key}"] = float(np.median(t)), overhead
        out(f"| {label} | {np.median(t) * 1e3:.0f} | {100 * overhead:+.1f}% |")
    rule = np.array(times["LocalCluster, all threads per task"]) / np.array(
        times["Dask, LocalCluster"]
    )
    result["oversubscribed_over_rule"] = float(np.median(rule)) - 1.0
    out(f"\nRule off against rule on (LocalCluster, median of per-round ratios): "
        f"{100 * result['oversubscribed_over_rule']:+.1f}%")  # fmt: skip
    return result
