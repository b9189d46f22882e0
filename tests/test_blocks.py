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


@pytest.mark.parametrize("levels", [1, 2, 3])
@pytest.mark.parametrize("steps,n", [(7, 3), (1, 2), (2, 4), (5, 1)])
def test_matches_scipy(rng, levels, steps, n):
    blocks = random_blocks(rng, (3,), steps, n, levels)
    b = rng.standard_normal((3, steps, n, 2))
    x = bm.solveh_block_banded(blocks, b)
    for i in range(3):
        ref = scipy.linalg.solve(dense([blk[i] for blk in blocks], steps, n),
                                 b[i].reshape(steps * n, 2), assume_a="pos")  # fmt: skip
        np.testing.assert_allclose(x[i].reshape(steps * n, 2), ref, rtol=1e-10, atol=1e-12)
    # A vector right-hand side per system, and broadcasting of one matrix.
    xv = bm.solveh_block_banded([blk[:1] for blk in blocks], b[..., 0])
    assert xv.shape == (3, steps, n)
    ref = scipy.linalg.solve(dense([blk[0] for blk in blocks], steps, n),
                             b[..., 0].reshape(3, -1).T, assume_a="pos").T  # fmt: skip
    np.testing.assert_allclose(xv.reshape(3, -1), ref, rtol=1e-10, atol=1e-12)


def test_float32_and_status(rng):
    blocks = [blk.astype(np.float32) for blk in random_blocks(rng, (2,), 6, 2, 2)]
    b = rng.standard_normal((2, 6, 2)).astype(np.float32)
    assert bm.solveh_block_banded(blocks, b).dtype == np.float32
    blocks[0][1, 3] = -np.eye(2, dtype=np.float32)  # system 1, block 3: not positive definite
    x, info = bm.solveh_block_banded_ex(blocks, b)
    assert info[0] == 0 and info[1] == 3 * 2 + 1
    assert np.isnan(x[1]).all() and np.isfinite(x[0]).all()
    with pytest.raises(bm.NotPositiveDefiniteError, match=r"batch index \(1,\)"):
        bm.solveh_block_banded(blocks, b)


def test_bad_input(rng):
    blocks = random_blocks(rng, (), 5, 2, 2)
    with pytest.raises(ValueError, match=r"blocks\[1\] must have shape"):
        bm.solveh_block_banded((blocks[0], blocks[1][:3]), np.ones((5, 2)))
    with pytest.raises(ValueError, match="b must have shape"):
        bm.solveh_block_banded(blocks, np.ones((4, 2)))
    with pytest.raises(TypeError, match="blocks must be a sequence"):
        bm.solveh_block_banded(blocks[0], np.ones((5, 2)))
