"""The packages: everything under mcard/ and cupy_kernels/, and templates/ as mcard.card.templates.

pyproject.toml holds the metadata; only this mapping of a top-level folder into the package
needs setup.py (setuptools' pyproject tables cannot add a mapped package to a package search).
"""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["mcard*", "cupy_kernels*"]), "mcard.card.templates"],
      package_dir={"mcard.card.templates": "templates"})
