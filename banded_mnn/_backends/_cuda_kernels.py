"""Numba CUDA kernels of the band routines (in progress; not yet a backend).

The many-systems kernel: one thread per system, the algorithm of the CPU
cores (:mod:`._band_kernels`) and of the CUDA C++ kernel
(``cuda/band_cholesky.cu``) -- right-looking band Cholesky with the forward
substitution fused, backward substitution, LAPACK's ``info`` per system and
NaN outputs for a failed system -- on operands addressed like the CPU
kernels' (:class:`banded_mnn._strided.StridedBatch`: flat buffer, one offset
per system, two element strides; the band seen as ``(j, t) -> A[j + t, j]``).

Verified in the tests under Numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``) against SciPy.  No public function launches it
yet: wiring it (and the CuPy kernel) to CuPy arrays is the next step of the
GPU work.  Importing this module imports ``numba.cuda``.
"""

from __future__ import annotations

import math

from numba import cuda


@cuda.jit
def band_factor_solve(
    band, band_off, band_sj, band_st, n, bw, do_factor,
    rhs, rhs_off, rhs_sj, rhs_sk, nrhs, info,
):  # fmt: skip
    """Factor (with ``do_factor``) and/or solve system ``cuda.grid(1)``.

    ``band[band_off[i] + j*band_sj + t*band_st]`` is A[j + t, j] (the factor
    on exit); right-hand side (j, k) of system i is ``rhs[rhs_off[i] +
    j*rhs_sj + k*rhs_sk]`` (the solution on exit); ``nrhs == 0`` means no
    solve.  ``info[i]``: 0, or the 1-based order of the first leading minor
    that is not positive definite (an infinite pivot fails too).
    """
    i = cuda.grid(1)
    if i >= info.shape[0]:
        return
    a0 = band_off[i]
    y0 = rhs_off[i] if nrhs > 0 else 0
    failed = 0
    for j in range(n):
        m = min(bw, n - 1 - j)
        p = a0 + j * band_sj
        d = band[p]
        if do_factor:
            if d > 0.0 and d < math.inf:
                d = math.sqrt(d)
            else:
                if failed == 0:
                    failed = j + 1
                d = 1.0
            band[p] = d
        r = 1.0 / d
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
    info[i] = failed
    if failed:
        for j in range(n):
            m = min(bw, n - 1 - j)
            if do_factor:
                for t in range(m + 1):
                    band[a0 + j * band_sj + t * band_st] = math.nan
            for k in range(nrhs):
                rhs[y0 + j * rhs_sj + k * rhs_sk] = math.nan


def launch(band, bw: int, do_factor: bool, rhs, info, threads_per_block: int = 128) -> None:
    """Launch on ``StridedBatch`` operands (device or, under the simulator, host arrays)."""
    nsys = info.shape[0]
    if nsys == 0:
        return
    blocks = (nsys + threads_per_block - 1) // threads_per_block
    band_factor_solve[blocks, threads_per_block](
        band.buf, band.offsets, band.strides[0], band.strides[1], band.shape[0], bw,
        do_factor, rhs.buf, rhs.offsets, rhs.strides[0], rhs.strides[1], rhs.shape[1], info,
    )  # fmt: skip
