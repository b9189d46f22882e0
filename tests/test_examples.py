"""Every script in examples/ runs in its quick mode; its metrics are checked."""

from __future__ import annotations

import importlib.util
import os
import runpy
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run(name: str, monkeypatch, tmp_path, **kwargs) -> dict:
    """``main(quick=True)`` of ``examples/<name>.py``, in a scratch directory."""
    if importlib.util.find_spec("matplotlib") is None or importlib.util.find_spec("tqdm") is None:
        pytest.skip("the examples extra (matplotlib, tqdm): see the README")
    monkeypatch.chdir(tmp_path)  # figures are written to the working directory
    namespace = runpy.run_path(str(EXAMPLES / f"{name}.py"))
    result = namespace["main"](quick=True, **kwargs)
    assert result["passed"], result
    return result


def test_factor_once_solve_many(monkeypatch, tmp_path):
    result = run("factor_once_solve_many", monkeypatch, tmp_path)
    assert result["max_difference"] < 1e-10


def test_skip_failed_systems(monkeypatch, tmp_path):
    result = run("skip_failed_systems", monkeypatch, tmp_path)
    assert result["failed"] >= 1 and np.isfinite(result["loss"])


def test_fit_ode_coefficients(monkeypatch, tmp_path):
    result = run("fit_ode_coefficients", monkeypatch, tmp_path)
    assert result["loss_end"] < 0.1 * result["loss_start"]
    assert np.all(result["rel_err"] < 0.2)


def test_ode_validation(monkeypatch, tmp_path):
    result = run("ode_validation", monkeypatch, tmp_path)
    for (name, central), errors in result["errors"].items():
        assert errors[-1] < errors[0], (name, central, errors)  # falls with the step size
    assert (tmp_path / "ode_validation.png").stat().st_size > 10_000


def test_long_sequences(monkeypatch, tmp_path):
    result = run("long_sequences", monkeypatch, tmp_path)
    assert 0.8 < result["memory_slope"] < 1.2  # linear memory in T
    assert all(r[5] < 1e-6 for r in result["rows"] if r[5] is not None)  # agrees with dense
    assert (tmp_path / "long_sequences.png").exists()


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch: see the README")
def test_noisy_sine(monkeypatch, tmp_path):
    result = run("noisy_sine", monkeypatch, tmp_path)
    assert result["loss_end"] < 0.3 * result["loss_start"]
    assert (tmp_path / "noisy_sine.png").exists()


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax: see the README")
def test_noisy_sine_jax(monkeypatch, tmp_path):
    result = run("noisy_sine_jax", monkeypatch, tmp_path)
    assert result["loss_end"] < 0.3 * result["loss_start"]


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch: see the README")
def test_lorenz_discovery(monkeypatch, tmp_path):
    result = run("lorenz_discovery", monkeypatch, tmp_path)
    assert result["spurious"] == 0
    assert result["mean_relative_error"] < 0.05  # quick mode; the default run reaches < 1%
    assert max(result["errors"].values()) < 0.1


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch: see the README")
def test_kdv(monkeypatch, tmp_path):
    result = run("kdv", monkeypatch, tmp_path)
    assert np.isfinite(result["nmse"]) and result["nmse_first_9"] < result["nmse"]
    assert (tmp_path / "kdv.png").exists()


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch: see the README")
def test_ddp_training(monkeypatch, tmp_path):
    result = run("ddp_training", monkeypatch, tmp_path)
    assert result["world_size"] == 2 and result["replica_spread"] == 0.0
    assert result["threads_per_process"] == max(1, (os.cpu_count() or 1) // 2)
    assert result["loss_end"] < 0.5 * result["loss_start"]
    assert np.mean(result["losses"][-5:]) < np.mean(result["losses"][:5])


@pytest.mark.skipif(importlib.util.find_spec("distributed") is None, reason="dask: see the README")
def test_out_of_core(monkeypatch, tmp_path):
    result = run("out_of_core", monkeypatch, tmp_path)
    assert result["max_residual"] < 1e-12 and result["peak_fraction_of_ram"] <= 0.25
    assert result["band_gb"] >= 0.2 and result["tasks"] <= 6 * result["chunks"]
    assert result["throughput_gbs"] > 0 and result["in_memory_gbs"] > 0
