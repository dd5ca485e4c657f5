"""Control: editing an attribute at a set of nodes, scored against counterfactual patching.

To change attribute ``a`` of prompt ``p`` from ``v`` to ``v'``:

1. **Reference**: patch the nodes with their activations on the counterfactual prompt ``p'``
   (same template, only ``a`` changed) and record the top END prediction.
2. **Supervised edits**: :meth:`SupervisedDictionary.edit` (arithmetic, or the subspace variants).
3. **SAE edits** (each node with its own SAE):
   * *interpretation-aware* (:func:`sae_edit_aware`): subtract the ``n`` best latents by F1 for
     ``v`` that are active on ``p`` (clean magnitudes times decoder rows) and add the ``n``
     best for ``v'`` active on ``p'`` (counterfactual magnitudes): ``2n`` latents exchanged;
   * *interpretation-agnostic* (:func:`sae_edit_greedy`): with ``delta = a(p') - a(p)`` and
     ``Delta_j = (f_j(p') - f_j(p)) d_j``, add greedily the ``Delta_j`` that most reduce
     ``||sum - delta||``, never reusing a latent, up to ``n`` of them (we stop early when no
     latent reduces the distance).
4. **Edit accuracy**: the fraction of prompts whose top END prediction after the edit equals the
   one after counterfactual patching. The **agreement score** rescales it:
   ``(acc_edit - acc_none) / (acc_supervised - acc_none)`` clipped to ``[0, 2]``, where
   ``acc_none`` is the agreement of the unedited model with the patched one. The **distance**
   of an edit is ``||a_edit - a(p')|| / ||a(p) - a(p')||`` over the cross-section's nodes
   (median over prompts): 0 is the counterfactual activation, 1 as far as the clean one.
   A second reference shows how far the attribute values alone decide what the nodes pass on:
   patch from a prompt with the counterfactual's attribute values in *another context*
   (template, place, object; :func:`saetools.tasks.ioi.resample_context`). Where that agrees
   with patching but an edit does not, the edit misses something the attribute values
   determine -- an interaction between attributes, for additive codes.
5. **Edit magnitude, "weight removed"**: for ``x_hat = sum_j f_j d_j + b_dec`` the weight of
   latent ``j`` is ``w_j = f_j <d_j, x_hat - b_dec> / ||x_hat - b_dec||^2`` (the weights of
   the active latents sum to 1); an edit's magnitude is the summed weight of the latents it
   removes (for the greedy edit: of the chosen latents, by their clean weights). For a
   supervised edit it is the attribute's feature weight (:meth:`SupervisedDictionary.feature_weights`).

All edits are vectorised over prompts (the greedy choice over all latents at once per step).

See ``docs/makelov2024_supervised_dictionaries.md`` for the method and where saetools differs from
the authors' code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from saetools.dictionaries.interpretability import F1Table
from saetools.dictionaries.nodes import CrossSection, Node, NodeRunner
from saetools.dictionaries.supervised import SAEDictionary, SupervisedDictionary, attribute_values
from saetools.tasks import ioi

__all__ = [
    "agreement_score",
    "edit_accuracy",
    "edit_cross_section",
    "latent_weights",
    "sae_edit_aware",
    "sae_edit_greedy",
    "supervised_weight",
]


def latent_weights(dictionary: SAEDictionary, f: Float[Tensor, "n d_sae"]) -> Float[Tensor, "n d_sae"]:
    """``w_j = f_j <d_j, x_hat - b_dec> / ||x_hat - b_dec||^2`` for every prompt and latent."""
    r = dictionary.decode(f) - dictionary.b_dec
    return f * (r @ dictionary.W_dec.T) / (r * r).sum(-1, keepdim=True).clamp_min(1e-12)


def _first_active(f: Tensor, candidates: Tensor, usable: Tensor, n: int) -> Tensor:
    """Boolean ``[n_prompts, C]``: the first ``n`` candidates that are usable and active."""
    ok = (f.gather(1, candidates) != 0) & usable
    return ok & (ok.cumsum(1) <= n)


def _ranked_candidates(table: F1Table, values: np.ndarray, max_candidates: int) -> tuple[Tensor, Tensor]:
    missing = sorted(set(values) - set(table.values))
    if missing:
        raise ValueError(f"values {missing[:5]} have no F1 column; compute the F1 table on prompts that contain them")
    col = torch.tensor([table.values.index(v) for v in values])
    order = torch.argsort(table.f1.T, dim=1, descending=True, stable=True)[:, :max_candidates]  # [n_values, C]
    cand = order[col]
    usable = table.f1.T[col[:, None], cand] > 0
    return cand, usable


@torch.no_grad()
def sae_edit_aware(dictionary: SAEDictionary, x: Tensor, x_cf: Tensor, table: F1Table, values, cf_values,
                   n: int, *, max_candidates: int = 256) -> tuple[Tensor, Tensor]:
    """Interpretation-aware SAE edit (module docstring). Returns ``(x_edit, weight_removed)``.

    Args:
        table: F1 of the SAE's latents for the attribute's values (:func:`f1_scores`), computed
            on prompts where every clean and counterfactual value occurs.
        values / cf_values: the attribute's value on each clean / counterfactual prompt.
        n: latents removed (and as many added).
    """
    f, f_cf = dictionary.encode(x), dictionary.encode(x_cf)
    cand, usable = _ranked_candidates(table, np.asarray(values).astype(str), max_candidates)
    cand_cf, usable_cf = _ranked_candidates(table, np.asarray(cf_values).astype(str), max_candidates)
    sel, sel_cf = _first_active(f, cand, usable, n), _first_active(f_cf, cand_cf, usable_cf, n)
    remove = torch.zeros_like(f).scatter_add_(1, cand, f.gather(1, cand) * sel)
    add = torch.zeros_like(f_cf).scatter_add_(1, cand_cf, f_cf.gather(1, cand_cf) * sel_cf)
    w = latent_weights(dictionary, f)
    removed = (w.gather(1, cand) * sel).sum(1)
    return x - remove @ dictionary.W_dec + add @ dictionary.W_dec, removed


@torch.no_grad()
def sae_edit_greedy(dictionary: SAEDictionary, x: Tensor, x_cf: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Interpretation-agnostic (greedy) SAE edit (module docstring). Returns ``(x_edit, weight_removed)``.

    The change of ``||e + c_j d_j||^2`` for ``e = sum - delta`` is ``2 c_j <e, d_j> + c_j^2 ||d_j||^2``,
    so each step scores every latent of every prompt with one matrix product.
    """
    f, f_cf = dictionary.encode(x), dictionary.encode(x_cf)
    c = f_cf - f
    dec = dictionary.W_dec
    norms2 = (dec * dec).sum(1)
    delta = x_cf - x
    total = torch.zeros_like(x)
    chosen = torch.zeros_like(c, dtype=torch.bool)
    rows = torch.arange(x.shape[0])
    for _ in range(n):
        gain = 2 * c * ((total - delta) @ dec.T) + c * c * norms2
        gain = gain.masked_fill(chosen | (c == 0), float("inf"))
        best, j = gain.min(1)
        take = best < 0
        chosen[rows[take], j[take]] = True
        total = total + take[:, None] * c[rows, j][:, None] * dec[j]
    removed = (latent_weights(dictionary, f) * chosen).sum(1)
    return x + total, removed


def edit_accuracy(edited_end: Float[Tensor, "n vocab"], patched_end: Float[Tensor, "n vocab"]) -> float:
    """Fraction of prompts whose top END prediction agrees with counterfactual patching."""
    return float((edited_end.argmax(-1) == patched_end.argmax(-1)).float().mean())


def agreement_score(acc_edit: float, *, acc_none: float, acc_supervised: float) -> float:
    """``(acc_edit - acc_none) / (acc_supervised - acc_none)`` clipped to ``[0, 2]`` (NaN when the
    supervised edit does no better than no edit)."""
    span = acc_supervised - acc_none
    return float(np.clip((acc_edit - acc_none) / span, 0, 2)) if span > 0 else float("nan")


def supervised_weight(dictionary: SupervisedDictionary, spec: pd.DataFrame, attribute: str) -> Tensor:
    """Per prompt, the summed feature weight of the groups that contain ``attribute``."""
    w = dictionary.feature_weights(spec)
    cols = [",".join(g) for g in dictionary.groups_with(attribute)]
    return torch.tensor(w[cols].sum(1).to_numpy(), dtype=torch.float32)


def _sae_edits(per_node, f1_tables, acts, cf_acts, nodes, values, cf_values, *, ns_aware, ns_greedy):
    """``(method, n, {node: (edited vector, weight removed)})`` for each SAE edit of a section:
    interpretation-aware edits (when F1 tables are given) and greedy edits."""
    for n in ns_aware if f1_tables is not None else ():
        yield "aware", 2 * n, {nd: sae_edit_aware(per_node[nd], acts[nd], cf_acts[nd], f1_tables[nd], values,
                                                  cf_values, n) for nd in nodes}
    for n in ns_greedy:
        yield "greedy", n, {nd: sae_edit_greedy(per_node[nd], acts[nd], cf_acts[nd], n) for nd in nodes}


@torch.no_grad()
def edit_cross_section(
    model,
    batch: ioi.IOIBatch,
    cf_batch: ioi.IOIBatch,
    section: CrossSection,
    *,
    acts: Mapping[Node, Tensor],
    cf_acts: Mapping[Node, Tensor],
    supervised: Mapping[Node, SupervisedDictionary],
    saes: Mapping[str, Mapping[Node, SAEDictionary]] | None = None,
    f1_tables: Mapping[str, Mapping[Node, F1Table]] | None = None,
    supervised_methods: Sequence[str] = ("arithmetic", "zero_ablate_subspace", "mean_ablate_subspace"),
    ns_aware: Sequence[int] = (1, 2, 4, 8),
    ns_greedy: Sequence[int] = (2, 4, 8, 16),
    runner: NodeRunner | None = None,
    context_acts: Mapping[Node, Tensor] | None = None,
) -> pd.DataFrame:
    """Every edit of one cross-section, scored against counterfactual patching.

    Args:
        batch / cf_batch: clean prompts and their counterfactuals for ``section.attribute``.
        acts / cf_acts: the nodes' vectors on the clean / counterfactual prompts.
        supervised: a supervised dictionary per node.
        saes: per SAE variant name, an SAE per node; ``f1_tables`` the matching F1 tables for
            the section's attribute (needed for interpretation-aware edits).
        runner: a :class:`NodeRunner` on ``batch`` to reuse across calls (it caches the clean prefix).
        context_acts: the nodes' vectors on prompts with the counterfactual's attribute values in
            another context (:func:`saetools.tasks.ioi.resample_context` of ``cf_batch.spec``);
            adds the reference row ``("patch", "same attributes")``.

    Returns:
        One row per edit: ``section, attribute, dictionary, method, n, accuracy, agreement,
        weight_removed, logit_diff`` (mean clean-answer logit difference after the edit),
        ``distance`` (module docstring), with the reference rows ``"patch"`` and ``"none"``.
    """
    nodes, attr = section.nodes, section.attribute
    if len(cf_batch) != len(batch):
        raise ValueError(f"cf_batch has {len(cf_batch)} prompts, batch {len(batch)}: pass one counterfactual per prompt")
    run = runner if runner is not None else NodeRunner(model, batch)
    cf = {nd: cf_acts[nd] for nd in nodes}
    patched = run(cf)
    rows = []
    span = torch.stack([(acts[nd] - cf_acts[nd]).pow(2).sum(-1) for nd in nodes]).sum(0).sqrt().clamp_min(1e-12)

    def row(dictionary, method, n, reps, weight):
        end = run(reps)
        ld = ioi.end_logit_diff(end, batch).mean()
        full = {nd: reps.get(nd, acts[nd]) for nd in nodes}
        dist = torch.stack([(full[nd] - cf_acts[nd]).pow(2).sum(-1) for nd in nodes]).sum(0).sqrt() / span
        rows.append({"section": section.name, "attribute": attr, "dictionary": dictionary, "method": method, "n": n,
                     "accuracy": edit_accuracy(end, patched), "weight_removed": weight, "logit_diff": float(ld),
                     "distance": float(dist.quantile(0.5))})

    row("none", "none", 0, {}, 0.0)
    row("patch", "patch", 0, cf, float("nan"))
    if context_acts is not None:
        row("patch", "same attributes", 0, {nd: context_acts[nd] for nd in nodes}, float("nan"))
    sup_w = float(torch.stack([supervised_weight(supervised[nd], batch.spec, attr) for nd in nodes]).mean())
    for method in supervised_methods:
        edits = {nd: supervised[nd].edit(acts[nd], batch.spec, cf_batch.spec, attr, method) for nd in nodes}
        row("supervised", method, 1, edits, sup_w)
    values, cf_values = attribute_values(batch.spec, attr), attribute_values(cf_batch.spec, attr)
    for name, per_node in (saes or {}).items():
        tables = None if f1_tables is None else f1_tables.get(name)
        for method, n, out in _sae_edits(per_node, tables, acts, cf_acts, nodes, values, cf_values,
                                         ns_aware=ns_aware, ns_greedy=ns_greedy):
            row(name, method, n, {nd: e for nd, (e, _) in out.items()},
                float(torch.stack([w for _, w in out.values()]).mean()))
    df = pd.DataFrame(rows)
    acc_none = float(df.accuracy[df.method == "none"].iloc[0])
    acc_sup = float(df.accuracy[(df.dictionary == "supervised") & (df.method == "arithmetic")].max()) \
        if "arithmetic" in supervised_methods else float(df.accuracy[df.dictionary == "supervised"].max())
    df["agreement"] = [agreement_score(a, acc_none=acc_none, acc_supervised=acc_sup) for a in df.accuracy]
    return df
