"""Run the CuPy backend's CUDA source on the host (test-only).

:class:`HostKernels` is the CuPy backend's kernel set with two things
replaced: arrays are NumPy arrays, and a launch calls the very same
``band_cholesky.cu`` compiled as host C++ with ``cuda_host/shim.h`` (one
shared library per (dtype, bandwidth) instantiation, built with g++ on first
use).  Everything else -- the public functions, validation, the GPU driver's
layouts, regimes and launch sequence, argument typing -- is the production
code.

``PARAMETERS`` spells out each kernel's C++ parameter list; it is checked
against the backend's ``SIGNATURES`` and used for nvcc's explicit
instantiations as well.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from banded_mnn._backends import _cupy

HOST = Path(__file__).resolve().parent / "cuda_host"

_FACTOR = [
    "T*",
    "const long long*",
    "long long",
    "long long",
    "long long",
    "long long",
    "int",
    "T*",
    "const long long*",
    "long long",
    "long long",
    "long long",
    "int*",
    "long long",
]
PARAMETERS = {
    "band_copy": ["const T*", "const long long*", "long long", "long long",
                  "T*", "const long long*", "long long", "long long",
                  "long long", "long long", "int", "int", "int*", "const int*", "long long"],
    "band_factor_solve": _FACTOR,
    "band_factor_solve_warp": _FACTOR,
    "band_factor_window": ["const T*", "const long long*", "long long", "long long",
                           "T*", "const long long*", "long long", "long long", "long long",
                           "T*", "const long long*", "long long", "int", "int*", "long long"],
    "band_substitute_window": ["const T*", "const long long*", "long long", "long long",
                               "long long", "T*", "const long long*", "long long", "long long",
                               "long long", "int", "long long"],
}  # fmt: skip

#: Kernels that synchronise their threads (launched with one host thread per CUDA thread).
COOPERATIVE = {"band_factor_solve_warp", *_cupy.WINDOW_KERNELS}


def kind(parameter: str) -> str:
    return "p" if parameter.endswith("*") else ("q" if parameter == "long long" else "i")


def c_type(dtype: np.dtype) -> str:
    return _cupy._C_TYPES[np.dtype(dtype)]


def instantiation(kernel: str, dtype: np.dtype, fixed_bw: int) -> str | None:
    """The template instantiation the backend asks NVRTC for (its own name
    expression), or None where the backend compiles no such kernel."""
    return _cupy.name_expressions(np.dtype(dtype), fixed_bw).get(kernel)


def signature(kernel: str, c_type: str) -> str:
    return ", ".join(p.replace("T*", c_type + "*") for p in PARAMETERS[kernel])


def _wrapper(kernel: str, dtype: np.dtype, fixed_bw: int) -> str:
    params = [p.replace("T*", c_type(dtype) + "*") for p in PARAMETERS[kernel]]
    names = [f"a{i}" for i in range(len(params))]
    cooperative = "true" if kernel in COOPERATIVE else "false"
    return (
        f'extern "C" void host_{kernel}(unsigned grid, unsigned block, '
        + ", ".join(f"{p} {n}" for p, n in zip(params, names, strict=True))
        + f") {{\n    launch(grid, block, {cooperative}, [&] {{ "
        + f"{instantiation(kernel, dtype, fixed_bw)}({', '.join(names)}); }});\n}}\n"
    )


_BUILD = Path(tempfile.mkdtemp(prefix="banded_mnn_cuda_host_"))


@functools.cache
def library(dtype: np.dtype, fixed_bw: int) -> ctypes.CDLL:
    """The host build of the .cu for one (dtype, BW), compiled on first use."""
    if shutil.which("g++") is None:
        raise RuntimeError("the host harness needs g++ (it is on the CI machine)")
    unit = _BUILD / f"host_{c_type(dtype)}_{fixed_bw}.cpp"
    unit.write_text(
        f'#include "{HOST / "shim.h"}"\n#include "{_cupy.SOURCE_PATH}"\n'
        + "".join(
            _wrapper(kernel, dtype, fixed_bw)
            for kernel in PARAMETERS
            if instantiation(kernel, dtype, fixed_bw) is not None
        )
    )
    so = unit.with_suffix(".so")
    subprocess.run(
        ["g++", "-O1", "-std=c++20", "-shared", "-fPIC", "-pthread", "-o", str(so), str(unit)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    lib = ctypes.CDLL(str(so))
    for kernel in PARAMETERS:
        if instantiation(kernel, dtype, fixed_bw) is not None:
            getattr(lib, f"host_{kernel}").restype = None
    return lib


def _c_argument(kind_: str, value):
    if kind_ == "p":
        if value is None:
            return ctypes.c_void_p(None)
        assert isinstance(value, np.ndarray), type(value)
        return ctypes.c_void_p(value.ctypes.data)
    return ctypes.c_longlong(int(value)) if kind_ == "q" else ctypes.c_int(int(value))


class HostKernels(_cupy.CupyKernels):
    """The CuPy backend's kernel set, run on the host (see the module docstring)."""

    def __init__(self, multiprocessors: int = 2) -> None:
        self.xp = np
        self._multiprocessors = multiprocessors
        self.launches: list[tuple[str, int, int]] = []

    def multiprocessors(self) -> int:
        return self._multiprocessors

    def device(self, x):
        return contextlib.nullcontext()

    def launch(self, kernel, dtype, bw, grid, block, args) -> None:
        if kernel in COOPERATIVE:
            assert block == 32
        typed = _cupy._kernel_arguments(_cupy.SIGNATURES[kernel], args)  # the production typing
        fixed = _cupy.specialised_bandwidth(bw)
        lib = library(np.dtype(dtype), fixed)
        self.launches.append((kernel, grid, block))
        getattr(lib, f"host_{kernel}")(
            ctypes.c_uint(grid), ctypes.c_uint(block),
            *(_c_argument(k, None if isinstance(v, np.uint64) else v)
              for k, v in zip(_cupy.SIGNATURES[kernel], typed, strict=True)),
        )  # fmt: skip
