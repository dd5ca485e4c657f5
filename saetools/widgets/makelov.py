"""Makelov et al. (2024) panels: an occlusion / over-splitting explorer and an edit playground.

Interactive with ipywidgets core controls (Colab and Jupyter) and with a static HTML fallback
(``.html()``) for exported notebooks or when ipywidgets is missing. As in
:mod:`saetools.widgets.ioi_panel`, outputs are ``ipywidgets.HTML`` values (figures as inline
SVG), never ``Output`` widgets, so headless notebook execution cannot hang on captured output.
No model code here:

* :class:`OverSplittingExplorer` takes precomputed over-splitting results, one per
  ``(node, attribute)``: anything with the ``summary`` / ``curve`` / ``scatter`` / ``target``
  fields of :class:`saetools.dictionaries.occlusion.OverSplitting` (and optionally the
  :func:`~saetools.dictionaries.occlusion.occlusion_table`). Pick node, attribute and value: the
  latents' precision-recall scatter (the greedy union's members numbered) and the union-F1 curve.
* :class:`EditPlayground` takes either a precomputed long table of END logits or a callable
  that computes one. Pick a prompt, an attribute and a counterfactual value: every edit's
  logits for the tokens of interest, their change from the clean run, the top prediction and
  whether it agrees with counterfactual patching (the edit-accuracy criterion of
  ``docs/makelov2024_supervised_dictionaries.md``).

Edit data (one row per prompt, attribute, value, edit and token)::

    prompt | attribute | value | edit | token | logit | top (optional)

``edit`` names the intervention (``"clean"``, ``"patch"`` for counterfactual patching, then e.g.
``"supervised arithmetic"``, ``"topk aware n=2"``); ``top`` is the edit's top END prediction
over the whole vocabulary. The callable form is ``fn(prompt, attribute, value)`` returning the
``edit | token | logit [| top]`` rows of that selection.
"""

from __future__ import annotations

import html
import io
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from saetools.widgets.html import OfflineHTML, WidgetWithFallback, table_html
from saetools.widgets.tables import human_column_name

__all__ = [
    "EditPlayground", "OverSplittingExplorer", "edit_table", "figure_svg", "occlusion_figure", "oversplitting_figure",
    "toy_occlusion_figure",
]

_EDIT_COLUMNS = ("edit", "token", "logit")


def figure_svg(fig) -> str:
    """A matplotlib figure as inline SVG markup; the figure is closed (never shown twice)."""
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    try:
        with plt.rc_context({"svg.fonttype": "none"}):  # text stays text: smaller, searchable
            fig.savefig(buf, format="svg", bbox_inches="tight")
    finally:
        plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]


# ---- over-splitting explorer ----------------------------------------------------------------------

def oversplitting_figure(result, value: str, *, title: str = ""):
    """Two panels for one value: per-latent precision vs recall, and union F1 vs latents in the union.

    Args:
        result: an over-splitting result (``scatter``, ``curve``, ``summary``, ``target``).
        value: the attribute value shown.
        title: figure title prefix (e.g. node and attribute).
    """
    import matplotlib.pyplot as plt

    sc = result.scatter[result.scatter.value == value]
    cu = result.curve[result.curve.value == value]
    row = result.summary[result.summary.value == value].iloc[0]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
    member = sc.union_step.notna()
    ax1.scatter(sc.recall[~member], sc.precision[~member], s=8, c="lightgrey", label="other latents")
    ax1.scatter(sc.recall[member], sc.precision[member], s=14, c=sc.union_step[member], cmap="viridis",
                label="greedy union (colour: step)")
    r = np.linspace(1e-3, 1, 200)
    for f in (0.5, result.target):  # iso-F1 curves: P = F R / (2R - F)
        with np.errstate(divide="ignore", invalid="ignore"):
            p = f * r / (2 * r - f)
        ok = (p > 0) & (p <= 1)
        ax1.plot(r[ok], p[ok], ls=":", c="grey", lw=0.8)
        ax1.annotate(f"F1={f:g}", (r[ok][-1], p[ok][-1]), fontsize=7, color="grey")
    ax1.set(xlabel="recall = |active and a=v| / |a=v|", ylabel="precision = |active and a=v| / |active|",
            xlim=(-0.02, 1.02), ylim=(-0.02, 1.05))
    ax1.set_title(f"{title} {value}: per-latent precision / recall".strip(), fontsize=9)
    ax1.legend(fontsize=7, loc="lower left")
    ax2.plot(cu.step.to_numpy(float), cu.union_f1.to_numpy(float), marker="o", ms=3, label="union F1 (greedy)")
    ax2.axhline(result.target, ls="--", c="C3", lw=0.8, label=f"target {result.target:g}")
    ax2.axhline(row.f1_dense, ls=":", c="grey", lw=0.8, label="latent firing everywhere")
    if np.isfinite(row["count"]):
        ax2.axvline(row["count"], c="C3", lw=0.8)
    count = "not reached" if not np.isfinite(row["count"]) else f"{int(row['count'])} latents"
    ax2.set(xlabel="latents in the union", ylabel="F1 of the union", ylim=(0, 1.02))
    ax2.set_title(f"union reaches F1 >= {result.target:g}: {count}", fontsize=9)
    ax2.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig



def toy_occlusion_figure(table: pd.DataFrame, *, ax=None):
    """Best latent F1 of both toy attributes vs ``alpha / beta`` (a
    :class:`~saetools.dictionaries.occlusion.ToyOcclusionResult` ``table``)."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.4))
    ax.plot(table.ratio, table.best_f1_a, marker="o", label="A (many values): best latent F1")
    ax.plot(table.ratio, table.best_f1_b, marker="s", label="B (binary): best latent F1")
    ax.plot(table.ratio, table.f1_dense_b, ls=":", c="grey", label="B: latent firing everywhere")
    ax.axvline(1.0, c="grey", lw=0.6)
    ax.set(xscale="log", xlabel="alpha / beta (norm of A's codes over B's)", ylabel="mean over values of max_j F1",
           ylim=(0, 1.02))
    ax.set_xticks(list(table.ratio), [f"{r:g}" for r in table.ratio])
    ax.set_title("toy occlusion: the weaker attribute loses its latents", fontsize=9)
    ax.legend(fontsize=7)
    return ax.figure


def occlusion_figure(table: pd.DataFrame, *, y: str = "best_f1", ax=None):
    """One point per (node, attribute) of an occlusion table: code-norm ratio vs ``y``
    (``best_f1`` or an edit-accuracy column), coloured by attribute."""
    import matplotlib.pyplot as plt

    if y not in table.columns:
        raise ValueError(f"column {y!r} not in the occlusion table (columns: {list(table.columns)})")
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.6))
    for attr, sel in table.groupby("attribute", sort=True):
        ax.scatter(sel.norm_ratio, sel[y], s=24, label=attr)
        if y == "best_f1":
            ax.scatter(sel.norm_ratio, sel.f1_dense, s=10, marker="_", c="grey")
    ax.axvline(1.0, c="grey", lw=0.6)
    ax.set(xscale="log", xlabel="code-norm ratio (RMS norm / strongest other attribute's)", ylabel=y)
    ax.set_title(f"occlusion: {y} vs code-norm ratio" + (" (grey: dense-latent F1)" if y == "best_f1" else ""),
                 fontsize=9)
    ax.legend(fontsize=7, title="attribute", title_fontsize=7)
    return ax.figure

class OverSplittingExplorer(WidgetWithFallback):
    """Pick a node and an attribute: precision-recall scatter of the latents and the union-F1 curve.

    Args:
        results: per ``(node, attribute)`` (strings), an over-splitting result.
        occlusion: optional occlusion table (columns ``node``, ``attribute``, ...): its row is
            shown above the figure.
    """

    def __init__(self, results: Mapping[tuple[str, str], object], *, occlusion: pd.DataFrame | None = None):
        if not results:
            raise ValueError("results is empty: pass {(node, attribute): over_splitting(...)} for at least one pair")
        for key, res in results.items():
            if not (isinstance(key, tuple) and len(key) == 2):
                raise ValueError(f"results keys must be (node, attribute) pairs, got {key!r}")
            missing = [f for f in ("summary", "curve", "scatter", "target") if not hasattr(res, f)]
            if missing:
                raise TypeError(f"results[{key!r}] has no {missing}; pass saetools.dictionaries.occlusion.over_splitting results")
        self.results = {(str(n), str(a)): r for (n, a), r in results.items()}
        self.occlusion = occlusion

    @property
    def nodes(self) -> list[str]:
        return list(dict.fromkeys(n for n, _ in self.results))

    def attributes(self, node: str) -> list[str]:
        return [a for n, a in self.results if n == node]

    def values(self, node: str, attribute: str) -> list[str]:
        return list(self.results[(node, attribute)].summary.value)

    def _body(self, node: str, attribute: str, value: str | None) -> tuple[str, str]:
        if (node, attribute) not in self.results:
            raise KeyError(f"no result for node {node!r}, attribute {attribute!r}; have {list(self.results)}")
        res = self.results[(node, attribute)]
        value = value if value is not None else self.values(node, attribute)[0]
        parts = [f"<b>{html.escape(node)}</b>, attribute <b>{html.escape(attribute)}</b>",
                 table_html(res.summary).html]
        if self.occlusion is not None:
            occ = self.occlusion[(self.occlusion.node.astype(str) == node) & (self.occlusion.attribute == attribute)]
            if len(occ):
                parts += ["<div>occlusion (code-norm ratio vs best latent F1):</div>", table_html(occ).html]
        return "\n".join(parts), figure_svg(oversplitting_figure(res, value, title=f"{node} {attribute}="))

    def html(self, node: str | None = None, attribute: str | None = None, value: str | None = None) -> OfflineHTML:
        """Static rendering of one selection (default: the first node, attribute and value)."""
        node = node if node is not None else self.nodes[0]
        attribute = attribute if attribute is not None else self.attributes(node)[0]
        text, svg = self._body(node, attribute, value)
        return OfflineHTML(f"{text}\n<div>{svg}</div>")

    def widget(self):
        """The interactive explorer (ipywidgets ``VBox``).

        Raises:
            ImportError: ipywidgets is not installed (use :meth:`html`).
        """
        import ipywidgets as w

        node = w.Dropdown(options=self.nodes, description="node")
        attr = w.Dropdown(options=self.attributes(node.value), description="attribute")
        value = w.Dropdown(options=self.values(node.value, attr.value), description="value")
        info, fig = w.HTML(), w.HTML()
        busy = [False]  # option updates fire change events: redraw once, at the end

        def refresh(*_):
            if busy[0] or attr.value is None or value.value is None:
                return
            info.value, fig.value = self._body(node.value, attr.value, value.value)

        def on_node(change):
            busy[0] = True
            try:
                attr.options = self.attributes(change["new"])
                value.options = self.values(change["new"], attr.value)
            finally:
                busy[0] = False
            refresh()

        def on_attr(change):
            if busy[0] or change["new"] is None:
                return
            busy[0] = True
            try:
                value.options = self.values(node.value, change["new"])
            finally:
                busy[0] = False
            refresh()

        node.observe(on_node, names="value")
        attr.observe(on_attr, names="value")
        value.observe(refresh, names="value")
        refresh()
        box = w.VBox([w.HBox([node, attr, value]), info, fig])
        box.controls = {"node": node, "attribute": attr, "value": value, "info": info, "figure": fig}
        return box


# ---- edit playground --------------------------------------------------------------------------------

def _check_edit_rows(df: pd.DataFrame, where: str) -> None:
    missing = [c for c in _EDIT_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{where} lacks columns {missing}; expected {list(_EDIT_COLUMNS)} (+ optional 'top'), "
                         f"got {list(df.columns)}")


def edit_table(rows: pd.DataFrame, *, clean: str = "clean", patch: str = "patch") -> pd.DataFrame:
    """One selection's edit rows as a wide table, one row per edit (in order of appearance).

    Columns: ``edit``, then ``top`` and ``agrees_with_patch`` (``top`` equals the ``patch``
    row's top) when the rows carry ``top``, then ``logit <token>`` per token and, when a
    ``clean`` row exists, ``change <token>`` (the logit minus the clean run's).
    """
    _check_edit_rows(rows, "edit rows")
    order = list(dict.fromkeys(rows.edit))
    tokens = list(dict.fromkeys(rows.token))
    logits = rows.pivot_table(index="edit", columns="token", values="logit", aggfunc="first").reindex(order)[tokens]
    out = pd.DataFrame({"edit": order})
    if "top" in rows.columns:
        top = rows.groupby("edit", sort=False).top.first().reindex(order)
        out["top"] = top.to_numpy()
        if patch in order:
            out["agrees_with_patch"] = (top == top[patch]).to_numpy()
    for t in tokens:
        out[f"logit {t}"] = logits[t].to_numpy()
    if clean in order:
        for t in tokens:
            out[f"change {t}"] = (logits[t] - logits.loc[clean, t]).to_numpy()
    return out


def _edit_html(table: pd.DataFrame) -> str:
    span = max(1e-9, float(np.nanmax(np.abs(table.filter(like="change ").to_numpy()), initial=0.0)))

    def cell(col, v):
        if isinstance(v, (float, np.floating)):
            style = ""
            if col.startswith("change ") and np.isfinite(v):
                a = min(1.0, abs(v) / span) * 0.6
                style = f" style='background:rgba({'33,102,172' if v > 0 else '178,24,43'},{a:.2f})'"
            return f"<td{style}>{v:+.3f}</td>" if col.startswith("change ") else f"<td{style}>{v:.3f}</td>"
        return f"<td>{html.escape(str(v))}</td>"

    head = "".join(f"<th>{html.escape(str(human_column_name(c)))}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(cell(c, v) for c, v in zip(table.columns, r)) + "</tr>"
                   for r in table.itertuples(index=False))
    return f"<table border=0><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class EditPlayground(WidgetWithFallback):
    """Pick a prompt, an attribute and a counterfactual value: compare supervised and SAE edits.

    Args:
        data: the long edit table (module docstring), or a callable
            ``fn(prompt, attribute, value) -> rows`` (``edit | token | logit [| top]``).
        prompts: with a callable, the prompts offered (default: those in ``data``).
        values: with a callable, per attribute the counterfactual values offered.
        clean / patch: the ``edit`` labels of the unedited run and of counterfactual patching.
    """

    def __init__(self, data: pd.DataFrame | Callable[[str, str, str], pd.DataFrame], *,
                 prompts: Sequence[str] | None = None, values: Mapping[str, Sequence[str]] | None = None,
                 clean: str = "clean", patch: str = "patch"):
        self.clean, self.patch = clean, patch
        if callable(data):
            if not prompts or not values:
                raise ValueError("with a callable, pass prompts=[...] and values={attribute: [...]}")
            self.fn, self.data = data, None
            self.prompts = list(prompts)
            self._values = {a: list(v) for a, v in values.items()}
        else:
            _check_edit_rows(data, "data")
            for c in ("prompt", "attribute", "value"):
                if c not in data.columns:
                    raise ValueError(f"data lacks column {c!r} (columns: {list(data.columns)})")
            if data.empty:
                raise ValueError("data is empty")
            self.fn, self.data = None, data
            self.prompts = list(dict.fromkeys(data.prompt)) if prompts is None else list(prompts)
            self._values = None

    def attributes(self, prompt: str) -> list[str]:
        if self.data is None:
            return list(self._values)
        return list(dict.fromkeys(self.data.attribute[self.data.prompt == prompt]))

    def values(self, prompt: str, attribute: str) -> list[str]:
        if self.data is None:
            return list(self._values.get(attribute, []))
        d = self.data
        return list(dict.fromkeys(d.value[(d.prompt == prompt) & (d.attribute == attribute)].astype(str)))

    def rows(self, prompt: str, attribute: str, value: str) -> pd.DataFrame:
        """The ``edit | token | logit [| top]`` rows of one selection."""
        if self.fn is not None:
            out = self.fn(prompt, attribute, value)
            _check_edit_rows(out, "the callable's result")
            return out
        d = self.data
        out = d[(d.prompt == prompt) & (d.attribute == attribute) & (d.value.astype(str) == str(value))]
        if out.empty:
            raise KeyError(f"no edit rows for prompt {prompt!r}, attribute {attribute!r}, value {value!r}")
        return out

    def table(self, prompt: str, attribute: str, value: str) -> pd.DataFrame:
        """:func:`edit_table` of one selection."""
        return edit_table(self.rows(prompt, attribute, value), clean=self.clean, patch=self.patch)

    def _body(self, prompt: str, attribute: str, value: str) -> str:
        t = self.table(prompt, attribute, value)
        head = (f"<div style='font-family:monospace'>{html.escape(prompt)}</div>"
                f"<div>edit {html.escape(attribute)} &rarr; <b>{html.escape(str(value))}</b>; "
                f"change = logit minus the clean run's (blue up, red down)</div>")
        return head + _edit_html(t)

    def html(self, prompt: str | None = None, attribute: str | None = None, value: str | None = None) -> OfflineHTML:
        """Static rendering of one selection (default: the first prompt, attribute and value)."""
        prompt = prompt if prompt is not None else self.prompts[0]
        attribute = attribute if attribute is not None else self.attributes(prompt)[0]
        value = value if value is not None else self.values(prompt, attribute)[0]
        return OfflineHTML(self._body(prompt, attribute, value))

    def widget(self):
        """The interactive playground (ipywidgets ``VBox``).

        Raises:
            ImportError: ipywidgets is not installed (use :meth:`html`).
        """
        import ipywidgets as w

        prompt = w.Dropdown(options=self.prompts, description="prompt", layout=w.Layout(width="95%"))
        attr = w.Dropdown(options=self.attributes(prompt.value), description="attribute")
        value = w.Dropdown(options=self.values(prompt.value, attr.value), description="value")
        out = w.HTML()
        busy = [False]

        def refresh(*_):
            if busy[0] or attr.value is None or value.value is None:
                return
            try:
                out.value = self._body(prompt.value, attr.value, value.value)
            except (KeyError, ValueError) as e:  # shown, not raised, in an interactive panel
                out.value = f"<span style='color:#b00'>{html.escape(str(e))}</span>"

        def reoptions(*_):
            busy[0] = True
            try:
                if attr.value not in self.attributes(prompt.value):
                    attr.options = self.attributes(prompt.value)
                value.options = self.values(prompt.value, attr.value)
            finally:
                busy[0] = False
            refresh()

        prompt.observe(reoptions, names="value")
        attr.observe(lambda ch: None if busy[0] else reoptions(), names="value")
        value.observe(refresh, names="value")
        refresh()
        box = w.VBox([prompt, w.HBox([attr, value]), out])
        box.controls = {"prompt": prompt, "attribute": attr, "value": value, "output": out}
        return box
