"""Figures of :mod:`saetools.experiments.makelov2024_supervised_dictionaries` (Makelov, Lange & Nanda 2024).

Each function takes a :class:`saetools.experiments.makelov2024_supervised_dictionaries.Result` and returns a matplotlib
figure whose axes name the metric's definition.

See ``docs/makelov2024_supervised_dictionaries.md`` for the method and where saetools differs from
the authors' code.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from saetools.experiments.protocol import subplots
from saetools.tasks import ioi

__all__ = ["figures", "plot_approximation", "plot_edits", "plot_interpretability", "plot_occlusion"]


def plot_approximation(result):
    """Sufficiency and necessity per node set and dictionary."""
    t = result.approximation
    sets = list(dict.fromkeys(t.nodes))
    fig, axes = subplots(1, 2, figsize=(13, 0.5 * len(t.dictionary.unique()) * len(sets) / 2 + 2.5), sharey=True)
    # sufficiency = (LD_recon - LD_mean) / (LD_clean - LD_mean); necessity = (LD_clean - LD_nec) / (LD_clean - LD_mean)
    for ax, col, title in ((axes[0], "sufficiency", "Sufficiency: logit difference kept by the reconstruction alone"),
                           (axes[1], "necessity", "Necessity: logit difference lost when the reconstruction is removed")):
        piv = t.pivot_table(index="nodes", columns="dictionary", values=col, sort=False).loc[sets]
        piv.plot.barh(ax=ax, width=0.8, legend=ax is axes[1])
        ax.axvline(1.0, color="gray", lw=0.8)
        ax.axvline(0.9, color="gray", lw=0.8, ls="--")
        ax.set(title=title, xlabel=f"{col} (1 = as the clean run)", ylabel="node set")
        ax.title.set_fontsize(9)
    axes[1].legend(title="dictionary", fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


def plot_edits(result):
    """Edit accuracy (x) vs weight removed (y), interpretation-aware and -agnostic."""
    e = result.edits
    sections = list(dict.fromkeys(e.section))
    colors = dict(zip(sections, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4))
    markers = dict(zip([v for v in e.dictionary.unique() if v not in ("none", "patch", "supervised")], "osD^v<>"))
    fig, axes = subplots(1, 2, figsize=(14, 5), sharex=True, sharey=True)
    for ax, method, title in ((axes[0], "aware", "interpretation-aware (F1-guided), x = latents exchanged"),
                              (axes[1], "greedy", "interpretation-agnostic (greedy), x = latents exchanged")):
        for (sec, var), g in e[e.method == method].groupby(["section", "dictionary"], sort=False):
            g = g.sort_values("n")
            ax.plot(g.accuracy, g.weight_removed, marker=markers[var], color=colors[sec], alpha=0.8, ms=5, lw=0.8)
        sup = e[(e.dictionary == "supervised") & (e.method == "arithmetic")]
        none = e[e.method == "none"]
        for _, r in sup.iterrows():
            ax.scatter(r.accuracy, r.weight_removed, marker="*", s=200, color=colors[r.section], edgecolor="k", zorder=5)
        for _, r in none.iterrows():
            ax.axvline(r.accuracy, color=colors[r.section], lw=0.6, ls=":")
        ax.set(title=title, xlabel="edit accuracy (agreement of the top END token with counterfactual patching)")
        ax.title.set_fontsize(9)
    axes[0].set_ylabel("weight removed (share of the reconstruction the removed latents carry)")
    handles = [plt.Line2D([], [], color=c, lw=2, label=s) for s, c in colors.items()]
    handles += [plt.Line2D([], [], color="k", marker=m, ls="", label=v) for v, m in markers.items()]
    handles += [plt.Line2D([], [], color="k", marker="*", ms=12, ls="", label="supervised (arithmetic)"),
                plt.Line2D([], [], color="k", ls=":", label="no edit")]
    axes[1].legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


def plot_interpretability(result):
    """Best-latent F1 per attribute value and mean-max cosine with supervised codes, per SAE variant."""
    attrs = list(ioi.ATTRIBUTES)
    fig, axes = subplots(2, len(attrs), figsize=(14, 6.5))
    for j, attr in enumerate(attrs):
        for v, g in result.f1[result.f1.attribute == attr].groupby("variant", sort=False):
            axes[0, j].hist(g.f1, bins=20, range=(0, 1), histtype="step", lw=1.5, label=v)
        axes[0, j].set(title=f"{attr}: best latent F1 per value", xlabel="F1 of the best latent", ylabel="attribute values x nodes")
        c = result.cosine[result.cosine.attribute.str.split(",").map(lambda a, attr=attr: attr in a)]
        for v, g in c.groupby("variant", sort=False):
            axes[1, j].hist(g.cosine, bins=20, range=(0, 1), histtype="step", lw=1.5, label=v)
        axes[1, j].set(title=f"{attr}: max cosine of each supervised code with a decoder row",
                       xlabel="cosine similarity", ylabel="supervised codes x nodes")
        for ax in axes[:, j]:
            ax.title.set_fontsize(9)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_occlusion(result):
    """Left: the toy sweep (best F1 of each attribute vs alpha/beta). Middle and right: real nodes,
    code-norm ratio vs best latent F1 (all SAE variants) and vs the supervised single-node edit
    accuracy. Drawn with :mod:`saetools.widgets.makelov`'s figures."""
    from saetools.widgets.makelov import occlusion_figure, toy_occlusion_figure

    fig, axes = subplots(1, 3, figsize=(17, 4.5))
    toy_occlusion_figure(result.toy.table, ax=axes[0])
    occlusion_figure(result.occlusion, y="best_f1", ax=axes[1])
    per_node = result.occlusion.drop_duplicates(["node", "attribute"])
    if "accuracy_supervised_arithmetic" in per_node.columns:
        occlusion_figure(per_node, y="accuracy_supervised_arithmetic", ax=axes[2])
    fig.tight_layout()
    return fig


def figures(result) -> dict[str, Figure]:
    """Every headline figure: ``{"approximation", "edits", "interpretability", "occlusion"}``."""
    return {"approximation": plot_approximation(result), "edits": plot_edits(result),
            "interpretability": plot_interpretability(result), "occlusion": plot_occlusion(result)}
