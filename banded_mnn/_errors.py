"""Exceptions raised by banded_mnn."""

from __future__ import annotations

import numpy as np


class NotPositiveDefiniteError(np.linalg.LinAlgError):
    """A matrix in the batch is not (numerically) positive definite.

    A subclass of :class:`numpy.linalg.LinAlgError` (itself a ``ValueError``),
    so code written for SciPy's ``LinAlgError`` keeps working.

    Attributes
    ----------
    info : numpy.ndarray of int32
        Per-system status with the batch shape (0-d for a single matrix): 0 for
        systems that factored, otherwise LAPACK's ``info``, the 1-based order
        of the first leading minor that is not positive definite.
    batch_index : tuple of int
        Batch index of the first failed system (``()`` for a single matrix).
    order : int
        ``info`` of that system.
    """

    def __init__(self, info: np.ndarray, function: str) -> None:
        self.info = np.asarray(info)
        failed = np.flatnonzero(self.info)
        first = int(failed[0])
        self.batch_index = tuple(int(i) for i in np.unravel_index(first, self.info.shape))
        self.order = int(self.info.reshape(-1)[first])
        message = f"{function}: {self.order}-th leading minor not positive definite"
        if self.info.ndim:
            message += f" in the system at batch index {self.batch_index}"
            if failed.size > 1:
                message += f" ({failed.size} of {self.info.size} systems failed; see .info)"
        super().__init__(message)

    def __reduce__(self):
        function = str(self).split(":", 1)[0]
        return (type(self), (self.info, function))
