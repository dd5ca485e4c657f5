"""Every notebook in notebooks/ runs on the bundled model in its smoke profile and passes its own
checks; and runs with ``model_name="gpt2"`` (the offline stand-in) to its checks. The same
engine as ``saetools reproduce``."""

import collections
import hashlib
import re
from pathlib import Path

import nbformat
import pytest

from saetools.reproduce import execute_notebook, find_notebooks
from saetools.reproduce.report import FALLBACK_CLASS, WIDGET_VIEW
from saetools.widgets.html import circuitsvis_bundle

NOTEBOOKS = find_notebooks(Path(__file__).parents[1] / "notebooks")


def test_there_are_notebooks():
    assert any(p.name == "00_quickstart.ipynb" for p in NOTEBOOKS)


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_passes_its_checks(path, tmp_path):
    result = execute_notebook(path, tmp_path, {"model_name": "tiny-ioi", "profile": "smoke"})
    assert result.ok, result.error
    check_output_hygiene(nbformat.read(result.executed, as_version=4))
    check_report_page(result.html.read_text(), nbformat.read(result.executed, as_version=4))


def check_output_hygiene(nb) -> None:
    """What a reader sees: no progress bar left unfinished (red), no figure shown twice, nothing
    on stderr (kernel or profiler noise)."""
    states = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    red = [m["state"] for m in states.values() if m.get("state", {}).get("bar_style") == "danger"]
    assert not red, f"{len(red)} progress bars ended unfinished (red): {red[:2]}"
    images = collections.Counter(hashlib.sha1(o["data"]["image/png"].encode()).hexdigest()
                                 for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {}))
    assert all(n == 1 for n in images.values()), "a figure is displayed more than once"
    stderr = [o["text"] for c in nb.cells for o in c.get("outputs", []) if o.get("name") == "stderr"]
    assert not stderr, f"stderr output: {stderr[:3]}"
    heads = re.findall(r"<thead>(.*?)</thead>", "".join(
        o["data"]["text/html"] for c in nb.cells for o in c.get("outputs", []) if "text/html" in o.get("data", {})), re.S)
    raw = sorted({h for block in heads for h in re.findall(r"<th[^>]*>([^<]*)</th>", block) if "_" in h})
    assert not raw, f"tables show code names as column names: {raw}"


def check_report_page(page: str, nb) -> None:
    """The exported page stands alone: nothing from a network, circuitsvis's bundle once, and a
    static fallback for every widget the notebook displayed."""
    assert not re.search(r"""<(script|link|img|iframe)\b[^>]*\b(src|href)=["']?(https?:)?//""", page), \
        "the page loads something from the network"
    assert "cdn.jsdelivr" not in page and "unpkg.com" not in page and "cdnjs" not in page
    assert page.count(circuitsvis_bundle()) <= 1
    n_widgets = sum(WIDGET_VIEW in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    fallbacks = len(re.findall(rf"""class=["']{FALLBACK_CLASS}["']""", page))
    assert fallbacks == n_widgets and WIDGET_VIEW not in page, (fallbacks, n_widgets)


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_on_gpt2_to_its_check(path, tmp_path, gpt2_hub):
    """The Colab path, offline: ``model_name="gpt2"`` on the stand-in hub (GPT-2's real config and
    tokenizer, random weights) at the ``test`` profile. Every cell must run; random weights need
    not show the paper's claims, so the only failure accepted is a ``ClaimFailed`` raised by the
    experiment's own ``check`` in the last cell."""
    result = execute_notebook(path, tmp_path, {"model_name": "gpt2", "profile": "test"}, write_html=False)
    if not result.ok:
        assert result.error_type == "ClaimFailed", result.error
        assert re.search(r"^(?:claims = )?\w+\.check\(result\b", result.failed_cell, re.M), result.failed_cell
