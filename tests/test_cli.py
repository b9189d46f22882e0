"""The banded-mnn command."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from banded_mnn import _cli


def test_info_reports_backends(capsys):
    assert _cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "backend 'numba' (CPU): usable" in out
    assert "backend 'cupy' (GPU): NOT usable" in out
    assert "numpy" in out and "numba" in out


def test_demo_checks_against_scipy(capsys):
    result = _cli.demo(batch=20, steps=12, block=3, repeat=1, out=print)
    out = capsys.readouterr().out
    assert "check against SciPy: PASSED" in out
    assert result["passed"] == 1.0
    assert result["err_solve"] < 1e-10 and result["err_factor"] < 1e-10
    assert result["time_banded_mnn"] > 0 and result["time_scipy"] > 0


def test_demo_float32(capsys):
    assert _cli.main(["demo", "--batch", "9", "--steps", "5", "--block", "2", "--dtype",
                      "float32", "--repeat", "1"]) == 0  # fmt: skip
    assert "PASSED" in capsys.readouterr().out


def test_console_script_or_module_runs():
    command = shutil.which("banded-mnn")
    argv = [command, "info"] if command else [sys.executable, "-m", "banded_mnn._cli", "info"]
    result = subprocess.run(argv, capture_output=True, text=True, check=True)
    assert "usable" in result.stdout


def test_bench_prints_a_table(capsys):
    rows = _cli.bench(cases=[(8, 40, 3), (4, 30, 5)], repeat=1)
    out = capsys.readouterr().out
    assert out.count("| 8 | 40 | 3 |") == 3 and "speed-up" in out
    assert {r["routine"] for r in rows} == {"solveh_banded", "cholesky_banded", "cho_solve_banded"}
    assert all(r["time_banded_mnn"] > 0 and r["time_scipy"] > 0 for r in rows)


def test_bench_mnn_prints_a_table(capsys):
    cases = {"small": (3, 12, 2, 2, 3, False), "shared": (5, 10, 1, 1, 3, True)}
    rows = _cli.bench_mnn(cases=cases, repeat=1)
    out = capsys.readouterr().out
    assert "| small |" in out and "| shared |" in out and "speed-up" in out
    assert all(r["ours"] > 0 and r["blockwise"] > 0 and r["dense"] > 0 for r in rows)
    assert all(r["ours_vjp"] > 0 and r["blockwise_vjp"] > 0 for r in rows)


def test_info_reports_adapters(capsys):
    import importlib.util

    _cli.info()
    out = capsys.readouterr().out
    for name in ("torch", "jax"):
        expected = "usable (" if importlib.util.find_spec(name) else "NOT usable"
        assert f"adapter banded_mnn.{name}: {expected}" in out


def test_bench_blocks_prints_a_table(capsys):
    rows = _cli.bench_blocks(cases=[(2, 9, 2)], repeat=1, layer_cases=[(2, 12)])
    out = capsys.readouterr().out
    assert "| 2 | 9 | 2 |" in out and "| 2 | 12 |" in out
    assert all(row["sequential"] > 0 and row["cyclic"] > 0 for row in rows)
    assert [row.get("layer", False) for row in rows] == [False, True]


def test_bench_torch_cases(monkeypatch):
    # The command line names the cases; the timing itself is bench_torch's
    # (run by the asv benchmarks and the documentation's commands).
    calls = []
    monkeypatch.setattr(_cli, "bench_torch", lambda case, repeat: calls.append((case, repeat)))
    assert _cli.main(["bench-torch", "--case", "lorenz", "--repeat", "2"]) == 0
    assert _cli.main(["bench-torch"]) == 0
    assert calls == [((512, 50, 1, 1, 3), 2), ((16, 2048, 3, 3, 3), 7)]
    with pytest.raises(SystemExit):
        _cli.main(["bench-torch", "--case", "tiny"])
