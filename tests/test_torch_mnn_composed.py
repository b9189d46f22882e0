"""``banded_mnn.torch.ode_forward``'s CUDA path, run on CPU tensors.

For CUDA tensors the adapter composes the layer from batched torch ops (the
normal equations' blocks), a gather into band form and the banded solve
operator (:mod:`banded_mnn.torch._mnn_gpu`).  That composition is
device-agnostic, so it is checked here on the CPU against the CPU layer --
values and gradients, broadcasting, a shared left-hand side, pinned steps and
orders, weights, float32, a frozen left-hand side -- by routing CPU tensors
through it.  test_torch_cuda.py runs it on CUDA tensors where a GPU exists.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import banded_mnn.torch as bt  # noqa: E402
from banded_mnn.torch import _ops  # noqa: E402

F64 = torch.float64


@pytest.fixture
def composed(monkeypatch):
    """Route CPU tensors through the CUDA path; returns a log of its calls."""
    calls = []
    original = _ops._mnn_gpu.ode_forward

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(_ops._mnn_gpu, "ode_forward", spy)
    return calls


@contextlib.contextmanager
def routed():
    _ops._ROUTE_CPU_TENSORS_TO_GPU_PATH = True
    try:
        yield
    finally:
        _ops._ROUTE_CPU_TENSORS_TO_GPU_PATH = False


def inputs(rng, c_batch=(2,), r_batch=(2,), T=7, E=2, D=2, O=3, S=1, I=2, dtype=F64):
    c = torch.tensor(rng.standard_normal(c_batch + (T, E, D, O)), dtype=dtype)
    r = torch.tensor(rng.standard_normal(r_batch + (T, E)), dtype=dtype)
    v = torch.tensor(rng.standard_normal(r_batch + (S, D, I)), dtype=dtype)
    h = torch.tensor(rng.uniform(0.2, 0.6, c_batch + (T - 1,)), dtype=dtype)
    return [c, r, v, h]


def both(tensors, algorithm=None, **options):
    """(CPU layer, composed path) results of ode_forward for the same inputs;
    ``algorithm="cyclic"`` takes the composed path on its own."""
    reference = bt.ode_forward(*tensors, **options)
    with routed() if algorithm is None else contextlib.nullcontext():
        composed = bt.ode_forward(*tensors, algorithm=algorithm, **options)
    return reference, composed


ALGORITHMS = [None, "cyclic"]


@pytest.mark.parametrize(
    "case",
    [
        {},
        {"c_batch": (1,), "r_batch": (3,)},  # shared left-hand side
        {"c_batch": (2, 1), "r_batch": (1, 3)},  # [b] broadcasting both ways
        {"S": 2, "I": 3, "O": 3},  # pinned steps and every order
        {"D": 1, "O": 2, "E": 1, "T": 2},
        {"central": True},
        {"central": True, "O": 2, "D": 3},  # H^(O-3) = 1/H
        {"central": True, "c_batch": (1,), "r_batch": (3,), "T": 3},
    ],
)
@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=["band", "cyclic"])
def test_values_and_gradients_match_the_cpu_layer(rng, composed, case, algorithm):
    case = dict(case)
    central = case.pop("central", False)
    tensors = [t.requires_grad_() for t in inputs(rng, **case)]
    weights = {"weight_equation": 1.3, "weight_init_var": 0.7, "weight_smooth": 1.1,
               "enable_central_smoothness": central}  # fmt: skip
    reference, result = both(tensors, algorithm, **weights)
    assert composed  # the composed path ran
    torch.testing.assert_close(result, reference, rtol=1e-9, atol=1e-9)
    probe = torch.tensor(rng.standard_normal(reference.shape), dtype=F64)
    grads_ref = torch.autograd.grad((reference * probe).sum(), tensors)
    grads = torch.autograd.grad((result * probe).sum(), tensors)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=["band", "cyclic"])
def test_empty_batch(rng, composed, algorithm):
    tensors = [x.requires_grad_() for x in inputs(rng, (0,), (0,))]
    reference, result = both(tensors, algorithm)
    assert composed and result.shape == reference.shape == (0, 7, 2, 3)
    result.sum().backward()
    assert [x.grad.shape for x in tensors] == [x.shape for x in tensors]


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=["band", "cyclic"])
def test_gradcheck(rng, composed, algorithm):
    tensors = [t.requires_grad_() for t in inputs(rng, c_batch=(1,), T=5, D=1, O=2, E=1)]
    with routed():
        assert torch.autograd.gradcheck(lambda *t: bt.ode_forward(*t, algorithm=algorithm), tensors)


def test_float32_and_step_first(rng, composed):
    tensors = inputs(rng, dtype=torch.float32)
    moved = [tensors[0].movedim(-4, 0), tensors[1].movedim(-2, 0), tensors[2].movedim(-3, 0),
             tensors[3].movedim(-1, 0)]  # fmt: skip
    reference, result = both(moved, is_step_dim_first=True)
    assert result.dtype == torch.float32 and result.shape == reference.shape
    torch.testing.assert_close(result, reference, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=["band", "cyclic"])
def test_frozen_left_hand_side_as_on_the_cpu(rng, composed, algorithm):
    """The second call reuses the first call's left-hand side; gradients reach
    only rhs_equation and init_vars -- as the CPU layer (and S-MNN) do."""
    c, r, v, h = inputs(rng)
    c2, r2, v2, h2 = (t.requires_grad_() for t in inputs(rng))
    bt.clear_frozen_lhs_cache()
    try:
        bt.ode_forward(c, r, v, h, frozen_lhs_cache_version=8)
        reference = bt.ode_forward(c2, r2, v2, h2, frozen_lhs_cache_version=8)
        with routed():
            bt.ode_forward(c, r, v, h, frozen_lhs_cache_version=7, algorithm=algorithm)
            result = bt.ode_forward(c2, r2, v2, h2, frozen_lhs_cache_version=7,
                                    algorithm=algorithm)  # fmt: skip
            with pytest.raises(ValueError, match="different problem"):
                other = "sequential" if algorithm == "cyclic" else "cyclic"
                bt.ode_forward(c2, r2, v2, h2, frozen_lhs_cache_version=7, algorithm=other)
    finally:
        bt.clear_frozen_lhs_cache()
    torch.testing.assert_close(result, reference, rtol=1e-9, atol=1e-9)
    probe = torch.tensor(rng.standard_normal(result.shape), dtype=F64)
    grads_ref = torch.autograd.grad((reference * probe).sum(), (r2, v2))
    grads = torch.autograd.grad((result * probe).sum(), (c2, r2, v2, h2), allow_unused=True)
    assert grads[0] is None and grads[3] is None  # nothing for coefficients and steps
    for g, g_ref in zip(grads[1:3], grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=["band", "cyclic"])
def test_gradcheck_central(rng, composed, algorithm):
    tensors = [t.requires_grad_() for t in inputs(rng, c_batch=(1,), T=5, D=1, O=3, E=1)]
    with routed():
        assert torch.autograd.gradcheck(
            lambda *t: bt.ode_forward(*t, enable_central_smoothness=True, algorithm=algorithm),
            tensors,
        )


@pytest.mark.parametrize("levels", [2, 3])
def test_band_from_blocks_matches_the_dense_matrix(rng, levels):
    from banded_mnn.torch._mnn_gpu import band_from_blocks

    L, T, n = 2, 5, 3
    u = levels * n - 1
    blocks = [torch.tensor(rng.standard_normal((L, T - k, n, n))) for k in range(levels)]
    blocks[0] = blocks[0] + blocks[0].transpose(-1, -2)
    dense = torch.zeros(L, T * n, T * n, dtype=blocks[0].dtype)
    for k, block in enumerate(blocks):
        for t in range(T - k):
            dense[:, (t + k) * n : (t + k + 1) * n, t * n : (t + 1) * n] = block[:, t]
    ab = band_from_blocks(blocks[0], blocks[1], u, *blocks[2:])
    m = T * n
    for r in range(u + 1):
        j = np.arange(m - r)
        torch.testing.assert_close(ab[:, r, : m - r], dense[:, j + r, j])


def test_torch_func_grad_through_the_composed_layer(rng, monkeypatch):
    """torch.func.grad through the torch-ops assembly with the band solve (the
    CUDA tensors' path), against torch.autograd.  (Not with
    ``algorithm="cyclic"``: its autograd.Function works on the arrays of the
    tensors it is given, which torch.func wraps.)"""
    algorithm = None
    monkeypatch.setattr(_ops, "_ROUTE_CPU_TENSORS_TO_GPU_PATH", True)
    tensors = inputs(rng)

    def loss(c, r, v, h):
        return (bt.ode_forward(c, r, v, h, enable_central_smoothness=True,
                               algorithm=algorithm) ** 2).sum()  # fmt: skip

    grads = torch.func.grad(loss, argnums=(0, 1, 2, 3))(*tensors)
    leaves = [x.clone().requires_grad_() for x in tensors]
    loss(*leaves).backward()
    for g, leaf in zip(grads, leaves, strict=True):
        torch.testing.assert_close(g, leaf.grad)
