"""banded_mnn: batched banded Cholesky solvers for Mechanistic Neural Networks.

SciPy-compatible, batched ``cholesky_banded``, ``cho_solve_banded`` and
``solveh_banded`` (plus ``*_ex`` variants that report per-system status), on
NumPy arrays with a parallel Numba CPU backend; ``solveh_block_banded`` for
SPD systems given as blocks; the MNN layer in :mod:`banded_mnn.mnn`.

Importing this package loads NumPy only; Numba is imported on first use.
"""

from ._api import (
    cho_solve_banded,
    cholesky_banded,
    cholesky_banded_ex,
    solveh_banded,
    solveh_banded_ex,
)
from ._blocks import solveh_block_banded, solveh_block_banded_ex
from ._errors import NotPositiveDefiniteError

__version__ = "0.1.0"

__all__ = [
    "NotPositiveDefiniteError",
    "__version__",
    "cho_solve_banded",
    "cholesky_banded",
    "cholesky_banded_ex",
    "solveh_banded",
    "solveh_banded_ex",
    "solveh_block_banded",
    "solveh_block_banded_ex",
]
