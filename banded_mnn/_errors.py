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
        Per-system status with the batch shape (for Dask arrays: of the chunk
        that failed, see :attr:`offset`) (0-d for a single matrix): 0 for
        systems that factored, otherwise LAPACK's ``info``, the 1-based order
        of the first leading minor that is not positive definite.
    batch_index : tuple of int
        Batch index of the first failed system (``()`` for a single matrix).
        For Dask arrays it is the index in the whole batch, of the first
        failed system of the chunk that reported the failure.
    offset : tuple of int or None
        For Dask arrays, where the chunk that :attr:`info` describes starts
        in the whole batch; ``None`` otherwise.
    order : int
        ``info`` of that system.
    """

    def __init__(
        self, info: np.ndarray, function: str, *, offset: tuple[int, ...] | None = None
    ) -> None:
        self.info = np.asarray(info)
        self.offset = None if offset is None else tuple(int(o) for o in offset)
        if self.offset is not None and len(self.offset) != self.info.ndim:
            raise ValueError("internal: offset must have one entry per batch axis of info")
        self._function = function
        failed = np.flatnonzero(self.info)
        first = int(failed[0])
        local = np.unravel_index(first, self.info.shape)
        shift = self.offset or (0,) * self.info.ndim
        self.batch_index = tuple(int(i) + o for i, o in zip(local, shift, strict=True))
        self.order = int(self.info.reshape(-1)[first])
        message = f"{function}: {self.order}-th leading minor not positive definite"
        if self.info.ndim:
            message += f" in the system at batch index {self.batch_index}"
            if failed.size > 1:
                where = (
                    "systems"
                    if self.offset is None
                    else (f"systems of the chunk at batch offset {self.offset}")
                )
                message += f" ({failed.size} of {self.info.size} {where} failed; see .info)"
        super().__init__(message)

    def with_offset(self, offset: tuple[int, ...]) -> NotPositiveDefiniteError:
        """The same failure, found in a chunk of a larger batch that starts at
        ``offset``: :attr:`batch_index` becomes the index in the whole batch
        (used by the Dask path; notes are kept)."""
        error = type(self)(self.info, self._function, offset=offset)
        for note in getattr(self, "__notes__", ()):
            error.add_note(note)
        return error

    def __reduce__(self):
        # Pickled for Dask's distributed workers: keep the offset and the notes.
        return (_rebuild, (type(self), self.info, self._function, self.offset,
                           tuple(getattr(self, "__notes__", ()))))  # fmt: skip


def _rebuild(cls, info, function, offset, notes):
    error = cls(info, function, offset=offset)
    for note in notes:
        error.add_note(note)
    return error
