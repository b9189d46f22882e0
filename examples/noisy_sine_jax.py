"""The noisy damped sine fit of ``noisy_sine.py`` in JAX: ``banded_mnn.jax.ode_forward``
inside a ``jax.jit``-compiled training step (``jax.value_and_grad`` and Adam
written with ``jax.numpy``), float64.

Run ``python examples/noisy_sine_jax.py`` (``--quick``: 60 steps).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from banded_mnn.jax import ode_forward

jax.config.update("jax_enable_x64", True)


def data(seed: int = 0, points: int = 500) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 50, points)
    y = (np.sin(2 * x) + 0.5 * rng.standard_normal(points)) * np.exp(-0.1 * x)
    return x, y


def predict(params: dict) -> jax.Array:
    steps = params["coefficients"].shape[0]
    u = ode_forward(params["coefficients"], jnp.ones((steps, 1)), jnp.zeros((0, 1, 0)),
                    jax.nn.sigmoid(params["step_logits"]))  # fmt: skip
    return u[:, 0, 0]


def main(quick: bool = False, seed: int = 0) -> dict:
    x, y = data(seed)
    target = jnp.asarray(y)
    key = jax.random.PRNGKey(seed)
    params = {
        "coefficients": jax.random.uniform(key, (len(x), 1, 1, 3), dtype=jnp.float64),
        "step_logits": jnp.full(len(x) - 1, np.log(0.1 / 0.9)),
    }
    lr, b1, b2 = 1e-2, 0.9, 0.999

    @jax.jit
    def train_step(params, m, v, k):
        loss, grads = jax.value_and_grad(lambda p: jnp.sum((predict(p) - target) ** 2))(params)
        m = jax.tree.map(lambda a, g: b1 * a + (1 - b1) * g, m, grads)
        v = jax.tree.map(lambda a, g: b2 * a + (1 - b2) * g * g, v, grads)
        params = jax.tree.map(
            lambda p, a, b: p - lr * (a / (1 - b1**k)) / (jnp.sqrt(b / (1 - b2**k)) + 1e-8),
            params, m, v,
        )  # fmt: skip
        return params, m, v, loss

    m = jax.tree.map(jnp.zeros_like, params)
    v = jax.tree.map(jnp.zeros_like, params)
    iterations = 60 if quick else 500
    losses = []
    start = time.perf_counter()
    for k in range(1, iterations + 1):
        params, m, v, loss = train_step(params, m, v, k)
        losses.append(float(loss))
        if k == 1 or k % (iterations // 5) == 0:
            print(f"step {k:4d}  loss {losses[-1]:.3f}")
    elapsed = time.perf_counter() - start
    print(
        f"loss: {losses[0]:.2f} -> {losses[-1]:.2f} in {iterations} jitted steps, {elapsed:.1f} s"
    )
    passed = bool(losses[-1] < 0.3 * losses[0] and (quick or losses[-1] < 12.0))
    print("PASSED" if passed else "FAILED")
    return {"loss_start": losses[0], "loss_end": losses[-1], "seconds": elapsed, "passed": passed}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few steps only")
    main(quick=parser.parse_args().quick)
