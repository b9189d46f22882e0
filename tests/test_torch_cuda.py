"""The torch adapter's band routines on CUDA tensors (needs a CUDA GPU).

Collected everywhere, run only where torch sees a CUDA device and CuPy is
usable (``tools/gpu_check.py`` runs this file); on machines without a GPU
every test here is reported as skipped, never as passed.  The CPU path of the
same functions is tested in test_torch.py.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from banded_mnn import _backends  # noqa: E402
from banded_mnn.problems import random_spd_band  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not (torch.cuda.is_available() and _backends.usable("cupy")[0]),
        reason="needs a CUDA GPU, torch with CUDA and CuPy",
    ),
]


@pytest.fixture
def bmt():
    import banded_mnn.torch as bmt

    return bmt


def _pair(rng, lower=False, batch=(4,), m=12, u=3, k=2):
    ab = random_spd_band(batch, m, u, lower=lower, rng=rng)
    b = rng.standard_normal(batch + (m, k))
    return ab, b


@pytest.mark.parametrize("lower", [False, True])
def test_values_match_the_cpu(bmt, rng, lower):
    ab, b = _pair(rng, lower)
    cpu = bmt.solveh_banded(torch.from_numpy(ab), torch.from_numpy(b), lower=lower)
    gpu = bmt.solveh_banded(torch.from_numpy(ab).cuda(), torch.from_numpy(b).cuda(), lower=lower)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-10, atol=1e-10)
    c = bmt.cholesky_banded(torch.from_numpy(ab).cuda(), lower=lower)
    x = bmt.cho_solve_banded((c, lower), torch.from_numpy(b).cuda())
    torch.testing.assert_close(x.cpu(), cpu, rtol=1e-10, atol=1e-10)


def test_gradcheck_on_the_gpu(bmt, rng):
    ab, b = _pair(rng, batch=(2,), m=6, u=2, k=1)
    ab_t = torch.from_numpy(ab).cuda().requires_grad_()
    b_t = torch.from_numpy(b).cuda().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, y: bmt.solveh_banded(a, y), (ab_t, b_t))
    assert torch.autograd.gradcheck(
        lambda a, y: bmt.cho_solve_banded((bmt.cholesky_banded(a), False), y), (ab_t, b_t)
    )


def test_current_stream_and_no_copies(bmt, rng):
    ab, b = _pair(rng)
    ab_t, b_t = torch.from_numpy(ab).cuda(), torch.from_numpy(b).cuda()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        x, info = bmt.solveh_banded_ex(ab_t, b_t)
    stream.synchronize()
    assert int(info.max()) == 0
    torch.testing.assert_close(x.cpu(), bmt.solveh_banded(ab_t.cpu(), b_t.cpu()))


def test_outputs_are_torch_allocations(bmt, rng):
    import cupy

    ab, b = _pair(rng, batch=(64,), m=300)
    ab_t, b_t = torch.from_numpy(ab).cuda(), torch.from_numpy(b).cuda()
    pool = cupy.get_default_memory_pool()
    torch.cuda.synchronize()
    before, pooled = torch.cuda.memory_allocated(), pool.total_bytes()
    x = bmt.solveh_banded(ab_t, b_t)
    torch.cuda.synchronize()
    assert pool.total_bytes() == pooled  # nothing from CuPy's own pool
    assert torch.cuda.memory_allocated() >= before + x.numel() * x.element_size()
    del x
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == before  # every block given back


def test_status_and_errors(bmt, rng):
    ab, b = _pair(rng)
    ab[1, -1, 5] = -1.0
    x, info = bmt.solveh_banded_ex(torch.from_numpy(ab).cuda(), torch.from_numpy(b).cuda())
    assert info.cpu().tolist() == [0, 6, 0, 0] and bool(torch.isnan(x[1]).all())
    with pytest.raises(ValueError, match="one device"):
        bmt.solveh_banded(torch.from_numpy(ab).cuda(), torch.from_numpy(b))


def test_compiled_model_on_the_gpu(bmt, rng):
    ab, b = _pair(rng)
    ab_t, b_t = torch.from_numpy(ab).cuda(), torch.from_numpy(b).cuda()

    def loss(a, y):
        return bmt.solveh_banded(a, y).square().sum()

    compiled = torch.compile(loss, fullgraph=True)
    np.testing.assert_allclose(float(compiled(ab_t, b_t)), float(loss(ab_t, b_t)), rtol=1e-12)


@pytest.mark.parametrize("central", [False, True])
def test_ode_forward_on_cuda_matches_the_cpu_layer(bmt, rng, central):
    shapes = ((3, 20, 2, 2, 3), (3, 20, 2), (3, 1, 2, 2), (3, 19))
    cpu = [torch.tensor(rng.standard_normal(s)) for s in shapes]
    cpu[3] = cpu[3].abs() * 0.1 + 0.05
    gpu = [t.cuda().requires_grad_() for t in cpu]
    cpu = [t.requires_grad_() for t in cpu]
    u_cpu = bmt.ode_forward(*cpu, enable_central_smoothness=central)
    u_gpu = bmt.ode_forward(*gpu, enable_central_smoothness=central)
    assert u_gpu.device.type == "cuda"
    torch.testing.assert_close(u_gpu.cpu(), u_cpu, rtol=1e-8, atol=1e-9)
    u_cpu.square().sum().backward()
    u_gpu.square().sum().backward()
    for a, b in zip(gpu, cpu, strict=True):
        torch.testing.assert_close(a.grad.cpu(), b.grad, rtol=1e-7, atol=1e-8)


def test_ode_forward_cyclic_on_cuda(bmt, rng):
    shapes = ((2, 300, 2, 2, 3), (2, 300, 2), (2, 1, 2, 2), (2, 299))
    cpu = [torch.tensor(rng.standard_normal(s)) for s in shapes]
    cpu[3] = cpu[3].abs() * 0.01 + 0.005
    gpu = [t.cuda().requires_grad_() for t in cpu]
    u_cpu = bmt.ode_forward(*cpu)
    u_gpu = bmt.ode_forward(*gpu, algorithm="cyclic")
    torch.testing.assert_close(u_gpu.cpu(), u_cpu, rtol=1e-7, atol=1e-8)
    u_gpu.square().sum().backward()
    assert all(t.grad is not None and bool(torch.isfinite(t.grad).all()) for t in gpu)


def test_ode_forward_chooses_cyclic_reduction_for_few_long_sequences(bmt, rng):
    """On a GPU the layer picks cyclic reduction by itself for 2 systems of
    300 steps (fewer than fill the device, at least CYCLIC_MIN_STEPS)."""
    from banded_mnn.mnn import _gpu as gpu_layer

    shapes = ((2, 300, 2, 2, 3), (2, 300, 2), (2, 1, 2, 2), (2, 299))
    cpu = [torch.tensor(rng.standard_normal(s)) for s in shapes]
    cpu[3] = cpu[3].abs() * 0.01 + 0.005
    kernels = gpu_layer.kernel_set(None)
    assert gpu_layer.choose_algorithm(None, 2, 300, kernels) == "cyclic"
    gpu = [t.cuda().requires_grad_() for t in cpu]
    u_gpu = bmt.ode_forward(*gpu)
    torch.testing.assert_close(u_gpu.cpu(), bmt.ode_forward(*cpu), rtol=1e-7, atol=1e-8)
    u_gpu.square().sum().backward()
    assert all(bool(torch.isfinite(t.grad).all()) for t in gpu)


def test_ode_forward_is_captured_in_a_cuda_graph(bmt, rng):
    """Warm, ode_forward is captured by torch.cuda.graph (no wait for the
    device, allocations from the graph's pool) and a replay with new inputs
    gives the CPU layer's result."""
    shapes = ((3, 40, 2, 2, 3), (3, 40, 2), (3, 1, 2, 2), (3, 39))
    cpu = [torch.tensor(rng.standard_normal(s)) for s in shapes]
    cpu[3] = cpu[3].abs() * 0.1 + 0.05
    static = [t.cuda() for t in cpu]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):  # warm-up: compiles, copies the tables to the device
            bmt.ode_forward(*static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = bmt.ode_forward(*static)
    new_rhs = torch.tensor(rng.standard_normal(shapes[1]))
    static[1].copy_(new_rhs.cuda())
    graph.replay()
    torch.cuda.synchronize()
    expected = bmt.ode_forward(cpu[0], new_rhs, cpu[2], cpu[3])
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-8, atol=1e-9)
