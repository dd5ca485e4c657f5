"""Latent dashboards: data -> HTML, and an ipywidgets browser. No model code in here.

Takes :class:`saetools.latents.LatentData` (see :func:`saetools.latents.gather_latent_data`).
Token highlighting is circuitsvis's ``colored_tokens`` rendered from its bundled JavaScript
(``local_src``), so dashboards display and save offline; the histogram is inline SVG.
"""

from __future__ import annotations

import html
from collections.abc import Mapping

from saetools.widgets.html import OfflineHTML

__all__ = ["dashboard_html", "latent_browser", "latent_html"]

_SEP = " ⏎ "


def _contexts_html(data, latent: int) -> str:
    import circuitsvis as cv

    ctxs = data.contexts.get(latent, [])
    if not ctxs:
        return "<p><i>never fires on the evaluated tokens</i></p>"
    toks, vals = [], []
    for c in ctxs:
        toks += [*c.tokens, _SEP]
        vals += [*c.acts, 0.0]
    top = max(c.max_act for c in ctxs)
    return cv.tokens.colored_tokens(toks, vals, min_value=0.0, max_value=top).local_src


def _histogram_svg(counts: list[int], edges: list[float], width: int = 320, height: int = 90) -> str:
    if not counts or max(counts) == 0:
        return ""
    bw, top = width / len(counts), max(counts)
    bars = "".join(
        f"<rect x='{i * bw:.1f}' y='{height - 14 - c / top * (height - 20):.1f}' width='{bw - 1:.1f}' "
        f"height='{c / top * (height - 20):.1f}' fill='#d62728'><title>{edges[i]:.3g}-{edges[i + 1]:.3g}: {c}</title></rect>"
        for i, c in enumerate(counts))
    axis = (f"<text x='0' y='{height - 2}' font-size='10'>{edges[0]:.3g}</text>"
            f"<text x='{width}' y='{height - 2}' font-size='10' text-anchor='end'>{edges[-1]:.3g}</text>")
    return f"<svg width='{width}' height='{height}' role='img'>{bars}{axis}</svg>"


def _token_list(items, color: str) -> str:
    rows = "".join(f"<tr><td style='color:{color}'><code>{html.escape(repr(t))}</code></td>"
                   f"<td style='text-align:right'>{v:+.3f}</td></tr>" for t, v in items)
    return f"<table style='font-size:12px'>{rows}</table>"


def latent_html(data, latent: int) -> OfflineHTML:
    """One latent: frequency, activation histogram, promoted / suppressed tokens, top contexts."""
    if latent not in data.latents:
        raise ValueError(f"latent {latent} was not gathered for {data.sae_name}; gathered: {data.latents}")
    counts, edges = data.histogram[latent]
    logit = ""
    if latent in data.promoted:
        logit = ("<div style='display:flex;gap:24px'>"
                 f"<div><b>promotes</b>{_token_list(data.promoted[latent], '#1f77b4')}</div>"
                 f"<div><b>suppresses</b>{_token_list(data.suppressed[latent], '#d62728')}</div></div>")
    body = (f"<div style='font-family:sans-serif'><h4>{html.escape(data.sae_name)} — latent {latent}</h4>"
            f"<p>fires on {data.frequency[latent]:.3%} of tokens; histogram of non-zero activations:</p>"
            f"{_histogram_svg(counts, edges)}{logit}<p><b>top activating contexts</b> "
            f"(separated by ⏎)</p>{_contexts_html(data, latent)}</div>")
    return OfflineHTML(body)


def _as_datas(datas) -> dict:
    """``{sae name: LatentData}`` with at least one latent each, or a clear error."""
    datas = datas if isinstance(datas, Mapping) else {getattr(datas, "sae_name", "?"): datas}
    if not datas:
        raise ValueError("no latent data to show: pass saetools.latents.gather_latent_data(...) for one or more SAEs")
    for name, data in datas.items():
        if not hasattr(data, "latents") or not hasattr(data, "frequency"):
            raise TypeError(f"{name!r}: expected saetools.latents.LatentData, got {type(data).__name__}")
        if not len(data.latents):
            raise ValueError(f"{name!r} has no gathered latents: pass latents=[...] (or more prompts) to "
                             "saetools.latents.gather_latent_data")
    return dict(datas)


def dashboard_html(datas: Mapping[str, object] | object) -> OfflineHTML:
    """Static fallback: every gathered latent of every SAE on one page (collapsible)."""
    datas = _as_datas(datas)
    parts = []
    for name, data in datas.items():
        items = "".join(f"<details><summary>latent {j} ({data.frequency[j]:.2%})</summary>"
                        f"{latent_html(data, j).html}</details>" for j in data.latents)
        parts.append(f"<h3>{html.escape(name)}</h3>{items}")
    return OfflineHTML("".join(parts))


def latent_browser(datas: Mapping[str, object] | object):
    """An ipywidgets panel: pick an SAE and a latent; the dashboard updates (core widgets only)."""
    import ipywidgets as widgets

    datas = _as_datas(datas)
    names = list(datas)
    sae_pick = widgets.Dropdown(options=names, value=names[0], description="SAE")
    latent_pick = widgets.Dropdown(options=datas[names[0]].latents, description="latent")
    out = widgets.HTML()

    def show(*_):
        data = datas[sae_pick.value]
        if latent_pick.value in data.latents:
            out.value = latent_html(data, latent_pick.value).html

    def change_sae(*_):
        latent_pick.options = datas[sae_pick.value].latents
        latent_pick.value = datas[sae_pick.value].latents[0]
        show()

    sae_pick.observe(change_sae, names="value")
    latent_pick.observe(show, names="value")
    show()
    return widgets.VBox([widgets.HBox([sae_pick, latent_pick]), out])
