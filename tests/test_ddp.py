"""DistributedDataParallel over ``banded_mnn.torch.ode_forward``: one step in
two processes (gloo, on the CPU) gives the gradients of one process over the
same global batch.

The processes are those of ``examples/ddp_training.py`` (started by
``torch.distributed.run``, its ``--gradients`` mode), with a global batch of
all the data; each writes its gradients to a file in ``tmp_path``.  The
reference is computed here, in one process, from the same initial model.
"""

from __future__ import annotations

import importlib.util
import os
import runpy
import secrets
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("torch.distributed with gloo", allow_module_level=True)
if importlib.util.find_spec("numba") is None:  # pragma: no cover - a dependency
    pytest.skip("numba", allow_module_level=True)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ddp_training.py"
WORLD_SIZE = 2
SAMPLES = 16  # the global batch: every sample, 8 per process


def _load(path: Path) -> dict:
    """A rank's file: {"local": {name: tensor}, "synced": {...}, "indices": [...]}."""
    with np.load(path) as f:
        out = {"local": {}, "synced": {}, "indices": f["indices"].tolist()}
        for key in f.files:
            if "/" in key:
                kind, name = key.split("/", 1)
                out[kind][name] = torch.from_numpy(f[key].copy())
    return out


def test_ddp_gradients_equal_one_process(tmp_path):
    seed = int(os.environ.get("BANDED_MNN_TEST_SEED", secrets.randbits(31)))
    print(f"random seed: {seed} (BANDED_MNN_TEST_SEED={seed} replays it)")
    example = runpy.run_path(str(EXAMPLE))
    options = ["--gradients", "--samples", str(SAMPLES), "--batch", str(SAMPLES),
               "--seed", str(seed)]  # fmt: skip
    example["launch"](WORLD_SIZE, tmp_path, options, timeout=300)
    ranks = [_load(tmp_path / f"gradients_rank{r}.npz") for r in range(WORLD_SIZE)]

    # The global batch was split between the processes.
    halves = [set(r["indices"]) for r in ranks]
    assert all(len(h) == SAMPLES // WORLD_SIZE for h in halves)
    assert halves[0].isdisjoint(halves[1]) and halves[0] | halves[1] == set(range(SAMPLES))

    # One process, the same initial model, the mean loss over the global batch.
    model = example["OscillatorEncoder"](seed=seed)
    data = example["make_data"](SAMPLES, seed)
    example["mean_squared_error"](model, data).backward()
    reference = {n: p.grad for n, p in model.named_parameters()}
    assert all(g.dtype == torch.float64 for g in reference.values())

    for rank in ranks:
        assert rank["synced"].keys() == reference.keys()
        for name, g in reference.items():
            # Two half-batch sums averaged against one full-batch sum: the
            # order of the batch reduction differs, so rounding differs (up to
            # 2.4e-12 relative seen, seed-dependent); a skipped average is O(1).
            torch.testing.assert_close(rank["synced"][name], g, rtol=1e-10, atol=1e-10)
    # Each process's own gradient (before DDP's averaging) is not the global
    # one -- the comparison above is not vacuous -- and their mean is.
    for name, g in reference.items():
        local = [r["local"][name] for r in ranks]
        assert not any(torch.allclose(x, g, rtol=1e-6, atol=1e-9) for x in local), name
        torch.testing.assert_close((local[0] + local[1]) / 2, g, rtol=1e-10, atol=1e-10)
