"""The "cupy" backend: the CUDA C++ kernels of ``cuda/band_cholesky.cu`` as CuPy RawKernels.

The source is compiled at run time by NVRTC (through :class:`cupy.RawModule`),
one module per (device, dtype, half-bandwidth): the kernels are templates on
the element type and, up to :data:`SPECIALISED_MAX_BW`, on the bandwidth.
CuPy caches the compiled binaries on disk, and this module keeps the loaded
modules.  Kernels are launched on CuPy's current stream and on the device of
the arrays; nothing waits for the device (see :mod:`._gpu`).

Importing this module does not import CuPy; the first call does.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from . import _gpu

#: The kernels' source, shipped inside the package.
SOURCE_PATH = Path(__file__).with_name("cuda") / "band_cholesky.cu"

#: Half-bandwidths up to this are compiled into the kernels (one module per
#: value); wider bands use the kernels that read it from an argument.
SPECIALISED_MAX_BW = 32

#: NVRTC options (the architecture is added by CuPy for the current device).
OPTIONS = ("-std=c++17",)

#: Parameter kinds of each kernel, in order: ``p`` a pointer (an array, or
#: ``None`` for a null pointer), ``q`` a ``long long``, ``i`` an ``int``.
SIGNATURES = {
    "band_copy": "ppqqppqqqqiippq",
    "band_factor_solve": "ppqqqqippqqqpq",
    "band_factor_solve_warp": "ppqqqqippqqqpq",
    "band_factor_window": "ppqqppqqqppqipq",
    "band_substitute_window": "ppqqqppqqqiq",
}

#: The register-window kernels (the warp regime up to this half-bandwidth).
WINDOW_KERNELS = ("band_factor_window", "band_substitute_window")

#: The most blocks a launch may have in x (CUDA's limit).
MAX_GRID = 2**31 - 1

#: Threads per block of the copy and the thread-per-system kernels.
COPY_BLOCK = 256
THREAD_BLOCK = 128

_C_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}


def specialised_bandwidth(bw: int) -> int:
    """The template argument ``BW`` used for half-bandwidth ``bw`` (0: not fixed)."""
    return bw if 0 < bw <= SPECIALISED_MAX_BW else 0


def window_applies(bw: int) -> bool:
    """Whether the warp regime runs the register-window kernels for ``bw``: the
    band's ``bw + 1`` diagonals must fit in a warp's lanes, with ``bw`` fixed
    at compile time (the window's registers are indexed by constants)."""
    return 1 <= bw < _gpu.WARP and specialised_bandwidth(bw) == bw


def name_expressions(dtype: np.dtype, bw: int) -> dict[str, str]:
    """Kernel name -> the template instantiation compiled for (dtype, bw)."""
    c_type = _C_TYPES[np.dtype(dtype)]
    fixed = specialised_bandwidth(bw)
    names = {
        "band_copy": f"band_copy<{c_type}>",
        "band_factor_solve": f"band_factor_solve<{c_type}, {fixed}>",
        "band_factor_solve_warp": f"band_factor_solve_warp<{c_type}, {fixed}>",
    }
    if window_applies(bw):
        names.update({kernel: f"{kernel}<{c_type}, {fixed}>" for kernel in WINDOW_KERNELS})
    return names


@functools.cache
def _function(device_id: int, dtype: np.dtype, fixed_bw: int, kernel: str):
    """The RawKernel of one instantiation (looked up once per device)."""
    module, names = _module(device_id, dtype, fixed_bw)
    return module.get_function(names[kernel])


@functools.cache
def _multiprocessors(device_id: int) -> int:
    import cupy

    runtime = cupy.cuda.runtime
    return int(runtime.deviceGetAttribute(runtime.cudaDevAttrMultiProcessorCount, device_id))


@functools.cache
def source() -> str:
    return SOURCE_PATH.read_text()


@functools.cache
def _module(device_id: int, dtype: np.dtype, fixed_bw: int):
    """The loaded module for one device, dtype and ``BW`` (compiled on first use)."""
    import cupy

    del device_id  # part of the cache key: a module is loaded per device
    names = name_expressions(dtype, fixed_bw)
    module = cupy.RawModule(code=source(), options=OPTIONS, name_expressions=list(names.values()))
    module.compile()
    return module, names


class CupyKernels:
    """The kernel set of :mod:`._gpu`, launching the RawKernels on CuPy arrays."""

    def __init__(self) -> None:
        try:
            import cupy
        except ImportError as error:
            raise ImportError(
                "backend 'cupy' needs CuPy: pip install 'banded-mnn[cuda12]' (or [cuda13])"
            ) from error
        self.xp = cupy

    # -- what subclasses (the tests' host runner) replace -------------------
    def multiprocessors(self) -> int:
        return _multiprocessors(self.xp.cuda.Device().id)

    def launch(self, kernel: str, dtype: np.dtype, bw: int, grid: int, block: int, args) -> None:
        """Launch ``kernel`` for (dtype, bw) on the current device and stream."""
        function = _function(
            self.xp.cuda.Device().id, np.dtype(dtype), specialised_bandwidth(bw), kernel
        )
        function((grid,), (block,), _kernel_arguments(SIGNATURES[kernel], args))

    # -- the kernel set ------------------------------------------------------
    def copy(self, src, dst, rows, cols, mask, system_fastest, nonfinite, status=None) -> None:
        nsys = src.offsets.shape[0]
        total = nsys * rows * cols
        if total == 0:
            return
        dst_buf, dst_off, dst_strides = (
            (None, None, (0, 0)) if dst is None else (dst.buf, dst.offsets, dst.strides)
        )
        self.launch(
            "band_copy", src.buf.dtype, 0, -(-total // COPY_BLOCK), COPY_BLOCK,
            (src.buf, src.offsets, *src.strides, dst_buf, dst_off, *dst_strides,
             rows, cols, mask, int(system_fastest), nonfinite, status, nsys),
        )  # fmt: skip

    def reads_operands(self, regime: str, bw: int, band) -> bool:
        """Whether :meth:`factor_solve` reads ``band`` (the caller's array,
        as ``source``) itself, so that the driver skips the gather: the
        register-window kernels do where each column of the band is
        contiguous (unit stride along the diagonals, the workspace's own
        layout), so that a column entering the window is one coalesced load.
        NumPy's usual ``(..., u + 1, M)`` arrays are contiguous along rows of
        the band instead; read directly, every column would touch ``u + 1``
        cache lines, so they are gathered."""
        return regime == "warp" and window_applies(bw) and band.strides[1] == 1

    def factor_solve(self, regime, band, bw, do_factor, rhs, nrhs, info, source=None) -> None:
        nsys = band.offsets.shape[0]
        if nsys == 0:
            return
        if regime == "warp" and window_applies(bw):
            source = band if source is None else source
            self._factor_solve_window(band, bw, do_factor, rhs, nrhs, info, source)
            return
        if source is not None:
            raise ValueError(f"internal: the {regime} kernels take no source array")
        if regime == "thread":
            kernel, grid, block = "band_factor_solve", -(-nsys // THREAD_BLOCK), THREAD_BLOCK
        else:
            kernel, grid, block = "band_factor_solve_warp", nsys, _gpu.WARP
        self.launch(
            kernel, band.buf.dtype, bw, grid, block,
            (band.buf, band.offsets, *band.strides, band.shape[0], bw, int(do_factor),
             rhs.buf, rhs.offsets, *rhs.strides, nrhs, info, nsys),
        )  # fmt: skip

    def _factor_solve_window(self, band, bw, do_factor, rhs, nrhs, info, source) -> None:
        """The warp regime with the band window in registers: the factorisation
        (a warp per system, reading ``source`` and writing the factor to
        ``band``; one right-hand side's forward substitution fused), then the
        substitutions (a warp per system and right-hand side, reading the
        factor from ``band``, or from ``source`` when only solving)."""
        nsys, n, dtype = band.offsets.shape[0], band.shape[0], band.buf.dtype
        fused = do_factor and nrhs == 1
        if do_factor:
            self.launch(
                "band_factor_window", dtype, bw, nsys, _gpu.WARP,
                (source.buf, source.offsets, *source.strides,
                 band.buf, band.offsets, *band.strides, n,
                 rhs.buf if fused else None, rhs.offsets if fused else None,
                 rhs.strides[0] if fused else 0, int(fused), info, nsys),
            )  # fmt: skip
        factor = band if do_factor else source
        # A block per (system, right-hand side): systems in chunks that keep
        # the grid within CUDA's 2^31 - 1 blocks.
        chunk = max(1, MAX_GRID // max(nrhs, 1))
        for first in range(0, nsys if nrhs > 0 else 0, chunk):
            last = min(nsys, first + chunk)
            self.launch(
                "band_substitute_window", dtype, bw, (last - first) * nrhs, _gpu.WARP,
                (factor.buf, factor.offsets[first:last], *factor.strides, n, rhs.buf,
                 rhs.offsets[first:last], *rhs.strides, nrhs, int(not fused), last - first),
            )  # fmt: skip

    def device(self, x: Any):
        """A context that makes ``x``'s device current."""
        return x.device


def _kernel_arguments(kinds: str, args) -> tuple:
    """Arguments typed for a RawKernel, which packs them by their own type."""
    if len(kinds) != len(args):
        raise TypeError(f"internal: kernel takes {len(kinds)} arguments, got {len(args)}")
    typed = []
    for kind, value in zip(kinds, args, strict=True):
        if kind == "p":
            typed.append(np.uint64(0) if value is None else value)
        elif kind == "q":
            typed.append(np.int64(value))
        else:
            typed.append(np.int32(value))
    return tuple(typed)


#: The kernel set in use (tests substitute one that runs the same source on the host).
_kernels: CupyKernels | None = None


def kernels() -> CupyKernels:
    global _kernels
    if _kernels is None:
        _kernels = CupyKernels()
    return _kernels


#: The backend contract (see banded_mnn._backends), on the kernel set in use.
array_namespace, run, all_finite = _gpu.entry_points(kernels)


def usable() -> tuple[bool, str]:
    """Whether this backend can run here, and if not, why."""
    try:
        import cupy
    except ImportError as error:
        return False, f"CuPy is not installed ({error}); pip install 'banded-mnn[cuda12]'"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:
        return False, f"CuPy {cupy.__version__} finds no usable CUDA device ({error})"
    if count == 0:
        return False, f"CuPy {cupy.__version__} finds no CUDA device"
    return True, f"CuPy {cupy.__version__}, {count} device(s)"


class _RawStream:
    """A raw ``cudaStream_t`` address offered through the CUDA stream protocol."""

    def __init__(self, address: int) -> None:
        self.address = address

    def __cuda_stream__(self) -> tuple[int, int]:
        return (0, self.address)


@contextlib.contextmanager
def on_stream(device_id: int, stream: Any) -> Iterator[None]:
    """Make ``device_id`` CuPy's current device and a foreign stream its
    current stream, so that the kernels launched inside run in the caller's
    stream order (torch's current stream, XLA's stream).

    ``stream`` implements the CUDA stream protocol (``__cuda_stream__``, as
    recent torch streams do), has the address as ``cuda_stream`` (older torch
    streams) or is the raw address of a ``cudaStream_t`` (as JAX's
    ``ExecutionContext.stream``).
    """
    import cupy

    if isinstance(stream, int):
        stream = _RawStream(stream)
    elif not hasattr(stream, "__cuda_stream__"):  # torch before the stream protocol
        stream = _RawStream(stream.cuda_stream)
    with cupy.cuda.Device(device_id):
        if hasattr(cupy.cuda.Stream, "from_external"):  # CuPy >= 14: the CUDA stream protocol
            external = cupy.cuda.Stream.from_external(stream)
        else:  # CuPy 13 (ExternalStream is deprecated from 14 on)
            external = cupy.cuda.ExternalStream(stream.__cuda_stream__()[1], device_id)
        with external:
            yield
