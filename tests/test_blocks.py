"""solveh_block_banded against SciPy on the dense matrix."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

import banded_mnn as bm


def random_blocks(rng, batch, steps, n, levels):
    """Blocks of a random SPD block-banded matrix (diagonally dominant)."""
    blocks = [rng.uniform(-1, 1, batch + (max(steps - k, 0), n, n)) for k in range(levels)]
    blocks[0] = blocks[0] + np.swapaxes(blocks[0], -1, -2) + 2 * levels * n * np.eye(n)
    return blocks


def dense(blocks, steps, n):
    a = np.zeros((steps * n, steps * n))
    for k, blk in enumerate(blocks):
        for t in range(steps - k):
            a[(t + k) * n : (t + k + 1) * n, t * n : (t + 1) * n] = blk[t]
            if k:
                a[t * n : (t + 1) * n, (t + k) * n : (t + k + 1) * n] = blk[t].T
    return a


#: "cyclic-reference": cyclic reduction as array operations (the reference the
#: compiled level kernels are checked against, and the CuPy fallback).
ALGORITHMS = ["sequential", "cyclic", "cyclic-reference"]


@pytest.fixture(autouse=True)
def _cyclic_implementation(request, monkeypatch):
    """Run "cyclic-reference" as algorithm "cyclic" with the reference."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("algorithm") == "cyclic-reference":
        from banded_mnn import _cyclic

        monkeypatch.setattr(_cyclic, "_USE_REFERENCE", True)


def _name(algorithm: str) -> str:
    return algorithm.removesuffix("-reference")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("levels", [1, 2, 3])
@pytest.mark.parametrize("steps,n", [(7, 3), (1, 2), (2, 4), (5, 1), (3, 2), (16, 2), (13, 3)])
def test_matches_scipy(rng, algorithm, levels, steps, n):
    blocks = random_blocks(rng, (3,), steps, n, levels)
    b = rng.standard_normal((3, steps, n, 2))
    x = bm.solveh_block_banded(blocks, b, algorithm=_name(algorithm))
    for i in range(3):
        ref = scipy.linalg.solve(dense([blk[i] for blk in blocks], steps, n),
                                 b[i].reshape(steps * n, 2), assume_a="pos")  # fmt: skip
        np.testing.assert_allclose(x[i].reshape(steps * n, 2), ref, rtol=1e-10, atol=1e-12)
    # A vector right-hand side per system, and broadcasting of one matrix.
    xv = bm.solveh_block_banded([blk[:1] for blk in blocks], b[..., 0], algorithm=_name(algorithm))
    assert xv.shape == (3, steps, n)
    ref = scipy.linalg.solve(dense([blk[0] for blk in blocks], steps, n),
                             b[..., 0].reshape(3, -1).T, assume_a="pos").T  # fmt: skip
    np.testing.assert_allclose(xv.reshape(3, -1), ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_float32_and_status(rng, algorithm):
    blocks = [blk.astype(np.float32) for blk in random_blocks(rng, (2,), 6, 2, 2)]
    b = rng.standard_normal((2, 6, 2)).astype(np.float32)
    x = bm.solveh_block_banded(blocks, b, algorithm=_name(algorithm))
    assert x.dtype == np.float32
    ref = bm.solveh_block_banded([blk.astype(np.float64) for blk in blocks], b.astype(np.float64))
    np.testing.assert_allclose(x, ref, rtol=1e-4, atol=1e-5)
    blocks[0][1, 3] = -np.eye(2, dtype=np.float32)  # system 1, block 3: not positive definite
    x, info = bm.solveh_block_banded_ex(blocks, b, algorithm=_name(algorithm))
    # Sequential: LAPACK's minor order (unknown 3*2, 1-based); cyclic: the first
    # unknown of block row 3 -- the same here (the block's first pivot fails).
    assert info[0] == 0 and info[1] == 3 * 2 + 1
    assert np.isnan(x[1]).all() and np.isfinite(x[0]).all()
    with pytest.raises(bm.NotPositiveDefiniteError, match=r"batch index \(1,\)"):
        bm.solveh_block_banded(blocks, b, algorithm=_name(algorithm))


def test_bad_input(rng):
    blocks = random_blocks(rng, (), 5, 2, 2)
    with pytest.raises(ValueError, match=r"blocks\[1\] must have shape"):
        bm.solveh_block_banded((blocks[0], blocks[1][:3]), np.ones((5, 2)))
    with pytest.raises(ValueError, match="b must have shape"):
        bm.solveh_block_banded(blocks, np.ones((4, 2)))
    with pytest.raises(TypeError, match="blocks must be a sequence"):
        bm.solveh_block_banded(blocks[0], np.ones((5, 2)))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("condition", [1e4, 1e8, 1e11])
def test_ill_conditioned(rng, algorithm, condition):
    """Error within a multiple of eps * cond(A) of SciPy's dense solve."""
    steps, n = 33, 3
    blocks = random_blocks(rng, (), steps, n, 2)
    eigs = np.linalg.eigvalsh(dense(blocks, steps, n))
    # Shift the spectrum (only the diagonal blocks change) to the wanted condition.
    shift = eigs[0] - (eigs[-1] - eigs[0]) / (condition - 1)
    blocks[0] = blocks[0] - shift * np.eye(n)
    a = dense(blocks, steps, n)
    cond = np.linalg.cond(a)
    assert cond > condition / 10
    b = rng.standard_normal((steps, n))
    x = bm.solveh_block_banded(blocks, b, algorithm=_name(algorithm)).reshape(-1)
    ref = scipy.linalg.solve(a, b.reshape(-1), assume_a="pos")
    assert np.linalg.norm(x - ref) / np.linalg.norm(ref) <= 100 * np.finfo(float).eps * cond


def test_unknown_algorithm(rng):
    with pytest.raises(ValueError, match="algorithm must be"):
        bm.solveh_block_banded(random_blocks(rng, (), 3, 2, 2), np.ones((3, 2)), algorithm="x")


def test_integer_blocks_and_non_finite_blocks():
    """Integers are converted as SciPy does (both algorithms); NaN and inf in
    blocks are reported per system with check_finite=False, without warnings."""
    blocks = (np.array([[[5, 1], [1, 3]], [[4, 0], [0, 4]]]), np.array([[[1, 0], [0, 1]]]))
    b = np.array([[1, 2], [3, 4]])
    x_seq = bm.solveh_block_banded(blocks, b)
    x_cyc = bm.solveh_block_banded(blocks, b, algorithm="cyclic")
    assert x_seq.dtype == x_cyc.dtype == np.float64
    np.testing.assert_allclose(x_cyc, x_seq, rtol=1e-12)
    bad = [blk.astype(float)[None].repeat(2, 0) for blk in blocks]
    bad[0][1, 1, 0, 0] = np.inf
    bad[1][0, 0, 1, 1] = np.nan
    x, info = bm.solveh_block_banded_ex(bad, b[None].repeat(2, 0).astype(float),
                                        check_finite=False, algorithm="cyclic")  # fmt: skip
    assert (info != 0).all() and np.isnan(x).all()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_empty_batches_and_no_right_hand_sides(rng, algorithm):
    """A zero-size batch, and K = 0 right-hand sides (odd T, pentadiagonal)."""
    blocks = random_blocks(rng, (0,), 5, 2, 3)
    x, info = bm.solveh_block_banded_ex(blocks, np.ones((0, 5, 2, 1)), algorithm=_name(algorithm))
    assert x.shape == (0, 5, 2, 1) and info.shape == (0,)
    blocks = random_blocks(rng, (2,), 5, 2, 3)
    x, info = bm.solveh_block_banded_ex(blocks, np.ones((2, 5, 2, 0)), algorithm=_name(algorithm))
    assert x.shape == (2, 5, 2, 0) and info.tolist() == [0, 0]


def test_cyclic_level_kernels_are_chosen_by_array_kind_and_backend(monkeypatch):
    """NumPy: the Numba CPU drivers.  CuPy: the Numba CUDA kernels where
    numba-cuda can compile (default or backend="numba-cuda"), else the
    array-operation reference; backend="cupy" asks for the reference; asking
    for "numba-cuda" where it cannot run is an error."""
    from banded_mnn import _cyclic
    from banded_mnn._backends import _cyclic_cpu, _numba_cuda

    fake_cupy = object()  # any array module but NumPy
    assert _cyclic._level_kernels(np) is _cyclic_cpu.run_level
    monkeypatch.setattr(_cyclic, "_numba_cuda_compiles", lambda: True)
    assert _cyclic._level_kernels(fake_cupy) is _numba_cuda.run_cyclic_level
    assert _cyclic._level_kernels(fake_cupy, "numba-cuda") is _numba_cuda.run_cyclic_level
    assert _cyclic._level_kernels(fake_cupy, "cupy") is None
    monkeypatch.setattr(_cyclic, "_numba_cuda_compiles", lambda: False)
    assert _cyclic._level_kernels(fake_cupy) is None
    with pytest.raises(RuntimeError, match="backend 'numba-cuda' cannot run"):
        _cyclic._level_kernels(fake_cupy, "numba-cuda")
    monkeypatch.setattr(_cyclic, "_USE_REFERENCE", True)
    assert _cyclic._level_kernels(np) is None
