"""Every notebook in notebooks/ runs, on the bundled model in its smoke profile, and passes
its own checks. The same engine as ``saetools reproduce``."""

from pathlib import Path

import pytest

from saetools.reproduce import execute_notebook, find_notebooks

NOTEBOOKS = find_notebooks(Path(__file__).parents[1] / "notebooks")


def test_there_are_notebooks():
    assert any(p.name == "00_quickstart.ipynb" for p in NOTEBOOKS)


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_passes_its_checks(path, tmp_path):
    result = execute_notebook(path, tmp_path, {"model_name": "tiny-ioi", "profile": "smoke"}, write_html=False)
    assert result.ok, result.error
