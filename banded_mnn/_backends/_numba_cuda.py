"""The "numba-cuda" backend: the GPU kernels written with Numba CUDA.

The same three kernels as the CUDA C++ source (``cuda/band_cholesky.cu``),
with the same arguments and the same algorithm -- the strided batch copy,
one thread per system, one 32-thread block per system -- driven by the shared
GPU driver (:mod:`._gpu`).  Kernels are compiled by Numba per dtype and, up
to :data:`SPECIALISED_MAX_BW`, per half-bandwidth (a closure constant).

On a GPU the arrays are CuPy arrays, handed to Numba through
``__cuda_array_interface__`` without a copy and without Numba's
synchronisation on the array's stream, and the kernels go to CuPy's current
stream.  Under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) the backend
runs on NumPy arrays instead -- that is how it is tested on machines without
a GPU.

Importing this module imports ``numba.cuda`` (not CuPy).
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from typing import Any

import numba
import numpy as np
from numba import cuda
from numba.core.errors import NumbaPerformanceWarning

from . import _gpu

#: As in the CuPy backend: wider bands read the bandwidth from an argument.
SPECIALISED_MAX_BW = 32

COPY_BLOCK = 256
THREAD_BLOCK = 128

SIMULATED = bool(numba.config.ENABLE_CUDASIM)


@cuda.jit
def band_copy(
    src, src_off, src_r, src_c, dst, dst_off, dst_r, dst_c,
    rows, cols, mask, system_fastest, has_dst, nonfinite, has_probe, status, has_status, nsys,
):  # fmt: skip
    """Copy core (r, c) of every system; see ``band_copy`` in the .cu source."""
    e = cuda.grid(1)
    if e >= nsys * rows * cols:
        return
    if system_fastest:
        i = e % nsys
        c = (e // nsys) % cols
        r = e // (nsys * cols)
    else:
        c = e % cols
        r = (e // cols) % rows
        i = e // (rows * cols)
    if mask != 0 and r + c >= rows:
        if mask == 1 and has_dst:
            dst[dst_off[i] + r * dst_r + c * dst_c] = 0
        return
    if has_status and status[i] != 0:  # a failed system: NaN out
        dst[dst_off[i] + r * dst_r + c * dst_c] = math.nan
        return
    value = src[src_off[i] + r * src_r + c * src_c]
    if has_probe and not math.isfinite(value):
        nonfinite[0] = 1
    if has_dst:
        dst[dst_off[i] + r * dst_r + c * dst_c] = value


@functools.cache
def factor_kernels(fixed_bw: int, dtype: np.dtype):
    """The two factor-and-solve kernels with ``BW = fixed_bw`` (0: from the argument)."""
    scalar = numba.from_dtype(np.dtype(dtype))
    one, zero = np.dtype(dtype).type(1), np.dtype(dtype).type(0)  # typed: float32 stays float32
    warp = _gpu.WARP

    @cuda.jit
    def thread_per_system(
        band, band_off, band_sj, band_st, n, bw_arg, do_factor,
        rhs, rhs_off, rhs_sj, rhs_sk, nrhs, info, nsys,
    ):  # fmt: skip
        i = cuda.grid(1)
        if i >= nsys:
            return
        bw = fixed_bw if fixed_bw > 0 else bw_arg
        a0 = band_off[i]
        y0 = rhs_off[i] if nrhs > 0 else 0
        failed = 0
        for j in range(n):
            m = min(bw, n - 1 - j)
            p = a0 + j * band_sj
            d = band[p]
            if do_factor:  # a pivot that is not finite and > 0 fails (and counts as 1)
                if d > 0 and d < math.inf:
                    d = math.sqrt(d)
                else:
                    if failed == 0:
                        failed = j + 1
                    d = one
                band[p] = d
            r = one / d
            if do_factor:
                for t in range(1, m + 1):
                    band[p + t * band_st] *= r
                # Rank-1 update of the trailing triangle.
                for s in range(1, m + 1):
                    ls = band[p + s * band_st]
                    q = a0 + (j + s) * band_sj
                    for u in range(m - s + 1):
                        band[q + u * band_st] -= band[p + (s + u) * band_st] * ls
            for k in range(nrhs):  # forward substitution, column j
                yj = rhs[y0 + j * rhs_sj + k * rhs_sk] * r
                rhs[y0 + j * rhs_sj + k * rhs_sk] = yj
                for t in range(1, m + 1):
                    rhs[y0 + (j + t) * rhs_sj + k * rhs_sk] -= band[p + t * band_st] * yj
        if nrhs > 0:
            for jj in range(n):  # backward substitution
                j = n - 1 - jj
                m = min(bw, n - 1 - j)
                p = a0 + j * band_sj
                for k in range(nrhs):
                    acc = rhs[y0 + j * rhs_sj + k * rhs_sk]
                    for t in range(1, m + 1):
                        acc -= band[p + t * band_st] * rhs[y0 + (j + t) * rhs_sj + k * rhs_sk]
                    rhs[y0 + j * rhs_sj + k * rhs_sk] = acc / band[p]
        info[i] = failed  # (the scatter writes NaN for a failed system)

    @cuda.jit
    def warp_per_system(
        band, band_off, band_sj, band_st, n, bw_arg, do_factor,
        rhs, rhs_off, rhs_sj, rhs_sk, nrhs, info, nsys,
    ):  # fmt: skip
        i = cuda.blockIdx.x
        lane = cuda.threadIdx.x
        if i >= nsys:
            return
        bw = fixed_bw if fixed_bw > 0 else bw_arg
        part = cuda.shared.array(warp, dtype=scalar)
        recip = cuda.shared.array(1, dtype=scalar)
        failed = cuda.shared.array(1, dtype=numba.int32)
        a0 = band_off[i]
        y0 = rhs_off[i] if nrhs > 0 else 0
        if lane == 0:
            failed[0] = 0
        for j in range(n):
            m = min(bw, n - 1 - j)
            p = a0 + j * band_sj
            if lane == 0:
                d = band[p]
                if do_factor:
                    if d > 0 and d < math.inf:
                        d = math.sqrt(d)
                    else:
                        if failed[0] == 0:
                            failed[0] = j + 1
                        d = one
                    band[p] = d
                recip[0] = one / d
            cuda.syncthreads()
            r = recip[0]
            if do_factor:
                for t in range(1 + lane, m + 1, warp):
                    band[p + t * band_st] *= r
                cuda.syncthreads()
                # Column s of the trailing triangle, cells q = 0 .. m - s, dealt
                # round the threads (no division per cell).
                for s in range(1, m + 1):
                    ls = band[p + s * band_st]
                    for q in range(lane, m - s + 1, warp):
                        band[a0 + (j + s) * band_sj + q * band_st] -= (
                            band[p + (s + q) * band_st] * ls
                        )
            for k in range(nrhs):
                yj = rhs[y0 + j * rhs_sj + k * rhs_sk] * r
                cuda.syncthreads()
                if lane == 0:
                    rhs[y0 + j * rhs_sj + k * rhs_sk] = yj
                for t in range(1 + lane, m + 1, warp):
                    rhs[y0 + (j + t) * rhs_sj + k * rhs_sk] -= band[p + t * band_st] * yj
            cuda.syncthreads()
        if nrhs > 0:
            for jj in range(n):
                j = n - 1 - jj
                m = min(bw, n - 1 - j)
                p = a0 + j * band_sj
                for k in range(nrhs):
                    acc = zero
                    for t in range(1 + lane, m + 1, warp):
                        acc += band[p + t * band_st] * rhs[y0 + (j + t) * rhs_sj + k * rhs_sk]
                    part[lane] = acc
                    cuda.syncthreads()
                    acc = rhs[y0 + j * rhs_sj + k * rhs_sk]
                    for l in range(warp):
                        acc -= part[l]
                    acc /= band[p]
                    cuda.syncthreads()
                    if lane == 0:  # read again by lane 0 itself or after two more barriers
                        rhs[y0 + j * rhs_sj + k * rhs_sk] = acc
        if lane == 0:
            info[i] = failed[0]  # (the scatter writes NaN for a failed system)

    return thread_per_system, warp_per_system


@functools.cache
def _cyclic_kernels() -> dict[str, Any]:
    """The block-cyclic-reduction cores of :mod:`._cyclic_cores` as kernels, a
    thread per job (the CPU drivers of :mod:`._cyclic_cpu` run the same cores)."""
    from . import _cyclic_cores as cores

    factor = cuda.jit(device=True)(cores.factor_node)
    schur = cuda.jit(device=True)(cores.schur_node)
    forward = cuda.jit(device=True)(cores.forward_node)
    reduce = cuda.jit(device=True)(cores.reduce_node)
    backward = cuda.jit(device=True)(cores.backward_node)

    @cuda.jit
    def factor_node(jobs, d, c, chol, left, right, failed, one, m):
        job = cuda.grid(1)
        if job < jobs:
            factor(job, d, c, chol, left, right, failed, one, m)

    @cuda.jit
    def schur_node(jobs, d, left, right, d_next, c_next, m):
        job = cuda.grid(1)
        if job < jobs:
            schur(job, d, left, right, d_next, c_next, m)

    @cuda.jit
    def forward_node(jobs, chol, r, y, fmap, m):
        job = cuda.grid(1)
        if job < jobs:
            forward(job, chol, r, y, fmap, m)

    @cuda.jit
    def reduce_node(jobs, left, right, y, r, r_next, fmap, m):
        job = cuda.grid(1)
        if job < jobs:
            reduce(job, left, right, y, r, r_next, fmap, m)

    @cuda.jit
    def backward_node(jobs, chol, left, right, y, x_even, x, fmap, m):
        job = cuda.grid(1)
        if job < jobs:
            backward(job, chol, left, right, y, x_even, x, fmap, m)

    return {
        "factor_node": factor_node,
        "schur_node": schur_node,
        "forward_node": forward_node,
        "reduce_node": reduce_node,
        "backward_node": backward_node,
    }


@functools.cache
def _per_system_kernels() -> dict[str, Any]:
    """Per-system cores written once for the CPU and the GPU, as kernels (a
    thread per system): the band Cholesky's reverse sweep (:mod:`.._vjp`)."""
    from .. import _vjp

    reverse = cuda.jit(device=True)(_vjp.cholesky_reverse_system)

    @cuda.jit
    def cholesky_reverse(systems, c, g, u, half):
        s = cuda.grid(1)
        if s < systems:
            reverse(s, c, g, u, half)

    return {"cholesky_reverse": cholesky_reverse}


def run_per_system(function: str, systems: int, *arrays) -> None:
    """Run per-system kernel ``function`` on ``systems`` systems, on CuPy's
    current stream and the first array's device (NumPy arrays under the
    simulator)."""
    if systems:
        launcher = kernels()
        with launcher.device(arrays[0]):
            launcher._launch(_per_system_kernels()[function], -(-systems // THREAD_BLOCK),
                             THREAD_BLOCK, systems, *arrays)  # fmt: skip


def run_cyclic_level(function: str, systems: int, m: int, *arrays) -> None:
    """Run core ``function`` over every job of a level of ``m`` nodes of
    ``systems`` systems, on CuPy's current stream (NumPy arrays under the
    simulator); the interface :mod:`banded_mnn._cyclic` drives."""
    from . import _cyclic_cores as cores

    total = cores.jobs(function, systems, m)
    if total:
        kernel = _cyclic_kernels()[function]
        launcher = kernels()
        with launcher.device(arrays[0]):  # the arrays' device, for Numba as for CuPy
            launcher._launch(kernel, -(-total // THREAD_BLOCK), THREAD_BLOCK, total, *arrays, m)


class NumbaCudaKernels:
    """The kernel set of :mod:`._gpu` with the Numba CUDA kernels."""

    def __init__(self) -> None:
        if SIMULATED:
            self.xp = np
            return
        try:
            import cupy
        except ImportError as error:
            raise ImportError(
                "backend 'numba-cuda' takes CuPy arrays and needs CuPy: "
                "pip install 'banded-mnn[cuda12]' (or [cuda13])"
            ) from error
        self.xp = cupy

    def multiprocessors(self) -> int:
        # The simulator's device has no attributes: count it as one multiprocessor.
        return int(getattr(cuda.get_current_device(), "MULTIPROCESSOR_COUNT", 1))

    def _launch(self, kernel, grid: int, block: int, *args) -> None:
        if SIMULATED:  # NumPy arguments; read-only ones are not copied back
            args = tuple(
                cuda.In(a) if isinstance(a, np.ndarray) and not a.flags.writeable else a
                for a in args
            )
            kernel[grid, block](*args)
            return
        stream = cuda.external_stream(self.xp.cuda.get_current_stream().ptr)
        args = tuple(
            cuda.as_cuda_array(a, sync=False) if hasattr(a, "__cuda_array_interface__") else a
            for a in args
        )
        with warnings.catch_warnings():
            # Few systems mean few blocks by design (the warp regime): Numba's
            # low-occupancy advice does not apply.
            warnings.simplefilter("ignore", NumbaPerformanceWarning)
            configured = kernel[grid, block, stream]
        configured(*args)

    def copy(self, src, dst, rows, cols, mask, system_fastest, nonfinite, status=None) -> None:
        nsys = src.offsets.shape[0]
        total = nsys * rows * cols
        if total == 0:
            return
        spare = self.xp.zeros(1, dtype=src.buf.dtype)
        dst_buf, dst_off, dst_strides = (
            (spare, src.offsets, (0, 0)) if dst is None else (dst.buf, dst.offsets, dst.strides)
        )
        # Numba needs arrays for the unused pointers; distinct ones, since the
        # simulator copies every array argument back after the launch.
        probe = self.xp.zeros(1, dtype=np.int32) if nonfinite is None else nonfinite
        failed = self.xp.zeros(1, dtype=np.int32) if status is None else status
        self._launch(
            band_copy, -(-total // COPY_BLOCK), COPY_BLOCK,
            src.buf, src.offsets, *src.strides, dst_buf, dst_off, *dst_strides,
            rows, cols, mask, system_fastest, dst is not None, probe, nonfinite is not None,
            failed, status is not None, nsys,
        )  # fmt: skip

    def reads_operands(self, regime: str, bw: int, band) -> bool:
        """False: these kernels work in place on the gathered workspace."""
        return False

    def factor_solve(self, regime, band, bw, do_factor, rhs, nrhs, info, source=None) -> None:
        if source is not None:
            raise ValueError("internal: the numba-cuda kernels take no source array")
        nsys = band.offsets.shape[0]
        if nsys == 0:
            return
        fixed = bw if 0 < bw <= SPECIALISED_MAX_BW else 0
        thread_kernel, warp_kernel = factor_kernels(fixed, np.dtype(band.buf.dtype))
        if regime == "thread":
            kernel, grid, block = thread_kernel, -(-nsys // THREAD_BLOCK), THREAD_BLOCK
        else:
            kernel, grid, block = warp_kernel, nsys, _gpu.WARP
        self._launch(
            kernel, grid, block,
            band.buf, band.offsets, *band.strides, band.shape[0], bw, do_factor,
            rhs.buf, rhs.offsets, *rhs.strides, nrhs, info, nsys,
        )  # fmt: skip

    def device(self, x: Any):
        """A context that makes ``x``'s device current (for CuPy and Numba)."""
        if SIMULATED:
            return contextlib.nullcontext()
        return _both_devices(x.device.id)


@contextlib.contextmanager
def _both_devices(device_id: int):
    import cupy

    with cupy.cuda.Device(device_id), cuda.gpus[device_id]:
        yield


_kernels: NumbaCudaKernels | None = None


def kernels() -> NumbaCudaKernels:
    global _kernels
    if _kernels is None:
        _kernels = NumbaCudaKernels()
    return _kernels


#: The backend contract (see banded_mnn._backends), on the kernel set in use.
array_namespace, run, all_finite = _gpu.entry_points(kernels)


def usable() -> tuple[bool, str]:
    """Whether this backend can run here, and if not, why."""
    if SIMULATED:
        return True, "Numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1): NumPy arrays, no GPU"
    try:
        import cupy  # noqa: F401 - the arrays this backend takes
    except ImportError as error:
        return False, f"CuPy (for the arrays) is not installed ({error})"
    try:
        available = cuda.is_available()
    except Exception as error:
        return False, f"numba-cuda finds no usable CUDA device ({error})"
    if not available:
        return False, "numba-cuda finds no usable CUDA device or driver"
    name = cuda.get_current_device().name  # str in numba-cuda >= 0.20, bytes before
    name = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
    return True, f"numba-cuda, {name}"
