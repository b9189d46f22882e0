"""The PyTorch adapter: gradients, opcheck, torch.compile, vmap, zero copy."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import banded_mnn  # noqa: E402
import banded_mnn.mnn  # noqa: E402
from banded_mnn import NotPositiveDefiniteError  # noqa: E402
from banded_mnn import torch as bt  # noqa: E402
from banded_mnn.problems import random_spd_band  # noqa: E402
from banded_mnn.torch import _mnn, _ops  # noqa: E402
from conftest import dense_from_band  # noqa: E402

F64 = torch.float64


def spd(rng, batch, m, u, lower=False):
    ab = random_spd_band(batch, m, u, rng=rng)
    if lower:
        from banded_mnn._vjp import _upper_to_lower

        ab = _upper_to_lower(ab)
    return torch.tensor(ab, dtype=F64)


def mnn_inputs(rng, batch=(2,), T=6, E=2, D=2, O=3, S=1, I=2, dtype=F64):
    c = torch.tensor(rng.standard_normal(batch + (T, E, D, O)), dtype=dtype)
    r = torch.tensor(rng.standard_normal(batch + (T, E)), dtype=dtype)
    v = torch.tensor(rng.standard_normal(batch + (S, D, I)), dtype=dtype)
    h = torch.tensor(rng.uniform(0.2, 0.6, batch + (T - 1,)), dtype=dtype)
    return [c, r, v, h]


# --------------------------------------------------------------------------
# Values match the NumPy-level functions
# --------------------------------------------------------------------------


def test_band_functions_match_numpy(rng):
    ab = spd(rng, (3,), 9, 2)
    b = torch.tensor(rng.standard_normal((3, 9, 2)), dtype=F64)
    np.testing.assert_allclose(
        bt.solveh_banded(ab, b), banded_mnn.solveh_banded(ab.numpy(), b.numpy())
    )
    c = bt.cholesky_banded(ab)
    np.testing.assert_allclose(c, banded_mnn.cholesky_banded(ab.numpy()))
    np.testing.assert_allclose(
        bt.cho_solve_banded((c, False), b), bt.solveh_banded(ab, b), rtol=1e-12
    )


def test_ode_forward_matches_numpy(rng):
    inputs = mnn_inputs(rng)
    for central in (False, True):
        u = bt.ode_forward(*inputs, enable_central_smoothness=central, weight_smooth=1.3)
        ref = banded_mnn.mnn.ode_forward(*[t.numpy() for t in inputs],
                                         enable_central_smoothness=central, weight_smooth=1.3)  # fmt: skip
        np.testing.assert_allclose(u.numpy(), ref, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------
# Gradients (float64 gradcheck) and operator checks
# --------------------------------------------------------------------------


@pytest.mark.parametrize("lower", [False, True])
def test_gradcheck_band_functions(rng, lower):
    ab = spd(rng, (2,), 6, 2, lower).requires_grad_()
    b = torch.tensor(rng.standard_normal((2, 6, 2)), dtype=F64, requires_grad=True)
    bvec = torch.tensor(rng.standard_normal(6), dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: bt.cholesky_banded(a, lower=lower), (ab,))
    assert torch.autograd.gradcheck(lambda a, y: bt.solveh_banded(a, y, lower=lower), (ab, b))
    assert torch.autograd.gradcheck(lambda a, y: bt.solveh_banded(a, y, lower=lower), (ab, bvec))
    c = bt.cholesky_banded(ab.detach(), lower=lower).requires_grad_()
    assert torch.autograd.gradcheck(lambda f, y: bt.cho_solve_banded((f, lower), y), (c, b))
    # Broadcast: one matrix, a batch of right-hand sides.
    a1 = ab[:1].detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, y: bt.solveh_banded(a, y, lower=lower), (a1, b))


@pytest.mark.parametrize("central", [False, True], ids=["default", "central"])
def test_gradcheck_ode_forward(rng, central):
    c, r, v, h = mnn_inputs(rng, (2,), 5, 2, 2, 3, 1, 2)
    args = [x.requires_grad_() for x in (c, r, v, h)]

    def f(*a):
        return bt.ode_forward(*a, enable_central_smoothness=central, weight_equation=1.2,
                              weight_init_var=0.7, weight_smooth=1.4)  # fmt: skip

    assert torch.autograd.gradcheck(f, args)


def test_gradcheck_ode_forward_broadcast_and_shared_lhs(rng):
    c, _, v, h = mnn_inputs(rng, (1,), 5, 1, 1, 3, 1, 1)
    c = c[:, :1].clone().requires_grad_()  # time-invariant coefficients, one system
    h = h.clone().requires_grad_()
    r = torch.tensor(rng.standard_normal((3, 5, 1)), dtype=F64, requires_grad=True)
    v = v.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda *a: bt.ode_forward(*a, n_steps=5), (c, r, v, h))


def test_frozen_lhs(rng):
    bt.clear_frozen_lhs_cache()
    try:
        c, r, v, h = mnn_inputs(rng)
        u0 = bt.ode_forward(c, r, v, h, frozen_lhs_cache_version=3)
        c.requires_grad_()
        h.requires_grad_()
        r.requires_grad_()
        u = bt.ode_forward(c, r, v, h * 2, frozen_lhs_cache_version=3)  # steps ignored
        torch.testing.assert_close(u, u0)
        with pytest.raises(ValueError, match="frozen_lhs_cache_version=3"):
            bt.ode_forward(c[:1], r, v, h[:1], frozen_lhs_cache_version=3)  # another LHS batch
        u.sum().backward()
        assert c.grad is None and h.grad is None and r.grad is not None
        r2 = r.detach().clone().requires_grad_()
        assert torch.autograd.gradcheck(
            lambda y: bt.ode_forward(c.detach(), y, v, h.detach(), frozen_lhs_cache_version=3),
            (r2,),
        )
    finally:
        bt.clear_frozen_lhs_cache()


def test_opcheck(rng):
    ab = spd(rng, (2,), 6, 2)
    b = torch.tensor(rng.standard_normal((2, 6, 1)), dtype=F64)
    c, _ = _ops._cholesky(ab, False, True)
    checks = [
        (_ops._cholesky, (ab.clone().requires_grad_(), False, True)),
        (_ops._solveh, (ab.clone().requires_grad_(), b.clone().requires_grad_(), False, False)),
        (_ops._cho_solve, (c.clone().requires_grad_(), b.clone().requires_grad_(), False)),
    ]
    inputs = [x.requires_grad_() for x in mnn_inputs(rng)]
    checks.append((_mnn._ode_forward, (*inputs, 6, 1, [1.0, 1.0, 1.0], False)))
    for op, args in checks:
        torch.library.opcheck(op, args)


# --------------------------------------------------------------------------
# torch.compile, vmap, training
# --------------------------------------------------------------------------


class TinyMNN(torch.nn.Module):
    """Learns per-step ODE coefficients and step sizes (the sine example's model)."""

    def __init__(self, steps: int):
        super().__init__()
        self.coefficients = torch.nn.Parameter(torch.rand(steps, 1, 1, 3, dtype=F64) + 0.5)
        self.logits = torch.nn.Parameter(torch.full((steps - 1,), -2.0, dtype=F64))

    def forward(self):
        rhs = torch.ones(self.coefficients.shape[0], 1, dtype=F64)
        init = torch.zeros(0, 1, 0, dtype=F64)
        u = bt.ode_forward(self.coefficients, rhs, init, torch.sigmoid(self.logits))
        return u[:, 0, 0]


def test_compile_fullgraph_and_training(rng):
    torch.manual_seed(0)
    x = torch.linspace(0, 10, 60, dtype=F64)
    y = torch.sin(2 * x) * torch.exp(-0.1 * x)
    model = TinyMNN(60)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(), model())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = ((compiled() - y) ** 2).sum()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_compile_inductor_no_graph_break(rng):
    ab = spd(rng, (2,), 8, 2)
    b = torch.tensor(rng.standard_normal((2, 8, 1)), dtype=F64)

    def f(a, y):
        return bt.solveh_banded_ex(a * 1.0, y + 0.0)[0].sum() + bt.cholesky_banded_ex(a)[0].sum()

    compiled = torch.compile(f, fullgraph=True)
    torch.testing.assert_close(compiled(ab, b), f(ab, b))


def test_vmap(rng):
    ab = spd(rng, (4,), 7, 2)
    b = torch.tensor(rng.standard_normal((4, 7)), dtype=F64)
    out = torch.func.vmap(bt.solveh_banded)(ab, b)
    torch.testing.assert_close(out, bt.solveh_banded(ab, b[..., None])[..., 0])
    # One matrix, vmapped right-hand sides.
    out = torch.func.vmap(bt.solveh_banded, in_dims=(None, 0))(ab[0], b)
    torch.testing.assert_close(out, bt.solveh_banded(ab[0], b.T).T)
    c = torch.func.vmap(bt.cholesky_banded)(ab)
    torch.testing.assert_close(c, bt.cholesky_banded(ab))
    torch.testing.assert_close(
        torch.func.vmap(bt.cho_solve_banded, in_dims=((0, None), 0))((c, False), b),
        bt.solveh_banded(ab, b[..., None])[..., 0],
    )
    inputs = mnn_inputs(rng, (3,))
    u = torch.func.vmap(bt.ode_forward)(*inputs)
    torch.testing.assert_close(u, bt.ode_forward(*inputs))
    # Unbatched coefficients and steps (a shared left-hand side), batched rest.
    u = torch.func.vmap(bt.ode_forward, in_dims=(None, 0, 0, None))(
        inputs[0][0], inputs[1], inputs[2], inputs[3][0]
    )
    torch.testing.assert_close(u, bt.ode_forward(inputs[0][:1], *inputs[1:3], inputs[3][:1]))
    # Gradients flow through a vmapped call (torch.autograd on the result).
    c = inputs[0].clone().requires_grad_()
    torch.func.vmap(bt.ode_forward)(c, *inputs[1:]).sum().backward()
    c2 = inputs[0].clone().requires_grad_()
    bt.ode_forward(c2, *inputs[1:]).sum().backward()
    torch.testing.assert_close(c.grad, c2.grad)


def test_torch_func_transforms(rng):
    """torch.func.grad, vmap of grad (per-sample gradients) and jacrev agree
    with torch.autograd, for every function; double backward is refused."""
    ab = spd(rng, (3,), 7, 2)
    b = torch.tensor(rng.standard_normal((3, 7, 1)), dtype=F64)

    def band_loss(a, y):
        c = bt.cholesky_banded(a)
        return (bt.solveh_banded(a, y) ** 2).sum() + bt.cho_solve_banded((c, False), y).sum()

    grads = torch.func.grad(band_loss, argnums=(0, 1))(ab, b)
    leaves = [ab.clone().requires_grad_(), b.clone().requires_grad_()]
    band_loss(*leaves).backward()
    for g, leaf in zip(grads, leaves, strict=True):
        torch.testing.assert_close(g, leaf.grad)
    per_sample = torch.func.vmap(torch.func.grad(band_loss))(ab, b)
    for i in range(3):
        torch.testing.assert_close(per_sample[i], torch.func.grad(band_loss)(ab[i], b[i]))
    jacobian = torch.func.jacrev(lambda y: bt.solveh_banded(ab[0], y))(b[0])
    dense = torch.linalg.inv(torch.tensor(dense_from_band(ab[0].numpy(), False)))
    torch.testing.assert_close(jacobian[:, 0, :, 0], dense)

    inputs = mnn_inputs(rng, (3,))

    def ode_loss(c, r, v, h):
        return (bt.ode_forward(c, r, v, h, enable_central_smoothness=True) ** 2).sum()

    grads = torch.func.grad(ode_loss, argnums=(0, 1, 2, 3))(*inputs)
    leaves = [x.clone().requires_grad_() for x in inputs]
    ode_loss(*leaves).backward()
    for g, leaf in zip(grads, leaves, strict=True):
        torch.testing.assert_close(g, leaf.grad)
    per_sample = torch.func.vmap(torch.func.grad(ode_loss, argnums=(0, 3)))(*inputs)
    single = torch.func.grad(ode_loss, argnums=(0, 3))(*(x[1] for x in inputs))
    torch.testing.assert_close(per_sample[0][1], single[0])
    torch.testing.assert_close(per_sample[1][1], single[1])
    a = ab.clone().requires_grad_()
    (g,) = torch.autograd.grad(bt.solveh_banded(a, b).sum(), a, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(g.sum(), a)


def test_operator_or_body(rng, monkeypatch):
    """Plain eager calls run the operators' bodies directly (ode_forward its
    own autograd.Function); vmap, fake tensors and torch.compile get the
    operators (their vmap rules and fake implementations)."""
    calls = []
    bodies = dict(_ops._BODIES)
    for op, body in bodies.items():
        monkeypatch.setitem(_ops._BODIES, op, lambda *a, _b=body: calls.append(_b) or _b(*a))
    ab = spd(rng, (2,), 7, 2).requires_grad_()
    b = torch.ones(2, 7, 1, dtype=F64)
    bt.solveh_banded(ab, b).sum().backward()
    assert calls == [bodies[op] for op in (_ops._solveh, _ops._cho_solve, _ops._band_gradient)]
    # ode_forward in plain eager mode: its own autograd.Function, same values
    # and gradients as through the operators.
    calls.clear()
    inputs = mnn_inputs(rng, (3,))
    static = (6, 1, [1.0, 2.0, 0.5], True)
    results = []
    for eager in (True, False):
        leaves = [x.clone().requires_grad_() for x in inputs]
        if eager:
            u = _mnn._OdeForwardEager.apply(*leaves, _mnn._shapes(leaves, *static))
        else:
            u = _mnn._OdeForward(*leaves, *static)[0]
        (u**2).sum().backward()
        results.append([u.detach()] + [x.grad for x in leaves])
    assert calls == [bodies[_mnn._ode_forward], bodies[_mnn._ode_backward]]
    for eager, op in zip(*results, strict=True):
        torch.testing.assert_close(eager, op, rtol=1e-12, atol=0)
    # Only the right-hand side needs a gradient: no left-hand-side gradients.
    r = inputs[1].clone().requires_grad_()
    (
        bt.ode_forward(inputs[0], r, *inputs[2:], 6, 1, False, 1.0, 2.0, 0.5, True) ** 2
    ).sum().backward()
    torch.testing.assert_close(r.grad, results[1][2], rtol=1e-12, atol=0)
    # The factor is a saved tensor: freed with the graph after the backward.
    u = bt.ode_forward(*(x.clone().requires_grad_() for x in inputs))
    assert isinstance(u.grad_fn, _mnn._OdeForwardEager._backward_cls)
    u.sum().backward()
    with pytest.raises(RuntimeError, match="freed"):
        _ = u.grad_fn.saved_tensors
    assert _ops._plain_eager((torch.nn.Parameter(inputs[0]),))
    # The solution is saved for the backward: modifying it in place is caught.
    u = bt.ode_forward(*(x.clone().requires_grad_() for x in inputs))
    loss = u.sum()  # (which saves nothing itself)
    u.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
    plain = [x.detach() for x in inputs]
    # (Under torch.func.grad the forward meets plain tensors and may run the
    # body; its backward meets wrapped ones.  test_torch_func_transforms checks it.)
    for transform in (
        torch.func.vmap(bt.ode_forward),
        torch.compile(bt.ode_forward, fullgraph=True, backend="eager"),
    ):
        calls.clear()
        transform(*plain)
        assert calls == []
    assert _ops._plain_eager(tuple(plain))
    from torch._subclasses.fake_tensor import FakeTensorMode

    ab = ab.detach()
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(x) for x in (ab, b)]
        assert not _ops._plain_eager(tuple(fake))
        assert bt.solveh_banded(*fake).shape == (2, 7, 1)
    assert calls == []


# --------------------------------------------------------------------------
# Zero copy, inputs untouched, errors
# --------------------------------------------------------------------------


def test_zero_copy(rng, monkeypatch):
    inputs = mnn_inputs(rng)
    inputs[0] = inputs[0].transpose(-1, -2).contiguous().transpose(-1, -2)  # non-contiguous
    seen = []
    real = banded_mnn.mnn._layer._forward

    def spy(inputs, *args):  # the arrays the layer's kernels read
        seen.extend(inputs.arrays.values())
        return real(inputs, *args)

    monkeypatch.setattr(banded_mnn.mnn._layer, "_forward", spy)
    u = bt.ode_forward(*inputs)
    pointers = {t.data_ptr() for t in inputs}
    assert {a.__array_interface__["data"][0] for a in seen if a.strides} >= pointers
    # The result is the kernel's output array, not a copy.
    ab = spd(rng, (2,), 6, 2)
    b = torch.tensor(rng.standard_normal((2, 6, 1)), dtype=F64)
    x, _, _ = _ops._solveh(ab, b, False, True)
    assert x.numpy().base is not None or x.numpy().flags.owndata is False
    assert u.dtype == F64


def test_inputs_untouched_and_grad_inputs(rng):
    inputs = [x.requires_grad_() for x in mnn_inputs(rng)]
    copies = [x.detach().clone() for x in inputs]
    bt.ode_forward(*inputs).sum().backward()
    for x, y in zip(inputs, copies, strict=True):
        torch.testing.assert_close(x.detach(), y)
    # A tensor with the negative bit set, and a non-contiguous one.
    ab = spd(rng, (5,), 6, 2)
    b = torch.tensor(rng.standard_normal((5, 6, 2)), dtype=F64)
    negated = b.neg()._neg_view()  # the same values, stored negated
    assert negated.is_neg()
    torch.testing.assert_close(bt.solveh_banded(ab, negated), bt.solveh_banded(ab, b))
    strided = torch.tensor(rng.standard_normal((5, 2, 6)), dtype=F64).transpose(-1, -2)
    torch.testing.assert_close(
        bt.solveh_banded(ab, strided), bt.solveh_banded(ab, strided.contiguous())
    )


def test_errors(rng):
    ab = spd(rng, (2,), 6, 2)
    b = torch.tensor(rng.standard_normal((2, 6, 1)), dtype=torch.float32)
    with pytest.raises(TypeError, match="b has dtype torch.float32"):
        bt.solveh_banded(ab, b)
    with pytest.raises(NotImplementedError, match="ab is on meta.*take CPU or CUDA tensors"):
        bt.solveh_banded(ab.to("meta"), b.double().to("meta"))
    with pytest.raises(TypeError, match="ab must be float32 or float64"):
        bt.cholesky_banded(ab.int())
    with pytest.raises(ValueError, match=r"cb_and_lower must be a pair \(cb, lower\)"):
        bt.cho_solve_banded(bt.cholesky_banded(ab), b.double())
    bad = ab.clone()
    bad[1, -1, 2] = -5.0
    with pytest.raises(NotPositiveDefiniteError, match=r"batch index \(1,\)"):
        bt.cholesky_banded(bad)
    x, info = bt.solveh_banded_ex(bad, b.double())
    assert info.tolist() == [0, 3] and torch.isnan(x[1]).all()
    c, r, v, h = mnn_inputs(rng)
    with pytest.raises(ValueError, match="rhs_equation must have shape"):
        bt.ode_forward(c, r[..., :1], v, h)
    with pytest.raises(TypeError, match="steps has dtype torch.float32"):
        bt.ode_forward(c, r, v, h.float())


def test_per_step_baseline_agrees(rng):
    """The benchmark's torch baseline computes the same values and gradients."""
    from banded_mnn.torch.baselines import ode_forward_blockwise

    inputs = mnn_inputs(rng, (3,), 7, 2, 2, 3, 1, 2)
    ours = [x.clone().requires_grad_() for x in inputs]
    theirs = [x.clone().requires_grad_() for x in inputs]
    u = bt.ode_forward(*ours)
    u_ref = ode_forward_blockwise(*theirs)
    torch.testing.assert_close(u_ref, u)
    g = torch.tensor(rng.standard_normal(u.shape), dtype=F64)
    (u * g).sum().backward()
    (u_ref * g).sum().backward()
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(b.grad, a.grad)


def test_ode_forward_step_axis_first_and_rhs_only_gradients(rng):
    # The CPU shortcut with is_step_dim_first: values and gradients as the
    # canonical layout's, and float64 gradcheck.
    c, r, v, h = mnn_inputs(rng, (2,), 5, 2, 2, 3, 1, 2)
    names = _mnn._MNN_NAMES
    first = [x.movedim(-_layer_core(n), 0) for x, n in zip((c, r, v, h), names, strict=True)]
    args = [x.clone().requires_grad_() for x in first]
    u = bt.ode_forward(*args, is_step_dim_first=True, enable_central_smoothness=True)
    canonical = [x.clone().requires_grad_() for x in (c, r, v, h)]
    ref = bt.ode_forward(*canonical, enable_central_smoothness=True)
    torch.testing.assert_close(u, ref.movedim(-3, 0), rtol=1e-12, atol=0)
    (u.movedim(0, -3) * ref.detach()).sum().backward()
    (ref * ref.detach()).sum().backward()
    for x, y, name in zip(args, canonical, names, strict=True):
        torch.testing.assert_close(
            x.grad.movedim(0, -_layer_core(name)), y.grad, rtol=1e-12, atol=0
        )
    assert torch.autograd.gradcheck(lambda *a: bt.ode_forward(*a, is_step_dim_first=True), args)
    # Only the right-hand side needs a gradient while the step sizes carry a
    # batch axis of their own: the right-hand side's gradient is still that
    # of the full batch, summed over its broadcast axis.
    hb = torch.tensor(rng.uniform(0.2, 0.6, (3, 1, 4)), dtype=F64)
    r1 = r[:1].clone().requires_grad_()
    u = bt.ode_forward(c, r1, v, hb)
    assert u.shape == (3, 2, 5, 2, 3)
    u.pow(2).sum().backward()
    r2 = r[:1].clone().requires_grad_()
    h2 = hb.clone().requires_grad_()  # (then every gradient is computed)
    bt.ode_forward(c, r2, v, h2).pow(2).sum().backward()
    torch.testing.assert_close(r1.grad, r2.grad, rtol=1e-12, atol=0)


def _layer_core(name):
    return banded_mnn.mnn._layer._CORE_NDIM[name]


def test_cuda_results_come_from_torchs_caching_allocator(monkeypatch):
    # GPU-only glue, run on stand-ins: inside _on_device(a CUDA tensor), CuPy
    # allocates from torch's caching allocator on torch's current stream of
    # that device, and each block goes back to torch when CuPy releases it.
    import gc
    import sys
    import types

    from stand_in_cupy import stand_in_cupy

    events = []
    monkeypatch.setitem(sys.modules, "cupy", stand_in_cupy(events))
    monkeypatch.setattr(_ops, "_cuda_usable", lambda: (True, ""))
    stream = types.SimpleNamespace(__cuda_stream__=lambda: (2, 77))
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: stream)

    def alloc(size, device, on):
        events.append(("alloc", size, device, on))
        return 4096

    monkeypatch.setattr(torch.cuda, "caching_allocator_alloc", alloc)
    monkeypatch.setattr(
        torch.cuda, "caching_allocator_delete", lambda a: events.append(("free", a))
    )
    with _ops._on_device(types.SimpleNamespace(device=torch.device("cuda", 1))):
        allocate = sys.modules["cupy"].cuda.get_allocator()
        block, empty = allocate(800), allocate(0)
    assert events == [("device", 1), ("stream", (2, 77)), "allocator", ("alloc", 800, 1, stream),
                      "exit allocator", ("exit device", 1)]  # fmt: skip
    assert (block.ptr, block.mem.size, block.device_id) == (4096, 800, 1)
    assert (empty.ptr, empty.mem.size) == (0, 0)  # no block for zero bytes
    del block, empty
    gc.collect()
    assert events[-1] == ("free", 4096) and events.count(("free", 4096)) == 1


@pytest.mark.parametrize("route", ["eager", "operators", "cyclic"])
def test_higher_order_derivatives_raise(rng, monkeypatch, route):
    # The backward formulas are first order.  A gradient taken with
    # create_graph=True and differentiated again must raise, also when it does
    # not depend on the upstream gradient (a loss linear in the output), where
    # torch's once_differentiable alone would let a second derivative leave
    # that dependence out silently.
    match = "higher-order derivatives are not supported"
    c, r, v, h = mnn_inputs(rng, (2,))
    c.requires_grad_()
    w = torch.tensor(rng.standard_normal((2, 6, 2, 3)), dtype=F64)
    algorithm = "cyclic" if route == "cyclic" else None
    if route == "operators":  # the custom operators' autograd.Function
        monkeypatch.setattr(_mnn, "_plain_cpu", lambda tensors: False)
    for loss in (lambda u: (w * u).sum(), lambda u: (u**2).sum()):
        u = bt.ode_forward(c, r, v, h, algorithm=algorithm)
        (g,) = torch.autograd.grad(loss(u), c, create_graph=True)
        with pytest.raises(RuntimeError, match=match):
            torch.autograd.grad(g.pow(2).sum() + c.pow(2).sum(), c)
    with pytest.raises(RuntimeError, match=match):
        torch.func.grad(lambda x: torch.func.grad(
            lambda y: (w * bt.ode_forward(y, r, v, h, algorithm=algorithm)).sum())(x).sum())(c.detach())  # fmt: skip


def test_higher_order_derivatives_raise_band_functions(rng):
    ab = spd(rng, (2,), 7, 2).requires_grad_()
    b = torch.tensor(rng.standard_normal((2, 7, 1)), dtype=F64)
    for f in (
        lambda a: bt.solveh_banded(a, b),
        lambda a: bt.cholesky_banded(a),
        lambda a: bt.cho_solve_banded((bt.cholesky_banded(a), False), b),
    ):
        (g,) = torch.autograd.grad(f(ab).sum(), ab, create_graph=True)
        with pytest.raises(RuntimeError, match="higher-order derivatives are not supported"):
            torch.autograd.grad(g.pow(2).sum() + ab.sum(), ab)
    # First-order gradients are unchanged by create_graph.
    (g1,) = torch.autograd.grad(bt.solveh_banded(ab, b).sum(), ab, create_graph=True)
    (g0,) = torch.autograd.grad(bt.solveh_banded(ab, b).sum(), ab)
    torch.testing.assert_close(g1.detach(), g0, rtol=0, atol=0)
