"""Describe a broadcast batch of 2-D arrays as a flat buffer plus offsets.

Kernels (CPU now, GPU later) index raw memory.  Rather than copying every
operand into a contiguous layout -- which would double peak memory for strided
or broadcast inputs -- each operand is described by

* ``buf``: a 1-D view of the operand's memory, starting at its lowest address;
* ``offsets``: int64, the element offset in ``buf`` of core element ``(0, 0)``
  for every element of the broadcast batch (C order);
* ``shape`` and ``strides``: the 2-D core's extent and element strides (any
  sign, possibly zero).

Element ``(a, b)`` of batch element ``i`` is ``buf[offsets[i] + a*strides[0] +
b*strides[1]]``.

The same description serves NumPy arrays (CPU kernels) and CuPy arrays (GPU
kernels): ``buf`` and ``offsets`` then live on the array's device, and only
strides and shapes are read on the host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np


def namespace(x: Any) -> ModuleType:
    """The array module of ``x``: :mod:`cupy` for CuPy arrays, else :mod:`numpy`.

    CuPy is imported only when a CuPy array is passed, so CPU users never load it.
    """
    if type(x).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy
    return np


def is_dask_array(x: Any) -> bool:
    """True for a ``dask.array.Array`` (checked without importing Dask)."""
    return type(x).__module__.startswith("dask.") and hasattr(x, "__dask_graph__")


def to_numpy(x: Any) -> np.ndarray:
    """``x`` on the host: a CuPy array is copied there (waiting for the device)."""
    return x.get() if hasattr(x, "get") else np.asarray(x)


@dataclass(frozen=True)
class StridedBatch:
    """A batch of 2-D cores addressed inside one flat buffer (see module docstring)."""

    buf: np.ndarray
    offsets: np.ndarray
    shape: tuple[int, int]
    strides: tuple[int, int]

    @property
    def size(self) -> int:
        return self.offsets.shape[0] * self.shape[0] * self.shape[1]

    @classmethod
    def from_array(cls, x: np.ndarray, batch_shape: tuple[int, ...]) -> StridedBatch:
        """Describe ``x`` (core = last two axes) broadcast to ``batch_shape``.

        ``x`` must be non-empty and its element strides whole multiples of the
        item size; misaligned or odd-strided arrays are copied first.  No other
        copy is made: broadcast batch axes get repeated offsets.
        """
        if x.ndim < 2:
            raise ValueError("internal: StridedBatch needs at least 2 dimensions")
        buf, offsets, strides = flat_batch(x, batch_shape, 2)
        return cls(buf, offsets, (int(x.shape[-2]), int(x.shape[-1])), strides)

    def band_view(self, bandwidth: int, lower: bool) -> StridedBatch:
        """Re-address a band array ``(u+1, M)`` as ``(j, t) -> A[j + t, j]``.

        Lower form stores ``A[j + t, j]`` at ``ab[t, j]``; upper form stores
        ``A[j, j + t]`` (the same number, by symmetry) at ``ab[u - t, j + t]``.
        Both are affine in ``(j, t)``, so the kernels never see which form the
        caller used.
        """
        s_row, s_col = self.strides
        if lower:
            return StridedBatch(
                self.buf, self.offsets, (self.shape[1], bandwidth + 1), (s_col, s_row)
            )
        u = self.shape[0] - 1
        return StridedBatch(
            self.buf,
            self.offsets + u * s_row,
            (self.shape[1], bandwidth + 1),
            (s_col, s_col - s_row),
        )

    @classmethod
    def dummy(cls, dtype: np.dtype, nsys: int, xp: ModuleType = np) -> StridedBatch:
        """A zero-extent placeholder for unused kernel arguments."""
        return cls(xp.zeros(1, dtype=dtype), xp.zeros(nsys, dtype=np.int64), (0, 0), (0, 0))


def addressable(x: Any) -> bool:
    """True when ``x`` can be described without a copy: aligned, and every axis
    longer than 1 has a stride that is a whole number of elements."""
    itemsize = x.dtype.itemsize
    aligned = getattr(x.flags, "aligned", None)
    if aligned is None:  # CuPy: check the device pointer
        aligned = x.size == 0 or x.data.ptr % itemsize == 0
    return aligned and all(
        s % itemsize == 0 for s, n in zip(x.strides, x.shape, strict=True) if n > 1
    )


def without_self_overlap(x: np.ndarray) -> bool:
    """True when no two elements of ``x`` share memory (a sufficient test:
    sorted by stride, each axis steps over everything the smaller ones span)."""
    extent = x.dtype.itemsize
    for stride, n in sorted((abs(s), n) for s, n in zip(x.strides, x.shape, strict=True) if n > 1):
        if stride < extent:
            return False
        extent = stride * (n - 1) + extent
    return True


def drop_broadcast_axes(x: np.ndarray, core_ndim: int) -> np.ndarray:
    """A view with every zero-stride batch axis shortened to length 1.

    Broadcasting restores them, so the result is equivalent, but copies and
    conversions then touch each distinct element once.
    """
    batch = x.ndim - core_ndim
    if not any(s == 0 and n > 1 for s, n in zip(x.strides[:batch], x.shape[:batch], strict=True)):
        return x
    return x[tuple(slice(0, 1) if s == 0 else slice(None) for s in x.strides[:batch])]


def flat_batch(
    x: np.ndarray, batch_shape: tuple[int, ...], core_ndim: int
) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """Address ``x`` (its last ``core_ndim`` axes are the core) broadcast to
    ``batch_shape`` as ``(buf, offsets, core_strides)``; ``x`` must be non-empty.

    Element ``idx`` of batch element ``i`` (C order) is
    ``buf[offsets[i] + sum(idx * core_strides)]``.  Core axes of length 1 get
    stride 0, so a core axis that broadcasts (for example a time axis of
    length 1) can be indexed as if it had full length.  Only misaligned or
    odd-strided arrays are copied.
    """
    batch_shape = tuple(batch_shape)
    # (NumPy arrays and their subclasses; not array types of other modules
    # built on ndarray, such as the tests' stand-in for CuPy.)
    plain = isinstance(x, np.ndarray) and namespace(x) is np
    plain = plain and x.flags.c_contiguous and x.flags.aligned and x.size
    if plain and x.shape[: x.ndim - core_ndim] == batch_shape:
        return _flat_contiguous(x, batch_shape, core_ndim)
    return _flat_general(x, batch_shape, core_ndim)


def _flat_general(
    x: Any, batch_shape: tuple[int, ...], core_ndim: int
) -> tuple[Any, Any, tuple[int, ...]]:
    """:func:`flat_batch` for any strides, broadcasting and array module."""
    xp = namespace(x)
    if not addressable(x):
        x = xp.array(x, order="C")
    itemsize = x.dtype.itemsize
    core = x.shape[x.ndim - core_ndim :]
    xb = (
        xp.broadcast_to(x, batch_shape + core)
        if x.shape[: x.ndim - core_ndim] != batch_shape
        else x
    )
    # The stride of a length-1 axis is never used (and may be anything).
    el_strides = [s // itemsize if n > 1 else 0 for s, n in zip(xb.strides, xb.shape, strict=True)]
    # Lowest address: flip every axis whose stride is negative.
    flips = tuple(slice(None, None, -1) if s < 0 else slice(None) for s in el_strides)
    lowest = xb[flips]
    low = sum((n - 1) * s for n, s in zip(xb.shape, el_strides, strict=True) if s < 0)
    high = sum((n - 1) * s for n, s in zip(xb.shape, el_strides, strict=True) if s > 0)
    span = high - low + 1
    if xp is np:
        buf = np.lib.stride_tricks.as_strided(
            lowest, shape=(span,), strides=(itemsize,), writeable=bool(lowest.flags.writeable)
        )
    else:
        buf = xp.lib.stride_tricks.as_strided(lowest, shape=(span,), strides=(itemsize,))
    offsets = xp.full(batch_shape, -low, dtype=np.int64)
    for axis, (n, s) in enumerate(zip(batch_shape, el_strides[: len(batch_shape)], strict=True)):
        if s != 0 and n > 1:
            shape = [1] * len(batch_shape)
            shape[axis] = n
            offsets = offsets + (xp.arange(n, dtype=np.int64) * s).reshape(shape)
    offsets = xp.ascontiguousarray(offsets.reshape(-1))
    return buf, offsets, tuple(el_strides[len(batch_shape) :])


def _flat_contiguous(
    x: np.ndarray, batch_shape: tuple[int, ...], core_ndim: int
) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """:func:`flat_batch` of a C-contiguous NumPy ``x`` that already has the
    batch shape (the common case, in a fraction of the general path's time)."""
    return (x.reshape(-1), *contiguous_layout(x.shape, core_ndim))


def contiguous_layout(shape: tuple[int, ...], core_ndim: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """``(offsets, core_strides)`` of :func:`flat_batch` for a C-contiguous
    array of ``shape`` (its batch axes those of the result)."""
    core = shape[len(shape) - core_ndim :]
    core_size = math.prod(core)
    strides, step = [], 1
    for n in reversed(core):
        strides.append(step if n > 1 else 0)
        step *= n
    nsys = math.prod(shape[: len(shape) - core_ndim])
    offsets = np.arange(0, nsys * core_size, core_size, dtype=np.int64)
    return offsets, tuple(reversed(strides))
