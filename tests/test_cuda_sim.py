"""The Numba CUDA kernels under Numba's CUDA simulator (no GPU needed).

The simulator must be switched on before Numba is first imported, so the
checks run in a fresh interpreter with ``NUMBA_ENABLE_CUDASIM=1``; the script
compares every result with SciPy and prints a verdict per case.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = r"""
import json, sys
import numpy as np
import scipy.linalg
from numba import config
assert config.ENABLE_CUDASIM, "the simulator is not on"
from banded_mnn._backends import _cuda_kernels as kernels
from banded_mnn._strided import StridedBatch
from banded_mnn._vjp import _upper_to_lower
from banded_mnn.problems import random_spd_band

rng = np.random.default_rng(int(sys.argv[1]))
results = {}
for dtype in (np.float64, np.float32):
    for lower in (False, True):
        for batch, m, u, k in ((11, 9, 2, 2), (3, 5, 6, 1), (4, 1, 1, 1)):
            ab = random_spd_band((batch,), m, u, rng=rng)
            if lower:
                ab = _upper_to_lower(ab)
            ab = ab.astype(dtype)
            b = rng.standard_normal((batch, m, k)).astype(dtype)
            c, x = ab.copy(), b.copy()
            info = np.full(batch, -1, np.int32)
            kernels.launch(StridedBatch.from_array(c, (batch,)).band_view(u, lower), u, True,
                           StridedBatch.from_array(x, (batch,)), info, threads_per_block=4)
            ref_c = np.stack([scipy.linalg.cholesky_banded(ab[i].astype(float), lower=lower)
                              for i in range(batch)])
            ref_x = np.stack([scipy.linalg.cho_solve_banded((ref_c[i], lower), b[i].astype(float))
                              for i in range(batch)])
            y = b.copy()  # solve only, with the factor
            kernels.launch(StridedBatch.from_array(c, (batch,)).band_view(u, lower), u, False,
                           StridedBatch.from_array(y, (batch,)), info.copy())
            scale = 1e-9 if dtype == np.float64 else 1e-3
            key = f"{np.dtype(dtype).name}-{'lower' if lower else 'upper'}-{batch}x{m}x{u}x{k}"
            results[key] = bool((info == 0).all()
                                and np.allclose(c, ref_c, rtol=scale, atol=scale)
                                and np.allclose(x, ref_x, rtol=scale, atol=scale)
                                and np.allclose(y, ref_x, rtol=scale, atol=scale))
ab = random_spd_band((3,), 8, 2, rng=rng)
ab[1, -1, 4] = -1.0
b = rng.standard_normal((3, 8, 1))
c, x = ab.copy(), b.copy()
info = np.full(3, -1, np.int32)
kernels.launch(StridedBatch.from_array(c, (3,)).band_view(2, False), 2, True,
               StridedBatch.from_array(x, (3,)), info)
results["status"] = bool(info.tolist() == [0, 5, 0] and np.isnan(x[1]).all()
                         and np.isfinite(x[[0, 2]]).all())
print(json.dumps(results))
"""


@pytest.mark.skipif(importlib.util.find_spec("numba_cuda") is None,
                    reason="numba-cuda is in the test extra")  # fmt: skip
def test_numba_cuda_kernel_under_the_simulator(rng):
    seed = str(int(rng.integers(2**31)))
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, seed], capture_output=True, text=True, env=env,
        cwd=Path(__file__).resolve().parents[1], timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    verdicts = json.loads(result.stdout.strip().splitlines()[-1])
    failed = [name for name, ok in verdicts.items() if not ok]
    assert not failed, failed
    assert len(verdicts) == 13
