"""Per-system status in a training loop: detect indefinite systems without exceptions.

A network that emits ODE coefficients can, early in training, produce a batch in
which a few normal matrices are (numerically) indefinite.  ``solveh_banded_ex``
returns, from the same pass, an ``info`` array (0 = solved, k > 0 = leading minor
of order k failed) and NaN solutions for the failed systems, so the loop can
mask them out of the loss instead of aborting the whole batch.

Run ``python examples/skip_failed_systems.py`` (``--quick`` for a small size).
"""

from __future__ import annotations

import argparse

import numpy as np

import banded_mnn as bm
from banded_mnn.problems import random_spd_band


def main(quick: bool = False) -> dict[str, float]:
    batch, m, u = (32, 40, 4) if quick else (1024, 400, 8)
    rng = np.random.default_rng(1)
    ab = random_spd_band((batch,), m, u, rng=rng)
    broken = rng.choice(batch, size=3, replace=False)
    ab[broken, u, m // 2] = -5.0  # corrupt one diagonal entry of three systems
    b = rng.standard_normal((batch, m, 1))

    x, info = bm.solveh_banded_ex(ab, b)
    failed = np.flatnonzero(info)
    status = dict(zip(failed.tolist(), info[failed].tolist(), strict=True))
    print(f"{failed.size} of {batch} systems failed (index: minor order): {status}")
    ok = info == 0
    loss = float(np.mean(x[ok] ** 2))  # a loss over the systems that solved
    print(f"loss over the {ok.sum()} good systems: {loss:.4f}")
    passed = set(failed.tolist()) == set(broken.tolist()) and np.isfinite(loss)
    passed = passed and bool(np.isnan(x[~ok]).all()) and bool((info[failed] == m // 2 + 1).all())
    return {"failed": float(failed.size), "loss": loss, "passed": passed}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small problem, runs in seconds")
    main(parser.parse_args().quick)
