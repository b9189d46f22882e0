"""Shared pieces of the asv suite: problem sizes, inputs and backends.

Every benchmark class derives from :class:`BackendBenchmark`, which is
parametrised over

* ``backend`` -- ``"numba"`` is banded_mnn's CPU backend (the public functions
  called with ``backend="numba"``); ``"scipy"`` is the baseline, a Python loop
  over the batch of ``scipy.linalg.solveh_banded`` / ``cholesky_banded`` /
  ``cho_solve_banded``, so that every graph shows it;
* ``(B, M, u)`` -- batch size, matrix order and number of off-diagonals;
* ``dtype`` -- ``"float32"`` or ``"float64"``.

GPU backends (``"cupy"``, ``"numba-cuda"``) take the same inputs copied to the
device once in ``setup``, and every measurement waits for the device.  A
backend that cannot run here (no GPU, CuPy not installed, an import that
fails) raises :class:`NotImplementedError` in ``setup``, which asv records as
skipped (``n/a``) rather than failed.

Timings use Numba's default thread count (all cores unless
``NUMBA_NUM_THREADS`` is set).  The SciPy loop runs with BLAS limited to one
thread in-process (``threadpoolctl``, :func:`banded_mnn._cli.one_blas_thread`),
its best configuration: its many small LAPACK calls do not profit from BLAS
threads, which made the loop about 3x slower (and much noisier) on the
project's 2-core machine.  ``banded-mnn info`` prints Numba's thread count.

Set ``BANDED_MNN_ASV_BACKENDS`` (comma separated; default
``numba,scipy,cupy,numba-cuda``) to benchmark another list of backends.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

from banded_mnn._cli import one_blas_thread
from banded_mnn.problems import mnn_normal_band, random_spd_band

__all__ = [
    "BACKENDS",
    "CASES",
    "DTYPES",
    "Backend",
    "BackendBenchmark",
    "GpuBackend",
    "get_backend",
    "make_problem",
]

#: Backend parameter values (see the module docstring).
BACKENDS: tuple[str, ...] = tuple(
    name.strip()
    for name in os.environ.get("BANDED_MNN_ASV_BACKENDS", "numba,scipy,cupy,numba-cuda").split(",")
    if name.strip()
)

#: Problem sizes (B, M, u): an S-MNN layer's batch (T = 256 steps, block 9),
#: a long sequence with a small batch (T = 2048), and many small systems
#: (T = 50, block 3) where per-call overhead matters.
CASES: tuple[tuple[int, int, int], ...] = (
    (256, 2304, 17),
    (16, 18432, 17),
    (1536, 150, 5),
    # Few or one long system (fewer systems than threads: the one-system kernel).
    (2, 100_000, 17),
    (1, 100_000, 17),
    (1, 1_000_000, 5),
)

DTYPES: tuple[str, ...] = ("float32", "float64")

#: Seed of every generated problem (float32 problems are the float64 ones rounded).
SEED = 0

#: Inputs are generated this many bytes of band at a time, so that the
#: generator's temporaries do not dominate the ``peakmem_`` benchmarks.
_GENERATION_CHUNK_BYTES = 1 << 20


# --------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------


def make_problem(
    case: tuple[int, int, int], dtype: str, nrhs: int = 1, seed: int = SEED
) -> tuple[np.ndarray, np.ndarray]:
    """``(ab, b)`` for one size: ``B`` SPD band matrices (upper form) and right-hand sides.

    ``ab`` has shape ``(B, u + 1, M)`` and ``b`` shape ``(B, M, nrhs)``, both C
    contiguous in ``dtype``.  When ``(M, u)`` is MNN-shaped (``u = 2 n - 1``
    with ``n`` dividing ``M``) the matrices are
    :func:`banded_mnn.problems.mnn_normal_band` normal equations with block
    size ``n``; otherwise they are :func:`banded_mnn.problems.random_spd_band`.
    The result depends only on the arguments.
    """
    batch, m, u = case
    dtype_ = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    block = (u + 1) // 2
    mnn_shaped = u % 2 == 1 and m % block == 0 and m // block >= 2
    ab = np.empty((batch, u + 1, m), dtype=dtype_)
    b = np.empty((batch, m, nrhs), dtype=dtype_)
    chunk = max(1, _GENERATION_CHUNK_BYTES // ((u + 1) * m * 8))
    for start in range(0, batch, chunk):
        stop = min(start + chunk, batch)
        if mnn_shaped:
            ab[start:stop] = mnn_normal_band((stop - start,), m // block, block, rng=rng)
        else:
            ab[start:stop] = random_spd_band((stop - start,), m, u, rng=rng)
        b[start:stop] = rng.standard_normal((stop - start, m, nrhs))
    return ab, b


# --------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------


class Backend:
    """One implementation of the three routines, on batched NumPy-layout inputs.

    CPU backends work on NumPy arrays and finish before returning, so
    :meth:`asarray` and :meth:`synchronize` do nothing.  GPU backends
    (:class:`GpuBackend`) override :meth:`asarray` to copy inputs to the
    device once, in ``setup``, and :meth:`synchronize` to wait for the
    device's queued work, so that the time measured is that of the
    computation, not of its launch.
    """

    name: str = ""

    def asarray(self, x: np.ndarray) -> Any:
        """``x`` in the form this backend's routines take (on its device)."""
        return x

    def synchronize(self) -> None:
        """Wait until the work queued by this backend has finished (no-op on CPU)."""

    def cholesky_banded(self, ab: Any) -> Any:
        raise NotImplementedError

    def cho_solve_banded(self, cb: Any, b: Any) -> Any:
        raise NotImplementedError

    def solveh_banded(self, ab: Any, b: Any) -> Any:
        raise NotImplementedError


class BandedMnnBackend(Backend):
    """banded_mnn's public functions called with ``backend=name``."""

    def __init__(self, name: str) -> None:
        import banded_mnn

        self.name = name
        self._bm = banded_mnn
        # A tiny solve checks that banded_mnn knows the name (ValueError if not)
        # and that the backend's dependencies import (ImportError if not).
        try:
            x = banded_mnn.solveh_banded(
                np.array([[0.0, 1.0, 1.0], [4.0, 4.0, 4.0]]),
                np.array([5.0, 6.0, 5.0]),
                backend=name,
            )
        except (ImportError, ValueError) as exc:
            raise NotImplementedError(
                f"banded_mnn backend {name!r} is not usable here: {type(exc).__name__}: {exc}"
            ) from exc
        if not np.allclose(x, 1.0):
            raise RuntimeError(f"banded_mnn backend {name!r} solved a 3x3 test system wrongly: {x}")

    def cholesky_banded(self, ab):
        return self._bm.cholesky_banded(ab, backend=self.name)

    def cho_solve_banded(self, cb, b):
        return self._bm.cho_solve_banded((cb, False), b, backend=self.name)

    def solveh_banded(self, ab, b):
        return self._bm.solveh_banded(ab, b, backend=self.name)


class ScipyLoopBackend(Backend):
    """The baseline: SciPy's one-matrix routines in a Python loop over the batch.

    Results go into a preallocated output, the cheapest way to batch them.
    """

    name = "scipy"

    def __init__(self) -> None:
        try:
            import scipy.linalg
        except ImportError as exc:
            raise NotImplementedError(f"SciPy is not usable here: {exc}") from exc
        self._linalg = scipy.linalg

    # Each call limits BLAS to one thread in-process (threadpoolctl): SciPy's
    # best configuration for these many small BLAS calls.

    def cholesky_banded(self, ab):
        out = np.empty_like(ab)
        with one_blas_thread():
            for i in range(ab.shape[0]):
                out[i] = self._linalg.cholesky_banded(ab[i])
        return out

    def cho_solve_banded(self, cb, b):
        out = np.empty_like(b)
        with one_blas_thread():
            for i in range(b.shape[0]):
                out[i] = self._linalg.cho_solve_banded((cb[i], False), b[i])
        return out

    def solveh_banded(self, ab, b):
        out = np.empty_like(b)
        with one_blas_thread():
            for i in range(b.shape[0]):
                out[i] = self._linalg.solveh_banded(ab[i], b[i])
        return out


class GpuBackend(BandedMnnBackend):
    """banded_mnn's public functions on CuPy arrays with ``backend=name``.

    The routines are called with ``check_finite=False`` through the ``_ex``
    variants' no-wait path where SciPy semantics allow it, so that the time is
    the device's, not a host round trip's.  ``peakmem_`` numbers of a GPU
    backend are host memory and say little; device memory is reported in
    docs/performance.md from the GPU check script.
    """

    def __init__(self, name: str) -> None:
        usable, why = _gpu_usable(name)
        if not usable:
            raise NotImplementedError(f"GPU backend {name!r} is not usable here: {why}")
        import cupy

        import banded_mnn

        self.name = name
        self._bm = banded_mnn
        self._cupy = cupy

    def asarray(self, x):
        return self._cupy.asarray(x)

    def synchronize(self) -> None:
        self._cupy.cuda.get_current_stream().synchronize()

    def cholesky_banded(self, ab):
        return self._bm.cholesky_banded_ex(ab, check_finite=False, backend=self.name)[0]

    def cho_solve_banded(self, cb, b):
        return self._bm.cho_solve_banded((cb, False), b, check_finite=False, backend=self.name)

    def solveh_banded(self, ab, b):
        return self._bm.solveh_banded_ex(ab, b, check_finite=False, backend=self.name)[0]


@functools.cache
def _gpu_usable(name: str) -> tuple[bool, str]:
    from banded_mnn import _backends

    return _backends.usable(name)


def get_backend(name: str) -> Backend:
    """The :class:`Backend` called ``name``; :class:`NotImplementedError` if unusable here."""
    from banded_mnn import _backends

    if name == "scipy":
        return ScipyLoopBackend()
    if name in _backends.GPU_BACKENDS:
        return GpuBackend(name)
    return BandedMnnBackend(name)


# --------------------------------------------------------------------------
# Base class of the parametrised benchmarks
# --------------------------------------------------------------------------


class BackendBenchmark:
    """Base class: parameters, inputs, warm-up and device synchronisation.

    Subclasses implement :meth:`call` (the one operation measured) and may
    extend :meth:`prepare` (precomputation kept out of the measurement).
    Benchmark methods call :meth:`run`, which is :meth:`call` followed by
    :meth:`synchronize`, so a GPU backend's timer and memory high-water mark
    include the device work.  ``setup`` makes one untimed call first, which
    compiles (or loads from Numba's cache) the kernels for this dtype.

    ``peakmem_`` benchmarks report the process's maximum RSS, which includes
    the interpreter, the libraries the backend loads (Numba and LLVM add about
    110 MB that the SciPy loop does not load) and the inputs made in
    ``setup``; the inputs are generated in small chunks so that the
    generator's temporaries stay below the routine's own allocations.  Compare
    a backend with itself across sizes and commits rather than the absolute
    numbers of two backends.
    """

    params = (BACKENDS, CASES, DTYPES)
    param_names = ("backend", "(B, M, u)", "dtype")
    timeout = 300

    def setup(self, backend: str, case: tuple[int, int, int], dtype: str) -> None:
        self.backend = get_backend(backend)
        ab, b = make_problem(case, dtype)
        self.ab = self.backend.asarray(ab)
        self.b = self.backend.asarray(b)
        del ab, b
        self.prepare()
        self.run()  # warm-up: JIT compilation / cache load, first-touch of buffers

    def prepare(self) -> None:
        """Untimed precomputation after the inputs exist (nothing by default)."""

    def call(self) -> Any:
        raise NotImplementedError

    def synchronize(self) -> None:
        """Wait for the backend's queued work; a no-op for the CPU backends."""
        self.backend.synchronize()

    def run(self) -> None:
        """The measured unit: the operation, then synchronisation (result dropped)."""
        self.call()
        self.synchronize()
