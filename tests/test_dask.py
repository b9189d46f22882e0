"""Dask arrays: the band routines and the MNN layer on a real ``distributed``
cluster (2 worker processes), against the in-memory NumPy path bit for bit."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import banded_mnn as bm
import banded_mnn._api as api
from banded_mnn import NotPositiveDefiniteError
from banded_mnn.mnn import ode_forward
from banded_mnn.problems import random_spd_band

da = pytest.importorskip("dask.array", reason="the dask extra: see the README")
dask = pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")
cloudpickle = pytest.importorskip("cloudpickle")

from banded_mnn import _dask  # noqa: E402  (after the skips)

# The workers cannot import this file: its helpers travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class PoisonOutputs(distributed.WorkerPlugin):
    """In every worker (restarted ones too), fresh outputs start as NaN, as in
    the main process (tests/conftest.py), so that an unwritten element shows."""

    def setup(self, worker):
        import banded_mnn._api
        import banded_mnn.mnn._layer

        def empty(shape, dtype=float, xp=np):
            return xp.full(shape, np.nan, dtype=dtype)

        banded_mnn._api._empty = empty
        banded_mnn.mnn._layer._empty = empty


@pytest.fixture(scope="module")
def client():
    """A LocalCluster of 2 worker processes (one thread each), closed afterwards."""
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )
    with cluster, distributed.Client(cluster) as client:
        client.register_plugin(PoisonOutputs())
        yield client


def chunked(x, batch_chunks, core=2):
    """A Dask array over ``x`` (one batch axis) with ``batch_chunks`` along it."""
    return da.from_array(x, chunks=(batch_chunks,) + (-1,) * core)


CHUNKINGS = [1, 7, (5, 13, 1, 21), 40]  # chunks of 1, of 7, uneven, one chunk


def problem(rng, batch, m, u, k, lower, dtype):
    ab = random_spd_band(batch, m, u, lower=lower, dtype=dtype, rng=rng)
    b = rng.standard_normal(batch + (m, k)).astype(dtype)
    return ab, b


def assert_identical(lazy, reference):
    assert lazy.shape == reference.shape and lazy.dtype == reference.dtype
    got = lazy.compute() if hasattr(lazy, "compute") else lazy
    np.testing.assert_array_equal(got, reference, strict=True)


# --------------------------------------------------------------------------
# Band routines on the cluster
# --------------------------------------------------------------------------


@pytest.mark.parametrize("chunks", CHUNKINGS, ids=["ones", "sevens", "uneven", "one"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("lower", [False, True], ids=["upper", "lower"])
def test_band_routines_bit_for_bit(client, rng, chunks, dtype, lower):
    ab, b = problem(rng, (40,), 37, 4, 2, lower, dtype)
    dab, db = chunked(ab, chunks), chunked(b, chunks)
    c_ref = bm.cholesky_banded(ab, lower=lower)
    c = bm.cholesky_banded(dab, lower=lower)
    assert isinstance(c, da.Array) and c.chunks[0] == dab.chunks[0]
    assert_identical(c, c_ref)
    assert_identical(bm.solveh_banded(dab, db, lower=lower), bm.solveh_banded(ab, b, lower=lower))
    assert_identical(bm.cho_solve_banded((c, lower), db), bm.cho_solve_banded((c_ref, lower), b))
    x, info = bm.solveh_banded_ex(dab, b, lower=lower)  # mixed Dask and NumPy
    assert x.chunks[0] == dab.chunks[0] and info.chunks == dab.chunks[:1]
    x, info = dask.compute(x, info)
    np.testing.assert_array_equal(x, bm.solveh_banded(ab, b, lower=lower), strict=True)
    np.testing.assert_array_equal(info, np.zeros(40, np.int32), strict=True)
    c2, info2 = bm.cholesky_banded_ex(dab, lower=lower)
    assert_identical(c2, c_ref)
    assert_identical(info2, np.zeros(40, np.int32))


def test_broadcast_batch_axes(client, rng):
    """A shared left-hand side (batch 1) and a 2-D batch chunked on both axes."""
    ab = random_spd_band((1, 6), 30, 3, rng=rng)
    b = rng.standard_normal((9, 1, 30, 2))
    dab = da.from_array(ab, chunks=(1, 4, -1, -1))
    db = da.from_array(b, chunks=(2, 1, -1, -1))
    x = bm.solveh_banded(dab, db)
    assert x.shape == (9, 6, 30, 2) and x.chunks[:2] == ((2, 2, 2, 2, 1), (4, 2))
    assert_identical(x, bm.solveh_banded(ab, b))
    # Batch axes of different rank, and a single vector for the whole batch.
    assert_identical(bm.solveh_banded(ab[0], db), bm.solveh_banded(ab[0], b))
    assert_identical(bm.solveh_banded(dab, b[0, 0, :, 0]), bm.solveh_banded(ab, b[0, 0, :, 0]))
    # A 2-D (unbatched) Dask matrix.
    assert_identical(bm.solveh_banded(da.from_array(ab[0, 0]), b), bm.solveh_banded(ab[0, 0], b))


def test_shared_left_hand_side_is_one_task(rng):
    """A NumPy left-hand side of batch 1 enters the graph once, not per chunk."""
    ab = random_spd_band((1,), 50, 3, rng=rng)
    db = da.from_array(rng.standard_normal((60, 50, 1)), chunks=(6, -1, -1))
    x = bm.solveh_banded(ab, db)
    graph = dict(x.__dask_graph__())
    bands = [v for v in graph.values() if isinstance(v, np.ndarray) and v.shape[-2:] == (4, 50)]
    assert len(bands) == 1 and bands[0].shape == ab.shape
    assert_identical(x, bm.solveh_banded(ab, db.compute()))


def test_core_axes_are_rechunked_and_batch_chunks_followed(rng):
    ab = random_spd_band((12,), 40, 3, rng=rng)
    b = rng.standard_normal((12, 40, 3))
    dab = da.from_array(ab, chunks=(5, 2, 9))  # core axes split by the caller
    db = da.from_array(b, chunks=(4, 7, 1))  # other batch chunks: ab's win
    x = bm.solveh_banded(dab, db)
    assert x.chunks == ((5, 5, 2), (40,), (3,))
    assert_identical(x, bm.solveh_banded(ab, b))


@pytest.mark.parametrize("n_chunks", [1, 10, 40])
def test_graph_has_order_chunks_tasks(rng, n_chunks):
    ab = random_spd_band((n_chunks * 2,), 20, 2, rng=rng)
    b = rng.standard_normal((n_chunks * 2, 20, 1))
    dab, db = chunked(ab, 2), chunked(b, 2)
    inputs = len(dab.__dask_graph__()) + len(db.__dask_graph__())
    for lazy in (
        bm.solveh_banded(dab, db),
        bm.solveh_banded_ex(dab, db)[1],
        bm.cholesky_banded(dab),
    ):
        added = len(dict(lazy.__dask_graph__())) - inputs
        assert added <= 4 * n_chunks, (n_chunks, added)


def test_nothing_is_computed_at_call_time():
    calls = []

    def source(block):
        calls.append(block.shape)
        return block

    ab = da.from_array(random_spd_band((8,), 10, 2), chunks=(2, -1, -1)).map_blocks(source)
    b = da.ones((8, 10, 1), chunks=(2, -1, -1)).map_blocks(source)
    c = da.ones((8, 5, 1, 1, 2), chunks=(2, -1, -1, -1, -1)).map_blocks(source)
    calls.clear()  # (map_blocks calls it on stand-ins to infer metadata)
    lazy = [
        bm.cholesky_banded(ab),
        bm.cholesky_banded_ex(ab),
        bm.solveh_banded(ab, b),
        bm.solveh_banded_ex(ab, b),
        bm.cho_solve_banded((ab, False), b),
        ode_forward(c, None, np.zeros((1, 1, 1)), np.full(4, 0.1)),
    ]
    assert calls == [] and len(lazy) == 6


def test_not_positive_definite_global_index(client, rng):
    ab, b = problem(rng, (30,), 25, 3, 1, False, np.float64)
    ab[17, -1, 6] = -50.0  # system 17: minor of order 7 fails
    dab, db = chunked(ab, 7), chunked(b, 7)
    for lazy, function in (
        (bm.solveh_banded(dab, db), "solveh_banded"),
        (bm.cholesky_banded(dab), "cholesky_banded"),
    ):
        with pytest.raises(NotPositiveDefiniteError) as caught:
            lazy.compute()
        error = caught.value
        assert error.batch_index == (17,) and error.order == 7 and error.offset == (14,)
        assert str(error).startswith(f"{function}: 7-th leading minor") and "(17,)" in str(error)
        np.testing.assert_array_equal(error.info, np.eye(1, 7, 3, dtype=np.int32)[0] * 7)
    x, info = bm.solveh_banded_ex(dab, db)
    x_ref, info_ref = bm.solveh_banded_ex(ab, b)
    assert_identical(info, info_ref)
    np.testing.assert_array_equal(x.compute(), x_ref)


def test_two_dimensional_global_index(rng):
    ab = random_spd_band((4, 6), 12, 2, rng=rng)
    ab[2, 5, -1, 0] = -1.0
    with pytest.raises(NotPositiveDefiniteError) as caught:
        bm.cholesky_banded(da.from_array(ab, chunks=(3, 4, -1, -1))).compute(scheduler="sync")
    assert caught.value.batch_index == (2, 5) and caught.value.offset == (0, 4)


def test_nonfinite_input_raises_at_compute_time(client, rng):
    ab, b = problem(rng, (10,), 15, 2, 1, False, np.float64)
    b[6, 3, 0] = np.nan
    lazy = bm.solveh_banded(chunked(ab, 3), chunked(b, 3))
    with pytest.raises(ValueError, match="b must not contain infs or NaNs"):
        lazy.compute()
    x = bm.solveh_banded(chunked(ab, 3), chunked(b, 3), check_finite=False).compute()
    assert np.isnan(x[6]).all() and np.isfinite(np.delete(x, 6, axis=0)).all()


@pytest.mark.parametrize(
    ("ab_shape", "b_shape"),
    [
        ((0, 3, 10), (0, 10, 2)),
        ((5, 3, 0), (5, 0, 2)),
        ((5, 3, 10), (5, 10, 0)),
        ((0, 3, 10), (10,)),
    ],  # fmt: skip
)
def test_empty_inputs(client, ab_shape, b_shape):
    ab = np.zeros(ab_shape)
    ab[..., -1, :] = 4.0
    b = np.ones(b_shape)
    dab = da.from_array(ab, chunks=(2, -1, -1))
    db = da.from_array(b, chunks=(2,) * (b.ndim - 2) + (-1,) * min(b.ndim, 2))
    assert_identical(bm.solveh_banded(dab, db), bm.solveh_banded(ab, b))
    assert_identical(bm.solveh_banded_ex(dab, db)[1], bm.solveh_banded_ex(ab, b)[1])
    assert_identical(bm.cholesky_banded(dab), bm.cholesky_banded(ab))


def test_metadata_errors_at_call_time(rng):
    ab = da.from_array(random_spd_band((6,), 10, 2, rng=rng), chunks=(2, -1, -1))
    with pytest.raises(ValueError, match=r"b must have shape \(M,\) or \(\.\.\., M, K\)"):
        bm.solveh_banded(ab, da.ones((6, 9, 1)))
    with pytest.raises(ValueError, match="batch shapes of ab"):
        bm.solveh_banded(ab, da.ones((5, 10, 1)))
    with pytest.raises(TypeError, match="b must be real"):
        bm.solveh_banded(ab, da.ones((6, 10, 1), dtype=complex))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        bm.cholesky_banded(da.ones(5))
    with pytest.raises(ValueError, match="backend must be one of"):
        bm.cholesky_banded(ab, backend="fortran")
    with pytest.raises(ValueError, match="cb_and_lower must be a pair"):
        bm.cho_solve_banded(ab, da.ones(10))
    unknown = ab[ab[:, 0, 0] < np.inf]  # boolean indexing: unknown chunk sizes
    with pytest.raises(ValueError, match="unknown chunk sizes"):
        bm.cholesky_banded(unknown)
    # A GPU backend for NumPy chunks: the in-memory call's own error, at call time.
    with pytest.raises(Exception) as in_memory:
        bm.cholesky_banded(np.ones((2, 3)), backend="cupy")
    with pytest.raises(type(in_memory.value), match=str(in_memory.value)[:40]):
        bm.cholesky_banded(ab, backend="cupy")


def test_mixed_in_memory_operand_follows_dask_chunks(rng):
    ab = random_spd_band((20,), 16, 2, rng=rng)
    b = rng.standard_normal((20, 16, 1))
    x = bm.solveh_banded(ab, chunked(b, 6))
    assert x.chunks[0] == (6, 6, 6, 2)
    assert_identical(x, bm.solveh_banded(ab, b))


def test_local_schedulers(rng):
    ab, b = problem(rng, (24,), 20, 2, 1, True, np.float32)
    x = bm.solveh_banded(chunked(ab, 5), chunked(b, 5), lower=True)
    ref = bm.solveh_banded(ab, b, lower=True)
    for scheduler in ("threads", "sync"):
        np.testing.assert_array_equal(x.compute(scheduler=scheduler), ref, strict=True)


def test_import_does_not_import_dask():
    code = "import sys, banded_mnn, banded_mnn.mnn; print('dask' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------
# Threads per task
# --------------------------------------------------------------------------


def test_threads_rule(client, monkeypatch):
    # The Nanny sets OMP_NUM_THREADS=1 in its workers: one kernel thread per task.
    assert set(da.ones(4, chunks=1).map_blocks(_rule_in_task, dtype=int).compute().tolist()) == {1}
    seen = da.ones(4, chunks=1).map_blocks(_numba_threads_in_task, dtype=int).compute()
    assert set(seen.tolist()) == {1}
    # The synchronous scheduler leaves Numba's setting alone; an explicit setting wins.
    assert _dask.threads_per_task() is None
    monkeypatch.setenv(_dask.THREADS_ENV, "3")
    assert _dask.threads_per_task() == 3


def test_threads_rule_local_threaded_scheduler():
    from dask.system import CPU_COUNT

    seen = da.ones(8, chunks=1).map_blocks(_rule_in_task, dtype=int)
    with dask.config.set(num_workers=2):
        assert set(seen.compute(scheduler="threads").tolist()) == {max(1, CPU_COUNT // 2)}
    assert set(seen.compute(scheduler="threads").tolist()) == {1}


def _numba_threads_in_task(block):
    import numba

    with _dask.kernel_threads():
        return np.full(block.shape, numba.get_num_threads())


def _rule_in_task(block):
    return np.full(block.shape, _dask.threads_per_task())


def test_kernel_threads_restores_setting(monkeypatch):
    import numba

    before = numba.get_num_threads()
    monkeypatch.setenv(_dask.THREADS_ENV, "1")
    with _dask.kernel_threads():
        assert numba.get_num_threads() == 1
    assert numba.get_num_threads() == before


# --------------------------------------------------------------------------
# The MNN layer
# --------------------------------------------------------------------------


def mnn_problem(rng, B, T=12, E=2, D=2, O=3, S=1, I=2, dtype=np.float64):
    return (
        rng.standard_normal((B, T, E, D, O)).astype(dtype),
        rng.standard_normal((B, T, E)).astype(dtype),
        rng.standard_normal((B, S, D, I)).astype(dtype),
        rng.uniform(0.05, 0.2, (B, T - 1)).astype(dtype),
    )


@pytest.mark.parametrize("chunks", CHUNKINGS, ids=["ones", "sevens", "uneven", "one"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_ode_forward_bit_for_bit(client, rng, chunks, dtype):
    c, r, v, h = mnn_problem(rng, 40, dtype=dtype)
    cores = (4, 2, 3, 1)
    lazy = ode_forward(
        *(chunked(x, chunks, core) for x, core in zip((c, r, v, h), cores, strict=True))
    )
    assert isinstance(lazy, da.Array) and lazy.chunks[0] == chunked(c, chunks, 4).chunks[0]
    assert_identical(lazy, ode_forward(c, r, v, h))


def test_ode_forward_options_and_broadcasting(client, rng):
    c, r, v, h = mnn_problem(rng, 24, T=9)
    options = {"weight_equation": 0.7, "weight_smooth": 2.0, "enable_central_smoothness": True}
    # A shared left-hand side: coefficients and steps of batch 1, in memory.
    lazy = ode_forward(c[:1], chunked(r, 5), chunked(v, 5, 3), h[:1], **options)
    assert lazy.chunks[0] == (5, 5, 5, 5, 4)
    assert_identical(lazy, ode_forward(c[:1], r, v, h[:1], **options))
    # Step axis first, inputs with a broadcast step axis, the cyclic algorithm.
    step_first = [np.moveaxis(x, 1, 0) for x in (c, r[:, :1], v, h)]
    lazy = ode_forward(
        da.from_array(step_first[0], chunks=(-1, 7, -1, -1, -1)), *step_first[1:],
        is_step_dim_first=True, algorithm="cyclic",
    )  # fmt: skip
    assert lazy.shape == (9, 24, 2, 3)
    assert_identical(lazy, ode_forward(*step_first, is_step_dim_first=True, algorithm="cyclic"))
    # No initial values and no right-hand side (n_steps from steps).
    assert_identical(ode_forward(chunked(c, 4, 4), None, None, h), ode_forward(c, None, None, h))


def test_ode_forward_failure_names_global_index(client, rng):
    c, r, v, h = mnn_problem(rng, 20)
    c[13] = 0.0  # no equations: with free orders the system is singular
    lazy = ode_forward(chunked(c, 4, 4), chunked(r, 4), None, chunked(h, 4, 1))
    with pytest.raises(NotPositiveDefiniteError) as caught:
        lazy.compute()
    assert caught.value.batch_index == (13,) and caught.value.offset == (12,)
    assert any("singular to working precision" in n for n in caught.value.__notes__)
    with pytest.raises(NotPositiveDefiniteError) as local:
        ode_forward(c, r, None, h)
    assert local.value.order == caught.value.order


def test_ode_forward_shared_lhs_failure_index(rng):
    c, r, v, h = mnn_problem(rng, 6)
    c[0] = 0.0
    lazy = ode_forward(c[:1], chunked(r, 2), None, h[:1])
    with pytest.raises(NotPositiveDefiniteError) as caught:
        lazy.compute(scheduler="sync")
    assert caught.value.batch_index == (0,)


def test_ode_forward_dask_errors(rng):
    c, r, v, h = mnn_problem(rng, 4)
    dc = chunked(c, 2, 4)
    with pytest.raises(ValueError, match="rhs_equation must have shape"):
        ode_forward(dc, r[:, :5], v, h)
    with pytest.raises(ValueError, match="return_system"):
        ode_forward(dc, r, v, h, return_system=True)
    with pytest.raises(ValueError, match="frozen_lhs_cache_version"):
        ode_forward(dc, r, v, h, frozen_lhs_cache_version=3)
    with pytest.raises(TypeError, match="coefficients must be real"):
        ode_forward(dc.astype(complex), r, v, h)
    with pytest.raises(ValueError, match="backend must be one of"):
        ode_forward(dc, r, v, h, backend="cuda")
    with pytest.raises(ValueError, match="algorithm must be one of"):
        ode_forward(dc, r, v, h, algorithm="dense")


# --------------------------------------------------------------------------
# Fault tolerance (last: it restarts a worker of the module's cluster)
# --------------------------------------------------------------------------


def _slow_source(block):
    time.sleep(0.4)
    return block


def test_worker_killed_during_computation(client, rng):
    ab, b = problem(rng, (24,), 30, 3, 2, False, np.float64)
    source = chunked(ab, 2).map_blocks(_slow_source)  # 12 tasks of 0.4 s on 2 workers
    future = client.compute(bm.solveh_banded(source, chunked(b, 2)))
    pids = client.run(os.getpid)
    deadline = time.monotonic() + 30
    while not any(client.processing().values()):
        assert time.monotonic() < deadline, "nothing started"
        time.sleep(0.05)
    busy = next(w for w, tasks in client.processing().items() if tasks)
    time.sleep(0.1)
    os.kill(pids[busy], 9)  # the Nanny restarts it; the scheduler reruns its tasks
    result = future.result(timeout=120)
    np.testing.assert_array_equal(result, bm.solveh_banded(ab, b), strict=True)
    client.wait_for_workers(2, timeout=60)
    assert set(client.run(os.getpid).values()) != set(pids.values())  # one was replaced
    # The poisoned allocator is back on the restarted worker too.
    assert_identical(bm.cholesky_banded(chunked(ab, 5)), bm.cholesky_banded(ab))


def test_empty_allocator_poisoned_in_main_process():
    # (Sanity check of the fixture the comparisons above rely on.)
    assert np.isnan(api._empty((2,))).all()


def test_gpu_backend_passes_through(monkeypatch, rng):
    """``backend=`` reaches the tasks: the "cupy" backend with its CUDA source
    run on the host (tests/gpu_host.py; NumPy chunks stand in for CuPy ones,
    in this process, so with a local scheduler)."""
    from gpu_host import HostKernels

    from banded_mnn._backends import _cupy

    monkeypatch.setattr(_cupy, "_kernels", HostKernels())
    ab, b = problem(rng, (12,), 20, 3, 2, False, np.float64)
    lazy = bm.solveh_banded(chunked(ab, 5), chunked(b, 5), backend="cupy")
    expected = bm.solveh_banded(ab, b, backend="cupy")
    np.testing.assert_array_equal(lazy.compute(scheduler="sync"), expected, strict=True)
    np.testing.assert_allclose(expected, bm.solveh_banded(ab, b), rtol=1e-12, atol=1e-12)
    c, info = bm.cholesky_banded_ex(chunked(ab, 5), backend="cupy")
    assert_identical(c.compute(scheduler="sync"), bm.cholesky_banded(ab, backend="cupy"))
    assert_identical(info.compute(scheduler="sync"), np.zeros(12, np.int32))
