"""PyTorch adapter: banded_mnn's routines and the MNN layer as differentiable
torch operators (``torch.library.custom_op``), usable under ``torch.compile``
and ``torch.func`` (``vmap``, ``grad``, ``jacrev``; no double backward).

Importing this module imports torch; ``import banded_mnn`` does not.
"""

from ._mnn import clear_frozen_lhs_cache, ode_forward
from ._ops import (
    cho_solve_banded,
    cholesky_banded,
    cholesky_banded_ex,
    solveh_banded,
    solveh_banded_ex,
)

__all__ = [
    "cho_solve_banded",
    "cholesky_banded",
    "cholesky_banded_ex",
    "clear_frozen_lhs_cache",
    "ode_forward",
    "solveh_banded",
    "solveh_banded_ex",
]
