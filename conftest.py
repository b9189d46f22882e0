"""Collection rules for the whole repository (tests/ has its own fixtures).

The adapters' modules import torch or JAX; where one is not installed their
doctests are not collected.  CI installs both (see the README's test command),
so there everything runs.
"""

import importlib.util

collect_ignore = [
    path
    for path, module in (("banded_mnn/torch", "torch"), ("banded_mnn/jax", "jax"))
    if importlib.util.find_spec(module) is None
]
