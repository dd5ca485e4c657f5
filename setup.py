"""The one thing pyproject.toml cannot say: a wheel carries the repository's top-level notebooks
as ``saetools/notebooks`` (so ``pip install`` users get them: ``saetools notebooks DIR``,
``saetools reproduce``). An editable install reads ``notebooks/`` in place instead."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

NOTEBOOKS = Path(__file__).resolve().parent / "notebooks"


class BuildPyWithNotebooks(build_py):
    def run(self):
        super().run()
        if self.editable_mode:
            return
        dest = Path(self.build_lib) / "saetools" / "notebooks"
        self.mkpath(str(dest))
        for notebook in sorted(NOTEBOOKS.glob("*.ipynb")):
            self.copy_file(str(notebook), str(dest / notebook.name))


setup(cmdclass={"build_py": BuildPyWithNotebooks})
