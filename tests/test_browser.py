"""In a real browser (Debian's Chromium driven by Playwright): JupyterLab runs notebook 01 and both
of its interactive widgets respond; an exported report page works with the network blocked.

Marked ``browser``: ``make test`` runs them after the rest of the suite. Without Chromium,
Playwright or JupyterLab they are skipped with the reason, except under CI (``CI=true``), where
they must run. Screenshots go to ``test-artifacts/`` (or ``$SAETOOLS_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from saetools.experiments import wang2022_ioi
from saetools.reproduce import execute_notebook, notebooks_dir
from saetools.reproduce.report import FALLBACK_CLASS, WIDGET_VIEW

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("SAETOOLS_TEST_ARTIFACTS", REPO / "test-artifacts"))
NOTEBOOK = "01_ioi_circuit.ipynb"


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    missing = []
    if found is None:
        missing.append("Chromium (apt-get install chromium)")
    for module in ("playwright", "jupyterlab"):
        try:
            __import__(module)
        except ImportError:
            missing.append(f"{module} (pip install -e '.[dev]')")
    if missing:
        reason = "browser tests need " + ", ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return found


@pytest.fixture(scope="module")
def browser():
    chromium = _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyterlab(tmp_path):
    """JupyterLab on localhost over a folder holding notebook 01; yields (url, folder)."""
    root = tmp_path / "lab"
    root.mkdir()
    shutil.copy(notebooks_dir() / NOTEBOOK, root / NOTEBOOK)
    port, token = _free_port(), secrets.token_hex(16)
    settings = tmp_path / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)  # render every cell (JupyterLab 4 leaves cells out of view undrawn)
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "config"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "ws"), "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings")}
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
           "--ServerApp.open_browser=False", "--ServerApp.allow_root=True", "--LabApp.news_url=", "--LabApp.check_for_updates_class="
           "jupyterlab.NeverCheckForUpdate"]
    log = open(tmp_path / "jupyterlab.log", "w")
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert proc.poll() is None, (tmp_path / "jupyterlab.log").read_text()[-3000:]
                time.sleep(0.5)
        else:
            pytest.fail("JupyterLab did not start within 90 s:\n" + (tmp_path / "jupyterlab.log").read_text()[-3000:])
        yield f"http://127.0.0.1:{port}/lab/tree/{NOTEBOOK}?token={token}", root
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _logit_diff(text: str) -> float:
    m = re.search(r"logit\(S\) = ([+-]\d+\.\d+)", text)
    assert m, f"no logit difference in the panel: {text[:300]!r}"
    return float(m.group(1))


def test_jupyterlab_runs_notebook_01_and_its_widgets_respond(browser, jupyterlab):
    url, _ = jupyterlab
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(60_000)
    page.goto(url)
    page.wait_for_function("window.jupyterapp && document.querySelector('.jp-Notebook')", timeout=120_000)
    page.evaluate("""async () => {  // the notebook is open and its kernel is ready
        const nb = window.jupyterapp.shell.currentWidget;
        await nb.context.ready;
        await nb.sessionContext.ready;
        while (nb.sessionContext.session?.kernel?.status !== 'idle') await new Promise(r => setTimeout(r, 200));
    }""")
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
    try:
        # the last cell's output: the claims table (a headline claim's words appear nowhere else)
        page.get_by_text(wang2022_ioi.HEADLINES["circuit is necessary (Wang et al.'s bar)"].claim).first.wait_for(
            timeout=300_000)
    finally:
        _shot(page, "jupyterlab-notebook-01")

    # The IOI panel: ablating heads changes the logit difference it shows.
    panel = page.locator(".widget-vbox").filter(has=page.locator(".widget-select-multiple")).first
    panel.scroll_into_view_if_needed()
    summary = panel.locator(".widget-html").filter(has_text="logit difference").first
    before = _logit_diff(summary.inner_text())
    panel.locator(".widget-select-multiple select").select_option(label=["L0H3", "L3H2"])
    page.wait_for_function(
        "([el, old]) => !el.innerText.includes(old)", arg=[summary.element_handle(), f"{before:+.3f}"], timeout=60_000)
    after = _logit_diff(summary.inner_text())
    assert after != before
    assert "L0H3" in summary.inner_text() and "L3H2" in summary.inner_text()
    _shot(page, "jupyterlab-ioi-panel")

    # The latent dashboard: pick a latent, its page shows the top activating contexts, drawn live.
    dashboard = page.locator(".widget-vbox").filter(has=page.locator("iframe")).filter(
        has=page.locator(".widget-dropdown", has_text="latent")).last
    dashboard.scroll_into_view_if_needed()
    pick = dashboard.locator(".widget-dropdown", has_text="latent").locator("select")
    options = pick.locator("option").all_inner_texts()
    assert len(options) >= 2, options
    pick.select_option(label=options[1])
    frame = dashboard.frame_locator("iframe")
    frame.locator(f"h4:has-text('latent {options[1]}')").wait_for(timeout=60_000)
    assert "top activating contexts" in frame.locator("body").inner_text()
    drawn = frame.locator("div[id^='circuits-vis-']").first
    drawn.locator("span, div").first.wait_for(timeout=60_000)  # circuitsvis's React render ran
    assert len(drawn.inner_text().strip()) > 0
    dashboard.scroll_into_view_if_needed()
    _shot(page, "jupyterlab-latent-dashboard")


def test_an_exported_report_works_offline(browser, tmp_path):
    result = execute_notebook(notebooks_dir() / NOTEBOOK, tmp_path, {"model_name": "tiny-ioi", "profile": "smoke"})
    assert result.ok, result.error
    nb = nbformat.read(result.executed, as_version=4)
    n_widgets = sum(WIDGET_VIEW in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    assert n_widgets >= 2  # the IOI panel and the latent browser, at least

    context = browser.new_context(offline=True)
    requested, errors = [], []
    context.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:")
                  else (requested.append(route.request.url), route.abort()))
    page = context.new_page()
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(result.html.as_uri())
    page.wait_for_load_state("load")
    page.wait_for_timeout(1500)  # module scripts (circuitsvis) have run
    _shot(page, "report-offline")

    assert not requested, f"the page asked the network for {requested[:5]}"
    assert not errors, f"errors in the page: {errors[:5]}"
    assert page.locator(f".{FALLBACK_CLASS}").count() == n_widgets
    drawn = page.locator("div[id^='circuits-vis-']")
    assert drawn.count() >= 2
    empty = page.evaluate("Array.from(document.querySelectorAll(\"div[id^='circuits-vis-']\"))"
                          ".filter(d => d.childElementCount === 0).map(d => d.id)")
    assert not empty, f"circuitsvis drew nothing in {empty}"
    (ARTIFACTS / "report-offline-summary.json").write_text(json.dumps(
        {"widgets": n_widgets, "circuitsvis": drawn.count()}, indent=1))
