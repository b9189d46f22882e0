"""Backend registry.

A backend is a module with

* ``run(band, bw, *, factor, factor_out, rhs, out, check_finite) ->
  (info, (band_nonfinite, rhs_nonfinite))`` -- factor and/or solve a batch
  described by :class:`banded_mnn._strided.StridedBatch` operands, returning
  the per-system ``info`` (int32, flattened batch, on the operands' device)
  and whether the values read were finite (checked in the same pass when
  ``check_finite``);
* ``all_finite(x) -> bool`` -- a separate finiteness pass, for when results
  are written into the caller's arrays and must not be written at all if the
  input is bad;
* ``array_namespace()`` -- the array module its operands belong to (NumPy for
  the CPU backend, CuPy for the GPU backends).

Backends are imported on first use, so ``import banded_mnn`` loads neither
Numba nor any GPU library.
"""

from __future__ import annotations

import importlib
from types import ModuleType

#: Byte alignment of the CPU kernels' workspaces (the MNN layer's factor,
#: the band drivers' lane workspaces and rings): one cache line, so that no
#: vector access of up to 64 bytes straddles two.  NumPy aligns large arrays
#: to 16 bytes and Numba's ``np.empty`` to 32; split accesses made the lane
#: factorisation 25-40% and the substitutions 30% slower with 8 float64 lanes
#: on AVX-512 (83 against 114-117 ns per column at u = 17).
WORKSPACE_ALIGNMENT = 64

#: Backend name -> module implementing it.
_MODULES = {
    "numba": "banded_mnn._backends._numba_cpu",
    "cupy": "banded_mnn._backends._cupy",
    "numba-cuda": "banded_mnn._backends._numba_cuda",
}

#: Backends that take device (CuPy) arrays.
GPU_BACKENDS = ("cupy", "numba-cuda")

#: The backend used for NumPy input when ``backend=None``.
DEFAULT_CPU_BACKEND = "numba"

#: The backend used for CuPy input when ``backend=None``: the CuPy
#: RawKernels, which need no second JIT (Numba's) and no Numba/CuPy context
#: hand-over.  Both GPU backends run the same algorithm and layouts; see
#: docs/performance.md for how they compare where a GPU was available.
DEFAULT_GPU_BACKEND = "cupy"


def available() -> tuple[str, ...]:
    """Names accepted by the ``backend=`` argument."""
    return tuple(_MODULES)


def get(name: str | None, gpu_input: bool = False) -> ModuleType:
    """The backend module for ``name`` (``None`` selects the default for the input)."""
    if name is None:
        name = DEFAULT_GPU_BACKEND if gpu_input else DEFAULT_CPU_BACKEND
    if name not in _MODULES:
        raise ValueError(
            f"backend must be one of {', '.join(map(repr, _MODULES))} or None; got {name!r}"
        )
    module = importlib.import_module(_MODULES[name])
    return module


def is_gpu(module: ModuleType) -> bool:
    """Whether backend ``module`` (as :func:`get` returns it) is a GPU backend."""
    return module.__name__ in {_MODULES[name] for name in GPU_BACKENDS}


def usable(name: str) -> tuple[bool, str]:
    """Whether backend ``name`` can run on this machine, and why not if it cannot."""
    try:
        module = importlib.import_module(_MODULES[name])
    except Exception as error:
        return False, f"cannot be imported: {type(error).__name__}: {error}"
    check = getattr(module, "usable", None)
    if check is None:
        return True, "CPU"
    try:
        return check()
    except Exception as error:
        return False, f"{type(error).__name__}: {error}"


def cpu_only(name: str | None, what: str) -> str | None:
    """Validate ``backend=`` for a function that runs on NumPy arrays only."""
    if name in GPU_BACKENDS:
        raise ValueError(
            f"{what} runs on NumPy arrays (the CPU) in this version; backend must be None or "
            f"{DEFAULT_CPU_BACKEND!r}, got {name!r}"
        )
    get(name)  # unknown names raise here
    return name
