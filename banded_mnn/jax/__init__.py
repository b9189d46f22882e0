"""JAX adapter: banded_mnn's routines and the MNN layer as differentiable JAX
functions (``jax.custom_vjp`` over buffer callbacks), usable eagerly and under
``jax.jit``, ``jax.vmap`` and ``jax.grad``, on the CPU and (band routines) on
CUDA devices.

Importing this module imports JAX; ``import banded_mnn`` does not.
"""

from ._ops import (
    cho_solve_banded,
    cholesky_banded,
    cholesky_banded_ex,
    ode_forward,
    solveh_banded,
    solveh_banded_ex,
)

__all__ = [
    "cho_solve_banded",
    "cholesky_banded",
    "cholesky_banded_ex",
    "ode_forward",
    "solveh_banded",
    "solveh_banded_ex",
]
