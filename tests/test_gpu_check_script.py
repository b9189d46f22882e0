"""tools/gpu_check.py, run end to end without a GPU (a smoke test).

The script needs CuPy on a GPU; here a stand-in ``cupy`` module (NumPy arrays,
wall-clock "events") is put in front of it, the "cupy" backend runs its CUDA
source on the host (tests/gpu_host.py), "numba-cuda" runs in Numba's CUDA
simulator, and the problem sizes are shrunk.  The numbers it prints mean
nothing; what is checked is that every step of the script runs and that the
table has a row per case, backend and regime (and, where the register window
applies, the window reading a column-contiguous band and the general warp
kernel) -- so that the short time on a
real GPU is not lost to a broken script.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import sys, time, types
import numpy as np
sys.path[:0] = [sys.argv[1], sys.argv[2]]
from cudasim import prepare_simulator
prepare_simulator()

fake = types.ModuleType("cupy")
fake.__version__ = "stand-in"
fake.asarray = lambda x: np.array(x, copy=True)
fake.asnumpy = np.asarray
fake.ones, fake.empty_like = np.ones, np.empty_like

class Event:
    def record(self):
        self.t = time.perf_counter()
    def synchronize(self):
        pass

class Device:
    id = 0
    attributes = {"MultiProcessorCount": 2}

fake.cuda = types.SimpleNamespace(
    Event=Event, Device=Device,
    get_elapsed_time=lambda a, b: (b.t - a.t) * 1e3,
    runtime=types.SimpleNamespace(getDeviceProperties=lambda i: {"name": b"host stand-in"}),
)
sys.modules["cupy"] = fake

from banded_mnn._backends import _cupy
from gpu_host import HostKernels
_cupy._kernels = HostKernels()

import gpu_check
gpu_check.CASES = [("tiny", 3, 6, 2, np.float64), ("tiny-f32", 2, 5, 3, np.float32)]
gpu_check.LAYER_CASES = [("MNN", 2, 5, 1, 1, 2), ("long", 1, 6, 1, 1, 2)]
gpu_check.REGIME_SWEEP, gpu_check.REGIME_SWEEP_SHAPE = (2, 3), (4, 2)
gpu_check.CYCLIC_SWEEP = (3, 5)
sys.exit(gpu_check.main(["--quick"]))
"""


def test_gpu_check_script_runs_end_to_end():
    pytest.importorskip("numba_cuda", reason="numba-cuda is in the test extra")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(ROOT / "tests"), str(ROOT / "tools")],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| tiny")]
    # cases x (backends x regimes + the window's two variants) + cyclic
    assert len(rows) == 2 * (2 * 2 + 2) + 2, result.stdout
    assert sum("warp-general" in row for row in rows) == 2, result.stdout
    assert sum("warp-columns" in row for row in rows) == 2, result.stdout
    layer = [line for line in result.stdout.splitlines() if line.startswith(("| MNN", "| long"))]
    assert len(layer) == 2 * 2, result.stdout  # the layer's cases x backends
    heads = ("| solveh_banded B=", "| ode_forward fwd+bwd")
    targets = [line for line in result.stdout.splitlines() if line.startswith(heads)]
    assert len(targets) == 3, result.stdout
    assert "max diff" not in result.stdout and "disagree" not in result.stdout, result.stdout
