"""Backend registry.

A backend is a module with

* ``run(band, bw, *, factor, factor_out, rhs, out, check_finite) ->
  (info, (band_nonfinite, rhs_nonfinite))`` -- factor and/or solve a batch
  described by :class:`banded_mnn._strided.StridedBatch` operands, returning
  the per-system ``info`` (int32, flattened batch) and whether the values read
  were finite (checked in the same pass when ``check_finite``);
* ``all_finite(x) -> bool`` -- a separate finiteness pass, for when results
  are written into the caller's arrays and must not be written at all if the
  input is bad.

Backends are imported on first use, so ``import banded_mnn`` loads neither
Numba nor any GPU library.
"""

from __future__ import annotations

import importlib
from types import ModuleType

#: Backend name -> module implementing it.  GPU backends ("numba-cuda",
#: "cupy") are not part of this version.
_MODULES = {"numba": "banded_mnn._backends._numba_cpu"}

#: The backend used for NumPy input when ``backend=None``.
DEFAULT_CPU_BACKEND = "numba"


def available() -> tuple[str, ...]:
    """Names accepted by the ``backend=`` argument."""
    return tuple(_MODULES)


def get(name: str | None) -> ModuleType:
    """The backend module for ``name`` (``None`` selects the default)."""
    if name is None:
        name = DEFAULT_CPU_BACKEND
    if name not in _MODULES:
        raise ValueError(
            f"backend must be one of {', '.join(map(repr, _MODULES))} or None; got {name!r}"
        )
    return importlib.import_module(_MODULES[name])
