"""Sphinx configuration: the Markdown pages (MyST) plus an API reference
generated from the numpydoc docstrings.  Built in CI with warnings as errors
(``tests/test_docs.py``)."""

import banded_mnn

project = "banded_mnn"
author = "banded_mnn developers"
release = version = banded_mnn.__version__
copyright = "2026, banded_mnn developers"

extensions = [
    "myst_parser",
    "numpydoc",
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build"]
myst_heading_anchors = 3
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
autodoc_typehints = "none"
html_theme = "pydata_sphinx_theme"
html_title = "banded_mnn"
html_theme_options = {"navigation_with_keys": False}
