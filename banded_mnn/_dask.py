"""Dask arrays in, lazy Dask arrays out: the band routines and the MNN layer,
one task per batch chunk.

Call path: :mod:`banded_mnn._api` and :func:`banded_mnn.mnn.ode_forward` see a
Dask operand (:func:`is_dask_array`, which imports nothing) and hand the call
to :func:`band_routine` or :func:`ode_forward` here, which

1. validate everything the metadata shows (shapes, dtypes, band layout, the
   chunks' array type against ``backend``) with the in-memory path's own
   checks, so that such errors are raised at call time;
2. bring every operand to a Dask array whose batch axes are chunked alike
   (:func:`_align`): NumPy and CuPy operands take the chunks of the Dask
   operands, axes of length 1 stay one chunk and are broadcast by the
   graph, never copied per chunk; each operand's core axes become one chunk;
3. build the graph with :func:`dask.array.blockwise` (:func:`_graph`): one
   task per output batch chunk, which calls the in-memory routine on its
   chunk under the per-task thread rule (:func:`kernel_threads`) and is also
   handed its chunk's position in the batch (:func:`_positions`, fused into
   the task), so that a failure names its index in the whole batch.

Nothing is computed here.  Dask arrays are never written: the
``overwrite_*`` flags are ignored.
"""

from __future__ import annotations

import contextlib
import math
import operator
import os
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from . import _api
from ._errors import NotPositiveDefiniteError
from ._strided import is_dask_array, namespace, to_numpy

#: Environment variable that fixes the number of kernel threads of every
#: task (overrides the rule of :func:`threads_per_task`).
THREADS_ENV = "BANDED_MNN_THREADS_PER_TASK"


# --------------------------------------------------------------------------
# Threads: Dask runs tasks in parallel, and the Numba kernels are parallel too
# --------------------------------------------------------------------------


def threads_per_task() -> int | None:
    """Kernel threads for a task running now, or ``None`` to leave Numba's setting.

    The rule, first match wins:

    1. ``BANDED_MNN_THREADS_PER_TASK`` in the environment (of the workers);
    2. on a ``distributed`` worker: ``OMP_NUM_THREADS`` if set -- Dask's
       Nanny sets it to 1 in the workers it starts, so that the worker
       threads are the parallelism -- else the cores divided by the worker's
       threads;
    3. in a thread of Dask's local threaded scheduler: the cores divided by
       its threads (``num_workers`` in Dask's config, by default the cores);
    4. otherwise (the synchronous scheduler, in the calling thread): ``None``.

    :func:`kernel_threads` caps it at ``NUMBA_NUM_THREADS``.
    """
    explicit = os.environ.get(THREADS_ENV)
    if explicit:
        return max(1, int(explicit))
    import dask
    from dask.system import CPU_COUNT

    worker = _current_worker()
    if worker is not None:
        omp = os.environ.get("OMP_NUM_THREADS")
        if omp:
            return max(1, int(omp))
        return max(1, CPU_COUNT // max(1, worker.state.nthreads))
    if threading.current_thread() is threading.main_thread():
        return None
    return max(1, CPU_COUNT // (dask.config.get("num_workers", None) or CPU_COUNT))


def _current_worker():
    try:
        from distributed import get_worker
    except ImportError:
        return None
    try:
        return get_worker()
    except ValueError:  # not in a worker's task
        return None


#: Serialises kernels under Numba's "workqueue" threading layer, which aborts
#: the process when two threads enter parallel regions at once ("omp" and
#: "tbb" are thread-safe and take no lock).
_WORKQUEUE_LOCK = threading.Lock()


@contextlib.contextmanager
def kernel_threads() -> Iterator[None]:
    """Run the block with :func:`threads_per_task` Numba threads (a setting
    local to the calling thread), restored afterwards."""
    import numba

    wanted = threads_per_task()
    previous = numba.get_num_threads()
    try:
        thread_safe = numba.threading_layer() != "workqueue"
    except ValueError:  # no parallel region has run yet: the layer is not chosen
        thread_safe = False
    lock = contextlib.nullcontext() if thread_safe else _WORKQUEUE_LOCK
    if wanted is not None:
        numba.set_num_threads(min(wanted, numba.config.NUMBA_NUM_THREADS))
    try:
        with lock:
            yield
    finally:
        numba.set_num_threads(previous)


# --------------------------------------------------------------------------
# Operands
# --------------------------------------------------------------------------


def _metadata_checks(name: str, x: Any) -> Any:
    """The array that stands for ``x``'s chunks in the in-memory checks: its
    Dask ``_meta`` (NumPy or CuPy, zero size, the right dtype) or ``x``."""
    if is_dask_array(x):
        if any(math.isnan(n) for n in x.shape):
            raise ValueError(
                f"{name} has unknown chunk sizes (shape {x.shape}); call "
                f"{name}.compute_chunk_sizes() first"
            )
        return x._meta
    return x


def _align(
    operands: dict[str, tuple[Any, int]], batch: tuple[int, ...]
) -> tuple[dict[str, Any], list[tuple[int, ...]]]:
    """Dask arrays for ``operands`` (name -> (array, core ndim)) with the same
    chunks along every batch axis they share (right-aligned to ``batch``)
    and one chunk along each core axis.

    Batch chunks follow the first Dask operand that is not of length 1 along
    the axis (the others are rechunked to match); NumPy or CuPy operands are
    cut to those chunks (Dask's automatic chunks along an axis no Dask
    operand has).  Returns the arrays and the batch chunks of the output.
    """
    import dask.array as da

    nb = len(batch)
    chunks: list[tuple[int, ...] | None] = [None if n != 1 else (1,) for n in batch]
    for x, core in operands.values():
        if is_dask_array(x):
            k = x.ndim - core
            for j in range(k):
                i = nb - k + j
                if chunks[i] is None and x.shape[j] == batch[i]:
                    chunks[i] = x.chunks[j]
    aligned = {}
    for name, (x, core) in operands.items():
        k = x.ndim - core
        batch_chunks = [
            (1,) if x.shape[j] == 1 else (chunks[nb - k + j] or "auto") for j in range(k)
        ]
        wanted = tuple(batch_chunks) + tuple(-1 for _ in range(core))
        if is_dask_array(x):
            x = x.rechunk(wanted)
        else:
            # name=False: a random name instead of hashing the whole array.
            x = da.from_array(x, chunks=wanted, asarray=False, name=False)
        for j in range(k):
            if chunks[nb - k + j] is None:
                chunks[nb - k + j] = x.chunks[j]
        aligned[name] = x
    return aligned, [c if c is not None else (n,) for c, n in zip(chunks, batch, strict=True)]


def _positions(batch: tuple[int, ...], chunks: list[tuple[int, ...]]) -> list[Any]:
    """Per batch axis, a Dask array chunked like the output whose blocks hold
    their own start along that axis (a read-only broadcast, no memory): a
    task reads its chunk's position in the batch from element 0.  Built by
    ``map_blocks`` over ``zeros``, both blockwise, so Dask fuses them into
    the tasks that read them (an ``arange`` was one more task per chunk)."""
    import dask.array as da

    return [
        da.zeros(n, chunks=(c,), dtype=np.int8).map_blocks(
            _block_start, dtype=np.int64, meta=np.empty(0, np.int64)
        )
        for n, c in zip(batch, chunks, strict=True)
    ]


def _block_start(block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
    start = block_info[0]["array-location"][0][0] if block_info else 0
    return np.broadcast_to(np.int64(start), block.shape)


def _graph(
    task: Any,
    operands: dict[str, tuple[Any, Any]],
    batch: tuple[int, ...],
    chunks: list[tuple[int, ...]],
    out_core: dict[Any, int],
    metas: tuple[Any, ...],
    **options: Any,
) -> Any:
    """One :func:`dask.array.blockwise` layer: ``task(*chunks of operands,
    *positions, **options)`` per output batch chunk.

    ``operands`` maps a name to (aligned array, labels of its core axes);
    batch axes are labelled right-aligned to ``batch``, so that an axis of
    length 1 is broadcast (its one chunk goes to every task).  ``out_core``
    maps the labels of the output's core axes to their lengths.  With two
    ``metas`` the task returns ``(result, info)`` and the two lazy arrays
    are split off the layer (``info`` has the batch axes only).
    """
    import dask.array as da

    nb = len(batch)
    letters = tuple(f"b{i}" for i in range(nb))
    arginds: list[Any] = []
    labels = set()
    for x, core in operands.values():
        k = x.ndim - len(core)
        arginds += [x, (*letters[nb - k :], *core)]
        labels.update(core)
    for i, position in enumerate(_positions(batch, chunks)):
        arginds += [position, (letters[i],)]
    out_index = (*letters, *out_core)
    if len(metas) == 1:
        new_axes = {label: n for label, n in out_core.items() if label not in labels}
        return da.blockwise(
            _unwrapped, out_index, *arginds, concatenate=False, new_axes=new_axes,
            meta=metas[0], task=task, n_positions=nb, **options,
        )  # fmt: skip
    # A layer of (result, info) pairs over the batch axes, then one element of each.
    pairs = da.blockwise(
        _unwrapped, letters, *arginds, concatenate=False,
        meta=np.empty((0,) * nb, dtype=object), task=task, n_positions=nb, **options,
    )  # fmt: skip
    result = da.blockwise(
        operator.getitem, out_index, pairs, letters, 0, None, new_axes=out_core, meta=metas[0]
    )
    info = da.blockwise(operator.getitem, letters, pairs, letters, 1, None, meta=metas[1])
    return result, info


def _unwrapped(*args: Any, task: Any, **options: Any) -> Any:
    """``task`` on the chunks themselves.  Blockwise hands over an operand's
    core axes (not output axes) as nested one-element lists, because they are
    one chunk; with ``concatenate=True`` Dask would copy each chunk into a new
    array (``concatenate3`` copies even a single block), which cost a third of
    the run time at 85 MB chunks."""
    chunks = []
    for x in args:
        while isinstance(x, list):
            (x,) = x
        chunks.append(x)
    return task(*chunks, **options)


def _offset(positions: tuple[np.ndarray, ...]) -> tuple[int, ...]:
    return tuple(int(p.reshape(-1)[0]) for p in positions)


def _meta(like: Any, ndim: int, dtype: Any) -> Any:
    """A zero-size array of ``like``'s module (NumPy or CuPy) for Dask's ``meta``."""
    return namespace(like).empty((0,) * ndim, dtype=dtype)


# --------------------------------------------------------------------------
# Band routines
# --------------------------------------------------------------------------


def band_routine(
    function: str,
    ab: Any,
    b: Any | None,
    *,
    lower: bool,
    check_finite: bool,
    backend: str | None,
    raising: bool,
) -> Any:
    """``cholesky_banded`` (``b is None``), ``cho_solve_banded`` or
    ``solveh_banded`` on Dask operands: the lazy result, or with
    ``raising=False`` the lazy ``(result, info)`` of the ``_ex`` variant."""
    factored = function == "cho_solve_banded"
    name_ab = "cb" if factored else "ab"
    metas = {name_ab: _metadata_checks(name_ab, ab)}
    if b is not None:
        metas["b"] = _metadata_checks("b", b)
    # The in-memory path's own checks, on stand-ins of the chunks (in-memory
    # operands are converted by the same call).
    _impl, xp = _api._select(backend, metas)
    metas = {name: _api._as_real_array(m, name, xp, backend) for name, m in metas.items()}
    if b is not None and xp is not np:
        _api._same_device(metas)
    ab = ab if is_dask_array(ab) else metas[name_ab]
    if b is not None and not is_dask_array(b):
        b = metas["b"]
    _api._check_band(ab, name_ab)
    if b is None:
        batch, dtype = ab.shape[:-2], _api._result_dtype(ab)
        out_shape = ab.shape
        operands = {name_ab: (ab, 2)}
        cores, out_core = {name_ab: "wm"}, "wm"
    else:
        batch, out_shape = _api._rhs_layout(ab, b, name_ab, "b")
        dtype = _api._result_dtype(ab, b)
        operands = {name_ab: (ab, 2), "b": (b, 1 if b.ndim == 1 else 2)}
        out_core = "m" if b.ndim == 1 else "mk"
        cores = {name_ab: "wm", "b": out_core}
    arrays, chunks = _align(operands, batch)
    like = next(iter(metas.values()))
    metas_out = (_meta(like, len(batch) + len(out_core), dtype),)
    if not raising:
        metas_out += (_meta(like, len(batch), np.int32),)
    out_sizes = dict(zip(out_core, out_shape[len(batch) :], strict=True))
    return _graph(
        _band_chunk, {name: (arrays[name], cores[name]) for name in arrays}, batch, chunks,
        out_sizes, metas_out, function=function, lower=bool(lower),
        check_finite=bool(check_finite), backend=backend, raising=raising,
    )  # fmt: skip


def _band_chunk(*args: Any, function: str, lower: bool, check_finite: bool,
                backend: str | None, raising: bool, n_positions: int):  # fmt: skip
    """One task: the in-memory routine on one batch chunk."""
    operands, positions = args[: len(args) - n_positions], args[len(args) - n_positions :]
    with kernel_threads():
        if function == "cholesky_banded":
            result, info = _api._factor(operands[0], False, lower, check_finite, backend)
        else:
            result, info = _api._solve(
                *operands,
                factored=function == "cho_solve_banded",
                overwrite_b=False,
                lower=lower,
                check_finite=check_finite,
                backend=backend,
                name_ab="cb" if function == "cho_solve_banded" else "ab",
            )
    if not raising:
        return result, info
    if info.size and bool(info.any()):
        raise NotPositiveDefiniteError(to_numpy(info), function, offset=_offset(positions))
    return result


# --------------------------------------------------------------------------
# The MNN layer
# --------------------------------------------------------------------------


def ode_forward(
    arrays: dict[str, Any],
    *,
    n_steps: int | None,
    n_init_var_steps: int | None,
    is_step_dim_first: bool,
    weights: tuple[Any, Any, Any],
    central: bool,
    frozen_lhs_cache_version: int,
    return_system: bool,
    algorithm: str | None,
    backend: str | None,
) -> Any:
    """:func:`banded_mnn.mnn.ode_forward` with Dask operands among ``arrays``
    (name -> array or ``None``): the lazy solution ``u``."""
    import dask.array as da

    from .mnn import _layer

    if return_system:
        raise ValueError(
            "ode_forward: return_system=True is not supported with Dask arrays (the factor "
            "would live in the workers); the VJP on Dask arrays is not supported"
        )
    if frozen_lhs_cache_version:
        raise ValueError(
            "ode_forward: frozen_lhs_cache_version is not supported with Dask arrays (the "
            "cache lives in one process)"
        )
    if algorithm is not None and algorithm not in _layer.ALGORITHMS:
        raise ValueError(
            f"algorithm must be one of {', '.join(map(repr, _layer.ALGORITHMS))} or None; got "
            f"{algorithm!r}"
        )
    from . import _backends

    _backends.get(backend)  # (an unknown name raises here, not in a task)
    present: dict[str, Any] = {}
    metas: dict[str, Any] = {}
    for name, x in arrays.items():
        if x is None:
            continue
        metas[name] = _metadata_checks(name, x)
        present[name] = _layer._canonical(x, name, is_step_dim_first)
    kinds = {namespace(meta).__name__ for meta in metas.values()}
    if len(kinds) > 1:
        raise TypeError(
            "ode_forward: the Dask arrays' chunks must all be NumPy or all CuPy arrays; got "
            + ", ".join(f"{name}: {type(m).__module__}.{type(m).__name__}"
                        for name, m in metas.items())
        )  # fmt: skip
    spec, lhs_batch, batch = _layer.check_shapes(
        {name: x.shape for name, x in present.items()}, n_steps, n_init_var_steps, weights, central
    )
    dtype = _api._result_dtype(*present.values())
    operands = {name: (x, _layer._CORE_NDIM[name]) for name, x in present.items()}
    aligned, chunks = _align(operands, batch)
    nb = len(batch)
    # The left-hand side's batch axes along which it is broadcast: a failure
    # there is at index 0 of the whole batch whatever the chunk.
    lhs_padded = (1,) * (nb - len(lhs_batch)) + tuple(lhs_batch)
    broadcast_axes = tuple(i for i in range(nb) if lhs_padded[i] == 1 and batch[i] != 1)
    cores = {"coefficients": "tedo", "rhs_equation": "re", "init_vars": "vdi", "steps": "h"}
    cores = {name: tuple(f"{name}.{c}" for c in cores[name]) for name in aligned}
    options = {
        "n_steps": spec.n_steps,
        "n_init_var_steps": spec.n_init_var_steps,
        "weight_equation": spec.weight_equation,
        "weight_init_var": spec.weight_init_var,
        "weight_smooth": spec.weight_smooth,
        "enable_central_smoothness": spec.enable_central_smoothness,
        "algorithm": algorithm,
        "backend": backend,
    }
    u = _graph(
        _ode_chunk, {name: (x, cores[name]) for name, x in aligned.items()}, batch, chunks,
        {"T": spec.n_steps, "D": spec.n_dims, "O": spec.n_orders},
        (_meta(metas["coefficients"], nb + 3, dtype),),
        names=tuple(aligned), lhs_ndim=len(lhs_batch), broadcast_axes=broadcast_axes,
        options=options,
    )  # fmt: skip
    return da.moveaxis(u, -3, 0) if is_step_dim_first else u


def _ode_chunk(*args: Any, names: tuple[str, ...], n_positions: int, lhs_ndim: int,
               broadcast_axes: tuple[int, ...], options: dict[str, Any]) -> np.ndarray:  # fmt: skip
    """One task: the in-memory MNN layer on one batch chunk (on the GPU for
    CuPy chunks)."""
    from .mnn import _layer

    inputs = dict(zip(names, args[: len(names)], strict=True))
    positions = args[len(names) :]
    with kernel_threads():
        try:
            return _layer.ode_forward(
                inputs["coefficients"],
                inputs.get("rhs_equation"),
                inputs.get("init_vars"),
                inputs.get("steps"),
                **options,
            )
        except NotPositiveDefiniteError as error:
            # The error's info has the left-hand side's batch shape.
            offset = [0 if i in broadcast_axes else o for i, o in enumerate(_offset(positions))]
            raise error.with_offset(tuple(offset[n_positions - lhs_ndim :])) from None
