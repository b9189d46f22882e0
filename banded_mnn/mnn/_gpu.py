"""The MNN layer on GPU arrays: :class:`GpuOdeSystem`.

The CPU layer (:mod:`._layer`) with its kernels swapped for GPU ones; the
validation, the shapes, the errors and the public functions are the same
code.  One call of ``ode_forward`` on CuPy arrays is

1. the assembly kernel (:func:`._cuda.assemble`, a thread per (system,
   step)) writing the normal matrix straight into the GPU driver's factor
   workspace for the regime (:mod:`banded_mnn._backends._gpu`: interleaved by
   system for many systems, contiguous per system for few) -- no band array
   in between and no gather -- together with the right-hand side and the
   matrix's diagonal;
2. the backend's factor-and-solve kernel on that workspace, in place (the
   forward and backward substitutions in the same launch);
3. the singular-to-working-precision test (:func:`._cuda.flag_singular`);
4. the copy of the solution out of the workspace (NaN for failed systems).

The factored workspace stays on the device as the system's factor.  The VJP
solves ``lam = A^{-1} dL/du`` with it and runs the gradient kernel
(:func:`._cuda.vjp`, a thread per (system, step)).

CUDA graphs: nothing here waits for the device or copies between host and
device, except raising an error (``check``: the status is needed on the host),
which is skipped while the stream is capturing (:func:`capturing`), and the
first call for each ``n_orders`` on a device, which copies the smoothness
tables there (:func:`_device_tables`; a warm-up call before capture does it).
Every array is allocated through CuPy, so under the torch adapter through
torch's caching allocator.  ``tests/test_mnn_gpu.py`` checks this with a
stand-in CuPy that records every wait, copy and allocation.

The assembly and gradient kernels are Numba CUDA; the factorisation is the
band backend's ("cupy": the CUDA C++ kernels, the default; "numba-cuda").
Under Numba's CUDA simulator the same code runs on NumPy arrays with the
"numba-cuda" backend -- how the tests check it against the CPU layer.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np

from .. import _backends
from .._backends import _gpu
from .._strided import StridedBatch, flat_batch
from . import _cuda
from ._layer import (
    OdeGradients,
    OdeSpec,
    OdeSystem,
    _gradients,
    _Inputs,
    _singular_tolerance,
    _tables,
    cyclic_status,
)


def capturing(xp: Any) -> bool:
    """Whether the current stream is capturing a CUDA graph (``torch.cuda.graph``,
    ``torch.compile(mode="reduce-overhead")``, CuPy's ``Stream.begin_capture``):
    then nothing may wait for the device, and the status check is skipped --
    failed systems give NaN, as with ``check=False``."""
    return xp is not np and xp.cuda.get_current_stream().is_capturing()


def choose_algorithm(algorithm: str | None, nsys: int, n_steps: int, kernels: Any) -> str:
    """The factorisation on the GPU: ``algorithm`` if given, else by shape --
    block cyclic reduction for few, long sequences, the band Cholesky
    otherwise (:func:`banded_mnn._backends._gpu.choose_algorithm`)."""
    if algorithm is not None:
        return algorithm
    return _gpu.choose_algorithm(nsys, n_steps, kernels.multiprocessors())


def _on_device_of(array: Any) -> Any:
    """For a CuPy array, a context making its device current (every
    allocation and launch of a call goes to the device of its arrays)."""
    device = getattr(array, "device", None)
    return device if hasattr(device, "__enter__") else contextlib.nullcontext()


def kernel_set(backend: str | None) -> Any:
    """The band kernels of GPU backend ``backend`` (default "cupy")."""
    return _backends.get(backend, gpu_input=True).kernels()


def _operand(x: Any, batch: tuple[int, ...], core_ndim: int, dtype: np.dtype, xp: Any):
    """Kernel operand for ``x`` broadcast to ``batch``: (buffer, offsets, core
    strides); a dummy for an absent or empty input."""
    nsys = math.prod(batch)
    if x is None or x.size == 0:
        return xp.zeros(1, dtype), xp.zeros(nsys, np.int64), (0,) * core_ndim
    buf, offsets, strides = flat_batch(x, batch, core_ndim)
    if xp is np:  # read-only: the simulator then does not copy it back
        buf = buf.view()
        buf.flags.writeable = False
    return buf, offsets, strides


def _vector_view(work: StridedBatch, nsys: int, regime: str) -> Any:
    """A (systems, M) view of a right-hand-side workspace of one column."""
    m = work.shape[0]
    if regime == "thread":
        return work.buf[: m * nsys].reshape(m, nsys).T
    return work.buf[: m * nsys].reshape(nsys, m)


class GpuOdeSystem(OdeSystem):
    """An :class:`~banded_mnn.mnn.OdeSystem` factored on the GPU.

    Attributes
    ----------
    factor_workspace : StridedBatch
        The band Cholesky factor in the GPU driver's workspace, ``(j, r) ->
        L[j + r, j]``, laid out for ``regime`` (:attr:`factor_band` gives it
        in LAPACK's form).
    regime : {"thread", "warp"}
        The layout (and the kernel that factored it).
    workspace : cupy.ndarray
        ``factor``'s buffer (1-D).
    """

    on_gpu = True

    def __init__(
        self,
        factor: StridedBatch,
        regime: str,
        info: Any,
        spec: OdeSpec,
        *,
        is_step_dim_first: bool = False,
        backend: str | None = None,
    ) -> None:
        self.factor_workspace = factor
        self.regime = regime
        self.workspace = factor.buf
        self.lanes = 0
        self.info = info
        self.spec = spec
        self.lhs_batch_shape = tuple(info.shape)
        self.is_step_dim_first = is_step_dim_first
        self.backend = backend
        self.cyclic = None
        self._band = None

    @classmethod
    def from_workspace(
        cls, buf: Any, info: Any, spec: OdeSpec, *, backend: str | None = None, **options: Any
    ) -> GpuOdeSystem:
        """The system whose factor workspace is ``buf`` (as :attr:`workspace`
        holds it), the regime recomputed from the system count."""
        kernels = kernel_set(backend)
        nsys = math.prod(info.shape)
        regime = _gpu.choose_regime(nsys, kernels.multiprocessors())
        layout = _gpu.workspace(kernels.xp, buf.dtype, nsys, spec.n_unknowns,
                                spec.bandwidth + 1, regime)  # fmt: skip
        factor = StridedBatch(buf, layout.offsets, layout.shape, layout.strides)
        return cls(factor, regime, info, spec, backend=backend, **options)

    @property
    def dtype(self) -> np.dtype:
        return self.workspace.dtype

    @property
    def factor_band(self) -> Any:
        """The factor in LAPACK's lower band form, ``lhs_batch + (u + 1, M)``,
        NaN for systems that failed (a copy, made on first access)."""
        if self.cyclic is not None:
            raise AttributeError(
                "this system was factored by cyclic reduction: its factor is .cyclic, not a band"
            )
        if self._band is None:
            with _on_device_of(self.workspace):
                self._band = self._scatter_band()
        return self._band

    def _scatter_band(self) -> Any:
        """The factor workspace copied out in LAPACK's lower band form."""
        kernels = kernel_set(self.backend)
        u1, m = self.spec.bandwidth + 1, self.spec.n_unknowns
        nsys = self.info.size
        band = kernels.xp.zeros((nsys, u1, m), dtype=self.dtype)
        if nsys:
            target = StridedBatch.from_array(band, (nsys,)).band_view(u1 - 1, lower=True)
            kernels.copy(self.factor_workspace, target, m, u1, _gpu.SCATTER_BAND,
                         self.regime == "thread", None, self.info.reshape(-1))  # fmt: skip
        return band.reshape(self.lhs_batch_shape + (u1, m))

    # ------------------------------------------------------------------
    @classmethod
    def _factor(
        cls,
        inputs: _Inputs,
        is_step_dim_first: bool,
        check: bool,
        backend: str | None,
        solve: bool = False,
        algorithm: str | None = None,
    ) -> tuple[GpuOdeSystem, Any]:
        """:meth:`OdeSystem._factor` on the GPU (see the module docstring), on
        the device of the arrays."""
        with _on_device_of(inputs.arrays["coefficients"]):
            return cls._factor_here(inputs, is_step_dim_first, check, backend, solve, algorithm)

    @classmethod
    def _factor_here(
        cls,
        inputs: _Inputs,
        is_step_dim_first: bool,
        check: bool,
        backend: str | None,
        solve: bool,
        algorithm: str | None,
    ) -> tuple[GpuOdeSystem, Any]:
        kernels = kernel_set(backend)
        xp = kernels.xp
        spec, dtype, lhs_batch = inputs.spec, inputs.dtype, inputs.lhs_batch
        nsys, m, bw = math.prod(lhs_batch), spec.n_unknowns, spec.bandwidth
        regime = _gpu.choose_regime(nsys, kernels.multiprocessors())
        if choose_algorithm(algorithm, nsys, spec.n_steps, kernels) == "cyclic":
            return cls._factor_cyclic_gpu(inputs, is_step_dim_first, check, backend, solve)
        work = _gpu.workspace(xp, dtype, nsys, m, bw + 1, regime)
        info = xp.zeros(nsys, dtype=np.int32)
        x = xp.empty((nsys, m), dtype=dtype) if solve else None
        if nsys:
            diag = xp.empty(nsys * m, dtype=dtype)
            y = _gpu.workspace(xp, dtype, nsys, m, 1, regime) if solve else None
            _assemble(inputs, lhs_batch, work, diag, y, xp)
            rhs = y if solve else StridedBatch.dummy(dtype, nsys, xp)
            kernels.factor_solve(regime, work, bw, True, rhs, 1 if solve else 0, info)
            _cuda.flag_singular(xp, work, diag, m, info, _singular_tolerance(bw, dtype))
            if solve:
                out = StridedBatch(x.reshape(-1), xp.arange(nsys, dtype=np.int64) * m, (m, 1),
                                   (1, 1))  # fmt: skip
                kernels.copy(y, out, m, 1, _gpu.COPY_ALL, regime == "thread", None, info)
        info = info.reshape(lhs_batch)
        system = cls(work, regime, info, spec, is_step_dim_first=is_step_dim_first,
                     backend=backend)  # fmt: skip
        if check and nsys and not capturing(xp) and bool(info.any()):  # (waits for the device)
            system._raise_failure(inputs)
        return system, x

    @classmethod
    def _factor_cyclic_gpu(
        cls, inputs: _Inputs, is_step_dim_first: bool, check: bool, backend: str | None,
        solve: bool,
    ) -> tuple[GpuOdeSystem, Any]:  # fmt: skip
        """Assemble the band (the same kernel), gather it into blocks and
        factor them by block cyclic reduction (:mod:`banded_mnn._cyclic`:
        about log2 T levels of Numba CUDA kernels); the status as the band
        path reports it (:func:`._layer.cyclic_status`)."""
        from .._cyclic import factor_blocks

        kernels = kernel_set(backend)
        xp = kernels.xp
        spec, dtype, lhs_batch = inputs.spec, inputs.dtype, inputs.lhs_batch
        nsys, m, bw = math.prod(lhs_batch), spec.n_unknowns, spec.bandwidth
        work = _gpu.workspace(xp, dtype, nsys, m, bw + 1, "warp")
        diag = xp.empty(nsys * m, dtype=dtype)
        if nsys:
            _assemble(inputs, lhs_batch, work, diag, None, xp)
        blocks = [b.reshape(lhs_batch + b.shape[1:]) for b in _band_blocks(xp, work, spec, nsys)]
        factor = factor_blocks(blocks)
        info = cyclic_status(xp, factor, diag.reshape(nsys, m), _singular_tolerance(bw, dtype))
        system = cls(work, "warp", info.reshape(lhs_batch), spec,
                     is_step_dim_first=is_step_dim_first, backend=backend)  # fmt: skip
        system.cyclic = factor
        if check and nsys and not capturing(xp) and bool(info.any()):  # (waits for the device)
            system._raise_failure(inputs)
        x = system._solve_inputs(inputs, solution_only=True) if solve else None
        return system, x

    # ------------------------------------------------------------------
    def _solve_vectors(self, b: Any, batch: tuple[int, ...]) -> Any:
        """``A^{-1} b`` for ``b`` (systems, M) of batch ``batch`` (the left-hand
        side's broadcasts to it): a (systems, M) array, NaN for failed systems
        with cyclic reduction (the band path's copy-out does that itself)."""
        from .._cyclic import solve_blocks

        kernels = kernel_set(self.backend)
        xp = kernels.xp
        nsys, m = b.shape
        spec = self.spec
        if self.cyclic is not None:
            x = solve_blocks(self.cyclic, b.reshape(batch + (spec.n_steps, spec.block_size, 1)))
            failed = self._info_for(batch) != 0
            return xp.where(failed[:, None], xp.nan, x.reshape(nsys, m)).astype(b.dtype)
        regime = _gpu.choose_regime(nsys, kernels.multiprocessors())
        work = _gpu.workspace(xp, b.dtype, nsys, m, 1, regime)
        kernels.copy(StridedBatch.from_array(b.reshape(nsys, m, 1), (nsys,)), work, m, 1,
                     _gpu.COPY_ALL, regime == "thread", None)  # fmt: skip
        self._solve_work(work, batch, regime)
        return _vector_view(work, nsys, regime)

    def _factor_for(self, batch: tuple[int, ...], dtype: np.dtype) -> StridedBatch:
        """The factor addressed for right-hand sides of batch ``batch`` (the
        left-hand side's batch broadcasts to it), in ``dtype``."""
        factor = self.factor_workspace
        if dtype != self.dtype:
            factor = StridedBatch(factor.buf.astype(dtype), factor.offsets, factor.shape,
                                  factor.strides)  # fmt: skip
        if batch != self.lhs_batch_shape:
            xp = kernel_set(self.backend).xp
            offsets = xp.broadcast_to(factor.offsets.reshape(self.lhs_batch_shape), batch)
            factor = StridedBatch(factor.buf, xp.ascontiguousarray(offsets.reshape(-1)),
                                  factor.shape, factor.strides)  # fmt: skip
        return factor

    def _solve_work(self, y: StridedBatch, batch: tuple[int, ...], regime: str) -> None:
        """Solve in place for the right-hand sides in workspace ``y``."""
        kernels = kernel_set(self.backend)
        nsys = math.prod(batch)
        if nsys:
            scratch = kernels.xp.zeros(nsys, dtype=np.int32)  # (info of a solve: always 0)
            factor = self._factor_for(batch, y.buf.dtype)
            kernels.factor_solve(regime, factor, self.spec.bandwidth, False, y, 1, scratch)

    def _info_for(self, batch: tuple[int, ...]) -> Any:
        xp = kernel_set(self.backend).xp
        return xp.ascontiguousarray(xp.broadcast_to(self.info, batch).reshape(-1))

    def _solve_inputs(self, inputs: _Inputs, solution_only: bool = False) -> Any:
        """Assemble the right-hand sides and solve: ``u`` (or, with
        ``solution_only``, the (systems, M) solutions), on the factor's device."""
        with _on_device_of(self.workspace):
            return self._solve_here(inputs, solution_only)

    def _solve_here(self, inputs: _Inputs, solution_only: bool) -> Any:
        kernels = kernel_set(self.backend)
        xp = kernels.xp
        dtype = np.result_type(inputs.dtype, self.dtype)
        inputs.arrays = {k: xp.asarray(a, dtype=dtype) for k, a in inputs.arrays.items()}
        inputs.dtype = dtype
        spec, batch = self.spec, inputs.batch
        nsys, m = math.prod(batch), spec.n_unknowns
        if nsys and self.cyclic is not None:
            y = _gpu.workspace(xp, dtype, nsys, m, 1, "warp")  # (systems, M), contiguous
            _assemble(inputs, batch, None, None, y, xp)
            x = self._solve_vectors(y.buf[: nsys * m].reshape(nsys, m), batch)
        else:
            x = xp.empty((nsys, m), dtype=dtype)
        if nsys and self.cyclic is None:
            regime = _gpu.choose_regime(nsys, kernels.multiprocessors())
            y = _gpu.workspace(xp, dtype, nsys, m, 1, regime)
            _assemble(inputs, batch, None, None, y, xp)
            self._solve_work(y, batch, regime)
            out = StridedBatch(x.reshape(-1), xp.arange(nsys, dtype=np.int64) * m, (m, 1), (1, 1))
            kernels.copy(y, out, m, 1, _gpu.COPY_ALL, regime == "thread", None,
                         self._info_for(batch))  # fmt: skip
        if solution_only:
            return x
        u = x.reshape(batch + (spec.n_steps, spec.n_dims, spec.n_orders))
        return xp.moveaxis(u, -3, 0) if self.is_step_dim_first else u

    def _vjp(self, inputs: _Inputs, grad_u: Any, u: Any, lhs: bool) -> OdeGradients:
        """:meth:`OdeSystem._vjp` on the GPU: ``lam = A^{-1} grad_u`` with the
        stored factor, then the gradient kernel, on the factor's device."""
        with _on_device_of(self.workspace):
            return self._vjp_here(inputs, grad_u, u, lhs)

    def _vjp_here(self, inputs: _Inputs, grad_u: Any, u: Any, lhs: bool) -> OdeGradients:
        kernels = kernel_set(self.backend)
        xp = kernels.xp
        spec, batch = self.spec, inputs.batch
        dtype = np.result_type(inputs.dtype, self.dtype)
        a = {k: xp.asarray(v, dtype=dtype) for k, v in inputs.arrays.items()}
        T, E, D, O = spec.n_steps, spec.n_equations, spec.n_dims, spec.n_orders
        S, I, m = spec.n_init_var_steps, spec.n_init_var_orders, spec.n_unknowns
        nsys = math.prod(batch)
        grads = {
            "rhs_equation": xp.empty(batch + (T, E), dtype=dtype),
            "coefficients": xp.empty(batch + (T, E, D, O) if lhs else (0,), dtype=dtype),
            "steps": xp.empty(batch + (T - 1,) if lhs else (0,), dtype=dtype),
        }
        lam = xp.empty((nsys, m), dtype=dtype)
        if nsys:
            lam = self._solve_vectors(xp.asarray(grad_u, dtype=dtype).reshape(nsys, m), batch)
            ls = flat_batch(lam, (nsys,), 1)
            xs = flat_batch(xp.asarray(u, dtype=dtype).reshape(batch + (m,)), batch, 1)
            c = _operand(a["coefficients"], batch, 4, dtype, xp)
            r = _operand(a["rhs_equation"], batch, 2, dtype, xp)
            h = _operand(a.get("steps"), batch, 1, dtype, xp)
            tabs = _device_tables(spec, dtype, xp)
            one = np.dtype(dtype).type(1)
            _cuda.vjp(
                nsys * T, c[0], c[1], *c[2], r[0], r[1], *r[2], h[0], h[1], h[2][0],
                xs[0], xs[1], xs[2][0], ls[0], ls[1], ls[2][0],
                self._info_for(batch), T, E, D, O, one * spec.weight_equation**2,
                one * spec.weight_smooth**2, spec.enable_central_smoothness, *tabs, lhs,
                grads["coefficients"].reshape(-1), grads["rhs_equation"].reshape(-1),
                grads["steps"].reshape(-1), one, np.dtype(dtype).type(np.nan),
            )  # fmt: skip
        head = lam.reshape(batch + (T, D, O))[..., :S, :, :I]
        grads["init_vars"] = spec.weight_init_var**2 * head
        return _gradients(grads, inputs, lhs, self.is_step_dim_first)


#: (device, n_orders, central, dtype) -> the smoothness tables on that device.
_DEVICE_TABLES: dict[tuple, tuple[Any, Any, Any]] = {}


def _band_blocks(xp: Any, band: StridedBatch, spec: OdeSpec, nsys: int) -> list[Any]:
    """The normal matrices of ``band`` (``(j, r) -> A[j + r, j]``) as blocks
    ``a_k[i, t] = A_i[t+k, t]`` (systems, T - k, n, n), k < 2 (3 with central
    smoothness), diagonal blocks filled symmetric: one gather each."""
    T, n, bw = spec.n_steps, spec.block_size, spec.bandwidth
    levels = min(3 if spec.enable_central_smoothness else 2, T)
    p = xp.arange(n)[None, :, None]
    q = xp.arange(n)[None, None, :]
    s_j, s_r = band.strides
    blocks = []
    for k in range(levels):
        t = xp.arange(T - k)[:, None, None]
        row, col = (t + k) * n + p, t * n + q
        low, high = xp.minimum(row, col), xp.maximum(row, col)  # A[high, low] = A[row, col]
        r = high - low
        inside = r <= bw
        index = band.offsets[:, None, None, None] + (low * s_j + xp.where(inside, r, 0) * s_r)
        values = band.buf[index.reshape(-1)].reshape(index.shape)
        blocks.append(xp.where(inside, values, 0).astype(band.buf.dtype))
    return blocks


def _device_tables(spec: OdeSpec, dtype: np.dtype, xp: Any) -> tuple[Any, Any, Any]:
    """The smoothness tables (flat) on the current device, copied there on
    the first call for each shape and kept: later calls copy nothing from
    the host, so that they can be captured in a CUDA graph."""
    device = "host" if xp is np else xp.cuda.Device().id
    key = (device, spec.n_orders, spec.enable_central_smoothness, np.dtype(dtype))
    tables = _DEVICE_TABLES.get(key)
    if tables is None:
        host = _tables(spec.n_orders, spec.enable_central_smoothness, dtype)
        tables = _DEVICE_TABLES[key] = tuple(xp.asarray(t.reshape(-1)) for t in host)
    return tables


def _assemble(
    inputs: _Inputs,
    batch: tuple[int, ...],
    band: StridedBatch | None,
    diag: Any,
    y: StridedBatch | None,
    xp: Any,
) -> None:
    """Run the assembly kernel over every (system, step) of ``batch``: the
    normal matrices into ``band`` (and their diagonals into ``diag``) unless
    ``band`` is None, the right-hand sides into ``y`` unless it is None."""
    spec, dtype = inputs.spec, inputs.dtype
    nsys = math.prod(batch)
    lhs, solve = band is not None, y is not None
    arrays = inputs.arrays
    c = _operand(arrays["coefficients"], batch, 4, dtype, xp)
    h = _operand(arrays.get("steps") if lhs else None, batch, 1, dtype, xp)
    r = _operand(arrays.get("rhs_equation") if solve else None, batch, 2, dtype, xp)
    v = _operand(arrays.get("init_vars") if solve else None, batch, 3, dtype, xp)
    spare = StridedBatch.dummy(dtype, nsys, xp)
    band = band if lhs else spare
    y = y if solve else spare
    diag = diag if lhs else spare.buf
    one = np.dtype(dtype).type(1)
    _cuda.assemble(
        nsys * spec.n_steps, c[0], c[1], *c[2], h[0], h[1], h[2][0], r[0], r[1], *r[2],
        v[0], v[1], *v[2], band.buf, band.offsets, *band.strides, diag,
        y.buf, y.offsets, y.strides[0],
        spec.n_steps, spec.n_equations, spec.n_dims, spec.n_orders,
        spec.n_init_var_steps, spec.n_init_var_orders, spec.bandwidth,
        one * spec.weight_equation**2, one * spec.weight_init_var**2,
        one * spec.weight_smooth**2, spec.enable_central_smoothness,
        *_device_tables(spec, dtype, xp), lhs, solve, one - one, one,
    )  # fmt: skip
