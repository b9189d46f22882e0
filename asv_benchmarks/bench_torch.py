"""Benchmarks of the PyTorch adapter, ``banded_mnn.torch.ode_forward``.

Forward + backward (float64, CPU) at B=16, T=2048, D=3, O=3, E=3 and at the
Lorenz size, B=512, T=50, D=1, O=3, E=1 (``banded_mnn._cli.TORCH_CASES``), for

* ``"banded_mnn.torch"``: :func:`banded_mnn.torch.ode_forward` (eager mode);
* ``"NumPy-level"``: the NumPy-level calls it wraps (``ode_forward`` with
  ``return_system=True`` and ``OdeSystem.vjp``), to measure the adapter's
  overhead;
* ``"per-step torch"``: S-MNN's algorithm in PyTorch
  (:mod:`banded_mnn.torch.baselines`).

Skipped (``NotImplementedError``, shown as n/a) where torch is not installed.
``banded-mnn bench-torch`` prints the same comparison as a table.
"""

from __future__ import annotations

import importlib.util

IMPLEMENTATIONS = ("banded_mnn.torch", "NumPy-level", "per-step torch")
CASES = ("b16-t2048", "lorenz")


class TorchOdeForward:
    params = (IMPLEMENTATIONS, CASES)
    param_names = ("implementation", "case")
    timeout = 300

    def setup(self, implementation, case):
        if importlib.util.find_spec("torch") is None:
            raise NotImplementedError("torch is not installed")
        from banded_mnn._cli import TORCH_CASES
        from banded_mnn.torch.baselines import bench_steps

        self.step = bench_steps(TORCH_CASES[case])[implementation]
        self.step()  # warm up (compilation)

    def time_forward_backward(self, implementation, case):
        self.step()
