"""Offline HTML renderers built on circuitsvis.

circuitsvis's ``RenderedHTML._repr_html_`` probes the network on every display (and ``str()``
gives CDN code); :class:`OfflineHTML` always shows the bundled JavaScript instead, so
notebooks render the same with and without internet and never touch the network.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor

__all__ = [
    "OfflineHTML", "WidgetWithFallback", "attention_heads_html", "circuitsvis_bundle", "circuitsvis_html",
    "circuitsvis_parts",
    "dedupe_circuitsvis", "table_html",
]


@functools.cache
def circuitsvis_bundle() -> str:
    """circuitsvis's JavaScript bundle, as its ``local_src`` renders inline (about 1.3 MB)."""
    import circuitsvis

    path = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    return path.read_text(encoding="utf-8").replace("</script>", "")


def circuitsvis_parts(components: Sequence[tuple[str, dict]]) -> tuple[list[str], str]:
    """Several circuitsvis components drawn by one script that inlines the bundle once.

    Args:
        components: ``(component name, props)`` pairs, e.g. ``("ColoredTokens", {"tokens": [...],
            "values": [...]})``; props are JSON-serialisable.

    Returns:
        One ``<div>`` per component (place them anywhere on the page) and the ``<script>`` that
        draws them (place it after them).
    """
    divs, calls = [], []
    for name, props in components:
        div = f"circuits-vis-{uuid.uuid4().hex[:12]}"
        divs.append(f'<div id="{div}" style="margin: 15px 0;"></div>')
        calls.append(f"CircuitsVis.render({json.dumps(div)}, CircuitsVis.{name}, {json.dumps(props)});")
    script = f'<script crossorigin type="module">\n{circuitsvis_bundle()}\n' + "\n".join(calls) + "\n</script>"
    return divs, script


def circuitsvis_html(components: Sequence[tuple[str, dict]]) -> str:
    """:func:`circuitsvis_parts` as one HTML fragment (the components, then their script)."""
    divs, script = circuitsvis_parts(components)
    return "".join(divs) + script


def dedupe_circuitsvis(page: str) -> str:
    """A whole HTML page with circuitsvis's bundle defined once, in its head.

    Every circuitsvis render (circuitsvis's own ``local_src`` or :func:`circuitsvis_html`)
    inlines the bundle in a module script; module scripts run in document order, so the copy
    in the head defines ``CircuitsVis`` before any render call needs it.
    """
    bundle = circuitsvis_bundle()
    if bundle not in page:
        return page
    page = page.replace(bundle, "")
    head = f'<script type="module">\n{bundle}\nwindow.CircuitsVis = CircuitsVis;\n</script>'
    at = page.find("</head>")
    return page[:at] + head + page[at:] if at >= 0 else head + page


class WidgetWithFallback:
    """Mixin for panels with ``widget()`` (ipywidgets) and ``html()`` (static).

    Displaying the panel sends both: Jupyter shows the live widget, and wherever widgets cannot
    run (an exported report, a viewer without a kernel, no ipywidgets installed) the static page
    shows instead.
    """

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        fallback = self.html().html
        try:
            view = self.widget()
        except ImportError:
            return {"text/html": fallback}
        self._view = view  # the panel keeps its live widget
        return {**view._repr_mimebundle_(), "text/html": fallback}


class OfflineHTML:
    """HTML that renders in Jupyter and writes to a file, with no network access."""

    def __init__(self, html: str):
        self.html = html

    @classmethod
    def from_circuitsvis(cls, rendered) -> "OfflineHTML":
        """Wrap a circuitsvis ``RenderedHTML`` using its self-contained local source."""
        return cls(rendered.local_src)

    def _repr_html_(self) -> str:
        return self.html

    def __html__(self) -> str:
        return self.html

    def __str__(self) -> str:
        return self.html

    def as_iframe(self, *, height: int = 400) -> str:
        """The HTML inside an ``<iframe srcdoc>``, so its scripts run where it is inserted as
        markup (e.g. the value of an ``ipywidgets.HTML``, which does not execute scripts)."""
        import html as _html

        return (f"<iframe srcdoc=\"{_html.escape(self.html, quote=True)}\" "
                f"style='width:100%;height:{height}px;border:0'></iframe>")

    def save(self, path) -> None:
        """Write a standalone HTML file (atomically: an existing file is replaced only when done)."""
        from saetools.data.files import atomic_write_text

        atomic_write_text(path, f"<!doctype html><meta charset='utf-8'>{self.html}")


def attention_heads_html(
    str_tokens: Sequence[str],
    pattern: Tensor,
    head_names: Sequence[str] | None = None,
) -> OfflineHTML:
    """circuitsvis ``attention_heads`` for one prompt.

    Args:
        str_tokens: the prompt's tokens as strings (``model.to_str_tokens``).
        pattern: attention pattern ``[head, query_pos, key_pos]`` (rows sum to 1).
        head_names: labels such as ``"L3H1"``.
    """
    import circuitsvis as cv

    pattern = torch.as_tensor(pattern).detach().float().cpu()
    if pattern.ndim != 3 or pattern.shape[1] != len(str_tokens) or pattern.shape[2] != len(str_tokens):
        raise ValueError(
            f"pattern must be [head, {len(str_tokens)}, {len(str_tokens)}] for "
            f"{len(str_tokens)} tokens, got {tuple(pattern.shape)}"
        )
    rendered = cv.attention.attention_heads(
        attention=pattern, tokens=list(str_tokens),
        attention_head_names=list(head_names) if head_names is not None else None,
    )
    return OfflineHTML.from_circuitsvis(rendered)


def table_html(df: pd.DataFrame, *, float_format: str = "{:.3f}") -> OfflineHTML:
    """A DataFrame as a compact HTML table (the static fallback of the panels), column names in
    words (:func:`saetools.widgets.tables.human_column_names`)."""
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"table_html takes a pandas DataFrame, got {type(df).__name__}")
    from saetools.widgets.tables import human_column_names

    return OfflineHTML(human_column_names(df).to_html(index=False, float_format=float_format.format, border=0))
