"""The CUDA source of the "cupy" backend, compiled without a GPU.

* nvcc, for sm_80 and sm_90, with the ptxas resource report checked: no
  local-memory spills, for both dtypes, the bandwidth fixed at compile time
  (up to the largest specialised value) and read at run time;
* NVRTC (through cuda-bindings, which numba-cuda brings), with exactly the
  source, options and name expressions the backend hands to CuPy.

Running the kernels -- compiled as host C++ with the test shim -- is in
test_gpu_backends.py, through the public functions.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from gpu_host import PARAMETERS, c_type, instantiation, kind, signature

from banded_mnn._backends import _cupy, _gpu

FIXED_BANDWIDTHS = (0, 1, 17, 23, _gpu.WARP - 1, _cupy.SPECIALISED_MAX_BW)


def test_parameter_lists_match_the_backend_signatures():
    for kernel, parameters in PARAMETERS.items():
        assert "".join(kind(p) for p in parameters) == _cupy.SIGNATURES[kernel], kernel
    source = _cupy.source()
    for kernel in PARAMETERS:
        assert f"__global__ void {kernel}(" in source


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is on the CI machine")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_nvcc_compiles_without_spills(tmp_path, arch):
    lines = [f'#include "{_cupy.SOURCE_PATH}"']
    count = 0
    for dtype in (np.float32, np.float64):
        for kernel in PARAMETERS:
            for fixed in FIXED_BANDWIDTHS if kernel != "band_copy" else (0,):
                name = instantiation(kernel, dtype, fixed)
                if name is None:  # (the window kernels exist for 1 <= BW < 32 only)
                    continue
                lines.append(
                    f"template __global__ void {name}({signature(kernel, c_type(dtype))});"
                )
                count += 1
    unit = tmp_path / "instantiate.cu"
    unit.write_text("\n".join(lines) + "\n")
    result = subprocess.run(
        ["nvcc", f"-arch={arch}", "-std=c++17", "-cubin", "-Xptxas", "-v",
         "-o", str(tmp_path / "k.cubin"), str(unit)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", result.stderr)
    assert len(spills) == count, result.stderr  # one report per instantiation
    assert all(int(s) == 0 and int(l) == 0 for s, l in spills), result.stderr
    # The register window must stay in registers: no stack frame (a local
    # array indexed by a variable would be one) in the window kernels.
    functions = re.split(r"Compiling entry function", result.stderr)[1:]
    windows = [f for f in functions if "window" in f.split("\n")[0]]
    assert len(windows) == 2 * 2 * 4  # 2 kernels, 2 dtypes, 4 window bandwidths
    for report in windows:
        assert re.search(r"\b0 bytes stack frame", report), report


def _nvrtc():
    try:
        from cuda.bindings import nvrtc
    except ImportError:  # older cuda-python layout
        from cuda import nvrtc
    return nvrtc


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bw", [2, 17, 40])
def test_nvrtc_compiles_what_the_backend_asks_for(arch, dtype, bw):
    nvrtc = _nvrtc()
    names = _cupy.name_expressions(np.dtype(dtype), bw)
    err, program = nvrtc.nvrtcCreateProgram(_cupy.source().encode(), b"band_cholesky.cu", 0, [], [])
    assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS
    for name in names.values():
        (err,) = nvrtc.nvrtcAddNameExpression(program, name.encode())
        assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS
    options = [o.encode() for o in _cupy.OPTIONS] + [f"--gpu-architecture={arch}".encode()]
    (err,) = nvrtc.nvrtcCompileProgram(program, len(options), options)
    _, size = nvrtc.nvrtcGetProgramLogSize(program)
    log = b" " * size
    nvrtc.nvrtcGetProgramLog(program, log)
    assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS, log.decode(errors="replace")
    assert b"warning" not in log, log.decode(errors="replace")
    for name in names.values():
        err, lowered = nvrtc.nvrtcGetLoweredName(program, name.encode())
        assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS and lowered, name
    err, cubin_size = nvrtc.nvrtcGetCUBINSize(program)
    assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS and cubin_size > 0
    nvrtc.nvrtcDestroyProgram(program)


def _compile_launches(launches: list, dtype) -> set:
    """Compile every recorded (kernel, arguments) launch to PTX for sm_90 with
    the arguments' Numba types: no local memory (no spills), and no f64 in
    float32 kernels.  Returns the (kernel, signature) pairs compiled."""
    import numba
    from numba import cuda

    compiled = set()
    for kernel, args in launches:
        signature = tuple(numba.typeof(a) for a in args)
        if (kernel, signature) in compiled:
            continue
        ptx, _ = cuda.compile_ptx(kernel.py_func, signature, cc=(9, 0))
        assert ".entry" in ptx and ".local" not in ptx
        if dtype == np.float32:
            assert ".f64" not in ptx
        compiled.add((kernel, signature))
    return compiled


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bw", [3, 40])
def test_numba_cuda_kernels_compile_for_the_gpu(dtype, bw):
    """The simulator runs the Numba kernels as Python; this compiles them as the
    GPU would (to PTX for sm_90, no GPU needed) with the argument types of the
    backend's actual launches, captured from a run of the GPU driver."""

    from banded_mnn._backends import _gpu, _numba_cuda
    from banded_mnn._strided import StridedBatch

    launches = []
    kernels = object.__new__(_numba_cuda.NumbaCudaKernels)  # no CuPy: record, don't run
    kernels.xp = np
    kernels.multiprocessors = lambda: 1
    kernels._launch = lambda kernel, grid, block, *args: launches.append((kernel, args))
    ab = np.ones((3, bw + 1, 50), dtype=dtype)
    b = np.ones((3, 50, 2), dtype=dtype)
    band = StridedBatch.from_array(ab, (3,)).band_view(bw, lower=True)
    for regime in ("thread", "warp"):
        _gpu.run(kernels, band, bw, factor=True, factor_out=band,
                 rhs=StridedBatch.from_array(b, (3,)), out=StridedBatch.from_array(b, (3,)),
                 check_finite=True, regime=regime)  # fmt: skip
    compiled = _compile_launches(launches, dtype)
    assert len({kernel for kernel, _ in compiled}) == 3  # copy, thread and warp kernels


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numba_cuda_cyclic_kernels_compile_for_the_gpu(dtype, monkeypatch):
    """Block cyclic reduction's kernels (the shared per-node cores as device
    functions) compiled to PTX for sm_90 with the argument types of a real
    factorisation and solve: no local memory, no f64 in float32 kernels."""
    import contextlib
    import types

    import numba
    import numba.cuda.dispatcher

    from banded_mnn import _cyclic
    from banded_mnn._backends import _numba_cuda

    launches = []
    recorder = types.SimpleNamespace(
        _launch=lambda kernel, grid, block, *args: launches.append((kernel, args)),
        device=lambda x: contextlib.nullcontext(),
    )
    monkeypatch.setattr(_numba_cuda, "kernels", lambda: recorder)
    monkeypatch.setattr(
        _cyclic, "_level_kernels", lambda xp, backend=None: _numba_cuda.run_cyclic_level
    )
    a0 = np.broadcast_to(np.eye(3, dtype=dtype) * 4, (2, 5, 3, 3))
    factor = _cyclic.factor_tridiagonal(a0, np.zeros((2, 4, 3, 3), dtype))
    _cyclic.solve_tridiagonal(factor, np.ones((2, 5, 3, 1), dtype))
    # Device functions are compiled for the current device's compute capability:
    # there is none here, so say which.
    monkeypatch.setattr(numba.cuda.dispatcher, "get_current_device",
                        lambda: types.SimpleNamespace(compute_capability=(9, 0)))  # fmt: skip
    compiled = _compile_launches(launches, dtype)
    assert len({kernel for kernel, _ in compiled}) == 5  # factor, schur, forward, reduce, backward


def test_warp_kernel_has_no_data_races(tmp_path):
    """The warp-per-system kernel under ThreadSanitizer, with every CUDA thread
    a host thread (tests/cuda_host/race_check.cpp): a barrier missing between
    two threads' write and read is reported as a race."""
    if shutil.which("g++") is None:
        pytest.skip("g++ is on the CI machine")
    source = Path(__file__).resolve().parent / "cuda_host" / "race_check.cpp"
    binary = tmp_path / "race_check"
    subprocess.run(
        ["g++", "-O1", "-g", "-std=c++20", "-fsanitize=thread", "-pthread", "-o", str(binary),
         str(source)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    result = subprocess.run([str(binary)], capture_output=True, text=True, timeout=600,
                            env={"TSAN_OPTIONS": "halt_on_error=0 exitcode=66"})  # fmt: skip
    assert "ThreadSanitizer" not in result.stderr, result.stderr[-4000:]
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert "max difference" in result.stdout


@pytest.mark.parametrize("central", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mnn_layer_kernels_compile_for_the_gpu(dtype, central, monkeypatch, tmp_path):
    """The GPU MNN layer's kernels (assembly, singular-pivot test, VJP) and the
    band Cholesky VJP's reverse sweep, compiled to PTX for sm_90 with the
    argument types of a real forward and backward pass (recorded, not run):
    no local memory, no f64 in float32 kernels."""
    import types

    import numba
    import numba.cuda.dispatcher
    from gpu_host import HostKernels
    from test_mnn import random_problem

    from banded_mnn import _vjp
    from banded_mnn._backends import _cupy, _numba_cuda
    from banded_mnn.mnn import _cuda, _gpu, ode_forward

    launches = []
    monkeypatch.setattr(_cupy, "_kernels", HostKernels())  # the band kernels run on the host
    monkeypatch.setattr(_cuda, "_launch", lambda name, jobs, *args: launches.append(
        (_cuda._kernels()[name], (jobs, *args))))  # fmt: skip
    monkeypatch.setattr(_numba_cuda, "run_per_system", lambda name, systems, *args: launches.append(
        (_numba_cuda._per_system_kernels()[name], (systems, *args))))  # fmt: skip
    monkeypatch.setattr(_gpu, "capturing", lambda xp: True)  # (no status check: nothing ran)
    inputs = random_problem(np.random.default_rng(0), batch=(2,), T=5, dtype=dtype)
    u, system = ode_forward(*inputs, backend="cupy", enable_central_smoothness=central,
                            algorithm="sequential", return_system=True)  # fmt: skip
    system.vjp(np.ones(u.shape, dtype), u, *inputs)
    c = np.ones((2, 3, 7), dtype)
    _vjp.cholesky_gradient(c, c, True, backend="cupy")
    # Device functions are compiled for the current device: there is none here.
    monkeypatch.setattr(numba.cuda.dispatcher, "get_current_device",
                        lambda: types.SimpleNamespace(compute_capability=(9, 0)))  # fmt: skip
    compiled = _compile_launches(launches, dtype)
    assert len({kernel for kernel, _ in compiled}) == 4  # assemble, singular, vjp, reverse
    if shutil.which("ptxas") is None:
        return  # (the CI machine has it, with nvcc)
    for kernel, types_ in compiled:  # and to machine code: no spills on sm_80 and sm_90
        for cc in ((8, 0), (9, 0)):
            ptx, _ = numba.cuda.compile_ptx(kernel.py_func, types_, cc=cc)
            source = tmp_path / "kernel.ptx"
            source.write_text(ptx)
            report = subprocess.run(
                ["ptxas", f"-arch=sm_{cc[0]}{cc[1]}", "-v", str(source), "-o", os.devnull],
                capture_output=True,
                text=True,
                check=True,
            ).stderr
            spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report)
            assert spills and all(a == "0" and b == "0" for a, b in spills), report
