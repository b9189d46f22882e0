"""The MNN layer: linear-ODE least squares on a step grid, solved banded.

:func:`ode_forward` has the semantics of S-MNN's ``ode_forward`` (Chen et al.,
ICLR 2025) on NumPy arrays; :class:`OdeSystem` is a factored left-hand side
that solves any number of right-hand sides and computes the exact
vector-Jacobian product.  See ``docs/mnn.md``.
"""

from ._layer import OdeGradients, OdeSpec, OdeSystem, clear_frozen_lhs_cache, ode_forward

__all__ = ["OdeGradients", "OdeSpec", "OdeSystem", "clear_frozen_lhs_cache", "ode_forward"]
