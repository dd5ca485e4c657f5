"""The pip user's path: build the wheel from the repository's tracked files, install it into a fresh
virtual environment outside the repository, and use it from an empty folder.

The new environment installs nothing from the network: it sees the already-installed dependencies
through a ``.pth`` line (a plain path: the editable saetools of the test environment is not
activated there) and nbconvert's templates through a link, and ``pip install --no-index`` of the wheel resolves its declared dependencies
against them, so a dependency missing from the wheel's metadata fails the install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(cmd, cwd, env=None, timeout=600):
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs a git checkout of saetools (the wheel is built from its tracked files)")
    src = tmp_path_factory.mktemp("src")
    files = _run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], REPO).stdout
    for rel in filter(None, files.split("\0")):
        if (REPO / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, src / rel)
    dist = tmp_path_factory.mktemp("dist")
    build = _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", dist, src], src)
    log = build.stdout + build.stderr
    # setuptools's own complaints (a deprecated license table, an editable-mode banner)
    assert "DeprecationWarning" not in log and "license" not in log.lower() and "!!" not in log, log
    (whl,) = dist.glob("saetools-*.whl")
    return whl


def test_the_wheel_carries_notebooks_models_and_saes(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {Path(n).name for n in names if n.startswith("saetools/notebooks/")}
    assert shipped == {p.name for p in (REPO / "notebooks").glob("*.ipynb")}
    assert any(n.startswith("saetools/models/bundled/tiny-ioi/") for n in names)
    assert any(n.startswith("saetools/saes/bundled/") for n in names)
    assert not any("__pycache__" in n or n.startswith(("tests/", "notebooks/")) for n in names)


@pytest.mark.slow
def test_wheel_install_runs_reproduce_from_an_empty_folder(wheel, tmp_path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path)
    py = venv / "bin" / "python"
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).stdout.strip())
    (site / "_saetools_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    (venv / "share" / "jupyter").mkdir(parents=True)  # nbconvert's templates (data files of a borrowed package)
    (venv / "share" / "jupyter" / "nbconvert").symlink_to(Path(sys.prefix) / "share" / "jupyter" / "nbconvert")
    _run([py, "-m", "pip", "install", "--no-index", "--quiet", "--no-build-isolation", wheel], tmp_path, env)

    work = tmp_path / "empty"
    work.mkdir()
    where = _run([py, "-c", "import saetools; print(saetools.__file__)"], work, env).stdout.strip()
    assert Path(where).is_relative_to(site), f"saetools imported from {where}, not from the new environment"

    kernel = _run([py, "-c", "from jupyter_client.kernelspec import KernelSpecManager as K; "
                       "print(K().get_kernel_spec('python3').argv[0])"], work, env).stdout.strip()
    assert Path(kernel).parent == py.parent, f"notebooks would run on {kernel}, not on the new environment"

    cli = venv / "bin" / "saetools"
    copied = _run([cli, "notebooks", "nbs"], work, env)
    assert "8 notebooks" in copied.stdout and len(list((work / "nbs").glob("*.ipynb"))) == 8
    rep = _run([cli, "reproduce", "--only", "00", "--out", "report"], work, env)
    assert "ok" in rep.stdout and "00_quickstart" in rep.stdout, rep.stdout
    assert (work / "report" / "00_quickstart.html").exists() and (work / "report" / "index.html").exists()
    assert "Traceback" not in rep.stderr and "WARNING" not in rep.stderr, rep.stderr

