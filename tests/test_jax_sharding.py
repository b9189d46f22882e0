"""The JAX adapter on arrays sharded along batch axes over two host devices.

XLA's host platform has one device unless ``XLA_FLAGS`` asks for more before
JAX starts, so the checks run in a subprocess (this file run as a script,
:func:`worker`) with ``--xla_force_host_platform_device_count=2``; the rest
of the suite keeps its single device.  The worker computes every case sharded
and unsharded (the same function on a single device) and writes the largest
difference, the output shardings and the compiled HLO text of the sharded
program to a JSON file, which the tests below check: equal results, outputs
still sharded along the batch, and no collective in the compiled program that
moves batch data between the devices (:func:`hlo_findings`), with every
callback working on half the batch.  A plain ``jax.jit`` over a mesh of
``Auto`` axes (where the adapter cannot see the sharding while tracing)
gathers the batch, and the same check flags it.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("jax")

#: Global batch size: no core axis of the cases has this length or half of it,
#: so these lengths in a shape can only be batch axes.
BATCH = 10
LOCAL = BATCH // 2

#: Collectives that move array data between devices (all-reduce is checked
#: separately: it may sum gradients of arguments shared by the whole batch).
MOVING = ("all-gather", "all-to-all", "ragged-all-to-all", "collective-permute",
          "reduce-scatter", "collective-broadcast")  # fmt: skip

_SHAPE = re.compile(r"\b(?:pred|[fsu]\d+|bf16)\[([\d,]*)\]")
_CALLBACK = 'custom_call_target="xla_buffer_python_cpu_callback"'


def _dims(line: str) -> list[tuple[int, ...]]:
    return [tuple(int(n) for n in m.split(",") if n) for m in _SHAPE.findall(line)]


def hlo_findings(text: str, batch: int = BATCH) -> dict[str, Any]:
    """What a compiled (partitioned) HLO module does with a batch of ``batch``.

    Returns ``moving`` (the data-moving collectives it contains),
    ``batched_all_reduce`` (an all-reduce over an array with a batch axis),
    ``callbacks`` (how many buffer callbacks), ``full_batch`` (a callback's
    operand or result with the whole batch) and ``per_shard`` (how many
    callbacks have an operand or result with half the batch; the others have
    none with a batch axis, such as the factorisation of a matrix shared by
    the batch, which each device repeats).
    """
    lines = text.splitlines()
    moving = sorted(
        {op for line in lines for op in MOVING if re.search(rf" {op}(-start)?\(", line)}
    )
    reduces = [line for line in lines if re.search(r" all-reduce(-start)?\(", line)]
    callbacks = [line for line in lines if _CALLBACK in line]

    def has(line: str, n: int) -> bool:
        return any(n in shape for shape in _dims(line))

    return {
        "moving": moving,
        "batched_all_reduce": any(has(line, batch) or has(line, batch // 2) for line in reduces),
        "callbacks": len(callbacks),
        "full_batch": any(has(line, batch) for line in callbacks),
        "per_shard": sum(has(line, batch // 2) for line in callbacks),
    }


# --------------------------------------------------------------------------
# The worker (runs in a subprocess with two host devices)
# --------------------------------------------------------------------------


def worker(seed: int, out: str) -> None:  # pragma: no cover - runs in a subprocess
    """Run every case and write ``{case: {error, specs, hlo}}`` to ``out``."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    from banded_mnn import jax as bj
    from banded_mnn.problems import random_spd_band

    assert jax.device_count() == 2, jax.devices()
    rng = np.random.default_rng(seed)
    explicit = jax.make_mesh((2,), ("b",), axis_types=(AxisType.Explicit,))
    auto = jax.make_mesh((2,), ("b",), axis_types=(AxisType.Auto,))
    m, u, k = 12, 3, 2
    ab = random_spd_band((BATCH,), m, u, rng=rng)
    b = rng.standard_normal((BATCH, m, k))
    bvec = rng.standard_normal(m)
    T, E, D, O, S, I = 8, 2, 2, 3, 1, 2
    ode = [
        rng.standard_normal((BATCH, T, E, D, O)),
        rng.standard_normal((BATCH, T, E)),
        rng.standard_normal((BATCH, S, D, I)),
        rng.uniform(0.2, 0.6, (BATCH, T - 1)),
    ]
    results: dict[str, Any] = {}

    def case(name, fn, args, specs, mesh=explicit):
        """``fn`` jitted on ``args`` placed by ``specs`` over ``mesh``, against
        the same jitted function on unsharded (single-device) arrays."""
        sharded = [
            jax.device_put(a, NamedSharding(mesh, s)) for a, s in zip(args, specs, strict=True)
        ]
        jitted = jax.jit(fn)
        got = jax.tree.leaves(jitted(*sharded))
        want = jax.tree.leaves(jax.jit(fn)(*(jnp.asarray(a) for a in args)))
        error = max(
            float(np.max(np.abs(np.asarray(g, float) - np.asarray(w, float)), initial=0.0))
            for g, w in zip(got, want, strict=True)
        )
        results[name] = {
            "error": error,
            "scale": max(float(np.max(np.abs(np.asarray(w, float)))) for w in want),
            "specs": [str(tuple(g.sharding.spec)) for g in got],
            "hlo": jitted.lower(*sharded).compile().as_text(),
        }

    def band_forward(ab, b):
        x, info = bj.solveh_banded_ex(ab, b)
        c, cinfo = bj.cholesky_banded_ex(ab)
        return x, info, c, cinfo, bj.cho_solve_banded((c, False), b), bj.solveh_banded(ab, bvec)

    def band_loss(ab, b):
        c = bj.cholesky_banded(ab)
        x = bj.cho_solve_banded((c, False), b)
        return jnp.sum(jnp.sin(bj.solveh_banded(ab, b))) + jnp.sum(x**2) + jnp.sum(c**3)

    band_grad = jax.grad(band_loss, argnums=(0, 1))
    case("band_forward", band_forward, [ab, b], [P("b"), P("b")])
    case("band_grad", band_grad, [ab, b], [P("b"), P("b")])
    # One matrix shared by the whole batch: its gradient is summed over devices.
    case("band_grad_shared", band_grad, [ab[:1], b], [P(), P("b")])
    # Two batch axes, sharded along the second; the matrix broadcasts along the first.
    b2 = rng.standard_normal((3, BATCH, m, k))
    case("band_two_batch_axes", band_grad, [ab, b2], [P("b"), P(None, "b")])

    def ode_fn(*a):
        return bj.ode_forward(*a, enable_central_smoothness=True, weight_smooth=0.7)

    def ode_loss(*a):
        return jnp.sum(jnp.sin(ode_fn(*a)))

    ode_grad = jax.grad(ode_loss, argnums=(0, 1, 2, 3))
    case("ode_forward", ode_fn, ode, [P("b")] * 4)
    case("ode_grad", ode_grad, ode, [P("b")] * 4)
    # Shared coefficients and steps, per-sample right-hand sides and initial values.
    shared = [ode[0][:1], ode[1], ode[2], ode[3][0]]
    case("ode_grad_shared", ode_grad, shared, [P(), P("b"), P("b"), P()])
    # vmap over an unsharded leading axis, the batch axis inside sharded.
    stacked = [np.stack([a, 0.9 * a]) for a in ode]
    case("ode_vmap", jax.vmap(ode_fn), stacked, [P(None, "b")] * 4)

    # Inside a user's shard_map over a mesh of Auto axes: per-device buffers.
    def mapped(fn, n_out):
        return jax.shard_map(fn, mesh=auto, in_specs=P("b"), out_specs=(P("b"),) * n_out)

    case("shard_map_band", mapped(band_grad, 2), [ab, b], [P("b"), P("b")], auto)
    case("shard_map_ode", mapped(ode_grad, 4), ode, [P("b")] * 4, auto)
    # Plain jit over Auto axes: the adapter cannot see the sharding; XLA gathers.
    case("auto_jit_gathers", band_grad, [ab, b], [P("b"), P("b")], auto)
    # Sharded along a core axis (M): gathered, by design.
    case("core_axis_gathers", bj.solveh_banded, [ab, b], [P(), P(None, "b")])
    Path(out).write_text(json.dumps(results))


# --------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, Any]:
    """The worker's results, from one subprocess for the whole module (fresh
    random inputs; BANDED_MNN_TEST_SEED replays a seed)."""
    seed = int(os.environ.get("BANDED_MNN_TEST_SEED", secrets.randbits(32)))
    print(f"random seed: {seed} (BANDED_MNN_TEST_SEED={seed} replays it)")
    out = tmp_path_factory.mktemp("jax_sharding") / "results.json"
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, __file__, str(seed), str(out)],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"seed {seed}\n{proc.stdout}\n{proc.stderr}"
    return json.loads(out.read_text())


def assert_equal_to_unsharded(result: dict[str, Any]) -> None:
    # Each system is solved by the same kernels either way; only sums over
    # the batch (gradients of shared arguments) change their order.
    assert result["error"] <= 1e-12 * max(1.0, result["scale"]), result["error"]


def assert_per_shard(result: dict[str, Any], all_reduce: bool = False) -> None:
    found = hlo_findings(result["hlo"])
    assert found["moving"] == [], found
    assert found["per_shard"] >= 1 and not found["full_batch"], found
    assert not found["batched_all_reduce"], found
    if not all_reduce:
        assert " all-reduce" not in result["hlo"]


@pytest.mark.parametrize(
    "name, specs",
    [
        ("band_forward", ["('b', None, None)", "('b',)", "('b', None, None)", "('b',)",
                          "('b', None, None)", "('b', None)"]),
        ("band_grad", ["('b', None, None)", "('b', None, None)"]),
        ("band_two_batch_axes", ["('b', None, None)", "(None, 'b', None, None)"]),
        ("ode_forward", ["('b', None, None, None)"]),
        ("ode_grad", ["('b', None, None, None, None)", "('b', None, None)",
                      "('b', None, None, None)", "('b', None)"]),
        ("ode_vmap", ["(None, 'b', None, None, None)"]),
    ],
)  # fmt: skip
def test_explicit_sharding_solves_per_shard(results, name, specs):
    """Plain jax.jit on arrays sharded over a mesh of explicit axes: equal
    results, still sharded along the batch, no data moved between devices."""
    result = results[name]
    assert_equal_to_unsharded(result)
    assert result["specs"] == specs
    assert_per_shard(result)


@pytest.mark.parametrize("name", ["band_grad_shared", "ode_grad_shared"])
def test_gradients_of_shared_arguments_are_summed_over_devices(results, name):
    """An argument shared by the batch (replicated) gets the sum of the
    devices' partial gradients: one all-reduce of arrays without a batch axis."""
    result = results[name]
    assert_equal_to_unsharded(result)
    assert result["specs"][0] == str((None,) * (3 if name.startswith("band") else 5))
    assert_per_shard(result, all_reduce=True)
    assert " all-reduce" in result["hlo"]


@pytest.mark.parametrize("name", ["shard_map_band", "shard_map_ode"])
def test_inside_shard_map(results, name):
    """Inside jax.shard_map the callbacks see each device's buffers; gradients work."""
    result = results[name]
    assert_equal_to_unsharded(result)
    assert all(spec.startswith("('b',") for spec in result["specs"])
    assert_per_shard(result)


@pytest.mark.parametrize("name", ["auto_jit_gathers", "core_axis_gathers"])
def test_gathering_is_detected(results, name):
    """The check above can fail: plain jit over Auto axes (sharding unknown
    while tracing) and sharding along a core axis gather the batch -- correct
    results, but a callback on the whole batch after an all-gather."""
    result = results[name]
    assert_equal_to_unsharded(result)
    found = hlo_findings(result["hlo"])
    assert "all-gather" in found["moving"] and found["full_batch"], found
    with pytest.raises(AssertionError):
        assert_per_shard(result)


if __name__ == "__main__":
    worker(int(sys.argv[1]), sys.argv[2])
