"""Sphinx configuration of the greyanom documentation."""

import os
import sys
from pathlib import Path

import greyanom

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

project = "greyanom"
author = "the greyanom developers"
copyright = "2026, the greyanom developers"
version = release = greyanom.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]

autosummary_generate = True
autodoc_default_options = {"members": True}
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
templates_path = ["_templates"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints", "_inventories"]
default_role = "obj"

html_theme = "pydata_sphinx_theme"
html_title = f"greyanom {release}"
html_theme_options = {"navigation_with_keys": False, "show_toc_level": 2}

# Inventories of the libraries we link to. The build machines have no internet, so each
# entry falls back to a small inventory kept in docs/_inventories (written by
# docs/_inventories/make_inventories.py from the objects our docs cite); links still point
# to the projects' real pages.
_INV = HERE / "_inventories"
intersphinx_mapping = {
    name: (url, (None, str(_INV / f"{name}.inv")))
    for name, url in {
        "python": "https://docs.python.org/3/",
        "numpy": "https://numpy.org/doc/stable/",
        "scipy": "https://docs.scipy.org/doc/scipy/",
        "sklearn": "https://scikit-learn.org/stable/",
        "pandas": "https://pandas.pydata.org/docs/",
        "matplotlib": "https://matplotlib.org/stable/",
        "torch": "https://docs.pytorch.org/docs/stable/",
    }.items()
}
intersphinx_timeout = 2

sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "abort_on_example_error": True,
    "only_warn_on_example_error": False,
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
}

os.environ.setdefault("MPLBACKEND", "Agg")
