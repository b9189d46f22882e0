"""CPU drivers of block cyclic reduction: the per-job cores of
:mod:`._cyclic_cores`, compiled by Numba, over all jobs of a level (every node
of every system) in parallel.  The CUDA kernels of :mod:`._numba_cuda` run
the same cores with a thread per job; both are driven by
:mod:`banded_mnn._cyclic`.
"""

from __future__ import annotations

from numba import njit, prange

from . import _cyclic_cores as cores

_factor = njit(cache=True, nogil=True)(cores.factor_node)
_schur = njit(cache=True, nogil=True)(cores.schur_node)
_forward = njit(cache=True, nogil=True)(cores.forward_node)
_reduce = njit(cache=True, nogil=True)(cores.reduce_node)
_backward = njit(cache=True, nogil=True)(cores.backward_node)


@njit(parallel=True, cache=True)
def factor_node(jobs, d, c, chol, left, right, failed, one, m):
    for job in prange(jobs):
        _factor(job, d, c, chol, left, right, failed, one, m)


@njit(parallel=True, cache=True)
def schur_node(jobs, d, left, right, d_next, c_next, m):
    for job in prange(jobs):
        _schur(job, d, left, right, d_next, c_next, m)


@njit(parallel=True, cache=True)
def forward_node(jobs, chol, r, y, fmap, m):
    for job in prange(jobs):
        _forward(job, chol, r, y, fmap, m)


@njit(parallel=True, cache=True)
def reduce_node(jobs, left, right, y, r, r_next, fmap, m):
    for job in prange(jobs):
        _reduce(job, left, right, y, r, r_next, fmap, m)


@njit(parallel=True, cache=True)
def backward_node(jobs, chol, left, right, y, x_even, x, fmap, m):
    for job in prange(jobs):
        _backward(job, chol, left, right, y, x_even, x, fmap, m)


_DRIVERS = {
    "factor_node": factor_node,
    "schur_node": schur_node,
    "forward_node": forward_node,
    "reduce_node": reduce_node,
    "backward_node": backward_node,
}


def run_level(function: str, systems: int, m: int, *arrays) -> None:
    """Run core ``function`` over every job of a level of ``m`` nodes of
    ``systems`` systems (the interface :mod:`banded_mnn._cyclic` drives)."""
    total = cores.jobs(function, systems, m)
    if total:
        _DRIVERS[function](total, *arrays, m)
