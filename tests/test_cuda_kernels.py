"""The CUDA sources of banded_mnn/_backends/cuda/, verified without a GPU.

* compiled by nvcc for sm_80 and sm_90, with the ptxas resource report
  checked (no local-memory spills);
* compiled as host C++ with a test-only shim (tests/cuda_host/) that runs
  every CUDA thread as a host thread, called through ctypes on small problems
  and compared with SciPy.

Nothing here needs a GPU; nothing is skipped on the CI machine, which has
nvcc and g++.
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from banded_mnn._strided import StridedBatch
from banded_mnn.problems import random_spd_band
from conftest import scipy_cholesky, scipy_solve

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "banded_mnn" / "_backends" / "cuda" / "band_cholesky.cu"
HOST = Path(__file__).resolve().parent / "cuda_host"

KERNELS = ("band_factor_solve", "band_factor_solve_warp")
_SIGNATURE = ("(T*, const long long*, long long, long long, long long, long long, int, T*, "
              "const long long*, long long, long long, long long, int*, long long)")  # fmt: skip


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is on the CI machine")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_nvcc_compiles_without_spills(tmp_path, arch):
    unit = tmp_path / "instantiate.cu"
    unit.write_text(
        f'#include "{SOURCE}"\n'
        + "".join(
            f"template __global__ void {kernel}<{t}>{_SIGNATURE.replace('T*', t + '*')};\n"
            for kernel in KERNELS
            for t in ("float", "double")
        )
    )
    result = subprocess.run(
        ["nvcc", f"-arch={arch}", "-cubin", "-Xptxas", "-v", "-o", str(tmp_path / "k.cubin"),
         str(unit)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = result.stderr
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report)
    assert len(spills) == 2 * len(KERNELS), report  # one line per instantiation
    assert all(int(s) == 0 and int(l) == 0 for s, l in spills), report


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("g++ is on the CI machine")
    library = tmp_path_factory.mktemp("cuda_host") / "libharness.so"
    subprocess.run(
        ["g++", "-O1", "-std=c++20", "-shared", "-fPIC", "-pthread", "-o", str(library),
         str(HOST / "harness.cpp")],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    lib = ctypes.CDLL(str(library))
    for name in ("band_factor_solve_f64", "band_factor_solve_f32"):
        getattr(lib, name).restype = None
    return lib


def _pointer(array: np.ndarray):
    return ctypes.c_void_p(array.ctypes.data)


def run_kernel(lib, band: StridedBatch, bw: int, do_factor: bool, rhs: StridedBatch | None,
               block: int = 8) -> np.ndarray:  # fmt: skip
    """Launch ``band_factor_solve`` on the host (``block=0``: the warp-per-system
    kernel); returns ``info``."""
    nsys = band.offsets.shape[0]
    info = np.full(nsys, -1, dtype=np.int32)
    if rhs is None:
        rhs = StridedBatch.dummy(band.buf.dtype, nsys)
    function = (
        lib.band_factor_solve_f64 if band.buf.dtype == np.float64 else lib.band_factor_solve_f32
    )
    c_ll = ctypes.c_longlong
    function(
        _pointer(band.buf), _pointer(band.offsets), c_ll(band.strides[0]), c_ll(band.strides[1]),
        c_ll(band.shape[0]), c_ll(bw), ctypes.c_int(int(do_factor)),
        _pointer(rhs.buf), _pointer(rhs.offsets), c_ll(rhs.strides[0]), c_ll(rhs.strides[1]),
        c_ll(rhs.shape[1]), _pointer(info), c_ll(nsys), ctypes.c_uint(block),
    )  # fmt: skip
    return info


@pytest.mark.parametrize("block", [8, 0], ids=["thread-per-system", "warp-per-system"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("lower", [False, True])
@pytest.mark.parametrize(
    "batch,m,u,k", [(37, 20, 3, 2), (5, 9, 4, 1), (3, 4, 6, 3), (9, 1, 1, 1), (2, 90, 40, 2)]
)
def test_fused_factor_and_solve_match_scipy(kernels, rng, block, dtype, lower, batch, m, u, k):
    ab = random_spd_band((batch,), m, u, rng=rng)
    if lower:
        from banded_mnn._vjp import _upper_to_lower

        ab = _upper_to_lower(ab)
    ab = ab.astype(dtype)
    b = rng.standard_normal((batch, m, k)).astype(dtype)
    c, x = ab.copy(), b.copy()
    band = StridedBatch.from_array(c, (batch,)).band_view(u, lower)
    info = run_kernel(kernels, band, u, True, StridedBatch.from_array(x, (batch,)), block)
    assert (info == 0).all()
    rtol = 1e-10 if dtype == np.float64 else 2e-4
    np.testing.assert_allclose(
        c, scipy_cholesky(ab.astype(np.float64), lower), rtol=rtol, atol=rtol
    )
    np.testing.assert_allclose(
        x, scipy_solve(ab.astype(np.float64), b, lower), rtol=rtol, atol=rtol
    )
    # Solve only, with the factor just computed (do_factor = 0).
    y = b.copy()
    run_kernel(kernels, StridedBatch.from_array(c, (batch,)).band_view(u, lower), u, False,
               StridedBatch.from_array(y, (batch,)), block)  # fmt: skip
    np.testing.assert_allclose(y, x, rtol=rtol, atol=rtol)


def test_strided_operands(kernels, rng):
    ab = np.asfortranarray(random_spd_band((6,), 12, 2, rng=rng))
    b = np.asfortranarray(rng.standard_normal((6, 12, 2)))
    c, x = ab.copy(order="F"), b.copy(order="F")
    info = run_kernel(kernels, StridedBatch.from_array(c, (6,)).band_view(2, False), 2, True,
                      StridedBatch.from_array(x, (6,)))  # fmt: skip
    assert (info == 0).all()
    np.testing.assert_allclose(x, scipy_solve(ab, b, False), rtol=1e-10)


@pytest.mark.parametrize("block", [8, 0], ids=["thread-per-system", "warp-per-system"])
def test_not_positive_definite_status(kernels, rng, block):
    ab = random_spd_band((4,), 10, 2, rng=rng)
    ab[2, -1, 6] = -1.0  # system 2: the 7th leading minor fails
    b = rng.standard_normal((4, 10, 1))
    c, x = ab.copy(), b.copy()
    info = run_kernel(kernels, StridedBatch.from_array(c, (4,)).band_view(2, False), 2, True,
                      StridedBatch.from_array(x, (4,)), block)  # fmt: skip
    assert info.tolist() == [0, 0, 7, 0]
    assert np.isnan(x[2]).all() and np.isfinite(np.delete(x, 2, axis=0)).all()
    ab[1, -1, 3] = np.inf  # an infinite pivot fails too (LAPACK would accept it)
    c = ab.copy()
    info = run_kernel(kernels, StridedBatch.from_array(c, (4,)).band_view(2, False), 2, True, None,
                      block)  # fmt: skip
    assert info[1] == 4
