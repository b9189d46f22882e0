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

import re
import shutil
import subprocess

import numpy as np
import pytest
from gpu_host import PARAMETERS, instantiation, kind, signature

from banded_mnn._backends import _cupy

FIXED_BANDWIDTHS = (0, 1, 17, _cupy.SPECIALISED_MAX_BW)


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
    for c_type in ("float", "double"):
        for kernel in PARAMETERS:
            for fixed in FIXED_BANDWIDTHS if kernel != "band_copy" else (0,):
                lines.append(
                    f"template __global__ void {instantiation(kernel, c_type, fixed)}"
                    f"({signature(kernel, c_type)});"
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
