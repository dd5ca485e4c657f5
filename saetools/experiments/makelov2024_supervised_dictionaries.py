"""Supervised feature dictionaries vs SAEs on IOI (Makelov, Lange & Nanda 2024).

``run`` builds everything the paper's headline figures need on one model:

1. **nodes** from the model's circuit -- GPT-2: the Wang et al. heads the paper uses; a bundled
   model: its own discovered circuit (:func:`saetools.circuits.discover_circuit`), plus the
   heads that carry IO to END without a direct effect (:func:`saetools.dictionaries.attribute_patching`,
   role ``io_mover``) -- grouped into cross-sections (role x attribute);
2. **supervised dictionaries** per node (mean codes) fitted on the "full" prompt distribution.
   Per node, the parametrization -- independent ``{IO, S, Pos}`` or coupled ``{(IO, Pos), (S, Pos)}``
   -- is the one that explains more variance of the *held-out* activations: where the name
   and its position interact, additive codes miss the interaction and the coupled
   table captures it (the coupled tables share Pos, so their mean codes are backfitted,
   :func:`~saetools.dictionaries.fit_supervised`). This choice looks only at reconstructions,
   never at edits. The paper's independent mean codes and their least-squares variant are
   scored in the approximation table too;
3. **per-node SAEs** (L1, gated, no-ReLU TopK, sae-lens TopK) trained on the same activations
   with the paper's schedule shape (:mod:`saetools.dictionaries.ioi_saes`);
4. on held-out prompts (base names from the first half of the list, counterfactual names from
   the held-out halves): **approximation** (sufficiency, necessity per cross-section),
   **control** (edit accuracy and weight removed, supervised vs SAE, both SAE edit methods),
   **interpretability** (best-latent F1 per attribute value, grouped F1, mean-max cosine);
5. **occlusion** and **over-splitting** (:mod:`saetools.dictionaries.occlusion`).

See ``docs/makelov2024_supervised_dictionaries.md`` for the method and where saetools differs from
the authors' code.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
import torch

from saetools import circuits
from saetools.dictionaries import (
    CrossSection,
    NodeRunner,
    approximation,
    attribute_patching,
    attribute_values,
    cross_sections,
    edit_cross_section,
    f1_scores,
    fit_supervised,
    grouped_f1,
    ld_recovered,
    mean_max_cosine,
    node_acts,
    shared_residual,
)
from saetools.dictionaries.ioi_saes import IOISAEConfig, train_node_saes
from saetools.dictionaries.occlusion import (
    ToyOcclusionConfig,
    node_edit_accuracy,
    occlusion_table,
    over_splitting,
    toy_occlusion_sweep,
)
from saetools.experiments.makelov2024_checks import (
    BUNDLED_EXPECTED_FAILURES,
    BUNDLED_EXPECTED_FAILURES_AT,
    CARRY_MIN,
    EDIT_ACCURACY_MIN,
    HEADLINES,
    SUFFICIENCY_MIN,
    check,
    edit_targets,
)
from saetools.experiments.makelov2024_figures import (
    figures,
    plot_approximation,
    plot_edits,
    plot_interpretability,
    plot_occlusion,
)
from saetools.experiments.protocol import Profiles, UnsupportedModelError, require_model, tf32_on_cuda
from saetools.tasks import ioi

__all__ = ["BUNDLED_EXPECTED_FAILURES", "BUNDLED_EXPECTED_FAILURES_AT", "CARRY_MIN", "HEADLINES", "EDIT_ACCURACY_MIN", "SUFFICIENCY_MIN", "Config", "Result", "check", "edit_targets", "figures",
           "plot_approximation", "plot_edits", "plot_interpretability", "plot_occlusion", "run"]


@dataclass(frozen=True, kw_only=True)
class Config(Profiles):
    """What to build and evaluate."""

    circuit: Literal["discover", "wang2022"] = "discover"
    """``"discover"``: the model's own circuit (bundled models); ``"wang2022"``: GPT-2's."""
    n_discovery: int = 48
    """Prompts (Wang et al. distribution) for circuit discovery."""
    io_mover_threshold: float = 0.1
    """A head outside the circuit whose END ``z``, patched from an IO counterfactual, changes the
    top prediction on at least this fraction of prompts joins the circuit as an ``io_mover``
    (0 disables the search)."""
    max_heads_per_role: int | None = None
    """Keep only the most important heads of each role (None: all)."""
    kinds: tuple[str, ...] = ("z",)
    """Head activations used as nodes (``"z"``, ``"q"``; see ``ROLE_NODES``)."""
    n_names: int | None = None
    """Use only the first ``n_names`` single-token names (None: all)."""
    n_train: int = 10_000
    """Prompts ("full" distribution) for supervised dictionaries and SAE training (the paper: 20,000).
    The coupled tables need every (name, Pos) value of the evaluation in training, with enough
    prompts each for a stable mean: with tiny-ioi's 157 names, 2,000 prompts miss some values
    (the independent codes are used there) and 10,000 cover all of them about 30 times each."""
    n_eval: int = 300
    """Held-out prompts for every evaluation (the paper: 5,000)."""
    saes: IOISAEConfig = field(default_factory=IOISAEConfig)
    """Per-node SAE training."""
    ns_aware: tuple[int, ...] = (1, 2, 4, 8)
    """Latents removed (and added) by interpretation-aware edits."""
    ns_greedy: tuple[int, ...] = (2, 4, 8, 16)
    """Latents exchanged by interpretation-agnostic edits."""
    toy: ToyOcclusionConfig = field(default_factory=ToyOcclusionConfig)
    """The occlusion toy sweep (:func:`saetools.dictionaries.occlusion.toy_occlusion_sweep`)."""
    n_playground: int = 6
    """Prompts offered by the edit playground."""
    seed: int = 0
    """Seeds prompts, counterfactuals and SAE training."""

    def __post_init__(self):
        if self.circuit not in ("discover", "wang2022"):
            raise ValueError(f"Config.circuit must be 'discover' or 'wang2022', got {self.circuit!r}")
        for name in ("n_discovery", "n_train", "n_eval"):
            if getattr(self, name) < 2:
                raise ValueError(f"Config.{name} must be >= 2, got {getattr(self, name)}")
        if self.n_names is not None and self.n_names < 8:
            raise ValueError(f"Config.n_names must be >= 8 (or None), got {self.n_names}")
        if not self.kinds or any(k not in ("q", "k", "v", "z") for k in self.kinds):
            raise ValueError(f"Config.kinds must be head activations among q, k, v, z, got {self.kinds}")

    PROFILES: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        # 5,000 prompts: about 39 per joint (name, Pos) value of the coupled tables with 64 names,
        # like the default's 32 with 157 names; with 1,500 (12 per value) the noise of the coupled
        # codes alone cost 6 points of sufficiency at tiny-ioi's io_mover node (0.862 vs 0.926).
        "smoke": {
            "max_heads_per_role": 2,  # tiny-ioi: the 2nd S-suppression head (layer 0) is the one carrying S
            "n_names": 64,
            "n_train": 5000,
            "n_eval": 200,
            "ns_aware": (1, 4),
            "ns_greedy": (2, 8),
            "saes": IOISAEConfig(epochs=30, batch_size=256, lr=1e-2, expansion=4),
            "toy": ToyOcclusionConfig(ratios=(0.5, 0.8, 1.0, 1.25, 2.0), n_train=4096, n_eval=2048, epochs=6),
        },
        "cpu": {
            "max_heads_per_role": 2,
            "n_names": 64,
            "n_train": 5000,
            "n_eval": 400,
            "ns_aware": (1, 4, 8),
            "ns_greedy": (2, 8, 16),
            "saes": IOISAEConfig(epochs=200, batch_size=256, lr=1e-2, expansion=4),
            "toy": ToyOcclusionConfig(ratios=(0.5, 0.8, 1.0, 1.25, 2.0), n_train=4096, n_eval=2048, epochs=20),
        },
        "test": {
            "n_discovery": 8,
            "max_heads_per_role": 1,
            "n_names": 16,
            "n_train": 256,
            "n_eval": 12,
            "ns_aware": (1,),
            "ns_greedy": (2,),
            "n_playground": 2,
            "saes": IOISAEConfig(epochs=2, batch_size=32, expansion=2),
            "toy": ToyOcclusionConfig(ratios=(0.5, 1.0, 2.0), n_train=512, n_eval=256, epochs=1),
        },
        "full": {
            "circuit": "wang2022",
            "io_mover_threshold": 0.0,
            "kinds": ("z", "q"),
            "n_train": 20_000,
            "n_eval": 5000,
            "saes": IOISAEConfig(epochs=2000),
        },
    }
    """Named configurations: ``"cpu"`` (the bundled model trained to convergence: the papers' comparisons, at most 10 minutes on 2 CPU cores), ``"smoke"`` (bundled model, CPU, about a minute) or ``"full"`` (GPT-2, GPU)."""


@dataclass
class Result:
    """Everything the notebook shows (tables documented per field)."""

    config: Config
    circuit: circuits.Circuit
    """The circuit whose nodes are studied with SAEs (at most ``max_heads_per_role`` heads per role)."""
    sections: list[CrossSection]
    approximation: pd.DataFrame
    """One row per (node set, dictionary): ``nodes, dictionary, sufficiency, necessity,
    ld_recovered, clean, mean_ablated, reconstructed, necessity_ablated, mse, variance_explained``."""
    edits: pd.DataFrame
    """One row per (cross-section, dictionary, method, n) (:func:`edit_cross_section`)."""
    whole_circuit: pd.DataFrame
    """The supervised dictionaries alone on every cross-section of the *whole* circuit (every head of
    every role, even where ``max_heads_per_role`` keeps fewer for the SAEs): the rows of
    :func:`edit_cross_section` for the arithmetic edit and the references, with the node set's
    ``nodes`` and supervised ``sufficiency``."""
    residuals: pd.DataFrame
    """What the supervised dictionaries miss, per node of the whole circuit: ``node, parametrization,
    residual`` (fraction of held-out variance unexplained) and the share of that residual kept by
    a twin prompt (:func:`~saetools.dictionaries.shared_residual`): ``shared_same_attributes``
    (same names and order, another context), ``shared_io`` / ``shared_s`` / ``shared_pos`` (only
    that attribute changed)."""
    f1: pd.DataFrame
    """Best-latent F1 per ``variant, node, attribute, value`` (with that latent's precision, recall)."""
    grouped: pd.DataFrame
    """Grouped F1 per ``variant, node, attribute, latent``."""
    cosine: pd.DataFrame
    """Max cosine of each supervised code with any decoder row: ``variant, node, attribute, value, cosine``."""
    supervised: dict
    """``{node: SupervisedDictionary}`` (mean codes, the parametrization chosen per node)."""
    saes: dict
    """``{variant: {node: SAEDictionary}}``."""
    f1_tables: dict
    """``{variant: {node: {attribute: F1Table}}}`` on the evaluation and counterfactual prompts."""
    eval_acts: dict
    """``{"clean" | attribute: {node: [n_eval, d]}}``: node vectors on the evaluation prompts and
    on each attribute's counterfactual prompts."""
    batches: dict
    """``{"clean" | attribute: IOIBatch}``."""
    occlusion: pd.DataFrame = None
    """Per ``variant, node, attribute``: code-norm ratio vs best latent F1 and single-node edit
    accuracies (:func:`saetools.dictionaries.occlusion.occlusion_table`)."""
    over_splitting: dict = None
    """``{(f"{variant} {node}", "pos"): OverSplitting}`` for the binary attribute Pos."""
    toy: object = None
    """The occlusion toy sweep (``ToyOcclusionResult``)."""
    playground: pd.DataFrame = None
    """Long END-logit table for :class:`saetools.widgets.makelov.EditPlayground`."""
    seconds: float = 0.0
    meta: dict = field(default_factory=dict)


def _circuit(model, cfg: Config, names: list[str], eval_batch, io_targets
             ) -> tuple[circuits.Circuit, circuits.Circuit, pd.DataFrame | None]:
    """The whole circuit, the one whose nodes get SAEs (``max_heads_per_role``), and the IO patching table."""
    if cfg.circuit == "wang2022":
        circuit, patched = circuits.WANG_2022_GPT2_CIRCUIT, None
    else:
        circuit, patched = _discover(model, cfg, names, eval_batch, io_targets)
    kept = circuit
    if cfg.max_heads_per_role is not None:
        kept = circuits.Circuit({r: hs[: cfg.max_heads_per_role] for r, hs in circuit.roles.items()}, name=circuit.name)
    return circuit, kept, patched


def _discover(model, cfg: Config, names, eval_batch, io_targets) -> tuple[circuits.Circuit, pd.DataFrame | None]:
    clean = ioi.render(model, ioi.wang_spec(cfg.n_discovery, seed=cfg.seed, names=names))
    circuit = circuits.discover_circuit(model, clean).circuit
    patched = None
    if cfg.io_mover_threshold > 0:
        patched = attribute_patching(model, eval_batch, "io", seed=cfg.seed + 7, names=io_targets)
        movers = patched[patched.changed >= cfg.io_mover_threshold].sort_values("changed", ascending=False)
        heads = [(int(l), int(h)) for l, h in zip(movers.layer, movers["head"]) if (l, h) not in circuit]
        if heads:
            circuit = circuit.with_role("io_mover", heads)
    return circuit, patched


def _supervised(train_acts, train_spec, eval_acts, eval_spec, edit_specs=()):
    """Per node, the parametrization with the higher held-out variance explained (module docstring).

    A parametrization is eligible only if its fit has seen every value the evaluation uses: those
    of the held-out prompts and of their counterfactuals (``edit_specs``). With many names and
    few training prompts some joint ``(name, Pos)`` values of the coupled tables are missing, and
    the independent parametrization is used there (``covered`` is False in the table); where even
    a single name is missing, a ValueError says how to fix the configuration.
    """
    chosen, rows = {}, []
    for n, a in train_acts.items():
        fits = {p: fit_supervised(a, train_spec, parametrization=p, node=n) for p in ("independent", "coupled")}
        ve, covered = {}, {}
        for p, d in fits.items():
            try:
                for spec in edit_specs:
                    d.encode(None, spec)
                covered[p] = True
                ve[p] = d.variance_explained(eval_acts[n], eval_spec)
            except ValueError as err:  # a value of the held-out or counterfactual prompts never seen in training
                covered[p], ve[p], missing = False, float("-inf"), err
        if not any(covered.values()):
            raise ValueError(f"{n.label}: the {len(train_spec)} training prompts miss a value that the evaluation "
                             f"uses ({missing}); raise Config.n_train or lower Config.n_names")
        best = max(ve, key=ve.get)
        chosen[n] = fits[best]
        rows.append({"node": n.label, "chosen": best, **{f"ve_{p}": v for p, v in ve.items()},
                     **{f"covered_{p}": c for p, c in covered.items()}})
    return chosen, pd.DataFrame(rows)


def _f1_tables(saes, acts_all, labels_all):
    tables, rows, grouped = {}, [], []
    for variant, per_node in saes.items():
        tables[variant] = {}
        for node, d in per_node.items():
            f = d.encode(acts_all[node])
            tables[variant][node] = {}
            for attr, labels in labels_all.items():
                t = f1_scores(f, labels)
                tables[variant][node][attr] = t
                rows.append(t.best().assign(variant=variant, node=node.label, attribute=attr))
                grouped.append(grouped_f1(t).assign(variant=variant, node=node.label, attribute=attr))
    return tables, pd.concat(rows, ignore_index=True), pd.concat(grouped, ignore_index=True)


def _cosines(supervised, saes):
    rows = []
    for variant, per_node in saes.items():
        for node, d in per_node.items():
            sup = supervised[node]
            for g in sup.groups:
                cos = mean_max_cosine(sup.codes[g], d.W_dec)
                rows.append(pd.DataFrame({"variant": variant, "node": node.label, "attribute": ",".join(g),
                                          "value": sup.values[g], "cosine": cos.numpy()}))
    return pd.concat(rows, ignore_index=True)


def _occlusion(model, clean, batches, acts, independent, saes, tables, cfg, runner):
    """Occlusion table per SAE variant (with single-node edit accuracies) and Pos over-splitting."""
    nodes = list(independent)
    cf = {a: batches[a] for a in ioi.ATTRIBUTES}
    acc = node_edit_accuracy(model, clean, cf, nodes, acts=acts["clean"], cf_acts={a: acts[a] for a in cf},
                             supervised=independent, saes=saes,
                             f1_tables=tables, supervised_methods=("arithmetic",), ns_aware=cfg.ns_aware[-1:],
                             ns_greedy=cfg.ns_greedy[-1:], runner=runner)
    frames, splits_ = [], {}
    labels = np.concatenate([attribute_values(b.spec, "pos") for b in batches.values()])
    for variant in saes:
        cols = ["node", "attribute", "accuracy_supervised_arithmetic", f"accuracy_{variant}_aware",
                f"accuracy_{variant}_greedy"]
        sub = acc[[c for c in cols if c in acc.columns]].rename(columns={
            f"accuracy_{variant}_aware": "accuracy_sae_aware", f"accuracy_{variant}_greedy": "accuracy_sae_greedy"})
        frames.append(occlusion_table(independent, tables[variant], spec=clean.spec, edit_accuracy=sub)
                      .assign(variant=variant))
        for node, d in saes[variant].items():
            f = d.encode(torch.cat([acts[k][node] for k in batches]))
            splits_[(f"{variant} {node.label}", "pos")] = over_splitting(f, labels)
    return pd.concat(frames, ignore_index=True), splits_


def _whole_circuit(model, clean, batches, sections, acts, context_acts, supervised, clean_ld, runner, *,
                   scored: list[CrossSection], edits: pd.DataFrame, approx: pd.DataFrame) -> pd.DataFrame:
    """Supervised sufficiency and arithmetic edits (with both patching references) per cross-section.

    Cross-sections already in ``scored`` (all of them when ``max_heads_per_role`` is None) take
    their rows from ``edits`` and ``approx`` instead of running again.
    """
    frames = []
    for s in sections:
        nodes = ", ".join(n.label for n in s.nodes)
        if s in scored:
            e = edits[(edits.section == s.name) & edits.method.isin(["none", "patch", "same attributes", "arithmetic"])]
            suff = float(approx.sufficiency[(approx.nodes == nodes) & (approx.dictionary == "supervised")].iloc[0])
        else:
            suff = approximation(model, clean, {n: supervised[n] for n in s.nodes}, acts=acts["clean"],
                                 clean_ld=clean_ld, runner=runner).sufficiency
            e = edit_cross_section(model, clean, batches[s.attribute], s, acts=acts["clean"],
                                   cf_acts=acts[s.attribute], supervised=supervised, supervised_methods=("arithmetic",),
                                   runner=runner, context_acts=context_acts[s.attribute])
        frames.append(e.assign(nodes=nodes, sufficiency=suff))
    return pd.concat(frames, ignore_index=True)


def _residuals(supervised, choice, batches, acts, clean_twin, twin_acts) -> pd.DataFrame:
    """Per node: the supervised residual and how much of it each kind of twin prompt keeps."""
    clean, rows = batches["clean"], []
    # the held-out variance explained by the chosen parametrization is already in the choice table
    ve = {r.node: getattr(r, f"ve_{r.chosen}") for r in choice.itertuples()}
    chosen = dict(zip(choice.node, choice.chosen))
    for n, d in supervised.items():
        x = acts["clean"][n]
        row = {"node": n.label, "parametrization": chosen[n.label], "residual": 1 - ve[n.label],
               "shared_same_attributes": shared_residual(d, x, clean.spec, twin_acts[n], clean_twin.spec)}
        for attr in ioi.ATTRIBUTES:
            row[f"shared_{attr}"] = shared_residual(d, x, clean.spec, acts[attr][n], batches[attr].spec)
        rows.append(row)
    return pd.DataFrame(rows)


@torch.no_grad()
def _playground(model, batches, supervised, saes, tables, cfg, names) -> pd.DataFrame:
    """END logits of every edit on a few prompts, for the edit playground widget."""
    from saetools.dictionaries import sae_edit_aware, sae_edit_greedy

    k = min(cfg.n_playground, len(batches["clean"]))
    clean = batches["clean"][:k]
    run_ = NodeRunner(model, clean)
    rows = []
    for attr in ioi.ATTRIBUTES:
        cf = batches[attr][:k]
        nodes = [n for n in supervised if any(g for g in supervised[n].groups if attr in g)]
        x = {n: node_acts(model, clean, [n])[n] for n in nodes}
        x_cf = {n: node_acts(model, cf, [n])[n] for n in nodes}
        vals, cf_vals = attribute_values(clean.spec, attr), attribute_values(cf.spec, attr)
        edits = {"clean": {}, "patch": x_cf,
                 "supervised arithmetic": {n: supervised[n].edit(x[n], clean.spec, cf.spec, attr) for n in nodes}}
        for v, per_node in saes.items():
            edits[f"{v} aware n={cfg.ns_aware[-1]}"] = {
                n: sae_edit_aware(per_node[n], x[n], x_cf[n], tables[v][n][attr], vals, cf_vals, cfg.ns_aware[-1])[0]
                for n in nodes}
            edits[f"{v} greedy n={cfg.ns_greedy[-1]}"] = {
                n: sae_edit_greedy(per_node[n], x[n], x_cf[n], cfg.ns_greedy[-1])[0] for n in nodes}
        ends = {e: run_(reps) for e, reps in edits.items()}
        for i in range(k):
            toks = dict.fromkeys([clean.spec.io[i], clean.spec.s[i], cf.spec.io[i], cf.spec.s[i]])
            ids = {t: model.to_single_token(" " + t) for t in toks}
            for e, end in ends.items():
                top = model.to_string(end[i].argmax()).strip()
                rows += [{"prompt": clean.texts[i], "attribute": attr, "value": str(cf_vals[i]), "edit": e,
                          "token": t, "logit": float(end[i, j]), "top": top} for t, j in ids.items()]
    return pd.DataFrame(rows)


def _prompts(model, cfg: Config):
    """Names, training and held-out prompts, and the counterfactual name pools."""
    names = ioi.default_words("names", model)
    names = names[: cfg.n_names] if cfg.n_names else names
    splits = ioi.makelov_name_splits(names)
    train = ioi.render(model, ioi.makelov_spec(cfg.n_train, seed=cfg.seed, names=names), equal_length=True)
    clean = ioi.render(model, ioi.makelov_spec(cfg.n_eval, seed=cfg.seed + 1, names=list(splits["base"])),
                       equal_length=True)
    return names, train, clean, {"io": list(splits["io_targets"]), "s": list(splits["s_targets"]), "pos": None}


SUPPORTED_MODELS = "A model whose tokenizer makes names single tokens: GPT-2 small (the paper's model; ``circuit=\"wang2022\"`` needs it) or the bundled ``tiny-ioi``."
"""The models this experiment runs on (:func:`check_model` rejects others before any work)."""
EXPERIMENT = "The supervised-dictionaries experiment"


def check_model(model, cfg: Config | None = None) -> None:
    """Raise :class:`~saetools.experiments.protocol.UnsupportedModelError` unless the experiment
    supports ``model`` (with ``cfg``; :data:`SUPPORTED_MODELS`)."""
    require_model(model, EXPERIMENT, ioi_names=True)
    if cfg is not None and cfg.circuit == "wang2022" and (model.cfg.n_layers, model.cfg.n_heads) != (12, 12):
        raise UnsupportedModelError(
            f"circuit='wang2022' names GPT-2 small's heads; {model.cfg.model_name} has {model.cfg.n_layers} layers "
            f"x {model.cfg.n_heads} heads. Use circuit='discover' (the smoke profile) on other models.")


@tf32_on_cuda
def run(model, cfg: Config) -> Result:
    """Build and evaluate supervised dictionaries and per-node SAEs (module docstring)."""
    check_model(model, cfg)
    t0 = time.perf_counter()
    names, train, clean, cf_names = _prompts(model, cfg)
    whole_circuit, circuit, patched = _circuit(model, cfg, names, clean, cf_names["io"])
    sections, whole = cross_sections(circuit, kinds=cfg.kinds), cross_sections(whole_circuit, kinds=cfg.kinds)
    if not sections:
        raise ValueError(f"the circuit {circuit.roles} has no roles with Makelov nodes (ROLE_NODES)")
    order = lambda n: (n.layer, n.head or 0, n.kind)
    nodes = sorted({n for s in sections for n in s.nodes}, key=order)
    all_nodes = sorted({n for s in whole for n in s.nodes}, key=order)
    all_train_acts = node_acts(model, train, all_nodes)
    train_acts = {n: all_train_acts[n] for n in nodes}
    batches, contexts = {"clean": clean}, {}
    for attr in ioi.ATTRIBUTES:
        spec = ioi.counterfactual(clean.spec, attr, seed=cfg.seed + 2, names=cf_names[attr])
        batches[attr] = ioi.render(model, spec, equal_length=True)
        contexts[attr] = ioi.render(model, ioi.resample_context(spec, seed=cfg.seed + 3), equal_length=True)
    all_acts = {k: node_acts(model, b, all_nodes) for k, b in batches.items()}
    clean_twin = ioi.render(model, ioi.resample_context(clean.spec, seed=cfg.seed + 4), equal_length=True)
    twin_acts = node_acts(model, clean_twin, all_nodes)
    context_acts = {k: node_acts(model, b, all_nodes) for k, b in contexts.items()}
    acts = {k: {n: a[n] for n in nodes} for k, a in all_acts.items()}
    all_supervised, all_choice = _supervised(all_train_acts, train.spec, all_acts["clean"], clean.spec,
                                             [b.spec for b in batches.values()])
    supervised = {n: all_supervised[n] for n in nodes}
    choice = all_choice[all_choice.node.isin([n.label for n in nodes])].reset_index(drop=True)
    variants = {"supervised": supervised,
                "supervised independent": {n: fit_supervised(train_acts[n], train.spec, node=n) for n in nodes},
                "supervised independent lstsq": {n: fit_supervised(train_acts[n], train.spec, method="lstsq", node=n)
                                                 for n in nodes}}
    saes = train_node_saes(train_acts, replace(cfg.saes, seed=cfg.seed), device=model.cfg.device)
    runner = NodeRunner(model, clean)
    end = runner({})
    clean_ld = float(ioi.end_logit_diff(end, clean).mean())
    # approximation, once per distinct node set
    rows, skipped = [], {}
    for node_set in dict.fromkeys(s.nodes for s in sections):
        for name, per_node in {**variants, **saes}.items():
            try:
                a = approximation(model, clean, {n: per_node[n] for n in node_set}, acts=acts["clean"],
                                  clean_ld=clean_ld, runner=runner)
            except ValueError as err:  # a joint (coupled) value of the eval prompts unseen in training
                skipped[name] = str(err)
                continue
            rows.append({"nodes": ", ".join(n.label for n in node_set), "dictionary": name, **a.to_dict(),
                         "ld_recovered": ld_recovered(a)})
    approx = pd.DataFrame(rows)
    # interpretability on clean + counterfactual prompts, so every target value has a column
    acts_all = {n: torch.cat([acts[k][n] for k in batches]) for n in nodes}
    labels_all = {a: np.concatenate([attribute_values(b.spec, a) for b in batches.values()]) for a in ioi.ATTRIBUTES}
    tables, f1, grouped = _f1_tables(saes, acts_all, labels_all)
    cosine = _cosines(supervised, saes)
    edits = pd.concat([
        edit_cross_section(model, clean, batches[s.attribute], s, acts=acts["clean"], cf_acts=acts[s.attribute],
                           supervised=supervised, saes=saes,
                           f1_tables={v: {n: t[n][s.attribute] for n in s.nodes} for v, t in tables.items()},
                           ns_aware=cfg.ns_aware, ns_greedy=cfg.ns_greedy, runner=runner,
                           context_acts=context_acts[s.attribute])
        for s in sections], ignore_index=True)
    whole_edits = _whole_circuit(model, clean, batches, whole, all_acts, context_acts, all_supervised, clean_ld, runner,
                                 scored=sections, edits=edits, approx=approx)
    residuals = _residuals(all_supervised, all_choice, batches, all_acts, clean_twin, twin_acts)
    occl, splits_ = _occlusion(model, clean, batches, acts, variants["supervised independent"], saes, tables,
                               cfg, runner)
    toy = toy_occlusion_sweep(cfg.toy, progress=False)
    playground = _playground(model, batches, supervised, saes, tables, cfg, names)
    meta = {"config": asdict(cfg), "n_names": len(names), "nodes": [n.label for n in nodes],
            "clean_logit_diff": clean_ld, "attribute_patching": patched, "parametrization": choice,
            "whole_circuit": whole_circuit, "whole_parametrization": all_choice, "skipped": skipped}
    return Result(config=cfg, circuit=circuit, sections=sections, approximation=approx, edits=edits,
                  whole_circuit=whole_edits, residuals=residuals, f1=f1,
                  grouped=grouped, cosine=cosine, supervised=supervised, saes=saes, f1_tables=tables, eval_acts=acts,
                  batches=batches, occlusion=occl, over_splitting=splits_, toy=toy, playground=playground, seconds=time.perf_counter() - t0, meta=meta)
