"""The one thing pyproject.toml cannot say: the repository's top-level ``notebooks/`` folder ships
inside the package as ``saetools.notebooks`` (so ``pip install`` and ``saetools notebooks DIR``
give users the notebooks, and an editable install maps it to the repository folder)."""

from setuptools import find_namespace_packages, setup

setup(
    packages=[*find_namespace_packages(include=["saetools", "saetools.*"]), "saetools.notebooks"],
    package_dir={"saetools.notebooks": "notebooks"},
)
