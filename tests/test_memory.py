"""Peak memory of a call stays within 1.2 x (inputs + output): no dense intermediate.

Measured in a fresh interpreter from the peak RSS (the kernels allocate through
Numba, which ``tracemalloc`` does not see).  Inputs are built without large
temporaries and the peak counter is reset before the call, so the increase over
the current size is what the call itself allocated.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = r"""
import json, resource, sys
import numpy as np
import banded_mnn as bm

B, M, u, K, which = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()

def peak():
    # VmHWM (the address space's peak RSS): unlike ru_maxrss it does not keep
    # peaks of threads that have exited, and clear_refs resets it.
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

rng = np.random.default_rng(0)
def make(m):
    ab = np.empty((B, u + 1, m))
    b = np.empty((B, m, K))
    for i in range(B):  # filled system by system: no large temporaries
        ab[i] = rng.uniform(-1, 1, (u + 1, m))
        ab[i, u] = 2 * u + 2
        b[i] = rng.standard_normal((m, K))
    return ab, b

small_ab, small_b = make(50)  # same batch size: same kernels, compiled here
call = {
    "solveh": lambda ab, b: bm.solveh_banded(ab, b),
    "cholesky": lambda ab, b: bm.cholesky_banded(ab),
    "cho_solve": lambda ab, b: bm.cho_solve_banded((ab, False), b),
}[which]
call(small_ab, small_b)
del small_ab, small_b
ab, b = make(M)
before = rss()
try:  # reset the kernel's peak-RSS counter (Linux >= 4.0), so earlier peaks
    with open("/proc/self/clear_refs", "w") as f:  # (e.g. JIT compilation) cannot
        f.write("5")  # hide the call's
except OSError:
    pass
stale = peak() - before  # > 0 if an earlier peak could still hide the call's
out = call(ab, b)
delta = peak() - before
inputs = ab.nbytes + (b.nbytes if which != "cholesky" else 0)
print(json.dumps({"delta": delta, "stale": stale, "inputs": inputs, "output": out.nbytes}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("which", ["solveh", "cholesky", "cho_solve"])
@pytest.mark.parametrize(("batch", "m", "u"), [(256, 2304, 17), (16, 18432, 17)])
def test_peak_memory_within_budget(which, batch, m, u):
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(batch), str(m), str(u), "1", which],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    sizes = json.loads(result.stdout)
    # The measurement is only valid if nothing before the call peaked higher.
    assert sizes["stale"] < 0.05 * sizes["inputs"], sizes
    budget = 1.2 * (sizes["inputs"] + sizes["output"])
    peak = sizes["inputs"] + sizes["delta"]
    assert peak <= budget, f"peak {peak / 1e6:.1f} MB > budget {budget / 1e6:.1f} MB: {sizes}"
