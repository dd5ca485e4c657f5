"""Offline HTML renderers built on circuitsvis.

circuitsvis's ``RenderedHTML._repr_html_`` probes the network on every display (and ``str()``
gives CDN code); :class:`OfflineHTML` always shows the bundled JavaScript instead, so
notebooks render the same with and without internet and never touch the network.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch
from torch import Tensor

__all__ = ["OfflineHTML", "WidgetWithFallback", "attention_heads_html", "table_html"]


class WidgetWithFallback:
    """Mixin for panels with ``widget()`` (ipywidgets) and ``html()`` (static): displaying the
    panel shows the live widget, or the static page where ipywidgets is not installed."""

    def _ipython_display_(self) -> None:
        from IPython.display import display

        try:
            display(self.widget())
        except ImportError:
            display(self.html())


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
    """A DataFrame as a compact HTML table (the static fallback of the panels)."""
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"table_html takes a pandas DataFrame, got {type(df).__name__}")
    return OfflineHTML(df.to_html(index=False, float_format=float_format.format, border=0))
