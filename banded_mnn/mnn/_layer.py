"""The MNN layer: S-MNN's ``ode_forward`` on NumPy arrays, with its VJP.

Call path: :func:`ode_forward` validates and canonicalises the four inputs
(:func:`_prepare`), factors the left-hand side (:meth:`OdeSystem.factor`:
assembly kernel, then the core band Cholesky), assembles the right-hand side
and solves against the factor (:meth:`OdeSystem.solve`).  :meth:`OdeSystem.vjp`
does one more solve against the same factor and differentiates the assembly.
"""

from __future__ import annotations

import copy
import functools
import math
import numbers
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from .. import _api, _backends
from .._backends import WORKSPACE_ALIGNMENT
from .._errors import NotPositiveDefiniteError
from .._strided import StridedBatch, contiguous_layout, flat_batch, is_dask_array, to_numpy

#: Allocator of kernel outputs (tests fill it with NaN to catch unwritten cells).
_empty = np.empty


def _aligned_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """``_empty(shape, dtype)``, C-contiguous, its data at a multiple of
    :data:`WORKSPACE_ALIGNMENT` bytes."""
    dtype = np.dtype(dtype)
    size = math.prod(shape)
    spare = WORKSPACE_ALIGNMENT // dtype.itemsize
    buffer = _empty(size + spare, dtype=dtype)
    start = (-buffer.ctypes.data % WORKSPACE_ALIGNMENT) // dtype.itemsize
    return buffer[start : start + size].reshape(shape)


# Core (non-batch) rank of each input, step axis first within the core.
_CORE_NDIM = {"coefficients": 4, "rhs_equation": 2, "init_vars": 3, "steps": 1}


@dataclass(frozen=True)
class OdeSpec:
    """The static structure of an MNN least-squares problem.

    Everything but the array values: sizes, weights and options.  Together
    with the left-hand-side batch shape it fixes the shape of the factor.
    """

    n_steps: int
    n_equations: int
    n_dims: int
    n_orders: int
    n_init_var_steps: int
    n_init_var_orders: int
    weight_equation: float = 1.0
    weight_init_var: float = 1.0
    weight_smooth: float = 1.0
    enable_central_smoothness: bool = False

    @property
    def block_size(self) -> int:
        """Unknowns per step, ``n_dims * n_orders``."""
        return self.n_dims * self.n_orders

    @property
    def n_unknowns(self) -> int:
        """Order of the normal matrix, ``n_steps * n_dims * n_orders``."""
        return self.n_steps * self.block_size

    @property
    def bandwidth(self) -> int:
        """Sub-diagonals of the normal matrix in scalar band storage.

        Blocks of consecutive steps couple ``u[t, d, o]`` only to
        ``u[t+1, d, o']`` (same dimension), so the band is ``n + O - 1`` wide;
        central rows couple ``u[t, d, O-2]`` and ``u[t+2, d, O-2]``: ``2n``.
        """
        n = self.block_size
        return 2 * n if self.enable_central_smoothness else n + self.n_orders - 1

    def location(self, index: int) -> tuple[int, int, int]:
        """``(step, dim, order)`` of unknown ``index`` (0-based)."""
        step, rest = divmod(index, self.block_size)
        return (step, *divmod(rest, self.n_orders))


class OdeGradients(NamedTuple):
    """Vector-Jacobian product of :func:`ode_forward`: one array per input, each
    with that input's shape (``None`` for a frozen left-hand side)."""

    coefficients: np.ndarray | None
    rhs_equation: np.ndarray
    init_vars: np.ndarray
    steps: np.ndarray | None


@dataclass
class _Inputs:
    """Inputs moved to the canonical layout (batch..., step axis, rest...)."""

    arrays: dict[str, np.ndarray | None]
    dtypes: dict[str, np.dtype]
    spec: OdeSpec
    lhs_batch: tuple[int, ...]
    batch: tuple[int, ...]
    dtype: np.dtype
    #: The arrays' module (NumPy, or CuPy for GPU arrays).
    xp: Any = np
    #: Whether the layer runs on the GPU (CuPy arrays, or a GPU backend
    #: simulated on NumPy arrays): see :mod:`._gpu`.
    gpu: bool = False


def _weight(value: Any, name: str) -> float:
    if isinstance(value, numbers.Real) or (np.ndim(value) == 0 and np.isrealobj(value)):
        weight = float(value)
        if math.isfinite(weight):
            return weight
    raise TypeError(f"{name} must be a finite real number; got {value!r}")


def _count(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum:
        return int(value)
    raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")


def _canonical(
    x: Any, name: str, step_first: bool, xp: Any = np, backend: str | None = None
) -> np.ndarray:
    """``x`` checked (real dtype, core rank, an array of ``xp``) with the step
    axis moved after the batch axes.  A Dask array stays lazy
    (:mod:`banded_mnn._dask`): ``np.moveaxis`` dispatches to Dask's."""
    if is_dask_array(x):
        _api.check_real_dtype(x.dtype, name)
        array = x
    else:
        array = _api._as_real_array(x, name, xp, backend)
    core = _CORE_NDIM[name]
    if array.ndim < core:
        raise ValueError(
            f"{name} must have at least {core} dimensions {_SHAPES[name]}; got shape {array.shape}"
        )
    if step_first:
        array = (np if xp is np else xp).moveaxis(array, 0, array.ndim - core)
    return array


_SHAPES = {
    "coefficients": "(..., n_steps, n_equations, n_dims, n_orders)",
    "rhs_equation": "(..., n_steps, n_equations)",
    "init_vars": "(..., n_init_var_steps, n_dims, n_init_var_orders)",
    "steps": "(..., n_steps - 1)",
}


def _broadcast(shapes: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
    """Broadcast batch shapes (plain Python, so that torch.compile can trace it)."""
    ndim = 0
    for shape in shapes.values():
        ndim = len(shape) if len(shape) > ndim else ndim
    out = [1] * ndim
    for shape in shapes.values():
        for i, n in enumerate(shape, start=ndim - len(shape)):
            if n != 1:
                if out[i] not in (1, n):
                    described = ", ".join(f"{name} {tuple(sh)}" for name, sh in shapes.items())
                    raise ValueError(f"batch shapes do not broadcast: {described}")
                out[i] = n
    return tuple(out)


def check_shapes(
    shapes: dict[str, tuple[int, ...]],
    n_steps: int | None,
    n_init_var_steps: int | None,
    weights: tuple[Any, Any, Any],
    central: bool,
) -> tuple[OdeSpec, tuple[int, ...], tuple[int, ...]]:
    """Validate the shapes of :func:`ode_forward`'s inputs (canonical layout,
    step axis not first; absent inputs omitted) and fix the sizes.

    Returns ``(spec, lhs_batch, batch)``.  Plain Python on shapes, shared by
    the NumPy entry points and the framework adapters (which call it on
    tensor shapes while tracing).
    """
    for name, shape in shapes.items():
        if len(shape) < _CORE_NDIM[name]:
            raise ValueError(
                f"{name} must have at least {_CORE_NDIM[name]} dimensions {_SHAPES[name]}; "
                f"got shape {tuple(shape)}"
            )
    c = shapes["coefficients"]
    n_equations, n_dims, n_orders = c[-3:]
    if n_dims < 1 or n_orders < 1:
        raise ValueError(
            f"coefficients must have n_dims >= 1 and n_orders >= 1; got shape {tuple(c)}"
        )
    if central and n_orders < 2:
        raise ValueError("enable_central_smoothness needs n_orders >= 2")
    if n_steps is None:
        if "steps" not in shapes:
            raise ValueError("n_steps must be given when steps is not")
        n_steps = shapes["steps"][-1] + 1
    n_steps = _count(n_steps, "n_steps", 1)

    def check_axis(name: str, axis: int, allowed: tuple[int, ...], what: str) -> None:
        size = shapes[name][axis]
        if size not in allowed:
            choices = " or ".join(str(a) for a in dict.fromkeys(allowed))
            raise ValueError(
                f"{name} must have shape {_SHAPES[name]}: its {what} axis has length {size}, "
                f"expected {choices}"
            )

    check_axis("coefficients", -4, (n_steps, 1), "n_steps")
    if "steps" in shapes:
        check_axis("steps", -1, (n_steps - 1, 1), "n_steps - 1")
    if "rhs_equation" in shapes:
        check_axis("rhs_equation", -2, (n_steps, 1), "n_steps")
        check_axis("rhs_equation", -1, (n_equations,), "n_equations")
    if "init_vars" in shapes:
        v = shapes["init_vars"]
        if n_init_var_steps is None:
            n_init_var_steps = v[-3]
        n_init_var_orders = v[-1]
        check_axis("init_vars", -2, (n_dims,), "n_dims")
        check_axis("init_vars", -3, (n_init_var_steps, 1), "n_init_var_steps")
        if n_init_var_orders > n_orders:
            raise ValueError(
                f"init_vars has {n_init_var_orders} orders (last axis); at most n_orders = "
                f"{n_orders} can be pinned"
            )
    else:
        n_init_var_orders = 0
        n_init_var_steps = 0 if n_init_var_steps is None else n_init_var_steps
    n_init_var_steps = _count(n_init_var_steps, "n_init_var_steps", 0)
    if n_init_var_steps > n_steps:
        raise ValueError(
            f"n_init_var_steps ({n_init_var_steps}) must not exceed n_steps ({n_steps})"
        )
    spec = OdeSpec(
        n_steps=n_steps,
        n_equations=n_equations,
        n_dims=n_dims,
        n_orders=n_orders,
        n_init_var_steps=n_init_var_steps,
        n_init_var_orders=n_init_var_orders,
        weight_equation=_weight(weights[0], "weight_equation"),
        weight_init_var=_weight(weights[1], "weight_init_var"),
        weight_smooth=_weight(weights[2], "weight_smooth"),
        enable_central_smoothness=bool(central),
    )
    batches = {name: tuple(sh[: len(sh) - _CORE_NDIM[name]]) for name, sh in shapes.items()}
    lhs_batch = _broadcast({k: batches[k] for k in ("coefficients", "steps") if k in batches})
    batch = _broadcast(batches)
    return spec, lhs_batch, batch


def check_shapes_memo(
    shapes: dict[str, tuple[int, ...]],
    n_steps: int | None,
    n_init_var_steps: int | None,
    weights: tuple[Any, Any, Any],
    central: bool,
) -> tuple[OdeSpec, tuple[int, ...], tuple[int, ...]]:
    """:func:`check_shapes`, memoised when the sizes and weights are plain
    Python numbers (the usual case: a model calls the layer with the same
    shapes at every step).  Not for tracing (symbolic sizes)."""
    if (
        type(central) is bool
        and all(type(w) in (float, int) for w in weights)
        and all(v is None or type(v) is int for v in (n_steps, n_init_var_steps))
    ):
        key = tuple((name, tuple(shape)) for name, shape in shapes.items())
        if all(type(n) is int for _, shape in key for n in shape):
            return _check_shapes_cached(key, n_steps, n_init_var_steps, tuple(weights), central)
    return check_shapes(shapes, n_steps, n_init_var_steps, weights, central)


@functools.lru_cache(maxsize=256)
def _check_shapes_cached(key, n_steps, n_init_var_steps, weights, central):
    return check_shapes(dict(key), n_steps, n_init_var_steps, weights, central)


def _prepare(
    coefficients: Any,
    rhs_equation: Any,
    init_vars: Any,
    steps: Any,
    n_steps: int | None,
    n_init_var_steps: int | None,
    is_step_dim_first: bool,
    weights: tuple[Any, Any, Any],
    central: bool,
    backend: str | None = None,
) -> _Inputs:
    """Validate the inputs of :func:`ode_forward` and bring them to the
    canonical layout (views; nothing is copied unless a dtype changes).
    CuPy arrays, or a GPU ``backend``, select the GPU layer."""
    raw = {
        "coefficients": coefficients,
        "rhs_equation": rhs_equation,
        "init_vars": init_vars,
        "steps": steps,
    }
    present = {name: x for name, x in raw.items() if x is not None}
    if backend is None and not any(_api._on_gpu(x) for x in present.values()):
        xp, gpu = np, False  # (the common case, without importing a backend)
    else:
        impl, xp = _api._select(backend, present)
        gpu = _backends.is_gpu(impl)
    arrays = {
        name: _canonical(x, name, is_step_dim_first, xp, backend) for name, x in present.items()
    }
    if xp is not np:
        _api._same_device(arrays)
    spec, lhs_batch, batch = check_shapes_memo(
        {name: a.shape for name, a in arrays.items()}, n_steps, n_init_var_steps, weights, central
    )
    dtypes = {name: a.dtype for name, a in arrays.items()}
    dtype = _api._result_dtype(*arrays.values())
    arrays = {name: xp.asarray(a, dtype=dtype) for name, a in arrays.items()}
    return _Inputs(arrays, dtypes, spec, lhs_batch, batch, dtype, xp, gpu)


def _flat(x: np.ndarray | None, batch: tuple[int, ...], core_ndim: int, dtype: np.dtype):
    """Kernel operand for ``x`` broadcast to ``batch``: (buffer, offsets, core
    strides), the offsets read-only like the buffer."""
    if x is None or x.size == 0:
        buf, offsets = np.zeros(1, dtype), np.zeros(math.prod(batch), np.int64)
        strides = (0,) * core_ndim
    elif (
        type(x) is np.ndarray
        and x.flags.c_contiguous
        and x.flags.aligned
        and x.shape[: x.ndim - core_ndim] == batch
    ):  # the common case: its layout from the shape alone, looked up
        layout = (
            _contiguous_layout if math.prod(batch) <= _LAYOUT_CACHE_SYSTEMS else _uncached_layout
        )
        return _read_only(x.reshape(-1)), *layout(x.shape, core_ndim)
    else:
        buf, offsets, strides = flat_batch(x, batch, core_ndim)
    return _read_only(buf), _read_only(offsets), strides


def _uncached_layout(shape: tuple[int, ...], core_ndim: int) -> tuple[np.ndarray, tuple]:
    """:func:`banded_mnn._strided.contiguous_layout`, its offsets read-only."""
    offsets, strides = contiguous_layout(shape, core_ndim)
    return _read_only(offsets), strides


#: Batches of at most this many systems have their layout kept by
#: :func:`_contiguous_layout` (the offsets, at most 512 KB, for each of the
#: 32 shapes last used: a training loop calls with the same ones).
_LAYOUT_CACHE_SYSTEMS = 1 << 16
_contiguous_layout = functools.lru_cache(maxsize=32)(_uncached_layout)


def _read_only(a: np.ndarray) -> np.ndarray:
    """A read-only view of ``a``: kernel inputs are always passed read-only,
    so that each kernel compiles once per dtype, not once per writeability."""
    view = a.view()
    view.flags.writeable = False
    return view


@functools.lru_cache(maxsize=64)
def _tables(n_orders: int, central: bool, dtype: np.dtype):
    from ._kernels import smoothness_tables

    return tuple(t.astype(dtype) for t in smoothness_tables(n_orders, central))


@functools.lru_cache(maxsize=64)
def _lane_tables(
    n_orders: int, central: bool, dtype: np.dtype, lanes: int, weight_smooth: float
) -> tuple[np.ndarray, np.ndarray]:
    """The smoothness tables as the CPU kernels take them, read-only: for the
    assembly (:func:`._kernels.lhs_steps`) the three tables times ``w_s^2``,
    flattened, each entry repeated over the lanes, one after another; for the
    VJP (:func:`._kernels.vjp_steps`) the same with entry ``(o1, o2)`` also
    times ``o1 + o2``."""
    tables = np.stack(_tables(n_orders, central, dtype)) * dtype.type(weight_smooth**2)
    orders = np.arange(n_orders)
    exponents = (orders[:, None] + orders[None, :]).astype(dtype)
    lhs = np.repeat(tables.reshape(-1), lanes)
    vjp = np.repeat((tables * exponents).reshape(-1), lanes)
    for table in (lhs, vjp):
        table.flags.writeable = False
    return lhs, vjp


def _sum_to(gradient: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum ``gradient`` over the axes along which an input of ``shape`` was broadcast."""
    lead = gradient.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and gradient.shape[lead + i] != 1
    )
    if axes:
        gradient = gradient.sum(axis=axes, keepdims=True)
    return gradient.reshape(shape)


@functools.lru_cache(maxsize=64)
def _singular_tolerance(bw: int, dtype: np.dtype) -> float:
    """Pivots with ``L[j, j]^2 <= tol * A[j, j]`` mark a normal matrix singular
    to working precision.  The ratio is invariant to scaling the unknowns and
    equals ``1 / (A[j, j] * inv(A[:j+1, :j+1])[j, j])``; for an exactly
    singular matrix it is a few units of rounding (measured 0.3-0.8 eps), for
    the worst-conditioned well-posed MNN systems we tried it is > 1000 eps.
    ``(bw + 1) * eps`` is the rounding of one pivot's ``bw + 1`` terms."""
    return float((bw + 1) * np.finfo(dtype).eps)


def _run_core(
    backend: str | None,
    band: np.ndarray,
    batch: tuple[int, ...],
    *,
    factor: bool,
    rhs: np.ndarray | None = None,
) -> np.ndarray:
    """Factor ``band`` in place and/or solve in place for ``rhs``, with the
    core backend.  ``band``: (lhs_batch..., u+1, M), lower form, broadcast to
    ``batch`` (equal to it when factoring); ``rhs``: (batch..., M, 1).  Both
    are the layer's own temporaries, so the backend may use workspaces as
    large as they are.  Returns ``info`` with shape ``batch``."""
    impl = _backends.get(_backends.cpu_only(backend, "the MNN layer"))
    bw = band.shape[-2] - 1
    view = StridedBatch.from_array(band, batch).band_view(bw, lower=True)
    described = None if rhs is None else StridedBatch.from_array(rhs, batch)
    info, _ = impl.run(
        view,
        bw,
        factor=factor,
        factor_out=view if factor else None,
        rhs=described,
        out=described,
        spare_memory=True,
    )
    return info.reshape(batch)


def _lane_slots(nsys: int) -> int:
    """Systems' room in the factor workspace: ``nsys`` rounded up to a
    multiple of 8 (the widest lane count) from 8 systems on.  It does not
    depend on the lane count chosen, so the factor's size is a function of the
    problem's shape alone (what the adapters' shape functions need)."""
    return nsys if nsys < 8 else -(-nsys // 8) * 8


def _pentadiagonal(spec: OdeSpec) -> bool:
    """Whether cyclic reduction sees the normal matrix as block-pentadiagonal
    (central smoothness couples steps two apart, when there are three)."""
    return spec.enable_central_smoothness and spec.n_steps >= 3


#: :meth:`OdeSystem.kept_factor`'s kind of a cyclic-reduction factor (the
#: others are the lane count of the CPU workspace, 1-8, or 0 for the GPU's;
#: all non-negative, as torch's dynamic sizes that carry them must be).
CYCLIC_FACTOR = 64


def factor_size(
    spec: OdeSpec, lhs_batch: tuple[int, ...], gpu: bool = False, cyclic: bool = False
) -> int:
    """Number of elements of :meth:`OdeSystem.kept_factor`'s array for this
    problem: the CPU lane workspace, the GPU driver's workspace (at least one
    element) or a flattened cyclic-reduction factor."""
    nsys = math.prod(lhs_batch)
    if cyclic:
        from .._cyclic import flat_factor_size

        return flat_factor_size(nsys, spec.n_steps, spec.block_size, _pentadiagonal(spec))
    per_system = spec.n_unknowns * (spec.bandwidth + 1)
    if gpu:
        return max(nsys * per_system, 1)
    return _lane_slots(nsys) * per_system


#: Names accepted by ``algorithm=``.
ALGORITHMS = ("sequential", "cyclic")


def _choose_algorithm(algorithm: str | None) -> str:
    """The factorisation algorithm.  ``None`` chooses: on the CPU the layer's
    fused assembly and band Cholesky ("sequential") is faster at every size
    measured, a single sequence of 10^5 steps included -- block cyclic
    reduction costs 1.2-5.8x there (``banded-mnn bench-blocks``,
    ``docs/performance.md``) -- so it is always "sequential" here."""
    if algorithm is None:
        return "sequential"
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS} or None; got {algorithm!r}")
    return algorithm


def _choose_lanes(nsys: int) -> int:
    from .._backends._numba_cpu import choose_lanes

    # The layer's workspaces are its own temporaries: see choose_lanes.
    return choose_lanes(nsys, spare_memory=True)


def _lane_marker(lanes: int) -> tuple[int, ...]:
    from .._backends._band_kernels import lane_marker

    return lane_marker(lanes)


def _assemble_rhs(inputs: _Inputs) -> np.ndarray:
    """Right-hand sides of the normal equations, (batch..., M, 1)."""
    from ._kernels import assemble_rhs

    spec, batch, dtype = inputs.spec, inputs.batch, inputs.dtype
    beta = _empty(batch + (spec.n_unknowns, 1), dtype=dtype)
    if beta.size:
        c = _flat(inputs.arrays["coefficients"], batch, 4, dtype)
        r = _flat(inputs.arrays["rhs_equation"], batch, 2, dtype)
        v = _flat(inputs.arrays["init_vars"], batch, 3, dtype)
        assemble_rhs(
            c[0], c[1], c[2], r[0], r[1], r[2], v[0], v[1], v[2],
            beta.reshape(-1, spec.n_unknowns),
            spec.n_steps, spec.n_equations, spec.n_dims, spec.n_orders,
            spec.n_init_var_steps, spec.n_init_var_orders,
            spec.weight_equation**2, spec.weight_init_var**2, _lane_marker(1),
        )  # fmt: skip
    return beta


#: (device, M, block rows, block size) -> the unknown of every pivot of a
#: cyclic-reduction factor, in the order :func:`cyclic_status` reads them.
_CYCLIC_UNKNOWNS: dict[tuple, Any] = {}


def _cyclic_unknowns(xp: Any, m: int, rows: int, n: int) -> Any:
    """The (first) unknown of every pivot of the cyclic factor: level by level
    the odd nodes' block rows, then the last node's, each times ``n`` plus the
    row in the block; ``m`` (past the matrix) for padding.  Made on the host
    and copied to the device once per shape (no copy while a CUDA graph is
    captured, once warm)."""
    key = ("host" if xp is np else xp.cuda.Device().id, m, rows, n)
    unknowns = _CYCLIC_UNKNOWNS.get(key)
    if unknowns is None:
        order, nodes = [], np.arange(rows)
        while len(nodes) > 1:
            order.append(nodes[1::2])
            nodes = nodes[0::2]
        order.append(nodes)
        blocks = np.concatenate(order)
        host = (blocks[:, None] * n + np.arange(n)[None, :]).reshape(-1)
        unknowns = _CYCLIC_UNKNOWNS[key] = xp.asarray(np.minimum(host, m))
    return unknowns


def cyclic_status(xp: Any, factor: Any, diag: Any, tol: float) -> Any:
    """Per-system status of a block-cyclic-reduction factor of normal
    matrices, in the band path's terms: 1 + the first unknown whose pivot
    failed (in the first block that failed) or showed the matrix singular to
    working precision (``L[j, j]^2 <= tol * A[j, j]``); 0 for none.  Cyclic
    reduction eliminates in another order than the band Cholesky, but in any
    order a singular matrix leaves a pivot at rounding level, so the same
    test applies to its pivots.  ``diag`` (systems, M) is the diagonal of
    the normal matrices; NumPy or CuPy arrays (``xp``): a handful of array
    operations over all levels at once."""
    nsys, m = diag.shape
    n = factor.n * (2 if factor.pentadiagonal else 1)  # (pairs of block rows)
    never = m + 1
    chols = [chol for chol, _, _ in factor.factor.levels] + [factor.factor.last]
    pivots = xp.concatenate(
        [xp.diagonal(c.reshape((nsys,) + c.shape[-3:]), axis1=-2, axis2=-1).reshape(nsys, -1)
         for c in chols], axis=1,
    )  # fmt: skip
    unknowns = _cyclic_unknowns(xp, m, -(-m // n), n)  # (pivots,), m for padding
    padded = xp.concatenate([diag, xp.zeros((nsys, 1), diag.dtype)], axis=1)  # (never passes)
    singular = pivots * pivots <= tol * padded[:, unknowns]
    singular &= unknowns < m
    first = xp.where(singular, unknowns + 1, never).min(axis=1)  # (pivots: at least one)
    failed = factor.info.reshape(-1)  # 1-based block row (of n unknowns)
    first = xp.minimum(first, xp.where(failed > 0, (failed - 1) * factor.n + 1, never))
    return xp.where(first < never, first, 0).astype(np.int32)


def _solution(x: np.ndarray, inputs: _Inputs, step_first: bool) -> np.ndarray:
    spec = inputs.spec
    u = x.reshape(inputs.batch + (spec.n_steps, spec.n_dims, spec.n_orders))
    return inputs.xp.moveaxis(u, -3, 0) if step_first else u


class OdeSystem:
    """A factored MNN left-hand side: solve for any number of right-hand sides.

    The normal matrix depends only on ``coefficients``, ``steps`` and the
    :class:`OdeSpec`; this object holds its band Cholesky factor (S-MNN's
    "frozen left-hand side").  Create it with :meth:`factor`.

    Attributes
    ----------
    info : numpy.ndarray of int32
        Per-system status, shape ``lhs_batch``: 0, or the 1-based order of the
        first leading minor that is not positive definite (or, for a matrix
        singular to working precision, of the unknown where that shows).
    spec : OdeSpec
        Sizes, weights and options.
    lhs_batch_shape : tuple of int
        Batch shape of the left-hand side (broadcast of ``coefficients`` and
        ``steps``).
    is_step_dim_first : bool
        Layout of the arrays passed to :meth:`solve` and :meth:`vjp`.
    workspace : numpy.ndarray
        The factor as the CPU kernels keep it: ``(chunks, M*(u+1)*L)``, the
        lane-interleaved layout of :mod:`banded_mnn._backends._band_kernels`,
        system ``i`` in lane ``i % L`` of chunk ``i // L``.
    """

    #: Whether the factor lives on the GPU (:class:`._gpu.GpuOdeSystem`).
    on_gpu = False

    def __init__(
        self,
        workspace: np.ndarray,
        info: np.ndarray,
        spec: OdeSpec,
        *,
        is_step_dim_first: bool = False,
        backend: str | None = None,
    ) -> None:
        per_lane = spec.n_unknowns * (spec.bandwidth + 1)
        if workspace.ndim != 2 or workspace.shape[1] % per_lane:
            raise ValueError(
                f"workspace must have shape (chunks, lanes * {per_lane}) for this spec; got "
                f"{workspace.shape}"
            )
        self.workspace = workspace
        self.lanes = workspace.shape[1] // per_lane
        self.info = info
        self.spec = spec
        self.lhs_batch_shape = info.shape
        self.is_step_dim_first = is_step_dim_first
        self.backend = backend
        self._band: np.ndarray | None = None
        #: The cyclic-reduction factor when factored with ``algorithm="cyclic"``
        #: (``workspace`` then holds the unfactored normal matrices).
        self.cyclic = None

    @property
    def dtype(self) -> np.dtype:
        return self.workspace.dtype

    def kept_factor(self) -> tuple[Any, int]:
        """The factor as one flat array and its kind -- what the framework
        adapters keep between the forward and the backward pass: the lane
        workspace (kind: its lane count), the GPU workspace (0) or a
        flattened cyclic-reduction factor (:data:`CYCLIC_FACTOR`).
        :meth:`from_kept` takes it back."""
        if self.cyclic is not None:
            from .._cyclic import flatten

            return flatten(self.cyclic), CYCLIC_FACTOR
        return self.workspace.reshape(-1), self.lanes

    @staticmethod
    def from_kept(
        flat: Any,
        kind: int,
        spec: OdeSpec,
        lhs_batch: tuple[int, ...],
        *,
        gpu: bool = False,
        backend: str | None = None,
    ) -> OdeSystem:
        """The system of a :meth:`kept_factor` (status: all succeeded -- a
        kept factor is one whose forward pass did not raise).  ``gpu``: the
        array is on the GPU (or the GPU layer is simulated, with ``backend``)."""
        if gpu:
            from ._gpu import GpuOdeSystem, kernel_set

            info = kernel_set(backend).xp.zeros(lhs_batch, dtype=np.int32)
            if kind != CYCLIC_FACTOR:
                return GpuOdeSystem.from_workspace(flat, info, spec, backend=backend)
            system = GpuOdeSystem(StridedBatch.dummy(flat.dtype, 0, kernel_set(backend).xp),
                                  "warp", info, spec, backend=backend)  # fmt: skip
            system.workspace = flat
        elif kind != CYCLIC_FACTOR:
            workspace = flat.reshape(-1, spec.n_unknowns * (spec.bandwidth + 1) * kind)
            return OdeSystem(workspace, np.zeros(lhs_batch, dtype=np.int32), spec)
        else:
            per_lane = spec.n_unknowns * (spec.bandwidth + 1)
            system = OdeSystem(np.empty((0, per_lane), flat.dtype),
                               np.zeros(lhs_batch, dtype=np.int32), spec)  # fmt: skip
        from .._cyclic import from_flat

        system.cyclic = from_flat(flat, tuple(lhs_batch), spec.n_steps, spec.block_size,
                                  _pentadiagonal(spec))  # fmt: skip
        return system

    @property
    def factor_band(self) -> np.ndarray:
        """The factor in LAPACK's lower band form, shape ``lhs_batch + (u + 1, M)``
        (``u = spec.bandwidth``, ``M = spec.n_unknowns``), as
        :func:`banded_mnn.cholesky_banded` with ``lower=True`` returns it.
        Built on first access (a copy of the workspace)."""
        if self.cyclic is not None:
            raise AttributeError(
                "this system was factored by cyclic reduction: its factor is .cyclic, not a band"
            )
        if self._band is None:
            u1, m = self.spec.bandwidth + 1, self.spec.n_unknowns
            lanes = self.workspace.reshape(-1, m, u1, self.lanes)
            band = lanes.transpose(0, 3, 2, 1).reshape(-1, u1, m)[: self.info.size]
            self._band = np.ascontiguousarray(band).reshape(self.lhs_batch_shape + (u1, m))
        return self._band

    @classmethod
    def factor(
        cls,
        coefficients: Any,
        steps: Any,
        *,
        n_init_var_steps: int,
        n_init_var_orders: int,
        n_steps: int | None = None,
        is_step_dim_first: bool = False,
        weight_equation: float = 1.0,
        weight_init_var: float = 1.0,
        weight_smooth: float = 1.0,
        enable_central_smoothness: bool = False,
        check: bool = True,
        algorithm: str | None = None,
        backend: str | None = None,
    ) -> OdeSystem:
        """Assemble and factor the normal matrix of the MNN least-squares problem.

        Parameters
        ----------
        coefficients : array_like, shape (..., n_steps or 1, n_equations, n_dims, n_orders)
            ODE coefficients ``c[t, e, d, o]`` (step axis first when
            ``is_step_dim_first``).
        steps : array_like, shape (..., n_steps - 1 or 1)
            Step sizes ``h_t``.  Batch axes broadcast with ``coefficients``.
        n_init_var_steps, n_init_var_orders : int
            The leading steps and the lowest orders pinned by initial values
            (``init_vars`` of shape ``(..., n_init_var_steps, n_dims,
            n_init_var_orders)``; 0 for none).
        n_steps : int, optional
            Number of steps; by default ``steps.shape[-1] + 1``.
        is_step_dim_first : bool
            The step axis is the first axis of every array (here and in
            :meth:`solve` / :meth:`vjp`).
        weight_equation, weight_init_var, weight_smooth : float
            Row weights (they enter the normal equations squared).
        enable_central_smoothness : bool
            Use the central-difference rows for the highest order instead of
            the forward/backward ones (needs ``n_orders >= 2``).
        check : bool
            Raise :class:`~banded_mnn.NotPositiveDefiniteError` if a system
            is not positive definite.  With ``False`` the status is left in
            :attr:`info` and the solutions of failed systems are NaN.
        algorithm : {None, "sequential", "cyclic"}
            As for :func:`ode_forward`.
        backend : str, optional
            Core backend (default: ``"numba"``).

        Returns
        -------
        OdeSystem

        Raises
        ------
        NotPositiveDefiniteError
            With ``check``, when a normal matrix is not positive definite (the
            least-squares problem does not determine the solution); the
            message names the batch index and the (step, dim, order) of the
            unknown where the factorisation broke down.
        ValueError
            For shapes that do not fit, or non-finite ``coefficients`` or
            ``steps`` in a system that failed.

        Examples
        --------
        >>> import numpy as np
        >>> from banded_mnn.mnn import OdeSystem
        >>> c = np.array([0.0, 1.0]).reshape(1, 1, 1, 2)  # u' = rhs
        >>> system = OdeSystem.factor(c, np.full(9, 0.1), n_init_var_steps=1,
        ...                           n_init_var_orders=1)
        >>> u = system.solve(c, np.ones((1, 1)), np.zeros((1, 1, 1)))
        >>> np.round(u[-1, 0], 6)  # u(0.9) = 0.9, u' = 1
        array([0.9, 1. ])
        """
        # Shapes of the init_vars / rhs_equation a caller will pass are not
        # known yet: validate the left-hand side through the same path.
        inputs = _prepare(
            coefficients,
            None,
            None,
            steps,
            n_steps,
            None,
            is_step_dim_first,
            (weight_equation, weight_init_var, weight_smooth),
            enable_central_smoothness,
            backend,
        )
        spec = inputs.spec
        n_init_var_steps = _count(n_init_var_steps, "n_init_var_steps", 0)
        n_init_var_orders = _count(n_init_var_orders, "n_init_var_orders", 0)
        if n_init_var_steps > spec.n_steps or n_init_var_orders > spec.n_orders:
            raise ValueError(
                f"n_init_var_steps ({n_init_var_steps}) and n_init_var_orders "
                f"({n_init_var_orders}) must not exceed n_steps ({spec.n_steps}) and n_orders "
                f"({spec.n_orders})"
            )
        inputs.spec = spec = OdeSpec(
            **{
                **spec.__dict__,
                "n_init_var_steps": n_init_var_steps,
                "n_init_var_orders": n_init_var_orders,
            }
        )
        return cls._factor(inputs, is_step_dim_first, check, backend, algorithm=algorithm)[0]

    @classmethod
    def _factor(
        cls,
        inputs: _Inputs,
        is_step_dim_first: bool,
        check: bool,
        backend: str | None,
        solve: bool = False,
        algorithm: str | None = None,
    ) -> tuple[OdeSystem, np.ndarray | None]:
        """Assemble and factor the left-hand side; with ``solve`` (the
        right-hand sides have the left-hand side's batch) also assemble the
        right-hand sides and solve, in the same pass.  Returns the system and
        the solution (systems, M) or ``None``."""
        if inputs.gpu:
            from ._gpu import GpuOdeSystem

            return GpuOdeSystem._factor(
                inputs, is_step_dim_first, check, backend, solve=solve, algorithm=algorithm
            )
        from ._cpu import factor_lanes

        use_cyclic = _choose_algorithm(algorithm) == "cyclic"
        spec, dtype, lhs_batch = inputs.spec, inputs.dtype, inputs.lhs_batch
        nsys, m, bw = math.prod(lhs_batch), spec.n_unknowns, spec.bandwidth
        slots = _lane_slots(nsys)
        lanes = _choose_lanes(nsys)
        while slots % lanes:
            lanes //= 2
        chunks = slots // lanes
        workspace = _aligned_empty((chunks, m * (bw + 1) * lanes), dtype)
        info = np.zeros(nsys, dtype=np.int32)
        kernel_solves = solve and not use_cyclic
        x = _empty((nsys, m) if kernel_solves else (0, 0), dtype=dtype)
        failed = False
        if nsys:
            tables = _lane_tables(spec.n_orders, spec.enable_central_smoothness, dtype, lanes,
                                  spec.weight_smooth)[0]  # fmt: skip
            batch = lhs_batch
            c = _flat(inputs.arrays["coefficients"], batch, 4, dtype)
            h = _flat(inputs.arrays["steps"], batch, 1, dtype)
            r = _flat(inputs.arrays.get("rhs_equation") if kernel_solves else None, batch, 2, dtype)
            v = _flat(inputs.arrays.get("init_vars") if kernel_solves else None, batch, 3, dtype)
            failed = factor_lanes(
                c[0], c[1], c[2], h[0], h[1], h[2][0], r[0], r[1], r[2], v[0], v[1], v[2],
                workspace, x, info, bw, kernel_solves, _singular_tolerance(bw, dtype),
                spec.n_steps, spec.n_equations, spec.n_dims, spec.n_orders,
                spec.n_init_var_steps, spec.n_init_var_orders,
                spec.weight_equation**2, spec.weight_init_var**2, spec.weight_smooth**2,
                spec.enable_central_smoothness,
                tables,
                _lane_marker(lanes),
                not use_cyclic,
            )  # fmt: skip
        info = info.reshape(lhs_batch)
        system = cls(workspace, info, spec, is_step_dim_first=is_step_dim_first, backend=backend)
        if use_cyclic and nsys:
            system._factor_cyclic()
            if solve:
                beta = _assemble_rhs(inputs)
                system._solve_batch(beta)
                x = beta.reshape(nsys, m)
                x[system.info.reshape(-1) != 0] = np.nan
            failed = system.info.any()
        if check and failed:
            system._raise_failure(inputs)
        return system, (x if solve else None)

    def _raise_failure(self, inputs: _Inputs) -> None:
        error = NotPositiveDefiniteError(to_numpy(self.info), "ode_forward")
        for name in ("coefficients", "steps"):
            a = inputs.arrays.get(name)
            if a is not None and not bool(inputs.xp.isfinite(a).all()):
                raise ValueError(f"ode_forward: {name} must not contain infs or NaNs") from error
        step, dim, order = self.spec.location(error.order - 1)
        error.add_note(
            f"The normal matrix is singular to working precision at unknown u[step={step}, "
            f"dim={dim}, order={order}]: the equation, initial-value and smoothness rows up to "
            "it do not determine it (for example: no initial values, and equations that leave "
            "a constant free)."
        )
        raise error

    # ------------------------------------------------------------------
    def _inputs(
        self,
        coefficients: Any,
        rhs_equation: Any,
        init_vars: Any,
        steps: Any = None,
    ) -> _Inputs:
        spec = self.spec
        inputs = _prepare(
            coefficients,
            rhs_equation,
            init_vars,
            steps,
            spec.n_steps,
            spec.n_init_var_steps,
            self.is_step_dim_first,
            (spec.weight_equation, spec.weight_init_var, spec.weight_smooth),
            spec.enable_central_smoothness,
            self.backend,
        )
        got = inputs.spec
        if (got.n_equations, got.n_dims, got.n_orders, got.n_init_var_orders) != (
            spec.n_equations,
            spec.n_dims,
            spec.n_orders,
            spec.n_init_var_orders,
        ):
            raise ValueError(
                "coefficients/init_vars do not match the factored system: expected "
                f"n_equations={spec.n_equations}, n_dims={spec.n_dims}, "
                f"n_orders={spec.n_orders}, n_init_var_orders={spec.n_init_var_orders}; got "
                f"{got.n_equations}, {got.n_dims}, {got.n_orders}, {got.n_init_var_orders}"
            )
        try:
            inputs.batch = np.broadcast_shapes(inputs.batch, self.lhs_batch_shape)
        except ValueError:
            raise ValueError(
                f"batch shape {inputs.batch} does not broadcast with the factored left-hand "
                f"side's {self.lhs_batch_shape}"
            ) from None
        return inputs

    def _factor_cyclic(self) -> None:
        """Factor the assembled normal matrices (in ``workspace``) by block
        cyclic reduction instead of the band Cholesky."""
        from .._cyclic import factor_blocks
        from ._cpu import workspace_blocks

        spec = self.spec
        self.cyclic = None
        levels = min(3 if spec.enable_central_smoothness else 2, spec.n_steps)
        nsys, steps, n = self.info.size, spec.n_steps, spec.block_size
        blocks = [np.empty((nsys, steps - k, n, n), self.dtype) for k in range(levels)]
        spare = np.empty((0, 0, n, n), self.dtype)  # for the levels not wanted
        workspace_blocks(self.workspace, *(blocks + [spare] * (3 - levels)), levels, self.lanes)
        diag = np.diagonal(blocks[0], axis1=-2, axis2=-1).reshape(nsys, -1)
        blocks = [a.reshape(self.lhs_batch_shape + a.shape[1:]) for a in blocks]
        self.cyclic = factor_blocks(blocks)
        self._band = None
        # (a NaN or inf reaching a pivot block fails it, as in the band kernels)
        info = cyclic_status(np, self.cyclic, diag, _singular_tolerance(spec.bandwidth, self.dtype))
        self.info = info.reshape(self.info.shape)

    def _solve_batch(self, b: np.ndarray) -> np.ndarray:
        """Solve in place for ``b`` of shape ``batch + (M, 1)`` (our own array)."""
        batch = b.shape[:-2]
        if self.cyclic is not None:
            from .._cyclic import solve_blocks

            spec = self.spec
            x = solve_blocks(self.cyclic, b.reshape(batch + (spec.n_steps, spec.block_size, 1)))
            b[...] = x.reshape(b.shape)
            return b
        if batch == self.lhs_batch_shape and b.dtype == self.dtype:
            # One factor per right-hand side: solve with the workspace directly.
            from ._cpu import solve_lanes

            if b.size:
                solve_lanes(
                    self.workspace, b.reshape(-1, self.spec.n_unknowns), self.spec.bandwidth,
                    _lane_marker(self.lanes),
                )  # fmt: skip
            return b
        factor = self.factor_band
        if factor.dtype != b.dtype:
            factor = factor.astype(b.dtype)
        _run_core(self.backend, factor, batch, factor=False, rhs=b)
        return b

    def solve(self, coefficients: Any, rhs_equation: Any, init_vars: Any) -> np.ndarray:
        """Solve the factored system for new right-hand sides.

        The right-hand side ``A^T b`` involves the coefficients as well
        (``sum_e c[t, e] r[t, e]``), so they are passed again; normally they
        are the ones that were factored.

        Parameters
        ----------
        coefficients : array_like, shape (..., n_steps or 1, n_equations, n_dims, n_orders)
        rhs_equation : array_like, shape (..., n_steps or 1, n_equations)
        init_vars : array_like, shape (..., n_init_var_steps or 1, n_dims, n_init_var_orders)

        Returns
        -------
        u : numpy.ndarray, shape (..., n_steps, n_dims, n_orders)
            The batch shape broadcasts every input's and the factor's.  Step
            axis first with ``is_step_dim_first``.
        """
        return self._solve_inputs(self._inputs(coefficients, rhs_equation, init_vars))

    def _solve_inputs(self, inputs: _Inputs) -> np.ndarray:
        if inputs.dtype != self.dtype:
            dtype = np.result_type(inputs.dtype, self.dtype)
            inputs.arrays = {k: np.asarray(a, dtype=dtype) for k, a in inputs.arrays.items()}
            inputs.dtype = dtype
        beta = _assemble_rhs(inputs)
        if beta.size:
            self._solve_batch(beta)
        return _solution(beta, inputs, self.is_step_dim_first)

    def vjp(
        self,
        grad_u: Any,
        u: Any,
        coefficients: Any,
        rhs_equation: Any,
        init_vars: Any,
        steps: Any = None,
    ) -> OdeGradients:
        """Vector-Jacobian product of ``u = ode_forward(...)``.

        One more solve against the stored factor, ``lam = A^{-1} grad_u``,
        then the derivative of the assembly (see :mod:`._kernels`).

        Parameters
        ----------
        grad_u : array_like, shape of ``u`` (or broadcastable to it)
            Upstream gradient ``dL/du``.
        u : array_like, shape (..., n_steps, n_dims, n_orders)
            The solution returned for these inputs.
        coefficients, rhs_equation, init_vars : array_like
            The inputs of the forward call.
        steps : array_like, optional
            The step sizes of the forward call.  Without them (a frozen left-hand
            side) no gradient is computed for ``coefficients`` and ``steps``.

        Returns
        -------
        OdeGradients
            ``dL/d(input)`` with each input's shape (summed over the axes it
            was broadcast along) and floating dtype; ``coefficients`` and
            ``steps`` are ``None`` when ``steps`` is not given.
        """
        lhs = steps is not None
        inputs = self._inputs(coefficients, rhs_equation, init_vars, steps)
        spec = self.spec
        out_shape = inputs.batch + (spec.n_steps, spec.n_dims, spec.n_orders)
        xp = inputs.xp
        grad_u = _api._as_real_array(grad_u, "grad_u", xp, self.backend)
        u = _api._as_real_array(u, "u", xp, self.backend)
        if self.is_step_dim_first:
            grad_u = xp.moveaxis(grad_u, 0, -3) if grad_u.ndim >= 3 else grad_u
            u = xp.moveaxis(u, 0, -3)
        if u.shape != out_shape:
            raise ValueError(f"u must have shape {out_shape} (the solution); got {u.shape}")
        try:
            grad_u = xp.broadcast_to(grad_u, out_shape)
        except ValueError:
            raise ValueError(
                f"grad_u must broadcast to the solution's shape {out_shape}; got {grad_u.shape}"
            ) from None
        return self._vjp(inputs, grad_u, u, lhs)

    def _vjp(self, inputs: _Inputs, grad_u: np.ndarray, u: np.ndarray, lhs: bool) -> OdeGradients:
        """:meth:`vjp` on validated inputs: ``inputs`` as :func:`_prepare`
        returns them, ``grad_u`` and ``u`` real arrays of the solution's shape
        in the canonical layout; gradients for ``coefficients`` and ``steps``
        only with ``lhs``.  (The torch adapter calls it directly with the
        inputs it validated in the forward.)"""
        from ._cpu import vjp_lanes

        spec, batch = self.spec, inputs.batch
        dtype = np.result_type(inputs.dtype, self.dtype)
        a = {k: np.asarray(x, dtype=dtype) for k, x in inputs.arrays.items()}
        T, E, D, O = spec.n_steps, spec.n_equations, spec.n_dims, spec.n_orders
        nsys = math.prod(batch)
        S, I = spec.n_init_var_steps, spec.n_init_var_orders
        # The kernel solves for lam = A^{-1} grad_u itself (fused with its pass
        # over the steps) when the factor is the lane workspace, one per system.
        fused = self.cyclic is None and batch == self.lhs_batch_shape and dtype == self.dtype
        if fused:  # read in place when already contiguous
            lam = np.ascontiguousarray(grad_u, dtype=dtype)
        else:
            lam = np.array(grad_u, dtype=dtype, order="C")
        lam_head = _empty(batch + (S, spec.n_dims, spec.n_orders), dtype=dtype)
        grads_full = {
            # Written in full by the kernel.
            "rhs_equation": _empty(batch + (T, E), dtype=dtype),
            "coefficients": _empty(batch + (T, E, D, O) if lhs else (0,), dtype=dtype),
            "steps": _empty(batch + (T - 1,) if lhs else (0,), dtype=dtype),
        }
        if lam.size:
            if not fused:
                lam = self._solve_batch(lam.reshape(batch + (spec.n_unknowns, 1)))
            x = np.ascontiguousarray(u, dtype=dtype).reshape(nsys, spec.n_unknowns)
            c = _flat(a["coefficients"], batch, 4, dtype)
            r = _flat(a["rhs_equation"], batch, 2, dtype)
            h = _flat(a.get("steps"), batch, 1, dtype)
            gc = grads_full["coefficients"]
            gh = grads_full["steps"]
            lanes = self.lanes if fused else _choose_lanes(nsys)
            ws2 = spec.weight_smooth**2
            vjp_lanes(
                c[0], c[1], c[2], r[0], r[1], r[2], h[0], h[1], h[2][0],
                _read_only(x), _read_only(lam.reshape(nsys, spec.n_unknowns)),
                self.workspace if fused else np.empty((0, 0), dtype), spec.bandwidth,
                lam_head.reshape(nsys, -1),
                gc.reshape((nsys, T, E, D, O) if lhs else (0, 0, 0, 0, 0)),
                grads_full["rhs_equation"].reshape(nsys, T, E),
                gh.reshape((nsys, T - 1) if lhs else (0, 0)),
                T, E, D, O, spec.weight_equation**2, ws2, spec.enable_central_smoothness,
                _lane_tables(O, spec.enable_central_smoothness, dtype, lanes, spec.weight_smooth)[1],
                lhs, _lane_marker(lanes),
            )  # fmt: skip
        grads_full["init_vars"] = spec.weight_init_var**2 * lam_head[..., :I]
        return _gradients(grads_full, inputs, lhs, self.is_step_dim_first)


def _gradients(full: dict[str, Any], inputs: _Inputs, lhs: bool, step_first: bool) -> OdeGradients:
    """The VJP's results from the gradients at full (broadcast) size: summed
    over the axes each input was broadcast along, in its floating dtype and
    layout; ``None`` for an absent input and, without ``lhs``, for
    ``coefficients`` and ``steps``."""

    def finish(name: str) -> Any:
        if name not in inputs.arrays or (not lhs and name in ("coefficients", "steps")):
            return None
        g = _sum_to(full[name], inputs.arrays[name].shape)
        if inputs.dtypes[name].kind == "f":
            g = g.astype(inputs.dtypes[name], copy=False)
        if step_first:
            g = inputs.xp.moveaxis(g, g.ndim - _CORE_NDIM[name], 0)
        return g

    return OdeGradients(
        finish("coefficients"), finish("rhs_equation"), finish("init_vars"), finish("steps")
    )


#: S-MNN's frozen left-hand sides: version -> factored system.
_FROZEN: dict[int, OdeSystem] = {}


def clear_frozen_lhs_cache() -> None:
    """Forget every left-hand side frozen with ``frozen_lhs_cache_version``."""
    _FROZEN.clear()


def ode_forward(
    coefficients: Any,
    rhs_equation: Any,
    init_vars: Any,
    steps: Any,
    n_steps: int | None = None,
    n_init_var_steps: int | None = None,
    is_step_dim_first: bool = False,
    weight_equation: float = 1.0,
    weight_init_var: float = 1.0,
    weight_smooth: float = 1.0,
    enable_central_smoothness: bool = False,
    prefer_cuda_graph: bool = True,
    frozen_lhs_cache_version: int = 0,
    *,
    return_system: bool = False,
    algorithm: str | None = None,
    backend: str | None = None,
) -> np.ndarray | tuple[np.ndarray, OdeSystem]:
    """Solve the MNN least-squares problem: S-MNN's ``ode_forward`` on NumPy or CuPy arrays.

    For every step ``t``, the ODE ``sum_{d,o} c[t,e,d,o] u[t,d,o] = r[t,e]``
    (``u[t,d,o]`` is the ``o``-th derivative of dimension ``d``), initial
    values ``u[t,d,o] = v[t,d,o]`` for ``t < n_init_var_steps``, ``o <
    n_init_var_orders``, and Taylor smoothness rows between neighbouring steps
    are fitted in the least-squares sense (``docs/mnn.md`` has the rows).  The
    normal equations are banded, so time and memory are linear in ``n_steps``.

    Parameters
    ----------
    coefficients : array_like, shape (..., n_steps or 1, n_equations, n_dims, n_orders)
    rhs_equation : array_like, shape (..., n_steps or 1, n_equations)
    init_vars : array_like, shape (..., n_init_var_steps or 1, n_dims, n_init_var_orders)
        ``n_init_var_orders`` (possibly 0) is the number of pinned orders.
    steps : array_like, shape (..., n_steps - 1 or 1)
        Step sizes.  Axes marked "or 1" broadcast; leading batch axes
        broadcast among all four inputs.  If any input is a Dask array, ``u``
        is a lazy Dask array, one task per batch chunk (no ``return_system``,
        no frozen left-hand side; see ``docs/scaling.md``).
    n_steps : int, optional
        Defaults to ``steps.shape[-1] + 1``.
    n_init_var_steps : int, optional
        Defaults to the length of the step axis of ``init_vars``.
    is_step_dim_first : bool
        The step axis is the first axis of every input and of the output.
    weight_equation, weight_init_var, weight_smooth : float
        Row weights (squared in the normal equations).
    enable_central_smoothness : bool
        Replace the highest order's forward/backward rows by central rows.
    prefer_cuda_graph : bool
        Accepted for drop-in compatibility (these kernels need no CUDA graph).
        On the GPU a call made while the current stream is capturing a CUDA
        graph does not wait for the device to check the status: failed
        systems then give NaN instead of an error.
    frozen_lhs_cache_version : int
        If > 0, the first call with this version factors the left-hand side
        and caches it; later calls with the same version reuse the factor and
        ignore ``steps`` (and the coefficients' contribution to the normal
        matrix), as in S-MNN.  :func:`clear_frozen_lhs_cache` empties the cache.
    return_system : bool
        Also return the factored :class:`OdeSystem` (for :meth:`OdeSystem.vjp`,
        or to solve more right-hand sides).  It comes from the same pass.
    algorithm : {None, "sequential", "cyclic"}
        The factorisation: the band Cholesky over the steps ("sequential"),
        or block cyclic reduction ("cyclic", about log2 T levels of parallel
        block operations, compiled per-node cores; see
        :func:`banded_mnn.solveh_block_banded`).
        ``None`` chooses: always "sequential" on the CPU, where it is faster;
        on the GPU "cyclic" for few, long sequences (fewer systems than fill
        the device and at least ``_backends._gpu.CYCLIC_MIN_STEPS`` steps).
    backend : str, optional
        Core backend: ``"numba"`` (the default for NumPy arrays), or for
        CuPy arrays ``"cupy"`` (the default) or ``"numba-cuda"`` (the band
        kernels; the layer's own GPU kernels are Numba CUDA either way).

    Returns
    -------
    u : numpy.ndarray or cupy.ndarray, shape (..., n_steps, n_dims, n_orders)
        On the inputs' device; float32 if every input fits in float32, else
        float64.
    system : OdeSystem
        Only with ``return_system`` (a :class:`~banded_mnn.mnn._gpu.GpuOdeSystem`
        for CuPy arrays).

    Raises
    ------
    NotPositiveDefiniteError
        When the least-squares problem of a system does not determine its
        solution (the normal matrix is not positive definite); see
        :meth:`OdeSystem.factor`.
    ValueError, TypeError
        For inputs whose shapes or dtypes do not fit, naming the argument.

    Examples
    --------
    The harmonic oscillator ``u'' + u = 0``, ``u(0) = 0``, ``u'(0) = 1``:

    >>> import numpy as np
    >>> from banded_mnn.mnn import ode_forward
    >>> c = np.array([1.0, 0.0, 1.0]).reshape(1, 1, 1, 3)  # u + u'' = 0
    >>> u = ode_forward(c, np.zeros((1, 1)), np.array([[[0.0, 1.0]]]), np.full(999, 0.01))
    >>> u.shape
    (1000, 1, 3)
    >>> bool(abs(u[-1, 0, 0] - np.sin(9.99)) < 1e-3)
    True
    """
    del prefer_cuda_graph  # no CUDA graphs: a solve is a few kernel calls
    raw = (coefficients, rhs_equation, init_vars, steps)
    if any(is_dask_array(x) for x in raw):
        from .. import _dask

        return _dask.ode_forward(
            dict(zip(("coefficients", "rhs_equation", "init_vars", "steps"), raw, strict=True)),
            n_steps=n_steps,
            n_init_var_steps=n_init_var_steps,
            is_step_dim_first=is_step_dim_first,
            weights=(weight_equation, weight_init_var, weight_smooth),
            central=enable_central_smoothness,
            frozen_lhs_cache_version=frozen_lhs_cache_version,
            return_system=return_system,
            algorithm=algorithm,
            backend=backend,
        )
    inputs = _prepare(
        coefficients,
        rhs_equation,
        init_vars,
        steps,
        n_steps,
        n_init_var_steps,
        is_step_dim_first,
        (weight_equation, weight_init_var, weight_smooth),
        enable_central_smoothness,
        backend,
    )
    version = _count(frozen_lhs_cache_version, "frozen_lhs_cache_version", 0)
    system = _FROZEN.get(version) if version else None
    if system is None:
        u, system = _forward(inputs, is_step_dim_first, True, backend, algorithm)
        if version:
            _FROZEN[version] = system
    else:
        system = _frozen_compatible(system, inputs, version, is_step_dim_first)
        inputs.batch = np.broadcast_shapes(inputs.batch, system.lhs_batch_shape)
        u = system._solve_inputs(inputs)
    return (u, system) if return_system else u


def _forward(
    inputs: _Inputs, step_first: bool, check: bool, backend: str | None, algorithm: str | None
) -> tuple[np.ndarray, OdeSystem]:
    """Factor and solve: ``(u, system)``.  With one left-hand side per
    right-hand side, in one pass; otherwise factor each distinct left-hand
    side once and solve for all right-hand sides.  (Shared by
    :func:`ode_forward` and the adapters.)"""
    if inputs.batch == inputs.lhs_batch:
        system, x = OdeSystem._factor(
            inputs, step_first, check, backend, solve=True, algorithm=algorithm
        )
        return _solution(x, inputs, step_first), system
    system, _ = OdeSystem._factor(inputs, step_first, check, backend, algorithm=algorithm)
    return system._solve_inputs(inputs), system


def _frozen_compatible(
    system: OdeSystem, inputs: _Inputs, version: int, is_step_dim_first: bool
) -> OdeSystem:
    if system.on_gpu != inputs.gpu:
        where = "GPU" if system.on_gpu else "CPU"
        raise ValueError(
            f"frozen_lhs_cache_version={version} holds a left-hand side factored on the {where}; "
            "this call's arrays are not there (use a new version or clear_frozen_lhs_cache())"
        )
    if system.spec != inputs.spec or system.dtype != inputs.dtype:
        raise ValueError(
            f"frozen_lhs_cache_version={version} holds a left-hand side of a different problem "
            f"({system.spec}, {system.dtype}) than this call ({inputs.spec}, {inputs.dtype}); "
            "use a new version or clear_frozen_lhs_cache()"
        )
    try:
        np.broadcast_shapes(inputs.batch, system.lhs_batch_shape)
    except ValueError:
        raise ValueError(
            f"frozen_lhs_cache_version={version}: batch shape {inputs.batch} does not broadcast "
            f"with the cached left-hand side's {system.lhs_batch_shape}"
        ) from None
    if system.is_step_dim_first != is_step_dim_first:
        system = copy.copy(system)
        system.is_step_dim_first = is_step_dim_first
    return system
