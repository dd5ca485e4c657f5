"""The HTML report of ``saetools reproduce``: pages that stand alone, offline.

Each executed notebook becomes one page (nbconvert's JupyterLab look, through the template in
``saetools/reproduce/templates/saetools_report``) that loads nothing from the network:

* no require.js, MathJax, Mermaid or widget renderer from a CDN;
* interactive widgets cannot run without a kernel, so each one is shown by its static fallback:
  the ``text/html`` that saetools's panels display beside the live widget, a drawn progress bar
  for tqdm's bars (from the widget state saved in the notebook), or a note naming the widget;
* circuitsvis's JavaScript bundle (about 1.3 MB, inlined by every circuitsvis render) is written
  once per page.

The index page lists every notebook with its status and time, the run's date, commit, package
versions and device, and the claims tables the notebooks produced.
"""

from __future__ import annotations

import copy
import datetime as _dt
import html
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from saetools.data.files import atomic_write_text
from saetools.widgets.html import dedupe_circuitsvis

__all__ = ["CLAIMS_CSV_COLUMNS", "FALLBACK_CLASS", "claims_rows", "export_html", "run_info", "static_widget_outputs",
           "write_claims_csv", "write_index"]

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
FALLBACK_CLASS = "saetools-widget-fallback"
"""CSS class of every static stand-in for a widget on a report page."""

_TEMPLATE_DIR = Path(__file__).parent / "templates"
_VERSIONED = ("saetools", "torch", "transformer-lens", "sae-lens", "circuitsvis", "ipywidgets", "nbconvert")


def _widget_states(nb) -> dict:
    return nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})


def _progress_fallback(model_id: str, states: dict) -> str | None:
    """tqdm's notebook bar is an HBox of (HTML description, progress, HTML counts): draw it."""
    box = states.get(model_id, {})
    if box.get("model_name") != "HBoxModel":
        return None
    kids = [states.get(str(c).removeprefix("IPY_MODEL_"), {}) for c in box.get("state", {}).get("children", [])]
    bars = [k for k in kids if k.get("model_name") in ("FloatProgressModel", "IntProgressModel")]
    texts = [k.get("state", {}).get("value", "") for k in kids if k.get("model_name") == "HTMLModel"]
    if len(bars) != 1 or len(texts) != 2:
        return None
    bar = bars[0]["state"]
    value, top = float(bar.get("value", 0)), float(bar.get("max", 0) or 1)
    return (f"<div class='{FALLBACK_CLASS}' data-widget='progress'>{texts[0]} "
            f"<progress value='{value:g}' max='{top:g}'></progress> {texts[1]}</div>")


def static_widget_outputs(nb):
    """A copy of ``nb`` in which every widget output is replaced by its static fallback."""
    nb = copy.deepcopy(nb)
    states = _widget_states(nb)
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if WIDGET_VIEW not in data:
                continue
            view = data.pop(WIDGET_VIEW)
            if "text/html" in data:
                data["text/html"] = f"<div class='{FALLBACK_CLASS}' data-widget='panel'>{data['text/html']}</div>"
                continue
            drawn = _progress_fallback(str(view.get("model_id", "")), states)
            if drawn is None:
                kind = html.escape(str(data.get("text/plain", "widget")).split("(")[0])
                drawn = (f"<div class='{FALLBACK_CLASS}' data-widget='other'><i>Interactive widget ({kind}): "
                         "open the notebook in Jupyter to use it.</i></div>")
            data["text/html"] = drawn
            data.pop("text/plain", None)
    nb.metadata.pop("widgets", None)
    return nb


def export_html(nb_path: str | Path, html_path: str | Path) -> Path:
    """Export an executed notebook to a standalone, offline HTML page (written atomically)."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = static_widget_outputs(nbformat.read(Path(nb_path), as_version=4))
    exporter = HTMLExporter(template_name="saetools_report", extra_template_basedirs=[str(_TEMPLATE_DIR)])
    body, _ = exporter.from_notebook_node(nb)
    return atomic_write_text(html_path, dedupe_circuitsvis(body))


def _commit() -> str:
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return "(installed package, not a git checkout)"
    try:
        out = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "(git unavailable)"
    return out.stdout.strip() or "(unknown)"


def run_info() -> dict[str, str]:
    """Date, commit, Python and package versions and device of this run, for the index page."""
    import torch

    info = {"date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"), "commit": _commit(),
            "python": platform.python_version()}
    for name in _VERSIONED:
        try:
            info[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info[name] = "not installed"
    info["device"] = (torch.cuda.get_device_name(0) if torch.cuda.is_available()
                      else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)")
    return info


CLAIMS_CSV_COLUMNS = ["notebook", "key", "claim", "paper", "run", "verdict", "why"]
"""The columns of ``claims.csv``: the notebook, then a claims table's key and columns."""


def claims_rows(executed: Path) -> list[dict]:
    """The rows of the claims table an executed notebook displayed (its JSON output), if any."""
    import nbformat

    from saetools.experiments.protocol import CLAIMS_MIMETYPE

    try:
        nb = nbformat.read(executed, as_version=4)
    except Exception:  # an unreadable notebook already shows as failed in its row
        return []
    return [row for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
            for row in o.get("data", {}).get(CLAIMS_MIMETYPE, {}).get("rows", [])]


def write_claims_csv(results, out_dir: Path) -> tuple[Path, list[dict]]:
    """``claims.csv``: every claims table of the run, one row per claim, with its notebook."""
    import csv
    import io

    rows = [{"notebook": r.name, **row} for r in results if r.executed.exists() for row in claims_rows(r.executed)]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CLAIMS_CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(out_dir / "claims.csv", buf.getvalue()), rows


def _claims_tables(executed: Path) -> str:
    """The displayed output of a notebook's ``claims = <experiment>.check(...)`` cell, if any."""
    import nbformat

    try:
        nb = nbformat.read(executed, as_version=4)
    except Exception:  # an unreadable notebook already shows as failed in its row
        return ""
    parts = []
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.source.lstrip().startswith("claims = "):
            parts += [o["data"]["text/html"] for o in cell.get("outputs", []) if "text/html" in o.get("data", {})]
    return "".join(parts)


_INDEX_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 1100px; color: #222 }
table { border-collapse: collapse; margin: 0.5em 0 1.5em } td, th { border: 1px solid #ccc; padding: 4px 8px }
th { background: #f3f3f3 } td.ok { color: #187a18 } td.failed { color: #b00; font-weight: bold }
pre { white-space: pre-wrap; margin: 0; font-size: 12px } dl { display: grid; grid-template-columns: max-content auto }
dt { font-weight: bold; padding-right: 1em } dd { margin: 0 }
"""


def write_index(results, out_dir: Path, parameters: dict, *, info: dict[str, str] | None = None) -> Path:
    """The index page: run facts, one row per notebook (status, time, error) and the claims tables
    (their rows also written to ``claims.csv``, :func:`write_claims_csv`)."""
    info = run_info() if info is None else info
    facts = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in
                    {**{k: repr(v) for k, v in parameters.items()}, **info}.items())
    rows = "\n".join(
        f"<tr><td><a href='{html.escape(r.html.name if r.html else r.executed.name)}'>{html.escape(r.name)}</a></td>"
        f"<td class='{'ok' if r.ok else 'failed'}'>{'ok' if r.ok else 'FAILED'}</td><td>{r.seconds:.1f} s</td>"
        f"<td><pre>{html.escape((r.error or '')[:2000])}</pre></td></tr>"
        for r in results
    )
    total = sum(r.seconds for r in results)
    n_ok = sum(r.ok for r in results)
    claims = "".join(f"<h3>{html.escape(r.name)}</h3>{t}" for r in results
                     if r.executed.exists() and (t := _claims_tables(r.executed)))
    _, claim_rows = write_claims_csv(results, out_dir)
    if claim_rows:
        counts = {}
        for row in claim_rows:
            counts[row["verdict"]] = counts.get(row["verdict"], 0) + 1
        claims = (f"<p>{len(claim_rows)} claims: " + ", ".join(f"{n} {html.escape(v)}" for v, n in counts.items())
                  + " (all of them in <a href='claims.csv'>claims.csv</a>).</p>" + claims)
    page = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>saetools reproduce</title>"
        f"<style>{_INDEX_CSS}</style></head><body><h1>saetools reproduce</h1><dl>{facts}</dl>"
        f"<h2>Notebooks</h2><p>{n_ok} of {len(results)} passed their checks; {total:.1f} s in all.</p>"
        "<table><tr><th>notebook</th><th>status</th><th>time</th><th>error</th></tr>"
        f"{rows}</table>"
        + (f"<h2>Claims</h2>{claims}" if claims else "")
        + "</body></html>"
    )
    return atomic_write_text(out_dir / "index.html", page)
