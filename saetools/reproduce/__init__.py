"""Execute every notebook with one model and profile; write executed notebooks and HTML.

This is the engine of ``saetools reproduce`` and of the notebook tests: both run exactly the
notebooks users open, with parameters injected into the cell tagged ``parameters``.
"""

from __future__ import annotations

import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from saetools.data.files import atomic_file, atomic_write_text, check_writable_dir
from saetools.reproduce.report import export_html, write_index

__all__ = [
    "PROFILES", "MissingExtraError", "NotebookResult", "copy_notebooks", "execute_notebook", "find_notebooks", "notebooks_dir",
    "reproduce", "write_index",
]

PROFILES = ("smoke", "cpu", "test", "full")
"""The profiles every notebook offers."""


def notebooks_dir() -> Path:
    """The saetools notebooks that came with this install.

    A wheel (``pip install saetools``) carries them inside the package (``saetools/notebooks``);
    a clone of the repository (an editable install) has them in its top-level ``notebooks/``.
    """
    here = Path(__file__).resolve().parents[1]  # the saetools package
    for candidate in (here / "notebooks", here.parent / "notebooks"):
        if candidate.is_dir() and any(candidate.glob("*.ipynb")):
            return candidate
    raise FileNotFoundError(
        f"this saetools install ({here}) has no notebooks: reinstall it from a wheel or a clone of "
        "the repository, or pass --notebooks DIR"
    )


class MissingExtraError(ImportError):
    """A feature's optional dependencies are not installed; the message names the pip extra."""


def require_reproduce_extra() -> None:
    """``reproduce`` executes notebooks with papermill and exports them with nbconvert, which the
    default install leaves out: say how to add them, before any work starts."""
    import importlib.util

    missing = [m for m in ("papermill", "nbconvert", "ipykernel") if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtraError(f"saetools reproduce needs {', '.join(missing)}: pip install \"saetools[reproduce]\"")


def copy_notebooks(dest: str | Path, *, overwrite: bool = False) -> list[Path]:
    """Copy the saetools notebooks into ``dest`` (created if missing); returns the new files.

    Existing notebooks of the same name are kept unless ``overwrite`` (they may hold your edits):
    the whole copy is refused, naming them, before anything is written.
    """
    sources = find_notebooks(notebooks_dir())
    dest = check_writable_dir(dest, what="the notebooks")
    clash = [p.name for p in sources if (dest / p.name).exists()]
    if clash and not overwrite:
        raise FileExistsError(f"{dest} already has {', '.join(clash)}: pass --overwrite to replace them, "
                              "or choose another folder")
    return [atomic_write_text(dest / p.name, p.read_text(encoding="utf-8")) for p in sources]



@dataclass(frozen=True)
class NotebookResult:
    """Outcome of executing one notebook."""

    name: str
    ok: bool
    seconds: float
    executed: Path
    html: Path | None
    error: str | None = None
    """``"<exception type>: <message> (cell <n>)"`` when a cell failed."""
    error_type: str | None = None
    """The failing cell's exception type (``"ClaimFailed"``: a claim the run did not show)."""
    failed_cell: str | None = None
    """Source of the failing cell."""


def find_notebooks(directory: str | Path) -> list[Path]:
    """The notebooks of a directory, in name order (checkpoints skipped)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"notebook directory {directory} not found: pass --notebooks with a folder of notebooks, "
            "or leave it out to run the notebooks that came with saetools"
        )
    return sorted(p for p in directory.glob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def _local_kernel_manager(socket_dir: str):
    """Kernels talk to the runner over local (IPC) sockets rather than unencrypted TCP: nothing
    listens on a network port, and the kernel has no transport warning to print."""
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class LocalKernelManager(AsyncKernelManager):
        @default("transport")
        def _default_transport(self):
            return "ipc"

        @default("ip")
        def _default_ip(self):  # the sockets' path prefix: a private folder, not the notebook's
            return str(Path(socket_dir) / "ipc")

    return LocalKernelManager


def execute_notebook(
    path: str | Path,
    out_dir: str | Path,
    parameters: dict,
    *,
    timeout: int = 1200,
    kernel_name: str = "python3",
    write_html: bool = True,
) -> NotebookResult:
    """Execute one notebook with papermill; never raises for a failing notebook.

    The executed notebook (with outputs, also when a cell failed) goes to ``out_dir``.
    """
    import papermill as pm

    path, out_dir = Path(path), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    executed = out_dir / path.name
    t0 = time.perf_counter()
    error = error_type = failed_cell = None
    # papermill writes as it goes: run into a temporary file, so an interrupted run leaves the
    # previous executed notebook in place; a finished run (passing or failing) replaces it.
    with atomic_file(executed) as tmp, tempfile.TemporaryDirectory(prefix="saetools-kernel-") as sockets:
        try:
            pm.execute_notebook(
                str(path), str(tmp), parameters=parameters, kernel_name=kernel_name,
                progress_bar=False, execution_timeout=timeout, cwd=str(out_dir),
                kernel_manager_class=_local_kernel_manager(sockets),
            )
        except Exception as exc:  # a failing notebook is a result, not a crash of the runner
            if hasattr(exc, "ename"):  # papermill's PapermillExecutionError: the cell's own error
                error = f"{exc.ename}: {exc.evalue} (cell {exc.exec_count})"
                error_type, failed_cell = exc.ename, exc.source
            else:
                error = f"{type(exc).__name__}: {exc}".strip() or traceback.format_exc()
                error_type = type(exc).__name__
    html_path = None
    if write_html and executed.exists():
        html_path = export_html(executed, executed.with_suffix(".html"))
    return NotebookResult(path.stem, error is None, time.perf_counter() - t0, executed, html_path, error,
                          error_type, failed_cell)


def notebook_experiment(path: Path) -> str | None:
    """The experiment module a notebook runs (``NN_...`` is ``EXPERIMENTS[NN]``), if any."""
    from saetools.experiments import EXPERIMENTS

    prefix = Path(path).stem[:2]
    return EXPERIMENTS[int(prefix)] if prefix.isdigit() and int(prefix) < len(EXPERIMENTS) else None


def _check_full_profile_fits(model: str, paths: list[Path]) -> None:
    from saetools.experiments.budget import check_fits
    from saetools.models.loading import BUNDLED_MODELS, bundled_model_config, pretrained_repo

    if model in BUNDLED_MODELS:
        model_cfg = bundled_model_config(model)
    elif pretrained_repo(model) is not None:
        from transformer_lens.loading_from_pretrained import get_pretrained_model_config

        try:
            model_cfg = get_pretrained_model_config(model)
        except Exception:  # offline with nothing cached: loading the model says so, with the fix
            return
    else:  # a saved model's folder
        return
    check_fits([m for m in map(notebook_experiment, paths) if m], "full", model_cfg)


def reproduce(
    *, model: str, profile: str, out_dir: str | Path, notebooks: str | Path | None = None,
    only: list[str] | None = None,
) -> list[NotebookResult]:
    """Execute the notebooks (optionally only those whose name contains one of ``only``).

    ``notebooks`` is a folder of notebooks; by default the ones that came with saetools
    (:func:`notebooks_dir`), so the command works from any folder.

    Everything is checked before the first kernel starts: the model name, the profile, that
    there are notebooks to run, that ``out_dir`` can be written, and for the ``full`` profile
    that this machine's GPU can hold it (:func:`saetools.experiments.budget.check_fits`).

    Raises:
        saetools.experiments.budget.ProfileTooLargeError: the full profile with no GPU, or with
            less GPU memory than its estimated peak.
    """
    from saetools.models.loading import check_model_name

    require_reproduce_extra()
    check_model_name(model)
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: use one of {list(PROFILES)}")
    notebooks = notebooks_dir() if notebooks is None else notebooks
    all_paths = find_notebooks(notebooks)
    if not all_paths:
        raise FileNotFoundError(f"no notebooks (*.ipynb) in {Path(notebooks).resolve()}: pass --notebooks with the "
                                "folder of the saetools notebooks (notebooks/ in the repository)")
    paths = [p for p in all_paths if any(o in p.stem for o in only)] if only else all_paths
    if not paths:
        raise ValueError(f"no notebook name contains any of {only}; the notebooks are "
                         f"{[p.stem for p in all_paths]}")
    if profile == "full":
        _check_full_profile_fits(model, paths)
    out_dir = check_writable_dir(out_dir, what="the report")
    parameters = {"model_name": model, "profile": profile}
    results = []
    for p in tqdm(paths, desc="notebooks"):
        results.append(execute_notebook(p, out_dir, parameters))
    write_index(results, out_dir, parameters)
    return results
