"""Numba CUDA kernels of the MNN layer and their launches.

The kernels run the per-step cores of :mod:`._step_cores` -- a thread per
(system, step) -- plus :func:`flag_singular`, the test for a normal matrix
singular to working precision that the CPU layer makes while it factors
(a thread per (system, column), an atomic minimum per system).  They are
launched with the "numba-cuda" backend's launcher: on CuPy's current stream
and the arrays' device, or under Numba's CUDA simulator on NumPy arrays (how
the tests run them).  Compiled on first use; importing this module imports
``numba.cuda``.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from numba import cuda  # (a module global: the simulator swaps it in the kernels' globals)

#: Threads per block.
BLOCK = 128


@functools.cache
def _kernels() -> dict[str, Any]:
    from . import _step_cores as cores

    assemble = cuda.jit(device=True)(cores.assemble_step)
    gradients = cuda.jit(device=True)(cores.vjp_step)

    @cuda.jit
    def assemble_kernel(
        jobs, coef, coef_off, cs0, cs1, cs2, cs3, steps, steps_off, hs,
        rhs, rhs_off, rs0, rs1, init, init_off, vs0, vs1, vs2,
        band, band_off, bsj, bsr, diag, y, y_off, ysj,
        T, E, D, O, S, I, bw, weq2, wiv2, ws2, central, tab0, tab1, tabq, lhs, solve, zero, one,
    ):  # fmt: skip
        job = cuda.grid(1)
        if job < jobs:
            assemble(
                job, coef, coef_off, cs0, cs1, cs2, cs3, steps, steps_off, hs,
                rhs, rhs_off, rs0, rs1, init, init_off, vs0, vs1, vs2,
                band, band_off, bsj, bsr, diag, y, y_off, ysj,
                T, E, D, O, S, I, bw, weq2, wiv2, ws2, central, tab0, tab1, tabq, lhs, solve,
                zero, one,
            )  # fmt: skip

    @cuda.jit
    def vjp_kernel(
        jobs, coef, coef_off, cs0, cs1, cs2, cs3, rhs, rhs_off, rs0, rs1, steps, steps_off, hs,
        x, x_off, xsj, lam, lam_off, lsj, info,
        T, E, D, O, weq2, ws2, central, tab0, tab1, tabq, lhs,
        grad_coef, grad_rhs, grad_steps, one, nan,
    ):  # fmt: skip
        job = cuda.grid(1)
        if job < jobs:
            gradients(
                job, coef, coef_off, cs0, cs1, cs2, cs3, rhs, rhs_off, rs0, rs1, steps,
                steps_off, hs, x, x_off, xsj, lam, lam_off, lsj, info,
                T, E, D, O, weq2, ws2, central, tab0, tab1, tabq, lhs,
                grad_coef, grad_rhs, grad_steps, one, nan,
            )  # fmt: skip

    @cuda.jit
    def singular_kernel(jobs, factor, f_off, fsj, diag, M, info, tol, first):
        """``first[i] = min(first[i], j + 1)`` for every pivot ``L[j, j]``
        before the system's first failed one (``info[i]``, 0: none) with
        ``L[j, j]^2 <= tol * A[j, j]``."""
        job = cuda.grid(1)
        if job < jobs:
            i = job // M
            j = job - i * M
            if info[i] == 0 or j + 1 < info[i]:
                pivot = factor[f_off[i] + j * fsj]
                if pivot * pivot <= tol * diag[job]:
                    cuda.atomic.min(first, i, j + 1)

    return {"assemble": assemble_kernel, "vjp": vjp_kernel, "singular": singular_kernel}


def _launch(name: str, jobs: int, *args) -> None:
    """Launch kernel ``name`` over ``jobs`` threads (nothing for none)."""
    if jobs == 0:
        return
    from .._backends import _numba_cuda

    launcher = _numba_cuda.kernels()
    with launcher.device(args[0]):
        launcher._launch(_kernels()[name], -(-jobs // BLOCK), BLOCK, jobs, *args)


def assemble(jobs: int, *args) -> None:
    """Run :func:`._step_cores.assemble_step` for ``jobs`` (system, step) pairs."""
    _launch("assemble", jobs, *args)


def vjp(jobs: int, *args) -> None:
    """Run :func:`._step_cores.vjp_step` for ``jobs`` (system, step) pairs."""
    _launch("vjp", jobs, *args)


def flag_singular(xp: Any, factor: Any, diag: Any, n_unknowns: int, info: Any, tol: float) -> None:
    """Lower ``info[i]`` (0: the factorisation succeeded; else 1 + the first
    column whose pivot failed) to 1 + the first column where the normal matrix
    shows as singular to working precision, if that comes first (see
    ``_layer._singular_tolerance``; the CPU layer makes the same test).  ``factor`` is the
    workspace :class:`~banded_mnn._strided.StridedBatch`, ``diag`` the
    assembled diagonals (systems * M)."""
    nsys = info.shape[0]
    first = xp.full(nsys, n_unknowns + 1, dtype=np.int32)
    _launch(
        "singular", nsys * n_unknowns, factor.buf, factor.offsets, factor.strides[0], diag,
        n_unknowns, info, factor.buf.dtype.type(tol), first,
    )  # fmt: skip
    info[...] = xp.where((first <= n_unknowns) & ((info == 0) | (first < info)), first, info)
