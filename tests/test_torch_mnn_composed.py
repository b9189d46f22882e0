"""``banded_mnn.torch.ode_forward(..., algorithm="cyclic")`` against the band path.

Block cyclic reduction runs in the MNN layer (CPU or GPU) through the same
torch operators as the band Cholesky, the factor kept for the backward pass
flattened into one tensor.  Checked here on CPU tensors against the band path
-- values and gradients, broadcasting, a shared left-hand side, pinned steps
and orders, weights, float32, a frozen left-hand side, gradcheck.  The GPU
layer's cyclic path: test_mnn_gpu.py (simulated) and test_torch_cuda.py.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import banded_mnn.torch as bt  # noqa: E402

F64 = torch.float64


@pytest.fixture
def composed(monkeypatch):
    """A log of the layer's cyclic factorisations."""
    from banded_mnn.mnn import OdeSystem

    calls = []
    original = OdeSystem._factor_cyclic

    def spy(self):
        calls.append(1)
        return original(self)

    monkeypatch.setattr(OdeSystem, "_factor_cyclic", spy)
    return calls


def inputs(rng, c_batch=(2,), r_batch=(2,), T=7, E=2, D=2, O=3, S=1, I=2, dtype=F64):
    c = torch.tensor(rng.standard_normal(c_batch + (T, E, D, O)), dtype=dtype)
    r = torch.tensor(rng.standard_normal(r_batch + (T, E)), dtype=dtype)
    v = torch.tensor(rng.standard_normal(r_batch + (S, D, I)), dtype=dtype)
    h = torch.tensor(rng.uniform(0.2, 0.6, c_batch + (T - 1,)), dtype=dtype)
    return [c, r, v, h]


def both(tensors, algorithm="cyclic", **options):
    """(CPU layer, composed path) results of ode_forward for the same inputs."""
    reference = bt.ode_forward(*tensors, **options)
    composed = bt.ode_forward(*tensors, algorithm=algorithm, **options)
    return reference, composed


ALGORITHMS = ["cyclic"]


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
@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=["cyclic"])
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


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=["cyclic"])
def test_empty_batch(rng, composed, algorithm):
    tensors = [x.requires_grad_() for x in inputs(rng, (0,), (0,))]
    reference, result = both(tensors, algorithm)
    assert result.shape == reference.shape == (0, 7, 2, 3)
    result.sum().backward()
    assert [x.grad.shape for x in tensors] == [x.shape for x in tensors]


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=["cyclic"])
def test_gradcheck(rng, composed, algorithm):
    tensors = [t.requires_grad_() for t in inputs(rng, c_batch=(1,), T=5, D=1, O=2, E=1)]
    assert torch.autograd.gradcheck(lambda *t: bt.ode_forward(*t, algorithm=algorithm), tensors)


def test_float32_and_step_first(rng, composed):
    tensors = inputs(rng, dtype=torch.float32)
    moved = [tensors[0].movedim(-4, 0), tensors[1].movedim(-2, 0), tensors[2].movedim(-3, 0),
             tensors[3].movedim(-1, 0)]  # fmt: skip
    reference, result = both(moved, is_step_dim_first=True)
    assert result.dtype == torch.float32 and result.shape == reference.shape
    torch.testing.assert_close(result, reference, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=["cyclic"])
def test_frozen_left_hand_side_as_on_the_cpu(rng, composed, algorithm):
    """The second call reuses the first call's left-hand side; gradients reach
    only rhs_equation and init_vars -- as the CPU layer (and S-MNN) do."""
    c, r, v, h = inputs(rng)
    c2, r2, v2, h2 = (t.requires_grad_() for t in inputs(rng))
    bt.clear_frozen_lhs_cache()
    try:
        bt.ode_forward(c, r, v, h, frozen_lhs_cache_version=8)
        reference = bt.ode_forward(c2, r2, v2, h2, frozen_lhs_cache_version=8)
        bt.ode_forward(c, r, v, h, frozen_lhs_cache_version=7, algorithm=algorithm)
        result = bt.ode_forward(c2, r2, v2, h2, frozen_lhs_cache_version=7, algorithm=algorithm)
        with pytest.raises(ValueError, match="different problem"):
            bt.ode_forward(c2, r2, v2, h2, frozen_lhs_cache_version=7, algorithm="sequential")
    finally:
        bt.clear_frozen_lhs_cache()
    torch.testing.assert_close(result, reference, rtol=1e-9, atol=1e-9)
    probe = torch.tensor(rng.standard_normal(result.shape), dtype=F64)
    grads_ref = torch.autograd.grad((reference * probe).sum(), (r2, v2))
    grads = torch.autograd.grad((result * probe).sum(), (c2, r2, v2, h2), allow_unused=True)
    assert grads[0] is None and grads[3] is None  # nothing for coefficients and steps
    for g, g_ref in zip(grads[1:3], grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=["cyclic"])
def test_gradcheck_central(rng, composed, algorithm):
    tensors = [t.requires_grad_() for t in inputs(rng, c_batch=(1,), T=5, D=1, O=3, E=1)]
    assert torch.autograd.gradcheck(
        lambda *t: bt.ode_forward(*t, enable_central_smoothness=True, algorithm=algorithm),
        tensors,
    )


def test_torch_compile_keeps_the_cyclic_factor(rng, composed):
    """Under torch.compile the operator's shape function gives the size of
    the flattened cyclic-reduction factor."""
    tensors = [t.requires_grad_() for t in inputs(rng, T=9)]
    compiled = torch.compile(lambda *t: bt.ode_forward(*t, algorithm="cyclic"), fullgraph=True,
                             backend="eager")  # fmt: skip
    result = compiled(*tensors)
    torch.testing.assert_close(result, bt.ode_forward(*tensors), rtol=1e-9, atol=1e-9)
    result.sum().backward()
    assert composed and all(torch.isfinite(t.grad).all() for t in tensors)


def test_torch_func_through_cyclic_reduction(rng):
    """torch.func.grad and vmap reach cyclic reduction (the same operators as
    the band path) and agree with the band path."""
    c, r, v, h = inputs(rng)

    def loss(c, r, v, h, algorithm):
        u = bt.ode_forward(c, r, v, h, enable_central_smoothness=True, algorithm=algorithm)
        return (u**2).sum()

    got = torch.func.grad(loss, argnums=(0, 1, 2, 3))(c, r, v, h, "cyclic")
    want = torch.func.grad(loss, argnums=(0, 1, 2, 3))(c, r, v, h, None)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-9)
    mapped = torch.func.vmap(lambda c: bt.ode_forward(c, r[0], v[0], h[0], algorithm="cyclic"))(c)
    torch.testing.assert_close(mapped, bt.ode_forward(c, r[0], v[0], h[0]), rtol=1e-9, atol=1e-9)
