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

MEASURE = r"""
import json, resource, sys
import numpy as np

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

def reset_peak():
    before = rss()
    try:  # reset the kernel's peak-RSS counter (Linux >= 4.0), so earlier peaks
        with open("/proc/self/clear_refs", "w") as f:  # (e.g. JIT compilation) cannot
            f.write("5")  # hide the call's
    except OSError:
        pass
    return before, peak() - before  # stale > 0 if an earlier peak could still hide the call's
"""

SCRIPT = (
    MEASURE
    + r"""
import banded_mnn as bm

B, M, u, K, which = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]

rng = np.random.default_rng(0)
def make(m):
    ab = np.empty((B, u + 1, m))
    b = np.empty((B, m, K))
    for i in range(B):  # filled system by system: no large temporaries
        ab[i] = rng.uniform(-1, 1, (u + 1, m))
        ab[i, u] = 2 * u + 2
        b[i] = rng.standard_normal((m, K))
    return ab, b

call = {
    "solveh": lambda ab, b: bm.solveh_banded(ab, b),
    "cholesky": lambda ab, b: bm.cholesky_banded(ab),
    "cho_solve": lambda ab, b: bm.cho_solve_banded((ab, False), b),
}[which]
ab, b = make(M)
# The same call once first, so that the kernels it chooses (the lane count
# depends on M as well as on B) are compiled, or loaded from Numba's cache,
# before the peak counter is reset: compilation's memory is not the call's.
warm = call(ab, b)
del warm
before, stale = reset_peak()
out = call(ab, b)
delta = peak() - before
inputs = ab.nbytes + (b.nbytes if which != "cholesky" else 0)
print(json.dumps({"delta": delta, "stale": stale, "inputs": inputs, "output": out.nbytes}))
"""
)


def _measure(script: str, *args) -> dict:
    """Run a measuring script in a fresh interpreter; its JSON output."""
    result = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    sizes = json.loads(result.stdout)
    # The measurement is only valid if nothing before the call peaked higher.
    assert sizes["stale"] < 0.05 * sizes["inputs"], sizes
    return sizes


@pytest.mark.slow
@pytest.mark.parametrize("which", ["solveh", "cholesky", "cho_solve"])
@pytest.mark.parametrize(("batch", "m", "u"), [(256, 2304, 17), (16, 18432, 17)])
def test_peak_memory_within_budget(which, batch, m, u):
    sizes = _measure(SCRIPT, batch, m, u, 1, which)
    budget = 1.2 * (sizes["inputs"] + sizes["output"])
    peak = sizes["inputs"] + sizes["delta"]
    assert peak <= budget, f"peak {peak / 1e6:.1f} MB > budget {budget / 1e6:.1f} MB: {sizes}"


MNN_SCRIPT = (
    MEASURE
    + r"""
from banded_mnn.mnn import ode_forward

B, T, vjp = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "vjp"
E, D, O = 3, 3, 3

def make(t):
    rng = np.random.default_rng(0)
    return (rng.standard_normal((B, t, E, D, O)), rng.standard_normal((B, t, E)),
            rng.standard_normal((B, 1, D, O)), rng.uniform(0.01, 0.05, (B, t - 1)))

def call(inputs):
    u, system = ode_forward(*inputs, return_system=True)
    if vjp:
        system.vjp(u, u, *inputs)
    return u, system

call(make(40))  # compile
inputs = make(T)
before, stale = reset_peak()
u, system = call(inputs)
delta = peak() - before
print(json.dumps({"delta": delta, "stale": stale, "inputs": sum(x.nbytes for x in inputs),
                  "output": u.nbytes, "factor": system.workspace.nbytes}))
"""
)


@pytest.mark.slow
@pytest.mark.parametrize("vjp", ["forward", "vjp"])
def test_mnn_peak_memory_is_the_factor_and_output(vjp):
    """ode_forward allocates the factor (kept for the VJP) and the output, and
    little else: no dense or block intermediate.  The VJP adds gradients of the
    inputs' size and one solution-sized vector."""
    sizes = _measure(MNN_SCRIPT, 16, 2048, vjp)
    budget = 1.2 * (sizes["factor"] + sizes["output"])
    if vjp == "vjp":
        budget += 1.2 * (sizes["inputs"] + 2 * sizes["output"])
    assert sizes["delta"] <= budget, f"{sizes['delta'] / 1e6:.1f} MB > {budget / 1e6:.1f}: {sizes}"
    print(sizes)
