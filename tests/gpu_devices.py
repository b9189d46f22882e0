"""How a GPU test reaches one GPU backend (test-only): :class:`Device`.

A variant names the backend and where its kernels run: ``"cupy"`` and
``"numba-cuda"`` on CuPy arrays on a real GPU; ``"cupy-host"`` (the CUDA C++
compiled for the host, :mod:`gpu_host`), ``"numba-cuda-sim"`` (Numba's CUDA
simulator) and ``"cupy-host-sim"`` (both) on NumPy arrays.
"""

from __future__ import annotations

import numpy as np


class Device:
    """A variant's backend name and its array transfers."""

    def __init__(self, variant: str) -> None:
        self.variant = variant
        self.backend = "numba-cuda" if variant.startswith("numba-cuda") else "cupy"
        self.real = variant in ("cupy", "numba-cuda")
        if self.real:
            import cupy

            self.xp = cupy
        else:
            self.xp = np

    def put(self, x):
        return self.xp.asarray(x) if self.real else np.array(x, copy=True)

    def get(self, x) -> np.ndarray:
        return self.xp.asnumpy(x) if self.real else np.asarray(x)


def device_for(variant: str, monkeypatch) -> Device:
    """The :class:`Device` of ``variant``, with the "cupy" backend's kernel
    set swapped for the host build where the variant says so."""
    if variant.startswith("cupy-host"):
        from gpu_host import HostKernels

        from banded_mnn._backends import _cupy

        monkeypatch.setattr(_cupy, "_kernels", HostKernels())
    return Device(variant)
