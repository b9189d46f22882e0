"""Band Cholesky and substitution cores on a lane-interleaved workspace.

``L`` independent systems ("lanes") are factored in lockstep with the lane index
innermost, so that every scalar step of the algorithm becomes one ``L``-wide
SIMD operation.  The workspaces are flat, C-ordered 1-D arrays::

    W[(j*(bw + 1) + t)*L + l] = L_l[j + t, j]     0 <= t <= bw, j + t < n
    Y[(j*nrhs + k)*L + l]     = right-hand side / solution (j, k) of lane l

where ``A_l = L_l L_l^T`` is the Cholesky factorisation of lane ``l`` (order
``n``, effective half-bandwidth ``bw``).  Row ``j`` of ``W`` is column ``j`` of
the lower factor (row ``j`` of ``U = L^T``): LAPACK's lower band storage,
transposed.

The lane count reaches the cores as the *type* of ``lanes``, a tuple of length
``L`` (see :func:`lane_marker`).  It is a compile-time constant, so Numba
compiles and caches one specialisation per lane count.

The hot operation ``x[:] -= a[:] * b[:]`` on ``L`` consecutive lanes is emitted
as one LLVM vector operation by :func:`lane_fnmadd`.  LLVM cannot vectorise the
plain lane loop itself: it cannot prove that the row being updated and the
pivot row of the same workspace do not overlap (measured: 4x slower).
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic


def lane_marker(lanes: int) -> tuple[int, ...]:
    """The ``lanes`` argument that selects the ``lanes``-lane specialisation."""
    return (0,) * lanes


def _vector_pointer(context, builder, array_type, array, index, width):
    """LLVM pointer to ``width`` consecutive elements of a 1-D array from ``index``."""
    data = context.make_array(array_type)(context, builder, array).data
    element = context.get_data_type(array_type.dtype)
    pointer = builder.gep(data, [index], inbounds=True)
    return builder.bitcast(pointer, ir.VectorType(element, width).as_pointer())


def _lane_update(combine):
    """An intrinsic ``f(dst, di, a, ai, b, bi, lanes)`` that sets
    ``dst[di:di+L] = combine(dst[di:di+L], a[ai:ai+L], b[bi:bi+L])`` with
    ``L``-wide vector instructions.  Arrays are 1-D, contiguous and of one
    dtype; indices are not bounds-checked; loads assume element alignment only.
    """

    def typer(typingctx, dst, di, a, ai, b, bi, lanes):
        width = lanes.count

        def codegen(context, builder, signature, args):
            array_types = signature.args[0::2][:3]
            pointers = [
                _vector_pointer(context, builder, aty, args[2 * k], args[2 * k + 1], width)
                for k, aty in enumerate(array_types)
            ]
            align = array_types[0].dtype.bitwidth // 8
            d, x, y = (builder.load(ptr, align=align) for ptr in pointers)
            builder.store(combine(builder, d, x, y), pointers[0], align=align)
            return context.get_dummy_value()

        return types.void(dst, di, a, ai, b, bi, lanes), codegen

    return intrinsic(typer)


#: dst -= a * b, contracted to one fused multiply-add where the CPU has FMA
#: (as optimised BLAS kernels do).
lane_fnmadd = _lane_update(
    lambda builder, d, x, y: builder.fsub(
        d, builder.fmul(x, y, flags=("contract",)), flags=("contract",)
    )
)
#: dst += a * b (one fused multiply-add where the CPU has FMA).
lane_fmadd = _lane_update(
    lambda builder, d, x, y: builder.fadd(
        d, builder.fmul(x, y, flags=("contract",)), flags=("contract",)
    )
)
#: dst = a * b.
lane_mul = _lane_update(lambda builder, d, x, y: builder.fmul(x, y))
#: dst = a / b.
lane_div = _lane_update(lambda builder, d, x, y: builder.fdiv(x, y))


@intrinsic
def lane_pivot(typingctx, W, p, recip, original, lanes):
    """The pivot step of every lane at once: ``x = W[p : p+L]``;
    ``W[p : p+L] = d``, ``recip[:L] = 1/d`` and ``original[:L] = x``, where
    ``d = sqrt(x)`` if ``0 < x < inf`` and 1 otherwise (a failed pivot, which
    the caller reports from ``original``).

    One vector square root and division instead of ``L`` scalar ones: the
    pivot is on the factorisation's critical path, and scalar stores read
    back as a vector cannot be forwarded from the store buffer.
    """
    width = lanes.count

    def codegen(context, builder, signature, args):
        (p_,), intp = _index_values(context, builder, signature, args, (1,))
        wty, rty, oty = signature.args[0], signature.args[2], signature.args[3]
        align = wty.dtype.bitwidth // 8
        zero = context.get_constant(types.intp, 0)
        pointer = _vector_pointer(context, builder, wty, args[0], p_, width)
        x = builder.load(pointer, align=align)
        vector = x.type
        element = vector.element
        splat = lambda value: ir.Constant(vector, [ir.Constant(element, value)] * width)  # noqa: E731
        ok = builder.and_(
            builder.fcmp_ordered(">", x, splat(0.0)),
            builder.fcmp_ordered("<", x, splat(math.inf)),
        )
        name = f"llvm.sqrt.v{width}f{wty.dtype.bitwidth}"
        sqrt = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vector, [vector]), name
        )
        d = builder.select(ok, builder.call(sqrt, [x]), splat(1.0))
        builder.store(d, pointer, align=align)
        builder.store(builder.fdiv(splat(1.0), d),
                      _vector_pointer(context, builder, rty, args[2], zero, width), align=align)  # fmt: skip
        builder.store(x, _vector_pointer(context, builder, oty, args[3], zero, width), align=align)
        return context.get_dummy_value()

    return types.void(W, p, recip, original, lanes), codegen


def _fnmadd(builder, acc, x, y):
    """acc - x*y, one fused multiply-add where the CPU has FMA."""
    return builder.fsub(acc, builder.fmul(x, y, flags=("contract",)), flags=("contract",))


def _fmadd(builder, acc, x, y):
    """acc + x*y, one fused multiply-add where the CPU has FMA."""
    return builder.fadd(acc, builder.fmul(x, y, flags=("contract",)), flags=("contract",))


def _strided_pointer(context, builder, array_type, array, start, stride, k, width):
    """The vector pointer at element ``start + k*stride`` of a 1-D array."""
    at = builder.add(start, builder.mul(k, stride))
    return _vector_pointer(context, builder, array_type, array, at, width)


def _index_values(context, builder, signature, args, positions):
    """The integer arguments at ``positions``, as ``intp`` values."""
    intp = context.get_value_type(types.intp)
    return [context.cast(builder, args[k], signature.args[k], types.intp) for k in positions], intp


def _lane_run(combine):
    """An intrinsic ``f(dst, di, ds, src, si, ss, mult, mi, count, lanes)``
    that sets ``dst[di + k*ds : +L] = combine(dst[...], src[si + k*ss : +L],
    mult[mi : mi+L])`` for ``0 <= k < count``, the multiplier held in a
    register.  When ``mult`` is a scalar rather than an array, every lane
    gets that scalar (``mi`` is then ignored).

    An :func:`lane_fnmadd` per element would reload the multiplier each time,
    because the compiler must assume that ``dst`` and ``mult`` overlap (they
    are the same array in the factorisation).  Loads and stores as
    :func:`lane_fnmadd`.
    """

    def typer(typingctx, dst, di, ds, src, si, ss, mult, mi, count, lanes):
        width = lanes.count

        def codegen(context, builder, signature, args):
            (di_, ds_, si_, ss_, mi_, count_), intp = _index_values(
                context, builder, signature, args, (1, 2, 4, 5, 7, 8)
            )
            dty, sty, mty = signature.args[0], signature.args[3], signature.args[6]
            align = dty.dtype.bitwidth // 8
            if isinstance(mty, types.Float):  # one scalar for every lane
                m = _splat(builder, context.cast(builder, args[6], mty, dty.dtype), width)
            else:
                m = builder.load(
                    _vector_pointer(context, builder, mty, args[6], mi_, width), align=align
                )
            with cgutils.for_range(builder, count_, intp=intp) as loop:
                k = loop.index
                dp = _strided_pointer(context, builder, dty, args[0], di_, ds_, k, width)
                sp = _strided_pointer(context, builder, sty, args[3], si_, ss_, k, width)
                x = builder.load(sp, align=align)
                d = builder.load(dp, align=align)
                builder.store(combine(builder, d, x, m), dp, align=align)
            return context.get_dummy_value()

        return types.void(dst, di, ds, src, si, ss, mult, mi, count, lanes), codegen

    return intrinsic(typer)


def _row_pointer(context, builder, array_type, array, offsets_type, offsets, start, stride, k,
                 width):  # fmt: skip
    """Pointer to row ``k`` of a tile: ``offsets[k] + start`` when ``offsets``
    is an array, else ``start + k * stride``."""
    intp = ir.IntType(64)
    if isinstance(offsets_type, types.NoneType):
        return _strided_pointer(context, builder, array_type, array, start, stride,
                                ir.Constant(intp, k), width)  # fmt: skip
    table = context.make_array(offsets_type)(context, builder, offsets).data
    at = builder.load(builder.gep(table, [ir.Constant(intp, k)], inbounds=True))
    at = context.cast(builder, at, offsets_type.dtype, types.intp)
    return _vector_pointer(context, builder, array_type, array, builder.add(at, start), width)


@intrinsic
def lane_transpose(typingctx, dst, doffs, di, ds, src, soffs, si, ss, lanes):
    """Transpose an ``L x L`` tile in registers: with ``x_i`` the ``L``
    consecutive elements of ``src`` from ``si + i*ss`` (or, when ``soffs`` is
    an integer array rather than ``None``, from ``soffs[i] + si``), store
    ``(x_0[k], x_1[k], ..., x_{L-1}[k])`` at ``dst`` from ``di + k*ds`` (or
    ``doffs[k] + di``).  ``L`` is a power of two.

    Returns the sum of ``x - x`` over the tile: 0 if every element read is
    finite, NaN otherwise.  ``log2 L`` rounds of ``L`` shuffles, each swapping
    the off-diagonal blocks of one size (``L/2``, then ``L/4``, ... 1).  The
    gathers from the caller's band into the kernels' working layouts are
    transposes; element by element they cost several times a read of the band.
    """
    width = lanes.count

    def codegen(context, builder, signature, args):
        (di_, ds_, si_, ss_), intp = _index_values(context, builder, signature, args, (2, 3, 6, 7))
        dty, doty, sty, soty = (signature.args[k] for k in (0, 1, 4, 5))
        align = dty.dtype.bitwidth // 8
        rows = [
            builder.load(_row_pointer(context, builder, sty, args[4], soty, args[5], si_, ss_, i,
                                      width), align=align)
            for i in range(width)
        ]  # fmt: skip
        check = builder.fsub(rows[0], rows[0])
        for row in rows[1:]:
            check = builder.fadd(check, builder.fsub(row, row))
        i32 = ir.IntType(32)

        def mask(indices):
            return ir.Constant(ir.VectorType(i32, width), [ir.Constant(i32, k) for k in indices])

        block = width // 2
        while block >= 1:
            low = mask(k if k & block == 0 else width + k - block for k in range(width))
            high = mask(k + block if k & block == 0 else width + k for k in range(width))
            for r in range(width):
                if r & block == 0:
                    a, b = rows[r], rows[r + block]
                    rows[r] = builder.shuffle_vector(a, b, low)
                    rows[r + block] = builder.shuffle_vector(a, b, high)
            block //= 2
        for k in range(width):
            pointer = _row_pointer(
                context, builder, dty, args[0], doty, args[1], di_, ds_, k, width
            )
            builder.store(rows[k], pointer, align=align)
        total = builder.extract_element(check, ir.Constant(i32, 0))
        for k in range(1, width):
            total = builder.fadd(total, builder.extract_element(check, ir.Constant(i32, k)))
        return total

    return src.dtype(dst, doffs, di, ds, src, soffs, si, ss, lanes), codegen


#: dst[di + k*ds] = src[si + k*ss] * mult[mi], k < count.
lane_mul_run = _lane_run(lambda builder, d, x, m: builder.fmul(x, m))
#: dst[di + k*ds] = src[si + k*ss], k < count (``mult`` unused).
lane_copy_run = _lane_run(lambda builder, d, x, m: x)
#: dst[di + k*ds] -= src[si + k*ss] * mult[mi], k < count (one pivot column's updates).
lane_fnmadd_run = _lane_run(lambda builder, d, x, m: _fnmadd(builder, d, x, m))
#: dst[di + k*ds] += src[si + k*ss] * mult[mi], k < count.
lane_fmadd_run = _lane_run(lambda builder, d, x, m: _fmadd(builder, d, x, m))


def _lane_dot(subtract: bool, splat: bool = False):
    """An intrinsic ``f(dst, di, a, ai, as_, b, bi, bs, count, lanes)`` that
    sets ``dst[di : di+L]`` to ``sum_k a[ai + k*as_ : +L] * b[bi + k*bs : +L]``
    over ``0 <= k < count`` in that order (``subtract``: ``dst`` minus that
    sum; ``splat``: the scalar ``b[bi + k*bs]`` in every lane), accumulated
    in a register and stored once.  A chain of :func:`lane_fnmadd` on one
    ``dst`` would go through memory at every step.  Loads and stores as
    :func:`lane_fnmadd`.
    """

    def typer(typingctx, dst, di, a, ai, as_, b, bi, bs, count, lanes):
        width = lanes.count

        def codegen(context, builder, signature, args):
            (di_, ai_, as__, bi_, bs_, count_), intp = _index_values(
                context, builder, signature, args, (1, 3, 4, 6, 7, 8)
            )
            dty, aty, bty = signature.args[0], signature.args[2], signature.args[5]
            align = dty.dtype.bitwidth // 8
            dp = _vector_pointer(context, builder, dty, args[0], di_, width)
            vector = ir.VectorType(context.get_data_type(dty.dtype), width)
            start = builder.load(dp, align=align) if subtract else ir.Constant(vector, None)
            acc = cgutils.alloca_once_value(builder, start)
            with cgutils.for_range(builder, count_, intp=intp) as loop:
                k = loop.index
                ap = _strided_pointer(context, builder, aty, args[2], ai_, as__, k, width)
                x = builder.load(ap, align=align)
                if splat:
                    bp = _strided_pointer(context, builder, bty, args[5], bi_, bs_, k, 1)
                    y = _splat(builder, builder.extract_element(
                        builder.load(bp, align=align), ir.IntType(32)(0)), width)  # fmt: skip
                else:
                    bp = _strided_pointer(context, builder, bty, args[5], bi_, bs_, k, width)
                    y = builder.load(bp, align=align)
                update = _fnmadd if subtract else _fmadd
                builder.store(update(builder, builder.load(acc), x, y), acc)
            builder.store(builder.load(acc), dp, align=align)
            return context.get_dummy_value()

        return types.void(dst, di, a, ai, as_, b, bi, bs, count, lanes), codegen

    return intrinsic(typer)


#: dst[di] = sum_k a[ai + k*as_] * b[bi + k*bs], k < count.
lane_dot = _lane_dot(subtract=False)
#: dst[di] -= sum_k a[ai + k*as_] * b[bi + k*bs], k < count (a back-substitution row).
lane_dot_sub = _lane_dot(subtract=True)
#: dst[di : di+L] -= sum_k a[ai + k*as_ : +L] * b[bi + k*bs], k < count (a
#: left-looking update: rows of finished columns times their scalars).
lane_dot_sub_splat = _lane_dot(subtract=True, splat=True)


def _splat(builder, value, width):
    """A ``width``-vector with ``value`` in every lane."""
    vector = ir.VectorType(value.type, width)
    one = builder.insert_element(ir.Constant(vector, None), value, ir.IntType(32)(0))
    return builder.shuffle_vector(one, one, ir.Constant(ir.VectorType(ir.IntType(32), width), None))


@intrinsic
def stream_columns(typingctx, dst, di, src, si, count, lanes):
    """``dst[di : di + count*L] = src[si : si + count*L]`` in ``L``-wide
    vectors whose stores are non-temporal (``!nontemporal``: on x86 streaming
    stores, which write whole cache lines without first reading them and do
    not keep them in the caches), then a fence, so that the data is visible
    to other threads in order.  ``dst`` must be aligned to ``L`` elements at
    ``di``; ``count`` counts vectors."""
    width = lanes.count

    def codegen(context, builder, signature, args):
        (di_, si_, count_), intp = _index_values(context, builder, signature, args, (1, 3, 4))
        dty, sty = signature.args[0], signature.args[2]
        itemsize = dty.dtype.bitwidth // 8
        nontemporal = builder.module.add_metadata([ir.IntType(32)(1)])
        with cgutils.for_range(builder, count_, intp=intp) as loop:
            k = builder.mul(loop.index, ir.Constant(intp, width))
            source = _vector_pointer(context, builder, sty, args[2], builder.add(si_, k), width)
            target = _vector_pointer(context, builder, dty, args[0], builder.add(di_, k), width)
            value = builder.load(source, align=itemsize)
            store = builder.store(value, target, align=width * itemsize)
            store.set_metadata("nontemporal", nontemporal)
        builder.fence("seq_cst")
        return context.get_dummy_value()

    return types.void(dst, di, src, si, count, lanes), codegen


def bandwidth_switch(builder, bw, intp, widths, case, default):
    """Emit ``switch bw`` with one block per bandwidth in ``widths``, each
    filled by ``case(m, other)``, which returns the result's value (after
    branching to the block ``other`` itself where it gives up), the cases
    joined in a phi whose value from ``other`` (no case for ``bw``) is
    ``default``.  The scaffolding of the intrinsics unrolled per bandwidth."""
    function = builder.function
    done = function.append_basic_block("bandwidth.done")
    other = function.append_basic_block("bandwidth.other")
    switch = builder.switch(bw, other)
    incoming = []
    for m in widths:
        block = function.append_basic_block(f"bandwidth.{m}")
        switch.add_case(ir.Constant(intp, m), block)
        builder.position_at_end(block)
        value = case(m, other)
        incoming.append((value, builder.block))
        builder.branch(done)
    builder.position_at_end(other)
    builder.branch(done)
    incoming.append((default, other))
    builder.position_at_end(done)
    result = builder.phi(default.type)
    for value, block in incoming:
        result.add_incoming(value, block)
    return result


#: Widest band whose trailing update :func:`lane_trailing_update` unrolls.
UNROLLED_BANDWIDTH = 24


def _unrolled_update(rank: int):
    """An intrinsic ``f(W, p, bw, lanes) -> bool``: the trailing update by
    ``rank`` consecutive finished columns ``j .. j + rank - 1`` of the band
    factor (column ``j`` at ``p = j*R``, ``R = (bw + 1)*L``, every column
    with ``bw`` rows below it) of the columns from ``j + rank + 1`` on:

        W[p + k*R + r*L] -= W[p + i*R + (k - i + r)*L] * W[p + i*R + (k - i)*L]

    for ``rank < k < bw + rank``, then for ``i = 0 .. rank - 1`` in turn where
    ``k - i + r <= bw`` -- the rank-1 updates of the columns in their order,
    so each element receives the same operations in the same order as
    column-by-column loops apply them.  (Column ``j + rank``, the next
    pivot's, is left to the caller: it is updated first, for the look-ahead
    of :func:`factor`.)

    Unrolled, one case per bandwidth from 2 to :data:`UNROLLED_BANDWIDTH`:
    the columns are held in registers and every offset is a constant, so an
    element costs one load, ``rank`` fused multiply-adds and one store, and
    no loop branches (the loops of :func:`lane_fnmadd_run` reload the column
    for every element and store each update).  Returns False, having done
    nothing, for other bandwidths.
    """

    def typer(typingctx, W, p, bw, lanes):
        width = lanes.count

        def codegen(context, builder, signature, args):
            (p_, bw_), intp = _index_values(context, builder, signature, args, (1, 2))
            wty = signature.args[0]
            align = wty.dtype.bitwidth // 8

            def element(offset):
                at = builder.add(p_, ir.Constant(intp, offset))
                return _vector_pointer(context, builder, wty, args[0], at, width)

            def case(m, other):
                row = (m + 1) * width
                columns = [
                    [None] + [builder.load(element(i * row + t * width), align=align)
                              for t in range(1, m + 1)]
                    for i in range(rank)
                ]  # fmt: skip
                for k in range(rank + 1, m + rank):
                    for r in range(m - k + rank):
                        pointer = element(k * row + r * width)
                        value = builder.load(pointer, align=align)
                        for i, column in enumerate(columns):
                            if k - i + r <= m:
                                value = _fnmadd(builder, value, column[k - i + r], column[k - i])
                        builder.store(value, pointer, align=align)
                return ir.Constant(ir.IntType(1), 1)

            widths = range(2, UNROLLED_BANDWIDTH + 1)
            return bandwidth_switch(builder, bw_, intp, widths, case, ir.Constant(ir.IntType(1), 0))

        return types.boolean(W, p, bw, lanes), codegen

    return intrinsic(typer)


#: One finished column's update of the columns from ``j + 2`` on.
lane_trailing_update = _unrolled_update(rank=1)
#: Two finished columns' update of the columns from ``j + 3`` on.
lane_pair_update = _unrolled_update(rank=2)


@njit(cache=True, nogil=True)
def _pivot_column(W, j, n, bw, info, recip, lanes):
    """Column ``j`` of ``L`` from its updated ``A~``: the pivot (``recip[:L]``
    receives ``1 / L[j, j]``), the failure test into ``info``, and the
    column scaled, ``L[j + t, j] = A~[j + t, j] * (1 / L[j, j])`` as in LAPACK."""
    L = len(lanes)
    p = j * (bw + 1) * L
    # Pivot: A[j, j] - sum_k L[j, k]^2 has been accumulated into W[j, 0].
    lane_pivot(W, p, recip, recip[L:], lanes)
    for l in range(L):
        d = recip[L + l]
        # Not (0 < d < inf) also catches NaN, and inf (which LAPACK would accept).
        if not (d > 0.0 and d < math.inf) and info[l] == 0:
            info[l] = j + 1
    for t in range(1, min(bw, n - 1 - j) + 1):
        lane_mul(W, p + t * L, W, p + t * L, recip, 0, lanes)


@njit(cache=True, nogil=True)
def factor(W, Y, n, bw, nrhs, info, recip, lanes, j0, j1):
    """Columns ``[j0, j1)`` of the right-looking band Cholesky of every lane.

    Works in place in ``W``; columns before ``j0`` must be done, and rows up to
    ``min(j1 + bw, n)`` must hold ``A`` (minus earlier updates).

    When ``nrhs > 0`` the forward substitution ``L y = b`` is fused into the
    same sweep (column ``j`` of ``L`` is final as soon as it is scaled), which
    saves one pass over the factor.  ``info[l]`` receives the 1-based order of
    the first leading minor of lane ``l`` that is not positive definite
    (LAPACK's ``info``; an infinite pivot also fails, which LAPACK would let
    through to a silently wrong factor).  A failed pivot is replaced by 1 so that the lane stays
    finite and the other lanes proceed; the failed lane's results are
    meaningless.  ``recip`` is scratch for ``2 L`` values.

    Look-ahead: column ``j`` first updates column ``j + 1`` alone, column
    ``j + 1``'s pivot (square root, division, scaling: the chain from one
    column to the next) is issued next, and only then the rest of column
    ``j``'s update, which does not depend on it and so runs while that chain
    waits.  Every element receives the same operations in the same order as
    without it (bit-identical results); without it the next pivot came after
    the whole update and each column cost the chain's full latency.
    """
    L = len(lanes)
    R = (bw + 1) * L  # row length of W
    if j0 < j1:
        _pivot_column(W, j0, n, bw, info, recip, lanes)
    unrolled = 2 <= bw <= UNROLLED_BANDWIDTH
    j = j0
    while j < j1:
        m = min(bw, n - 1 - j)
        p = j * R
        # Rank-1 update of the trailing (m x m) triangle:
        # A~[j + s + r, j + s] -= L[j + s + r, j] * L[j + s, j],  s >= 1, r >= 0,
        # column s = 1 (the next pivot's) first.
        if m > 0:
            lane_fnmadd_run(W, p + R, L, W, p + L, L, W, p + L, m, lanes)
        if nrhs > 0:  # (before the next pivot overwrites recip)
            _forward_column(W, Y, j, m, bw, nrhs, recip, lanes)
        if j + 1 < j1:
            _pivot_column(W, j + 1, n, bw, info, recip, lanes)
        if unrolled and j + 1 < j1 and j + 1 + bw < n:
            # Columns j and j + 1 together: column j + 2 (the next pivot's)
            # from both, the pivot, then one pass over the rest, each element
            # updated by both columns in registers.
            lane_fnmadd_run(W, p + 2 * R, L, W, p + 2 * L, L, W, p + 2 * L, m - 1, lanes)
            lane_fnmadd_run(W, p + 2 * R, L, W, p + R + L, L, W, p + R + L, m, lanes)
            if nrhs > 0:
                _forward_column(W, Y, j + 1, m, bw, nrhs, recip, lanes)
            if j + 2 < j1:
                _pivot_column(W, j + 2, n, bw, info, recip, lanes)
            lane_pair_update(W, p, bw, lanes)
            j += 2
            continue
        if m < bw or not lane_trailing_update(W, p, bw, lanes):
            for s in range(2, m + 1):
                lane_fnmadd_run(W, (j + s) * R, L, W, p + s * L, L, W, p + s * L, m - s + 1,
                                lanes)  # fmt: skip
        j += 1


@njit(cache=True, nogil=True)
def _forward_column(W, Y, j, m, bw, nrhs, recip, lanes, wbase=0):
    """Column ``j`` of ``L y = b``: y[j] *= 1 / L[j, j]; y[j + t] -= L[j + t, j] y[j].

    ``recip`` holds 1 / L[j, j] for every lane.  Row ``j`` of the factor is
    row ``j - wbase`` of ``W`` (``W`` may hold a block of rows only).
    """
    L = len(lanes)
    p = (j - wbase) * (bw + 1) * L
    for k in range(nrhs):
        y = (j * nrhs + k) * L
        lane_mul(Y, y, Y, y, recip, 0, lanes)
        lane_fnmadd_run(Y, y + nrhs * L, nrhs * L, W, p + L, L, Y, y, m, lanes)


@njit(cache=True, nogil=True)
def forward(W, Y, n, bw, nrhs, recip, lanes, j0, j1, wbase=0):
    """Columns ``[j0, j1)`` of ``Y <- L^{-1} Y`` for an already factored ``W``
    (row ``j`` of the factor in row ``j - wbase`` of ``W``)."""
    L = len(lanes)
    ones = np.ones(L, dtype=recip.dtype)  # (scalar stores read back as a vector would stall)
    for j in range(j0, j1):
        lane_div(recip, 0, ones, 0, W, (j - wbase) * (bw + 1) * L, lanes)
        _forward_column(W, Y, j, min(bw, n - 1 - j), bw, nrhs, recip, lanes, wbase)


@njit(cache=True, nogil=True)
def backward(W, Y, n, bw, nrhs, lanes, j0=0, j1=-1, wbase=0):
    """``Y <- L^{-T} Y`` for a factored ``W``: rows ``[j0, j1)`` (all by
    default), which requires rows from ``j1`` on to be done; row ``j`` of the
    factor is row ``j - wbase`` of ``W``.

    x[j] = (y[j] - sum_t L[j + t, j] x[j + t]) / L[j, j], from the last row up,
    the sum from t = m down to 1: the order in which the one-system kernel
    (:func:`._column_kernels.backward_compact`, by columns) applies the
    same terms, so that both round alike.
    """
    L = len(lanes)
    for j in range(n - 1 if j1 < 0 else j1 - 1, j0 - 1, -1):
        m = min(bw, n - 1 - j)
        p = (j - wbase) * (bw + 1) * L
        for k in range(nrhs):
            y = (j * nrhs + k) * L
            lane_dot_sub(Y, y, W, p + m * L, -L, Y, y + m * nrhs * L, -nrhs * L, m, lanes)
            lane_div(Y, y, Y, y, W, p, lanes)
