"""Checks of :mod:`saetools.experiments.makelov2024_supervised_dictionaries` (the paper's claims this run can test).

Each takes a :class:`saetools.experiments.makelov2024_supervised_dictionaries.Result`; :func:`check` raises AssertionError
with the measured numbers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from saetools.experiments.protocol import claim

__all__ = ["CARRY_MIN", "EDIT_ACCURACY_MIN", "SUFFICIENCY_MIN", "check", "edit_targets"]

SUFFICIENCY_MIN = 0.9
"""Supervised dictionaries' sufficiency at every node set."""
EDIT_ACCURACY_MIN = 0.9
"""Supervised edit accuracy for IO and S at the nodes that carry them."""
CARRY_MIN = 0.1
"""A cross-section *carries* its attribute when counterfactual patching changes the top END
prediction on at least this fraction of prompts; elsewhere every edit agrees trivially."""


def edit_targets(result, *, whole_circuit: bool = False) -> pd.DataFrame:
    """The control target per IO / S cross-section that *carries* its attribute.

    One row per such cross-section of ``result.edits`` (or of ``result.whole_circuit``):
    ``section, attribute, changed`` (fraction of top predictions counterfactual patching changes,
    >= ``CARRY_MIN``), ``accuracy`` and ``distance`` (the supervised arithmetic edit's),
    ``same_attributes`` and ``same_attributes_distance`` (accuracy and distance of patching from
    the counterfactual's attribute values in another context: what the attribute values alone
    determine; NaN if not measured) and ``met`` (``accuracy >= EDIT_ACCURACY_MIN``).
    """
    e = result.whole_circuit if whole_circuit else result.edits
    rows = []
    for sec, g in e[e.attribute.isin(["io", "s"])].groupby("section", sort=False):
        changed = 1 - float(g.accuracy[g.method == "none"].iloc[0])
        if changed < CARRY_MIN:
            continue
        sup = g[(g.dictionary == "supervised") & (g.method == "arithmetic")].iloc[0]
        same = g[g.method == "same attributes"]
        rows.append({"section": sec, "attribute": g.attribute.iloc[0], "changed": changed,
                     "accuracy": float(sup.accuracy), "distance": float(sup.distance),
                     "same_attributes": float(same.accuracy.iloc[0]) if len(same) else float("nan"),
                     "same_attributes_distance": float(same.distance.iloc[0]) if len(same) else float("nan"),
                     "met": sup.accuracy >= EDIT_ACCURACY_MIN})
    return pd.DataFrame(rows, columns=["section", "attribute", "changed", "accuracy", "distance", "same_attributes",
                                       "same_attributes_distance", "met"])


def check(result) -> None:
    """The notebook's claims (raises AssertionError with the measured numbers).

    * Supervised dictionaries (mean codes) reach sufficiency >= 0.9 at every node set.
    * Some IO and some S cross-section carry their attribute (patching changes >= 10 % of top
      predictions), and the supervised arithmetic edits reach edit accuracy >= 0.9 at every such
      cross-section (:func:`edit_targets`).
    * On the whole circuit (``result.whole_circuit``) a carrying cross-section may miss that target;
      the notebook explains such a miss as an interaction of attributes that additive codes cannot
      express. Where it happens, that explanation is checked: patching from the counterfactual's
      attribute values in another context does reach the target and lands closer to the
      counterfactual activation than the edit, and at the section's nodes the dictionaries'
      residual is kept by a same-attribute twin more than by a twin with another IO or another S
      (``result.residuals``).
    * Every SAE variant is scored on the same axes: finite sufficiency / necessity at every node
      set, and edits of both methods at every cross-section.
    * The occlusion toy collapses: where B dominates (smallest alpha/beta) B has a latent with
      F1 > 0.8; where A dominates (largest alpha/beta) B's best latent is below the F1 of a latent
      that fires on every input.
    * Over-splitting is measured on the real latents of every (SAE variant, node), for both Pos values.
    """
    a = result.approximation
    sup = a[a.dictionary == "supervised"]
    bad = sup[~(sup.sufficiency >= SUFFICIENCY_MIN)]
    claim(bad.empty, f"supervised sufficiency below {SUFFICIENCY_MIN}: {bad.set_index('nodes').sufficiency.round(3).to_dict()}")
    targets = edit_targets(result)
    carried = set(targets.attribute)
    claim(carried == {"io", "s"}, f"only {sorted(carried)} carried by some cross-section: nothing to check for the rest")
    for r in targets[~targets.met].itertuples():
        raise AssertionError(f"{r.section}: supervised edit accuracy {r.accuracy:.3f} < {EDIT_ACCURACY_MIN} "
                             f"(patching changes {r.changed:.2f} of predictions)")
    for r in edit_targets(result, whole_circuit=True).query("not met").itertuples():
        claim(r.same_attributes >= EDIT_ACCURACY_MIN and r.same_attributes_distance < r.distance, (
            f"whole circuit, {r.section}: the edit misses ({r.accuracy:.3f}) and so does patching from the same "
            f"attribute values in another context ({r.same_attributes:.3f}, distance {r.same_attributes_distance:.3f} "
            f"vs the edit's {r.distance:.3f}): the attribute values do not determine the behaviour here"))
        labels = result.whole_circuit.nodes[result.whole_circuit.section == r.section].iloc[0].split(", ")
        res = result.residuals.set_index("node").loc[labels].mean(numeric_only=True)
        claim(res.shared_same_attributes > max(res.shared_io, res.shared_s), (
            f"whole circuit, {r.section}: the supervised residual is not a function of the names "
            f"(shared with a same-attribute twin {res.shared_same_attributes:.3f}, with another IO {res.shared_io:.3f}, "
            f"with another S {res.shared_s:.3f})"))
    e = result.edits
    variants = list(result.saes)
    for v in variants:
        rows = a[a.dictionary == v]
        claim(len(rows) == a.nodes.nunique(), f"{v}: approximation missing at some node sets")
        claim(np.isfinite(rows[["sufficiency", "necessity"]].to_numpy()).all(), f"{v}: non-finite scores {rows}")
        for method in ("aware", "greedy"):
            r = e[(e.dictionary == v) & (e.method == method)]
            claim(r.section.nunique() == e.section.nunique(), f"{v} {method}: edits missing at some cross-sections")
            claim(np.isfinite(r[["accuracy", "weight_removed"]].to_numpy()).all(), f"{v} {method}: non-finite edits")
    t = result.toy.table.sort_values("ratio")
    lo, hi = t.iloc[0], t.iloc[-1]
    claim(lo.best_f1_b > 0.8, f"toy: at alpha/beta={lo.ratio} B should have a latent (best F1 {lo.best_f1_b:.3f})")
    claim(hi.best_f1_b < hi.f1_dense_b, (f"toy: at alpha/beta={hi.ratio} B's best latent F1 {hi.best_f1_b:.3f} should "
                                          f"fall below a dense latent's {hi.f1_dense_b:.3f}"))
    expected = {(f"{v} {n.label}", "pos") for v in variants for n in result.saes[v]}
    claim(set(result.over_splitting) == expected, f"over-splitting missing for {expected - set(result.over_splitting)}")
    for key, res in result.over_splitting.items():
        s = res.summary
        claim(len(s) == 2 and np.isfinite(s.best_single_f1).all(), f"over-splitting {key}: {s}")
