"""Benchmarks of the PyTorch adapter, ``banded_mnn.torch.ode_forward``.

Forward + backward at B=16, T=2048, D=3, O=3, E=3 (float64, CPU) for

* ``"banded_mnn.torch"``: the adapter's custom operator;
* ``"numpy-level"``: the NumPy-level calls it wraps (``ode_forward`` with
  ``return_system=True`` and ``OdeSystem.vjp``), to measure the adapter's
  overhead;
* ``"per-step torch"``: S-MNN's algorithm in PyTorch
  (:mod:`banded_mnn.torch.baselines`).

Skipped (``NotImplementedError``, shown as n/a) where torch is not installed.
``banded-mnn bench-torch`` prints the same comparison as a table.
"""

from __future__ import annotations

import numpy as np

from banded_mnn.mnn.baselines import bench_inputs

IMPLEMENTATIONS = ("banded_mnn.torch", "numpy-level", "per-step torch")
CASE = (16, 2048, 3, 3, 3)


class TorchOdeForward:
    params = (IMPLEMENTATIONS,)
    param_names = ("implementation",)
    timeout = 300

    def setup(self, implementation):
        try:
            import torch
        except ImportError as error:
            raise NotImplementedError("torch is not installed") from error
        from banded_mnn.mnn import ode_forward
        from banded_mnn.torch import ode_forward as torch_ode_forward
        from banded_mnn.torch.baselines import ode_forward_blockwise

        batch, steps, equations, dims, orders = CASE
        rng = np.random.default_rng(0)
        arrays = bench_inputs(batch, steps, equations, dims, orders, False, rng)
        grad = rng.standard_normal((batch, steps, dims, orders))
        tensors = [torch.from_numpy(a) for a in arrays]
        grad_t = torch.from_numpy(grad)

        def torch_step(function):
            leaves = [t.detach().requires_grad_() for t in tensors]
            function(*leaves).backward(grad_t)

        def numpy_level():
            u, system = ode_forward(*arrays, return_system=True)
            system.vjp(grad, u, *arrays)

        self.step = {
            "banded_mnn.torch": lambda: torch_step(torch_ode_forward),
            "numpy-level": numpy_level,
            "per-step torch": lambda: torch_step(ode_forward_blockwise),
        }[implementation]
        self.step()  # warm up (compilation)

    def time_forward_backward(self, implementation):
        self.step()
