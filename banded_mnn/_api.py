"""Public band routines: argument validation, dtype and shape rules, dispatch.

Everything here is backend-independent.  Validation happens before any
kernel runs, so a call that raises for bad input has written nothing.  The
kernels are reached through :func:`banded_mnn._backends.get`.

NumPy input runs on the CPU backend and CuPy input on a GPU backend; Dask
arrays are handed to :mod:`banded_mnn._dask`, which builds a lazy graph whose
tasks call these same functions on each chunk.  The code below is written
once for NumPy and CuPy, against the array module ``xp`` of the
backend (NumPy or CuPy), and only shapes and strides are read on the host.
"""

from __future__ import annotations

import contextlib
import math
from types import ModuleType
from typing import Any

import numpy as np

from . import _backends
from ._errors import NotPositiveDefiniteError
from ._strided import (
    StridedBatch,
    addressable,
    drop_broadcast_axes,
    is_dask_array,
    namespace,
    to_numpy,
    without_self_overlap,
)

__all__ = [
    "cho_solve_banded",
    "cholesky_banded",
    "cholesky_banded_ex",
    "solveh_banded",
    "solveh_banded_ex",
]


def _empty(shape: tuple[int, ...], dtype: Any = float, xp: ModuleType = np) -> Any:
    """Allocator for fresh outputs.  Tests replace it with one that fills NaN, so
    that an output element the kernels forget to write cannot go unnoticed."""
    return xp.empty(shape, dtype=dtype)


# --------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------


def _select(backend: str | None, arrays: dict[str, Any]) -> tuple[ModuleType, ModuleType]:
    """The backend module for these arrays and its array module ``xp``.

    ``backend=None`` picks the CPU backend for NumPy input and the default GPU
    backend when any array is a CuPy array.
    """
    gpu_input = False
    for name, x in arrays.items():
        if _on_gpu(x):
            if namespace(x) is np:  # not CuPy: e.g. a torch or Numba device array
                raise TypeError(
                    f"{name} is a GPU array of type {type(x).__module__}.{type(x).__name__}; "
                    "banded_mnn's GPU backends take CuPy arrays (cupy.asarray(x) wraps it "
                    "without a copy; banded_mnn.torch takes CUDA tensors directly)"
                )
            gpu_input = True
    impl = _backends.get(backend, gpu_input)
    return impl, impl.array_namespace()


def _on_gpu(x: Any) -> bool:
    return hasattr(x, "__cuda_array_interface__")


def _as_real_array(x: Any, name: str, xp: ModuleType = np, backend: str | None = None) -> Any:
    """``x`` as an array of ``xp`` (NumPy or CuPy) of a real numeric dtype, without copying."""
    if xp is np:
        if _on_gpu(x):
            raise TypeError(
                f"{name} is a GPU array ({type(x).__module__}.{type(x).__name__}) but backend "
                f"{backend or _backends.DEFAULT_CPU_BACKEND!r} runs on NumPy arrays; pass CuPy "
                "arrays with backend=None, 'cupy' or 'numba-cuda' to run on the GPU"
            )
        array = np.asarray(x)
    else:
        if namespace(x) is not xp:
            raise TypeError(
                f"{name} must be a CuPy array for GPU backend {backend or 'cupy'!r}; got "
                f"{type(x).__module__}.{type(x).__name__} (move it with cupy.asarray; "
                "banded_mnn does not copy between host and device behind your back)"
            )
        array = x
    check_real_dtype(array.dtype, name)
    return array


def check_real_dtype(dtype: np.dtype, name: str) -> None:
    """Raise ``TypeError`` unless ``dtype`` is a real numeric dtype."""
    if dtype.kind == "c":
        raise TypeError(
            f"{name} must be real; got complex dtype {dtype} "
            "(complex Hermitian matrices are not supported)"
        )
    if dtype.kind not in "biuf":
        raise TypeError(f"{name} must be an array of real numbers; got dtype {dtype}")


def _result_dtype(*arrays: np.ndarray) -> np.dtype:
    """SciPy's (LAPACK's) choice: float32 if every input fits, else float64."""
    common = np.result_type(*(a.dtype for a in arrays), np.float32)
    return np.dtype(np.float32) if common == np.float32 else np.dtype(np.float64)


def _check_band(ab: np.ndarray, name: str) -> tuple[int, int]:
    """Validate a band array; return (M, effective half-bandwidth)."""
    if ab.ndim < 2:
        raise ValueError(
            f"{name} must have shape (..., u + 1, M) (at least 2 dimensions); got shape {ab.shape}"
        )
    if ab.shape[-2] == 0:
        raise ValueError(f"{name} must have at least one row (the diagonal); got shape {ab.shape}")
    m = ab.shape[-1]
    # u + 1 > M is allowed: the matrix is then dense and the extra band rows
    # are outside it (never read), exactly as in LAPACK's ?pbtrf.
    return m, min(ab.shape[-2] - 1, max(m - 1, 0))


def _rhs_layout(
    ab: np.ndarray, b: np.ndarray, name_ab: str, name_b: str
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Validate ``b`` against ``ab``; return (batch shape, output shape)."""
    if b.ndim == 0:
        raise ValueError(f"{name_b} must have shape (M,) or (..., M, K); got a 0-d array")
    m = ab.shape[-1]
    rows = b.shape[0] if b.ndim == 1 else b.shape[-2]
    if rows != m:
        raise ValueError(
            f"shapes of {name_ab} {ab.shape} and {name_b} {b.shape} are not compatible: "
            f"{name_ab} has M = {m} columns, so {name_b} must have shape (M,) or (..., M, K) "
            f"with M = {m}"
        )
    b_batch = () if b.ndim == 1 else b.shape[:-2]
    try:
        batch = np.broadcast_shapes(ab.shape[:-2], b_batch)
    except ValueError:
        raise ValueError(
            f"batch shapes of {name_ab} {ab.shape[:-2]} and {name_b} {b_batch} do not broadcast"
        ) from None
    core = (m,) if b.ndim == 1 else b.shape[-2:]
    return batch, batch + core


def _same_device(arrays: dict[str, Any]) -> None:
    """CuPy arrays must all be on one device (the one the kernels run on)."""
    devices = {name: getattr(getattr(a, "device", None), "id", None) for name, a in arrays.items()}
    if len(set(devices.values())) > 1:
        where = ", ".join(f"{name} on device {d}" for name, d in devices.items())
        raise ValueError(f"the arrays must be on one GPU; got {where}")


def _can_overwrite(x: Any, dtype: np.dtype, shape: tuple[int, ...]) -> bool:
    """True when results may be written into ``x`` itself."""
    return (
        x.dtype == dtype
        and x.shape == shape
        and getattr(x.flags, "writeable", True)
        and addressable(x)
        and without_self_overlap(x)
    )


def _check_finite(x: Any, name: str, backend, xp: ModuleType = np) -> None:
    """Raise if an array has an inf or NaN: a separate pass, used only when
    results go into the caller's own arrays (which must stay untouched on error).
    Otherwise the kernels check the values they read in the same pass."""
    if x.size == 0:
        return
    if x.dtype not in (np.float32, np.float64):  # integers, float16, longdouble
        finite = x.dtype.kind in "biu" or bool(xp.isfinite(x).all())
    else:
        core = _as_batched(x)
        finite = backend.all_finite(StridedBatch.from_array(core, core.shape[:-2]))
    if not finite:
        raise ValueError(_NONFINITE.format(name))


def _check_unread_cells(ab: Any, name: str, lower: bool, xp: ModuleType = np) -> None:
    """Check the band cells outside the matrix, which the kernels never read
    (SciPy rejects non-finite values there too).  A few ``u * u`` cells per
    matrix, plus whole rows when ``u + 1 > M``."""
    if not bool(xp.isfinite(ab[_unread_cells(ab.shape, lower)]).all()):
        raise ValueError(_NONFINITE.format(name))


def _unread_cells(shape: tuple[int, ...], lower: bool) -> tuple[slice, ...]:
    """Index of a small block containing every band cell outside the matrix
    (the ``u (u + 1) / 2`` corner cells, and whole rows when ``u + 1 > M``)."""
    u, m = shape[-2] - 1, shape[-1]
    if lower:
        return (Ellipsis, slice(1, None), slice(max(m - u, 0), None))
    return (Ellipsis, slice(None, u), slice(None, min(u, m)))


_NONFINITE = "{} must not contain infs or NaNs"


def _raise_if_failed(info: Any, function: str) -> None:
    # For CuPy input this waits for the device: raising needs the answer
    # (the ``_ex`` variants never wait).
    if info.size and bool(info.any()):
        raise NotPositiveDefiniteError(to_numpy(info), function)


def _as_batched(x: Any) -> Any:
    """``(M,)`` right-hand sides as ``(M, 1)``; others unchanged."""
    return x[:, None] if x.ndim == 1 else x


def _on_dask(function: str, ab: Any, b: Any | None, lower: bool, check_finite: bool,
             backend: str | None, raising: bool):  # fmt: skip
    """The lazy result for Dask operands (see :mod:`banded_mnn._dask`)."""
    from . import _dask

    return _dask.band_routine(
        function, ab, b, lower=lower, check_finite=check_finite, backend=backend, raising=raising
    )


# --------------------------------------------------------------------------
# Shared drivers (one per routine family)
# --------------------------------------------------------------------------


def _on_device_of(x: Any, xp: ModuleType):
    """For CuPy arrays, a context making ``x``'s device current: every
    temporary, output and launch of a call goes to the device of its arrays."""
    return x.device if xp is not np else contextlib.nullcontext()


def _factor(ab: Any, overwrite_ab: bool, lower: bool, check_finite: bool, backend: str | None):
    impl, xp = _select(backend, {"ab": ab})
    ab = _as_real_array(ab, "ab", xp, backend)
    with _on_device_of(ab, xp):
        return _factor_checked(ab, impl, xp, overwrite_ab, lower, check_finite)


def _factor_checked(ab: Any, impl: ModuleType, xp: ModuleType, overwrite_ab: bool, lower: bool,
                    check_finite: bool):  # fmt: skip
    m, bw = _check_band(ab, "ab")
    dtype = _result_dtype(ab)
    batch = ab.shape[:-2]
    if overwrite_ab and _can_overwrite(ab, dtype, ab.shape):
        c = source = ab  # factor in place
    elif ab.dtype == dtype:
        # Read ab, write the factor into a fresh array: no copy pass.  The
        # band cells outside the matrix are copied as given (LAPACK leaves them).
        c, source = _empty(ab.shape, dtype=dtype, xp=xp), ab
        unread = _unread_cells(ab.shape, lower)
        c[unread] = ab[unread]
    else:
        c = source = xp.array(ab, dtype=dtype, order="C")  # converted copy, factored in place
    if c.size == 0:
        return c, xp.zeros(batch, dtype=np.int32)
    fused_check = check_finite and c is not ab  # ab stays untouched: check while factoring
    if fused_check:
        _check_unread_cells(ab, "ab", lower, xp)
    elif check_finite:
        _check_finite(c, "ab", impl, xp)
    band = StridedBatch.from_array(source, batch).band_view(bw, lower)
    out = band if c is source else StridedBatch.from_array(c, batch).band_view(bw, lower)
    info, (bad, _) = impl.run(
        band, bw, factor=True, factor_out=out, rhs=None, out=None, check_finite=fused_check
    )
    if bad:
        raise ValueError(_NONFINITE.format("ab"))
    return c, info.reshape(batch)


def _solve(
    ab: Any,
    b: Any,
    *,
    factored: bool,
    overwrite_b: bool,
    lower: bool,
    check_finite: bool,
    backend: str | None,
    name_ab: str,
):
    impl, xp = _select(backend, {name_ab: ab, "b": b})
    ab = _as_real_array(ab, name_ab, xp, backend)
    b = _as_real_array(b, "b", xp, backend)
    if xp is not np:
        _same_device({name_ab: ab, "b": b})
    with _on_device_of(ab, xp):
        return _solve_checked(ab, b, impl, xp, factored, overwrite_b, lower, check_finite,
                              name_ab)  # fmt: skip


def _solve_checked(ab: Any, b: Any, impl: ModuleType, xp: ModuleType, factored: bool,
                   overwrite_b: bool, lower: bool, check_finite: bool, name_ab: str):  # fmt: skip
    m, bw = _check_band(ab, name_ab)
    batch, out_shape = _rhs_layout(ab, b, name_ab, "b")
    dtype = _result_dtype(ab, b)
    # Broadcast (zero-stride) batch axes become length 1, so that conversions
    # and the factor-once path below touch each distinct matrix once.
    ab = drop_broadcast_axes(ab, 2)
    if b.ndim > 1:
        b = drop_broadcast_axes(b, 2)
    if overwrite_b and _can_overwrite(b, dtype, out_shape) and not xp.may_share_memory(b, ab):
        x = b
    else:
        x = _empty(out_shape, dtype=dtype, xp=xp)
    if x.size == 0:
        # Nothing to solve (SciPy also returns early without factoring, after
        # checking the inputs).
        if check_finite:
            _check_finite(ab, name_ab, impl, xp)
            _check_finite(b, "b", impl, xp)
        return x, xp.zeros(batch, dtype=np.int32)
    ab_op = ab if ab.dtype == dtype else ab.astype(dtype)
    b_op = b if b.dtype == dtype else b.astype(dtype)
    fused_check = check_finite and x is not b  # x is ours: check while solving
    if check_finite and not fused_check:
        _check_finite(ab_op, name_ab, impl, xp)
        _check_finite(b_op, "b", impl, xp)
    elif fused_check:
        _check_unread_cells(ab_op, name_ab, lower, xp)
    if b.ndim == 1:  # one vector for the whole batch: a (M, 1) core
        b_op, x_core = b_op[:, None], x[..., None]
    else:
        x_core = x
    factor_info = None
    if not factored and 2 * math.prod(ab.shape[:-2]) <= math.prod(batch):
        # Each matrix serves several right-hand-side batches (e.g. one shared
        # left-hand side): factor every distinct matrix once, then only solve.
        # Failed factors are NaN, so their solutions come out NaN.
        if ab_op is ab:  # a converted ab_op is already ours to factor in place
            ab_op = xp.array(ab, order="C")
        own = StridedBatch.from_array(ab_op, ab_op.shape[:-2]).band_view(bw, lower)
        factor_info, (bad_band, _) = impl.run(
            own, bw, factor=True, factor_out=own, rhs=None, out=None, check_finite=fused_check
        )
        if bad_band:
            raise ValueError(_NONFINITE.format(name_ab))
        factored = True
    band = StridedBatch.from_array(ab_op, batch).band_view(bw, lower)
    info, (bad_band, bad_rhs) = impl.run(
        band,
        bw,
        factor=not factored,
        factor_out=None,
        rhs=StridedBatch.from_array(b_op, batch),
        out=StridedBatch.from_array(x_core, batch),
        check_finite=fused_check,
    )
    # (After an internal factorisation the band holds factors, already checked.)
    if bad_band and factor_info is None:
        raise ValueError(_NONFINITE.format(name_ab))
    if bad_rhs:
        raise ValueError(_NONFINITE.format("b"))
    if factor_info is not None:
        info = xp.broadcast_to(factor_info.reshape(ab.shape[:-2]), batch).copy()
    return x, info.reshape(batch)


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------

_BAND_LAYOUT = """
    The band storage is SciPy's (LAPACK's) diagonal-ordered form.  For a
    symmetric positive definite matrix ``a`` of order ``M`` with ``u``
    off-diagonals on each side::

        upper form (default):  ab[u + i - j, j] == a[i, j]   for i <= j
        lower form:            ab[i - j, j] == a[i, j]       for i >= j

    For ``M = 6, u = 2``::

        upper form:                    lower form:
        *   *   a02 a13 a24 a35        a00 a11 a22 a33 a44 a55
        *   a01 a12 a23 a34 a45        a10 a21 a32 a43 a54 *
        a00 a11 a22 a33 a44 a55        a20 a31 a42 a53 *   *

    Cells marked ``*`` are never read.  ``u + 1 > M`` is allowed: the matrix
    is then dense and band rows beyond it are ignored.
"""


def cholesky_banded(
    ab: Any,
    overwrite_ab: bool = False,
    lower: bool = False,
    check_finite: bool = True,
    *,
    backend: str | None = None,
) -> np.ndarray:
    """Cholesky factorisation of a batch of symmetric positive definite band matrices.

    Drop-in for :func:`scipy.linalg.cholesky_banded`: same arguments, band
    layout and result, batched over leading dimensions.

    Parameters
    ----------
    ab : array_like, shape (..., u + 1, M)
        The matrices in band storage (see Notes).  Leading dimensions are a
        batch.  Integer, boolean and float16 input is converted as SciPy does
        (to float32 if it fits, else float64).  A Dask array gives a lazy Dask
        result, one task per batch chunk (see ``docs/scaling.md``).
    overwrite_ab : bool, optional
        Allow the factor to be written into ``ab`` itself when ``ab`` is a
        writeable array of the result dtype.  Otherwise ``ab`` is never written.
    lower : bool, optional
        ``ab`` is in lower form (``a = L L^T`` is computed) rather than upper
        form (``a = U^T U``).
    check_finite : bool, optional
        Raise ``ValueError`` if ``ab`` contains infs or NaNs.  With ``False``
        a non-finite value is still caught if it reaches a pivot, and is
        reported as not positive definite.
    backend : {None, "numba"}, optional
        Implementation to use; ``None`` picks the default for the input.

    Returns
    -------
    c : numpy.ndarray, shape (..., u + 1, M)
        The factor ``U`` (upper form) or ``L`` (lower form) in the same band
        layout; float32 or float64.  Unused cells are copied from ``ab``.

    Raises
    ------
    NotPositiveDefiniteError
        (a ``numpy.linalg.LinAlgError``) if any matrix is not positive
        definite; it names the batch index and the 1-based order of the
        leading minor (LAPACK's ``info``).  Use :func:`cholesky_banded_ex` to
        get per-system status instead.
    ValueError
        Bad shapes, or non-finite input with ``check_finite=True``.
    TypeError
        Complex or non-numeric input.

    See Also
    --------
    cholesky_banded_ex : the same, returning per-system status.
    cho_solve_banded : solve with the factor.
    scipy.linalg.cholesky_banded : the unbatched reference.

    Notes
    -----
    """
    if is_dask_array(ab):
        return _on_dask("cholesky_banded", ab, None, lower, check_finite, backend, True)
    c, info = _factor(ab, overwrite_ab, lower, check_finite, backend)
    _raise_if_failed(info, "cholesky_banded")
    return c


cholesky_banded.__doc__ += (
    _BAND_LAYOUT
    + """
    A zero-size batch or ``M = 0`` returns an empty result.  The work is linear
    in ``M`` and in the batch size, and runs in parallel over the batch
    (``numba.set_num_threads`` sets the number of threads).

    Examples
    --------
    >>> import numpy as np
    >>> from banded_mnn import cholesky_banded
    >>> ab = np.array([[0.0, 1.0, 1.0, 1.0],
    ...                [4.0, 4.0, 4.0, 4.0]])   # upper form, u = 1
    >>> c = cholesky_banded(ab)
    >>> c[1, 0]
    np.float64(2.0)
    >>> batch = np.stack([ab, 2 * ab])          # shape (2, 2, 4)
    >>> cholesky_banded(batch).shape
    (2, 2, 4)
"""
)


def cholesky_banded_ex(
    ab: Any,
    overwrite_ab: bool = False,
    lower: bool = False,
    check_finite: bool = True,
    *,
    backend: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Batched band Cholesky that reports failures per system instead of raising.

    Like :func:`cholesky_banded`, but a matrix that is not positive definite
    does not raise: its status is returned, in the same pass, for the caller to
    act on (as :func:`torch.linalg.cholesky_ex` does).

    Parameters
    ----------
    ab, overwrite_ab, lower, check_finite, backend
        As in :func:`cholesky_banded`.

    Returns
    -------
    c : numpy.ndarray, shape (..., u + 1, M)
        The factors.  Every band cell inside the matrix of a failed system is NaN, so a
        failed factor cannot be used by mistake.
    info : numpy.ndarray of int32, shape (...)
        0 where the factorisation succeeded; otherwise the 1-based order of
        the first leading minor that is not positive definite.  A 0-d array
        for a single matrix.

    Raises
    ------
    ValueError, TypeError
        For bad input, as in :func:`cholesky_banded`.

    Examples
    --------
    >>> import numpy as np
    >>> from banded_mnn import cholesky_banded_ex
    >>> ab = np.array([[[0.0, 1.0, 1.0], [4.0, 4.0, 4.0]],
    ...                [[0.0, 3.0, 1.0], [1.0, 1.0, 1.0]]])  # second is indefinite
    >>> c, info = cholesky_banded_ex(ab)
    >>> info
    array([0, 2], dtype=int32)
    >>> bool(np.isnan(c[1]).any())
    True
    """
    if is_dask_array(ab):
        return _on_dask("cholesky_banded", ab, None, lower, check_finite, backend, False)
    return _factor(ab, overwrite_ab, lower, check_finite, backend)


def cho_solve_banded(
    cb_and_lower: tuple[Any, bool],
    b: Any,
    overwrite_b: bool = False,
    check_finite: bool = True,
    *,
    backend: str | None = None,
) -> np.ndarray:
    """Solve ``A x = b`` given the band Cholesky factor of ``A``, batched.

    Drop-in for :func:`scipy.linalg.cho_solve_banded`.

    Parameters
    ----------
    cb_and_lower : (cb, lower)
        ``cb``, shape (..., u + 1, M), is the factor from
        :func:`cholesky_banded`; ``lower`` must be the value given to it.
    b : array_like, shape (M,) or (..., M, K)
        Right-hand sides.  A 1-D ``b`` is one vector (shared by the whole
        batch); otherwise the last two axes are ``(M, K)`` and the leading
        axes a batch that broadcasts with ``cb``'s.  If ``cb`` or ``b`` is a
        Dask array, the result is a lazy Dask array (see ``docs/scaling.md``).
    overwrite_b : bool, optional
        Allow the solution to be written into ``b`` itself when ``b`` is a
        writeable array of the result dtype and shape.
    check_finite : bool, optional
        Raise ``ValueError`` if ``cb`` or ``b`` contains infs or NaNs.
    backend : {None, "numba"}, optional
        Implementation to use.

    Returns
    -------
    x : numpy.ndarray
        Shape ``batch + (M,)`` for 1-D ``b``, else ``batch + (M, K)``, where
        ``batch`` is the broadcast of the two batch shapes.

    Raises
    ------
    ValueError
        Incompatible shapes, a malformed ``cb_and_lower``, or non-finite input
        with ``check_finite=True``.
    TypeError
        Complex or non-numeric input.

    See Also
    --------
    cholesky_banded, solveh_banded, scipy.linalg.cho_solve_banded

    Notes
    -----
    Like LAPACK's ``?pbtrs`` the factor is not validated: a zero on its
    diagonal gives infs or NaNs.  Zero-size batches, ``M = 0`` and ``K = 0``
    return empty results.

    Examples
    --------
    >>> import numpy as np
    >>> from banded_mnn import cholesky_banded, cho_solve_banded
    >>> ab = np.array([[0.0, 1.0, 1.0], [4.0, 4.0, 4.0]])
    >>> cb = cholesky_banded(ab)
    >>> x = cho_solve_banded((cb, False), np.array([5.0, 6.0, 5.0]))
    >>> np.round(x, 12)
    array([1., 1., 1.])
    """
    if not (isinstance(cb_and_lower, tuple | list) and len(cb_and_lower) == 2):
        raise ValueError(
            f"cb_and_lower must be a pair (cb, lower); got {type(cb_and_lower).__name__}"
        )
    cb, lower = cb_and_lower
    if np.ndim(lower) != 0:
        raise ValueError("cb_and_lower must be a pair (cb, lower) with lower a bool")
    if is_dask_array(cb) or is_dask_array(b):
        return _on_dask("cho_solve_banded", cb, b, bool(lower), check_finite, backend, True)
    x, _ = _solve(
        cb,
        b,
        factored=True,
        overwrite_b=overwrite_b,
        lower=bool(lower),
        check_finite=check_finite,
        backend=backend,
        name_ab="cb",
    )
    return x


def solveh_banded(
    ab: Any,
    b: Any,
    overwrite_ab: bool = False,
    overwrite_b: bool = False,
    lower: bool = False,
    check_finite: bool = True,
    *,
    backend: str | None = None,
) -> np.ndarray:
    """Solve ``A x = b`` for a batch of symmetric positive definite band matrices.

    Drop-in for :func:`scipy.linalg.solveh_banded`: factor and solve in one
    fused pass per system; the factor is not kept.

    Parameters
    ----------
    ab : array_like, shape (..., u + 1, M)
        The matrices in band storage (see Notes).
    b : array_like, shape (M,) or (..., M, K)
        Right-hand sides, batched as in :func:`cho_solve_banded`.  If ``ab``
        or ``b`` is a Dask array, the result is a lazy Dask array (see
        ``docs/scaling.md``).
    overwrite_ab : bool, optional
        Accepted for SciPy compatibility.  ``ab`` is never written: the factor
        lives in a per-thread workspace.
    overwrite_b : bool, optional
        Allow the solution to be written into ``b`` itself when ``b`` is a
        writeable array of the result dtype and shape.
    lower : bool, optional
        ``ab`` is in lower form rather than upper form.
    check_finite : bool, optional
        Raise ``ValueError`` if ``ab`` or ``b`` contains infs or NaNs.
    backend : {None, "numba"}, optional
        Implementation to use.

    Returns
    -------
    x : numpy.ndarray
        Shape ``batch + (M,)`` for 1-D ``b``, else ``batch + (M, K)``;
        float32 or float64 as SciPy chooses.

    Raises
    ------
    NotPositiveDefiniteError
        If any matrix is not positive definite (batch index and leading-minor
        order in the message and attributes).  See :func:`solveh_banded_ex`.
    ValueError
        Incompatible shapes, or non-finite input with ``check_finite=True``.
    TypeError
        Complex or non-numeric input.

    See Also
    --------
    solveh_banded_ex, cholesky_banded, cho_solve_banded, scipy.linalg.solveh_banded

    Notes
    -----
    """
    if is_dask_array(ab) or is_dask_array(b):
        return _on_dask("solveh_banded", ab, b, lower, check_finite, backend, True)
    x, info = solveh_banded_ex(
        ab, b, overwrite_ab, overwrite_b, lower, check_finite, backend=backend
    )
    _raise_if_failed(info, "solveh_banded")
    return x


solveh_banded.__doc__ += (
    _BAND_LAYOUT
    + """
    SciPy uses LAPACK's ``?ptsv`` (an L D L^T factorisation) when ``u = 1`` and
    ``?pbsv`` otherwise; banded_mnn always uses Cholesky, so results agree to
    rounding.  With ``overwrite_b=True`` and a system that is not positive
    definite, ``b`` holds the solutions of the systems that succeeded and NaN
    for those that failed when the error is raised.

    Examples
    --------
    >>> import numpy as np
    >>> from banded_mnn import solveh_banded
    >>> ab = np.array([[0.0, 1.0, 1.0], [4.0, 4.0, 4.0]])   # tridiagonal, upper form
    >>> np.round(solveh_banded(ab, np.array([5.0, 6.0, 5.0])), 12)
    array([1., 1., 1.])

    A batch of 100 systems with 3 right-hand sides each:

    >>> rng = np.random.default_rng(0)
    >>> abs_ = np.concatenate([rng.uniform(-1, 1, (100, 2, 50)),
    ...                        np.full((100, 1, 50), 5.0)], axis=1)
    >>> solveh_banded(abs_, rng.standard_normal((100, 50, 3))).shape
    (100, 50, 3)
"""
)


def solveh_banded_ex(
    ab: Any,
    b: Any,
    overwrite_ab: bool = False,
    overwrite_b: bool = False,
    lower: bool = False,
    check_finite: bool = True,
    *,
    backend: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Batched :func:`solveh_banded` that reports failures per system instead of raising.

    The status comes out of the same fused factor-and-solve pass, so a
    training loop can detect (and skip or repair) indefinite systems without
    an exception and without a second pass over the data.

    Parameters
    ----------
    ab, b, overwrite_ab, overwrite_b, lower, check_finite, backend
        As in :func:`solveh_banded`.

    Returns
    -------
    x : numpy.ndarray
        The solutions; every entry of a system that failed is NaN.
    info : numpy.ndarray of int32
        Shape ``batch`` (0-d when nothing is batched): 0 on success, otherwise
        the 1-based order of the first leading minor of that system that is
        not positive definite (LAPACK's ``info``).  When ``b`` is empty
        nothing is factored and ``info`` is 0.

    Raises
    ------
    ValueError, TypeError
        For bad input, as in :func:`solveh_banded`.

    Examples
    --------
    >>> import numpy as np
    >>> from banded_mnn import solveh_banded_ex
    >>> ab = np.array([[[0.0, 1.0, 1.0], [4.0, 4.0, 4.0]],
    ...                [[0.0, 3.0, 1.0], [1.0, 1.0, 1.0]]])
    >>> x, info = solveh_banded_ex(ab, np.ones(3))
    >>> info
    array([0, 2], dtype=int32)
    >>> bool(np.isnan(x[1]).all())
    True
    """
    del overwrite_ab  # ab is only read; see solveh_banded
    if is_dask_array(ab) or is_dask_array(b):
        return _on_dask("solveh_banded", ab, b, lower, check_finite, backend, False)
    return _solve(
        ab,
        b,
        factored=False,
        overwrite_b=overwrite_b,
        lower=lower,
        check_finite=check_finite,
        backend=backend,
        name_ab="ab",
    )
