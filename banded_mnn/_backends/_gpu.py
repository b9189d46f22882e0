"""The GPU driver shared by the two GPU backends ("cupy" and "numba-cuda").

A GPU backend supplies a *kernel set* (:class:`KernelSet`): the array module
(CuPy), three kernels -- the strided batch copy and the two factor-and-solve
kernels -- and the device's multiprocessor count.  Everything else is here,
once for both: the choice of regime, the workspace layouts, the order of the
launches and the status.

One call of :func:`run` is

1. a *gather*: the band (and the right-hand sides) are copied from the
   caller's arrays, at any strides and with broadcast batch axes, into a
   workspace laid out for the regime; the copy also probes for non-finite
   values when asked to check.  Kernels that read the caller's band
   themselves (:meth:`KernelSet.reads_operands`: the CUDA C++ backend's
   register window, where each column of the band is contiguous) skip the
   band's gather, leaving only the probe;
2. the factor-and-solve kernel, in place on the workspace (or reading the
   caller's band and writing the factor to the workspace; solving only,
   reading the caller's factor);
3. a *scatter* of the factor and the solutions into the outputs, with NaN
   for every value of a system that failed.

Regimes (:func:`choose_regime`):

* ``"thread"`` -- one thread per system, for many systems.  The workspace is
  interleaved by system (element ``(j, t)`` of system ``i`` at
  ``(j * width + t) * nsys + i``), so neighbouring threads touch neighbouring
  addresses at every step: coalesced.
* ``"warp"`` -- one 32-thread block per system, for few systems.  The
  workspace is contiguous per system (``(i * n + j) * width + t``), so the
  threads of a block, which share out the band of one column, read
  neighbouring addresses.

Every launch goes to the current stream of the backend's framework, and
nothing here waits for the device unless the caller asked for a check
(``check_finite``): the per-system ``info`` stays on the device.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from .._strided import StridedBatch, to_numpy

#: ``mask`` values of the copy kernel (see ``cuda/band_cholesky.cu``).
COPY_ALL, GATHER_BAND, SCATTER_BAND = 0, 1, 2

#: Threads per system in the warp regime (the .cu's BAND_WARP).
WARP = 32

#: Systems per multiprocessor below which the warp regime is used.  With
#: fewer than this many systems per multiprocessor, one thread per system
#: leaves most of each multiprocessor idle, while a warp per system puts 32
#: threads on every column.  Not calibrated on a GPU yet (none was available
#: when it was set); ``tools/gpu_check.py`` times both regimes so that it can be.
WARP_REGIME_SYSTEMS_PER_SM = 64


class KernelSet(Protocol):
    """What a GPU backend provides (see the module docstring)."""

    xp: Any

    def multiprocessors(self) -> int: ...

    def copy(
        self,
        src: StridedBatch,
        dst: StridedBatch | None,
        rows: int,
        cols: int,
        mask: int,
        system_fastest: bool,
        nonfinite: Any,
        status: Any = None,
    ) -> None: ...

    def device(self, x: Any) -> Any:
        """A context manager that makes the device of array ``x`` current."""
        ...

    def reads_operands(self, regime: str, bw: int, band: StridedBatch) -> bool:
        """Whether :meth:`factor_solve` reads the caller's ``band`` (as
        ``source``) itself, so that :func:`run` skips the gather into the
        workspace."""
        ...

    def factor_solve(
        self,
        regime: str,
        band: StridedBatch,
        bw: int,
        do_factor: bool,
        rhs: StridedBatch,
        nrhs: int,
        info: Any,
        source: StridedBatch | None = None,
    ) -> None:
        """Factor ``band`` in place and/or solve; with ``source`` (only where
        :meth:`reads_operands`), read the band (or, solving only, the factor)
        from ``source`` and write the factor to ``band``."""
        ...


def choose_regime(nsys: int, multiprocessors: int) -> str:
    """``"thread"`` (one thread per system) or ``"warp"`` (one warp per system)."""
    return "warp" if nsys < WARP_REGIME_SYSTEMS_PER_SM * multiprocessors else "thread"


#: With fewer systems than fill the device (the warp regime), block systems
#: of at least this many block rows are solved by block cyclic reduction
#: (``algorithm=None`` of the MNN layer and of ``solveh_block_banded``).  The
#: band Cholesky is then a chain of ``T n`` dependent column steps per
#: system, cyclic reduction about ``log2 T`` levels of a few launches each
#: (``docs/performance.md``, the GPU model).  Not calibrated on a GPU yet:
#: ``tools/gpu_check.py`` sweeps it.
CYCLIC_MIN_STEPS = 128


def choose_algorithm(nsys: int, steps: int, multiprocessors: int) -> str:
    """``"cyclic"`` for few, long block systems, else ``"sequential"``."""
    if nsys == 0:
        return "sequential"
    regime = choose_regime(nsys, multiprocessors)
    return "cyclic" if regime == "warp" and steps >= CYCLIC_MIN_STEPS else "sequential"


def workspace(xp: Any, dtype: np.dtype, nsys: int, n: int, width: int, regime: str) -> StridedBatch:
    """A fresh workspace for ``nsys`` cores of shape ``(n, width)`` in the regime's layout."""
    buf = xp.empty(max(nsys * n * width, 1), dtype=dtype)
    systems = xp.arange(nsys, dtype=np.int64)
    if regime == "thread":
        return StridedBatch(buf, systems, (n, width), (width * nsys, nsys))
    return StridedBatch(buf, systems * (n * width), (n, width), (width, 1))


def run(
    kernels: KernelSet,
    band: StridedBatch,
    bw: int,
    *,
    factor: bool,
    factor_out: StridedBatch | None,
    rhs: StridedBatch | None,
    out: StridedBatch | None,
    check_finite: bool = False,
    regime: str | None = None,
) -> tuple[Any, tuple[bool, bool]]:
    """Factor and/or solve every system described by ``band`` (and ``rhs``).

    The contract of the CPU backend's ``run``: ``band`` addresses
    ``(j, t) -> A[j + t, j]``, ``factor_out`` receives the factor, ``out`` the
    solutions.  Returns ``info`` (int32, on the device) and whether a
    non-finite value was read from the band and from the right-hand side
    (computed, and waited for, only with ``check_finite``).
    """
    xp = kernels.xp
    dtype = band.buf.dtype
    nsys, n = band.offsets.shape[0], band.shape[0]
    width = bw + 1
    if regime is None:
        regime = choose_regime(nsys, kernels.multiprocessors())
    system_fastest = regime == "thread"
    info = xp.zeros(nsys, dtype=np.int32)
    flags = xp.zeros(2, dtype=np.int32) if check_finite else None
    probe = flags[0:1] if check_finite else None
    direct = kernels.reads_operands(regime, bw, band)
    if direct:  # the kernels read the caller's band: no gather (a probe when checking)
        work = workspace(xp, dtype, nsys, n, width, regime) if factor else band
        if check_finite:
            kernels.copy(band, None, n, width, GATHER_BAND, system_fastest, probe)
    else:
        work = workspace(xp, dtype, nsys, n, width, regime)
        kernels.copy(band, work, n, width, GATHER_BAND, system_fastest, probe)
    if rhs is not None:
        nrhs = rhs.shape[1]
        rhs_work = workspace(xp, dtype, nsys, n, nrhs, regime)
        probe = flags[1:2] if check_finite else None
        kernels.copy(rhs, rhs_work, n, nrhs, COPY_ALL, system_fastest, probe)
    else:
        nrhs, rhs_work = 0, StridedBatch.dummy(dtype, nsys, xp)
    source = band if direct else None
    kernels.factor_solve(regime, work, bw, factor, rhs_work, nrhs, info, source=source)
    # The scatters write NaN for the systems that failed (info != 0).
    if factor_out is not None:
        kernels.copy(work, factor_out, n, width, SCATTER_BAND, system_fastest, None, info)
    if out is not None:
        kernels.copy(rhs_work, out, n, nrhs, COPY_ALL, system_fastest, None, info)
    if check_finite:
        bad_band, bad_rhs = (int(v) for v in _to_host(flags))  # waits for the device
        return info, (bool(bad_band), bool(bad_rhs))
    return info, (False, False)


def all_finite(kernels: KernelSet, x: StridedBatch) -> bool:
    """True when every element of every core of ``x`` is finite (waits for the device)."""
    if x.size == 0:
        return True
    flag = kernels.xp.zeros(1, dtype=np.int32)
    kernels.copy(x, None, x.shape[0], x.shape[1], COPY_ALL, False, flag)
    return int(_to_host(flag)[0]) == 0


def entry_points(kernels: Callable[[], KernelSet]):
    """A GPU backend module's ``array_namespace``, ``run`` and ``all_finite``,
    on the kernel set ``kernels()`` returns (looked up at every call, so tests
    can substitute it), with the operands' device made current."""

    def array_namespace():
        return kernels().xp

    def run_on_device(band: StridedBatch, bw: int, **options):
        """Factor and/or solve (the backend contract; see :func:`run`)."""
        impl = kernels()
        with impl.device(band.buf):
            return run(impl, band, bw, **options)

    def all_finite_on_device(x: StridedBatch) -> bool:
        impl = kernels()
        with impl.device(x.buf):
            return all_finite(impl, x)

    return array_namespace, run_on_device, all_finite_on_device


def _to_host(x: Any) -> np.ndarray:
    return to_numpy(x)  # (a module-level name, so that tests can count the waits)
