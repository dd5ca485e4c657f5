"""Latent dashboards: data -> HTML, and an ipywidgets browser. No model code in here.

Takes :class:`saetools.latents.LatentData` (see :func:`saetools.latents.gather_latent_data`).
Token highlighting is circuitsvis's ``ColoredTokens`` rendered from its bundled JavaScript, so
dashboards display and save offline; histograms are inline SVG with labelled axes. In the live
browser each latent's page sits in an ``<iframe srcdoc>``, where its scripts run (an
``ipywidgets.HTML`` value does not run scripts).
"""

from __future__ import annotations

import html
from collections.abc import Mapping

from saetools.widgets.html import OfflineHTML, WidgetWithFallback, circuitsvis_parts

__all__ = ["LatentBrowser", "dashboard_html", "latent_browser", "latent_html"]

_SEP = " ⏎ "
_SLOT = "<!--saetools:contexts-->"  # where a latent's drawn contexts go (escaped text cannot contain it)


def _contexts_props(data, latent: int) -> dict | None:
    ctxs = data.contexts.get(latent, [])
    if not ctxs:
        return None
    toks, vals = [], []
    for c in ctxs:
        toks += [*c.tokens, _SEP]
        vals += [*c.acts, 0.0]
    return {"tokens": toks, "values": vals, "minValue": 0.0, "maxValue": max(c.max_act for c in ctxs)}


def _contexts_text(data, latent: int) -> str:
    """The contexts as plain text (visible without JavaScript; the strongest token in bold)."""
    rows = []
    for c in data.contexts.get(latent, []):
        toks = [f"<b>{html.escape(t)}</b>" if a == c.max_act else html.escape(t) for t, a in zip(c.tokens, c.acts)]
        rows.append(f"<li><code>{''.join(toks)}</code> <small>({c.max_act:.3g})</small></li>")
    return f"<noscript><ol>{''.join(rows)}</ol></noscript>" if rows else ""


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _histogram_svg(counts: list[int], edges: list[float], *, xlabel: str, color: str,
                   width: int = 340, height: int = 120) -> str:
    """Bars with a labelled x axis (ends and middle) and y axis (0 and the largest count)."""
    if not counts or max(counts) == 0:
        return "<p><i>no values to plot</i></p>"
    left, bottom, top_pad = 34, 30, 6
    plot_w, plot_h = width - left - 6, height - bottom - top_pad
    bw, top = plot_w / len(counts), max(counts)
    bars = "".join(
        f"<rect x='{left + i * bw:.1f}' y='{top_pad + plot_h - c / top * plot_h:.1f}' width='{max(bw - 1, 0.5):.1f}' "
        f"height='{c / top * plot_h:.1f}' fill='{color}'><title>{_fmt(edges[i])} to {_fmt(edges[i + 1])}: {c}</title></rect>"
        for i, c in enumerate(counts))
    y0 = top_pad + plot_h
    mid = (edges[0] + edges[-1]) / 2
    axes = (f"<line x1='{left}' y1='{y0}' x2='{left + plot_w}' y2='{y0}' stroke='#444'/>"
            f"<line x1='{left}' y1='{top_pad}' x2='{left}' y2='{y0}' stroke='#444'/>"
            f"<text x='{left}' y='{y0 + 12}' font-size='10' text-anchor='start'>{_fmt(edges[0])}</text>"
            f"<text x='{left + plot_w / 2}' y='{y0 + 12}' font-size='10' text-anchor='middle'>{_fmt(mid)}</text>"
            f"<text x='{left + plot_w}' y='{y0 + 12}' font-size='10' text-anchor='end'>{_fmt(edges[-1])}</text>"
            f"<text x='{left + plot_w / 2}' y='{height - 2}' font-size='11' text-anchor='middle'>{html.escape(xlabel)}</text>"
            f"<text x='{left - 3}' y='{y0}' font-size='10' text-anchor='end'>0</text>"
            f"<text x='{left - 3}' y='{top_pad + 9}' font-size='10' text-anchor='end'>{top}</text>"
            f"<text x='10' y='{top_pad + plot_h / 2}' font-size='11' text-anchor='middle' "
            f"transform='rotate(-90 10 {top_pad + plot_h / 2})'>count</text>")
    return f"<svg width='{width}' height='{height}' role='img' aria-label='{html.escape(xlabel)} histogram'>{bars}{axes}</svg>"


def _token_list(items, color: str) -> str:
    rows = "".join(f"<tr><td style='color:{color}'><code>{html.escape(repr(t))}</code></td>"
                   f"<td style='text-align:right'>{v:+.3f}</td></tr>" for t, v in items)
    return f"<table style='font-size:12px'>{rows}</table>"


def _latent_body(data, latent: int) -> tuple[str, dict | None]:
    """One latent's page without its circuitsvis script, and the contexts' props for it."""
    if latent not in data.latents:
        raise ValueError(f"latent {latent} was not gathered for {data.sae_name}; gathered: {data.latents}")
    url = data.neuronpedia_url(latent)
    link = f" · <a href='{html.escape(url)}' target='_blank' rel='noopener'>Neuronpedia</a>" if url else ""
    counts, edges = data.histogram[latent]
    plots = [f"<div><div><b>activations</b> (where it fires)</div>{_histogram_svg(counts, edges, xlabel='activation', color='#d62728')}</div>"]
    if latent in data.logit_histogram:
        lc, le = data.logit_histogram[latent]
        plots.append(f"<div><div><b>direct logit effect</b> (all tokens)</div>"
                     f"{_histogram_svg(lc, le, xlabel='logit effect of the decoder direction', color='#1f77b4')}</div>")
    logit = ""
    if latent in data.promoted:
        logit = ("<div style='display:flex;gap:24px'>"
                 f"<div><b>promotes</b>{_token_list(data.promoted[latent], '#1f77b4')}</div>"
                 f"<div><b>suppresses</b>{_token_list(data.suppressed[latent], '#d62728')}</div></div>")
    props = _contexts_props(data, latent)
    contexts = (f"<p><b>top activating contexts</b> (strongest first, separated by ⏎)</p>{_contexts_text(data, latent)}"
                if props else "<p><i>never fires on the evaluated tokens</i></p>")
    body = (f"<div style='font-family:sans-serif' class='saetools-latent' data-latent='{latent}'>"
            f"<h4>{html.escape(data.sae_name)} — latent {latent}{link}</h4>"
            f"<p>fires on {data.frequency[latent]:.3%} of tokens</p>"
            f"<div style='display:flex;gap:24px;flex-wrap:wrap'>{''.join(plots)}</div>{logit}{contexts}"
            f"<div class='saetools-contexts'>{_SLOT}</div></div>")
    return body, props


def _render(pages: list[tuple[str, dict | None]]) -> str:
    """Pages with their contexts drawn by one circuitsvis script (the bundle inlined once)."""
    drawn = [props for _, props in pages if props is not None]
    if not drawn:
        return "".join(body.replace(_SLOT, "") for body, _ in pages)
    divs, script = circuitsvis_parts([("ColoredTokens", props) for props in drawn])
    slots = iter(divs)
    return "".join(body.replace(_SLOT, next(slots) if props is not None else "") for body, props in pages) + script


def latent_html(data, latent: int) -> OfflineHTML:
    """One latent: frequency, histograms of its activations and of its direct logit effect,
    promoted / suppressed tokens, top activating contexts, and its Neuronpedia page if any."""
    return OfflineHTML(_render([_latent_body(data, latent)]))


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


def _skipped_note(data) -> str:
    if not data.skipped:
        return ""
    s = data.skipped
    return (f"<p><small>default selection: {len(data.latents)} latents spread over the firing-frequency ranking; "
            f"skipped {s.get('dead', 0)} dead, {s.get('dense', 0)} dense and {s.get('bos', 0)} "
            "BOS-dominated latents</small></p>")


def dashboard_html(datas: Mapping[str, object] | object) -> OfflineHTML:
    """Static dashboard: every gathered latent of every SAE on one page (collapsible)."""
    datas = _as_datas(datas)
    pages, heads = [], []
    for name, data in datas.items():
        for j in data.latents:
            body, props = _latent_body(data, j)
            pages.append((f"<details><summary>{html.escape(name)}: latent {j} ({data.frequency[j]:.2%})</summary>"
                          f"{body}</details>", props))
        heads.append(f"<h3>{html.escape(name)}</h3>{_skipped_note(data)}")
    return OfflineHTML("".join(heads) + _render(pages))


class LatentBrowser(WidgetWithFallback):
    """Pick an SAE and a latent; its dashboard updates (ipywidgets core controls only).

    Displayed, it shows the live browser in Jupyter and :meth:`html` (every latent, static)
    where widgets cannot run.
    """

    def __init__(self, datas: Mapping[str, object] | object, *, height: int = 760):
        self.datas = _as_datas(datas)
        self.height = height

    def html(self) -> OfflineHTML:
        return dashboard_html(self.datas)

    def widget(self):
        """The interactive browser (ipywidgets ``VBox``).

        Raises:
            ImportError: ipywidgets is not installed (use :meth:`html` instead).
        """
        import ipywidgets as widgets

        datas, names = self.datas, list(self.datas)
        sae_pick = widgets.Dropdown(options=names, value=names[0], description="SAE")
        latent_pick = widgets.Dropdown(options=datas[names[0]].latents, description="latent")
        out = widgets.HTML()

        def show(*_):
            data = datas[sae_pick.value]
            if latent_pick.value in data.latents:
                out.value = latent_html(data, latent_pick.value).as_iframe(height=self.height)

        def change_sae(*_):
            latent_pick.options = datas[sae_pick.value].latents
            latent_pick.value = datas[sae_pick.value].latents[0]
            show()

        sae_pick.observe(change_sae, names="value")
        latent_pick.observe(show, names="value")
        show()
        return widgets.VBox([widgets.HBox([sae_pick, latent_pick]), out])


def latent_browser(datas: Mapping[str, object] | object) -> LatentBrowser:
    """A :class:`LatentBrowser` over ``{sae name: LatentData}`` (or one ``LatentData``)."""
    return LatentBrowser(datas)
