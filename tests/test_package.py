"""Package hygiene: imports, lint, executable documentation, examples, benchmarks."""

from __future__ import annotations

import importlib.util
import linecache
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_loads_no_gpu_or_deep_learning_library():
    code = (
        "import sys, banded_mnn; "
        "bad = [m for m in ('cupy', 'numba.cuda', 'numba_cuda', 'torch', 'jax') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_import_does_not_load_numba_until_first_use():
    code = "import sys, banded_mnn; sys.exit(1 if 'numba' in sys.modules else 0)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is installed by the test extra")
def test_ruff_clean():
    result = subprocess.run(["ruff", "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("path", DOCS, ids=[p.name for p in DOCS])
def test_documentation_code_runs(path):
    from banded_mnn import _backends

    gpu = _backends.usable("cupy")[0]
    for number, block in enumerate(_python_blocks(path)):
        # The block's own text in linecache under a name of its own: tools
        # that read a function's source (inspect, torch.compile) see the
        # block, not the lines of the markdown file with the same numbers.
        name = f"<{path.name}, python block {number}>"
        linecache.cache[name] = (len(block), None, block.splitlines(True), name)
        code = compile(block, name, "exec")
        if block.startswith("# needs a CUDA GPU") and not gpu:
            continue  # compiled above; tools/gpu_check.py's test run executes it on a GPU
        exec(code, {"__name__": "__doc_example__"})


EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_is_tested(path):
    """tests/test_examples.py runs each example's quick mode and checks its metrics."""
    assert f'"{path.stem}"' in (ROOT / "tests" / "test_examples.py").read_text()


@pytest.mark.skipif(importlib.util.find_spec("asv") is None, reason="asv is in the test extra")
def test_asv_suite_is_discoverable():
    result = subprocess.run(
        ["asv", "check", "--python=same"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
