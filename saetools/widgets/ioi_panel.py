"""IOI panel: pick or type a prompt, toggle head ablations, watch the logit difference.

Interactive with ipywidgets (core controls only, which work on Colab and in Jupyter) and a
static HTML fallback (:meth:`IOIPanel.html`) for exported notebooks or when ipywidgets is
missing. No model code here: the panel calls a *backend* (duck-typed, see
:class:`PanelBackend`; :class:`saetools.circuits.panel.IOIBackend` is the one that runs a
TransformerLens model) and draws the data it returns.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from saetools.widgets.html import OfflineHTML, WidgetWithFallback, attention_heads_html, table_html

__all__ = ["PanelBackend", "IOIPanel"]

Head = tuple[int, int]


@runtime_checkable
class PanelBackend(Protocol):
    """What the panel needs: example prompts, the model's shape, and ``run``."""

    examples: list[str]
    n_layers: int
    n_heads: int

    def run(self, text: str, ablated: Sequence[Head] = ()):
        """Return an object with ``str_tokens, io, s, logit_diff, top, patterns, ablated``."""


def _label(head: Head) -> str:
    return f"L{head[0]}H{head[1]}"


def _summary_html(run) -> str:
    who = (f"IO = <b>{html.escape(run.io)}</b>, S = <b>{html.escape(run.s)}</b>, "
           f"logit difference logit(IO) &minus; logit(S) = <b>{run.logit_diff:+.3f}</b>"
           if run.io else "no IO / S pair found (a name once and a name twice): logit difference n/a")
    abl = ", ".join(_label(h) for h in run.ablated) or "none"
    return (f"<div style='font-family:monospace'>{html.escape(run.text)}</div>"
            f"<div>{who}</div><div>mean-ablated heads: {abl}</div>")


class IOIPanel(WidgetWithFallback):
    """An IOI explorer over a backend (see the module docstring).

    Args:
        backend: a :class:`PanelBackend`.
        heads: heads whose attention is shown by default (the first is selected).
    """

    def __init__(self, backend: PanelBackend, *, heads: Sequence[Head] = ((0, 0),)):
        if not backend.examples:
            raise ValueError("the backend has no example prompts; build it from a non-empty batch")
        self.backend = backend
        self.heads = [tuple(h) for h in heads] or [(0, 0)]

    def _attention(self, run, heads: Sequence[Head]) -> OfflineHTML:
        pattern = run.patterns[[h[0] for h in heads], [h[1] for h in heads]]
        return attention_heads_html(run.str_tokens, pattern, [_label(h) for h in heads])

    def html(self, text: str | None = None, ablated: Sequence[Head] = (),
             heads: Sequence[Head] | None = None) -> OfflineHTML:
        """Static rendering: summary, top predictions and attention patterns of ``heads``."""
        run = self.backend.run(text or self.backend.examples[0], ablated)
        parts = [_summary_html(run), "<h4>Top predictions</h4>", table_html(run.top).html,
                 "<h4>Attention</h4>", self._attention(run, heads or self.heads).html]
        return OfflineHTML("\n".join(parts))

    def widget(self):
        """The interactive panel (ipywidgets ``VBox``).

        Raises:
            ImportError: ipywidgets is not installed (use :meth:`html` instead).
        """
        import ipywidgets as w

        b = self.backend
        all_heads = [(l, h) for l in range(b.n_layers) for h in range(b.n_heads)]
        options = [(_label(h), h) for h in all_heads]
        pick = w.Dropdown(options=b.examples, description="example", layout=w.Layout(width="95%"))
        text = w.Text(value=b.examples[0], description="prompt", continuous_update=False,
                      layout=w.Layout(width="95%"))
        abl = w.SelectMultiple(options=options, description="ablate", rows=min(8, len(options)))
        head = w.Dropdown(options=options, value=self.heads[0], description="attention")
        # HTML widgets rather than Output widgets: no captured-output messages to route, which
        # keeps headless execution (nbclient / papermill) from waiting on a lost message.
        summary, preds, attn = w.HTML(), w.HTML(), w.HTML()

        def refresh(*_):
            try:
                run = b.run(text.value, list(abl.value))
            except ValueError as e:  # a bad prompt is shown, not raised, in an interactive panel
                summary.value = f"<span style='color:#b00'>{html.escape(str(e))}</span>"
                return
            summary.value = _summary_html(run)
            preds.value = table_html(run.top).html
            attn.value = self._attention(run, [head.value]).as_iframe(height=420)

        pick.observe(lambda ch: setattr(text, "value", ch["new"]), names="value")
        for control in (text, abl, head):
            control.observe(refresh, names="value")
        refresh()
        return w.VBox([pick, text, w.HBox([abl, head]), summary, w.HBox([preds, attn])])
