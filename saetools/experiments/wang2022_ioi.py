"""The IOI circuit (Wang et al. 2022, "Interpretability in the Wild"): logit difference by
template, activation patching of the residual stream and of every head, the discovered circuit
and its faithfulness. Behind ``notebooks/01_ioi_circuit.ipynb``; see ``docs/wang2022_ioi.md``.
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import pandas as pd
import torch
from matplotlib.figure import Figure

from saetools.circuits import Circuit, Discovery, Faithfulness, discover_circuit
from saetools.circuits.mechanism import MechanismEvidence, mechanism_evidence
from saetools.circuits.patching import default_corruption, patch_heads, patch_resid
from saetools.experiments.protocol import (
    Claims,
    ClaimsTable,
    Headline,
    Profiles,
    require_model,
    subplots,
    tf32_on_cuda,
)
from saetools.tasks import ioi
from saetools.widgets.plots import heatmap, scatter_roles

__all__ = ["BUNDLED_EXPECTED_FAILURES", "Config", "Result", "check", "figures", "run"]

HEAD_PATCHES: tuple[tuple[str, str], ...] = (("z", "all"), ("q", "END"), ("k", "all"), ("v", "all"))
"""(component, position) of the per-head patching sweeps shown."""
ABC_DROP_MIN = 0.5
"""The ABC corruption lowers the mean logit difference by at least this much (nats)."""
KEPT_MIN = 0.7
"""The circuit alone keeps at least this fraction of the logit difference."""
REMOVED_MIN = 0.5
"""Ablating the circuit removes at least this fraction of the logit difference."""


@dataclass(frozen=True, kw_only=True)
class Config(Profiles):
    """What to measure."""

    n_prompts: int = 120
    """IOI prompts (Wang et al.'s templates, names that are one token for the model)."""
    seed: int = 0
    """Seeds the prompts; the ABC corruption uses ``seed + 1``."""

    PROFILES: ClassVar[Mapping[str, Mapping[str, Any]]] = {"smoke": {}, "cpu": {"n_prompts": 400}, "test": {"n_prompts": 8},
                                                              "full": {"n_prompts": 400}}
    """Named configurations: ``"cpu"`` (the bundled model trained to convergence: the papers' comparisons, at most 10 minutes on 2 CPU cores), ``"smoke"`` (a CPU minute) or ``"full"`` (more prompts)."""

    def __post_init__(self) -> None:
        if self.n_prompts < 8:
            raise ValueError(f"Config.n_prompts must be >= 8, got {self.n_prompts}")


@dataclass
class Result:
    """Everything the notebook shows."""

    config: Config
    clean: ioi.IOIBatch
    """The IOI prompts."""
    corrupted: ioi.IOIBatch
    """Their ABC counterparts (a third name replaces S2 and IO's first mention)."""
    by_template: pd.DataFrame
    """Mean logit difference per template: ``logit_diff`` (clean) and ``abc`` (corrupted,
    scored on the clean IO and S)."""
    logit_diff: float
    """Mean clean logit difference."""
    logit_diff_abc: float
    """Mean corrupted logit difference (clean answers)."""
    accuracy: float
    """Fraction of clean prompts with ``logit(IO) > logit(S)``."""
    resid: pd.DataFrame
    """Residual-stream patching (denoising), by layer and position; ``score`` 1 = clean run."""
    heads: dict[str, pd.DataFrame]
    """Per-head patching for each of :data:`HEAD_PATCHES`, keyed by component."""
    discovery: Discovery
    """Head roles and the per-head evidence."""
    faithfulness: Faithfulness
    """Mean logit differences with the circuit alone and with the circuit ablated."""
    mechanism: MechanismEvidence
    """Direct logit attribution, attention, single-head mean ablation and Pos patching per head,
    and the heads that meet each role's criterion (:mod:`saetools.circuits.mechanism`)."""
    seconds: float

    @property
    def circuit(self) -> Circuit:
        return self.discovery.circuit


SUPPORTED_MODELS = "Any model whose tokenizer makes names single tokens: GPT-2 (the paper's model) or the bundled ``tiny-ioi``."
"""The models this experiment runs on (:func:`check_model` rejects others before any work)."""
EXPERIMENT = "The IOI circuit experiment"


def check_model(model, cfg: Config | None = None) -> None:
    """Raise :class:`~saetools.experiments.protocol.UnsupportedModelError` unless the experiment
    supports ``model`` (with ``cfg``; :data:`SUPPORTED_MODELS`)."""
    require_model(model, EXPERIMENT, ioi_names=True)


@tf32_on_cuda
def run(model, cfg: Config) -> Result:
    """Prompts, their ABC corruption, patching, circuit discovery and faithfulness."""
    check_model(model, cfg)
    t0 = time.perf_counter()
    names = ioi.default_words("names", model)
    clean = ioi.render(model, ioi.wang_spec(cfg.n_prompts, seed=cfg.seed, names=names))
    corrupted = default_corruption(model, clean, seed=cfg.seed + 1)
    with torch.no_grad():
        ld = ioi.logit_diff(model(clean.tokens), clean)
        ld_abc = ioi.logit_diff(model(corrupted.tokens), clean)
    by_template = (
        clean.spec.assign(logit_diff=ld.cpu().numpy(), abc=ld_abc.cpu().numpy())
        .groupby("template")[["logit_diff", "abc"]]
        .mean()
        .sort_values("logit_diff")
    )
    resid = patch_resid(model, clean, corrupted, positions=list(ioi.POSITIONS) + ["all"])
    heads = {c: patch_heads(model, clean, corrupted, component=c, positions=p) for c, p in HEAD_PATCHES}
    discovery = discover_circuit(model, clean, corrupted)
    mechanism = mechanism_evidence(model, clean, corrupted, discovery)
    return Result(
        config=cfg,
        clean=clean,
        corrupted=corrupted,
        by_template=by_template,
        logit_diff=float(ld.mean()),
        logit_diff_abc=float(ld_abc.mean()),
        accuracy=float((ld > 0).float().mean()),
        resid=resid,
        heads=heads,
        discovery=discovery,
        faithfulness=mechanism.faithfulness,
        mechanism=mechanism,
        seconds=time.perf_counter() - t0,
    )


def figures(result: Result) -> dict[str, Figure]:
    """``{"by_template", "resid", "heads", "attention", "paths"}``."""
    figs = {}
    t = result.by_template
    fig, ax = subplots(figsize=(7, 0.3 * len(t) + 1))
    t.rename(columns={"logit_diff": "IOI", "abc": "ABC corruption"}).plot.barh(ax=ax)
    ax.set(xlabel="mean logit(IO) - logit(S) at END", ylabel="template", title="Logit difference by template")
    ax.set_yticklabels([s[:60] for s in t.index], fontsize=7)
    figs["by_template"] = fig
    figs["resid"] = heatmap(
        result.resid,
        index="layer",
        columns="position",
        values="score",
        ax=_ax(4, 4),
        title="Residual stream patching (denoising)",
        label="normalised logit difference",
    )
    n_layers = int(result.resid.layer.max()) + 1
    fig, axes = subplots(1, len(HEAD_PATCHES), figsize=(4 * len(HEAD_PATCHES), 0.6 * n_layers + 1.5))
    for ax, (component, position) in zip(axes, HEAD_PATCHES):
        heatmap(
            result.heads[component],
            index="layer",
            columns="head",
            values="score",
            ax=ax,
            title=f"head {component} patched at {position}",
            label="normalised logit difference",
        )
    fig.tight_layout()
    figs["heads"] = fig
    figs["attention"] = scatter_roles(
        result.discovery.heads, x="end_io", y="end_s", ax=_ax(5, 4), title="Attention from END: to IO vs to S"
    )
    figs["paths"] = _path_figure(result, n_layers)
    return figs


def _ax(w: float, h: float):
    return subplots(figsize=(w, h))[1]


def _path_figure(result: Result, n_layers: int) -> Figure:
    roles, heads = result.circuit.roles, result.discovery.heads
    empty = not roles["name_mover"] and not roles["s_inhibition"]
    fig, axes = subplots(1, 2, figsize=(10, 2.2 if empty else 0.6 * n_layers + 1.5))
    for ax, col, role, label, what in (
        (axes[0], "via_nm_q", "name_mover", "name-mover", "into the name movers' queries at END"),
        (axes[1], "via_si_v", "s_inhibition", "S-inhibition", "into the S-inhibition heads' values"),
    ):
        if roles[role]:
            heatmap(heads, index="layer", columns="head", values=col, ax=ax,
                    label="fraction of the logit difference",
                    title=f"Path patching {what} {list(roles[role])}")
        else:
            ax.set_axis_off()
            msg = f"Path patching {what}: no {label} heads were found, so there is no path."
            ax.text(0.5, 0.5, textwrap.fill(msg, 42), ha="center", va="center", transform=ax.transAxes,
                    fontsize=10)
    fig.tight_layout()
    return fig


BUNDLED_EXPECTED_FAILURES: dict[str, str] = {
    "name mover": (
        "tiny-ioi's heads that attend from END to the first-clause names (layers 1-2) attend to IO and S1 "
        "about equally and write little to the logits; its last MLP and layer-3 heads that attend to neither "
        "name write the answer from what was moved to END"),
    "S-inhibition head": (
        "the subject's identity reaches END through a layer-0 head that attends to S2 by its place in the "
        "sentence, with nothing upstream of it; there are no name movers whose queries it could change"),
    "duplicate-token or induction head": (
        "layer 1 has strong induction heads on repeated word lists, but no S-inhibition head reads them, "
        "so none lies on the circuit's path"),
    "circuit keeps": (
        "the discovered circuit is the heads with a direct effect (S-suppression heads); the layer-1/2 heads "
        "that move the names have none, so the circuit alone loses their contribution"),
    "circuit is sufficient (Wang et al.'s bar)": (
        "as for 'circuit keeps': path patching to the logits cannot find heads whose effect runs through "
        "the MLPs, and ablating those heads costs most of the logit difference"),
    "Pos matters": (
        "flipping the first-clause order changes just under a fifth of the predictions at the best head "
        "(layer 1): the heads that move the names attend to them with little regard to their order"),
}
"""Claims the bundled ``tiny-ioi`` does not show, and why (strict expected failures in
:func:`check`: they must fail, with their measured numbers shown; see docs/wang2022_ioi.md)."""


HEADLINES: dict[str, Headline] = {
    "name mover": Headline("name mover heads in the upper layers attend from END to IO and copy it to the logits",
                           "GPT-2 small: 9.9, 9.6, 10.0"),
    "S-inhibition head": Headline("S-inhibition heads attend to S2 and steer the name movers' queries away from S",
                                  "GPT-2 small: 7.3, 7.9, 8.6, 8.10"),
    "duplicate-token or induction head": Headline(
        "duplicate-token and induction heads detect that S is repeated and feed the S-inhibition heads",
        "GPT-2 small: duplicate 0.1, 3.0; induction 5.5, 6.9"),
    "circuit is sufficient (Wang et al.'s bar)": Headline("the circuit alone keeps most of the logit difference",
                                                          "87% of the model's logit difference"),
    "circuit is necessary (Wang et al.'s bar)": Headline("knocking out the circuit removes most of the logit difference",
                                                         "most of it"),
    "Pos matters": Headline("the S-inhibition heads signal S's position: patching it changes the prediction",
                            "the position signal drives the name movers' choice"),
}
"""Wang et al.'s headline claims (keys of :func:`check`'s table); the other rows are this
project's mechanism targets (:class:`saetools.circuits.mechanism.MechanismTargets`)."""


def check(result: Result, *, expected_failures: Mapping[str, str] | None = None) -> ClaimsTable:
    """Assert what the run supports; returns the table of claims tested.

    Wang et al.'s claims: the corruption matters, patching every position restores the clean
    run, heads that write the answer attend as their role says, and the circuit is faithful
    (kept >= :data:`KEPT_MIN`, removed >= :data:`REMOVED_MIN`). Then the mechanism targets of
    :class:`saetools.circuits.mechanism.MechanismTargets` (name movers, S-inhibition,
    duplicate / induction heads, layer 0's share, faithfulness, Pos), each keyed by its
    ``key``. ``expected_failures`` (claim -> reason; e.g. :data:`BUNDLED_EXPECTED_FAILURES` for
    ``tiny-ioi``) are strict expected failures (:class:`~saetools.experiments.protocol.Claims`).
    """
    claims = Claims(expected_failures, headlines=HEADLINES)
    claims("ABC corruption matters", result.logit_diff > result.logit_diff_abc + ABC_DROP_MIN,
           f"the ABC corruption lowers the logit difference from {result.logit_diff:.2f} to "
           f"{result.logit_diff_abc:.2f} (needs a drop > {ABC_DROP_MIN})",
           paper="GPT-2 small: the ABC distribution removes the IO preference (the baseline of every patching score)")
    all_pos = result.resid[result.resid.position == "all"].score
    claims("patching every position restores the run", ((all_pos - 1).abs() < 1e-3).all(),
           f"normalised score with every position patched: {all_pos.round(4).tolist()}",
           paper="1 by construction (a check of the patching)")
    roles = result.circuit.roles
    claims("a head writes the answer", roles["name_mover"] or roles["s_suppression"],
           f"discovered roles: {roles}", paper="name movers (and negative name movers) write the answer directly")
    table = result.discovery.heads.set_index(["layer", "head"])
    for role, attends, other in (("name_mover", "end_io", "end_s"), ("s_suppression", "end_s", "end_io")):
        key = f"{role.replace('_', ' ')} heads attend to {attends[4:].upper()}"
        if not roles[role]:
            claims.untestable(key, f"no {role.replace('_', ' ')} head was discovered",
                              paper="each role's heads attend as their name says")
            continue
        rows = table.loc[list(roles[role])]
        claims(key, (rows[attends] > rows[other]).all(),
               f"{role} heads {list(roles[role])}: {attends} {rows[attends].round(2).tolist()}, "
               f"{other} {rows[other].round(2).tolist()}", paper="each role's heads attend as their name says")
    f = result.faithfulness
    claims("circuit is sufficient (Wang et al.'s bar)", f.kept >= KEPT_MIN,
           f"the circuit alone keeps {f.kept:.0%} (needs >= {KEPT_MIN:.0%})")
    claims("circuit is necessary (Wang et al.'s bar)", f.removed >= REMOVED_MIN,
           f"ablating the circuit removes {f.removed:.0%} (needs >= {REMOVED_MIN:.0%})")
    for row in result.mechanism.targets().itertuples():
        if row.key in HEADLINES:
            claims(row.key, row.met, f"{row.measured} (target: {row.target})")
        else:
            claims(row.key, row.met, row.measured, paper=f"this project's target: {row.target}")
    return claims.table()
