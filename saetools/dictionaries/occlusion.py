"""Feature occlusion and over-splitting (Makelov, Lange & Nanda 2024).

The paper names two ways an SAE can fail an attribute that a supervised dictionary
(:mod:`saetools.dictionaries.supervised`) captures:

* **occlusion**: a causally relevant attribute is overshadowed by a slightly larger-norm one;
  the SAE spends its latents on the larger attribute (names) and leaves no good latent for the
  smaller one (Pos);
* **over-splitting**: a binary attribute is spread over many latents, each firing on the value
  *and* a subset of other attributes (high precision, low recall), so no single latent is good
  but a union of several is.

The paper defines both in words without a measurement recipe. The definitions below are ours,
derived from first principles; each function's docstring states its definition.

**Occlusion at a node** (:func:`code_norms`, :func:`occlusion_table`). An attribute's strength
is the RMS norm of its supervised codes over the prompts,
``norm_a = sqrt(mean_p ||u_{a, a(p)}||^2)``. Mean codes are mean-centred, so ``norm_a^2`` is
exactly the variance of the activation the attribute's codes carry: the MSE an SAE saves by
representing the attribute. That makes the RMS norm the quantity an SAE's reconstruction loss
weighs (a plain mean of norms would not be). The **norm ratio** of attribute ``a`` is
``norm_a / max_{b != a} norm_b``: below 1 the attribute is the weaker one at that node. It is
set against the attribute's **best latent F1**, the mean over the attribute's values of the
best single-latent F1 for that value (:mod:`saetools.dictionaries.interpretability`), and the
attribute's edit accuracy where the caller supplies it.

**Toy occlusion sweep** (:func:`toy_occlusion_sweep`). ``x = alpha e_A[v_A] + beta e_B[v_B] +
noise`` with random unit code vectors, ``alpha^2 + beta^2 = 1`` and ``r = alpha / beta`` swept
around 1; a small sae-lens SAE is trained per ratio (:func:`saetools.train_sae`) and each
attribute's best latent F1 is scored on held-out samples.

**Over-splitting** (:func:`over_splitting`). For a value ``v`` of a binary attribute, the union
of latents ``U`` is active on a prompt iff any latent of ``U`` is; its precision, recall and F1
against ``a = v`` are defined as for one latent. Latents are added **greedily**: each step adds
the candidate latent that maximises the union's F1 (ties: the lowest latent index), stopping at
``max_latents`` or when no candidate raises the F1. **Candidates** are the latents whose own
precision is at least ``target / (2 - target)`` (0.818 for 0.9): a union reaches F1 ``t`` only
if its precision is at least ``t / (2 - t)`` (``F1 <= 2P / (1 + P)``), and a dense, imprecise
latent would otherwise win the first step (a latent firing everywhere has F1 ``2/3`` for a
balanced binary value) and cap every later union below the target. The **count**
is the number of latents at the first step where the union's F1 reaches ``target``; it is an
upper bound on the smallest such union (finding that one is a set-cover problem). Every greedy
step scores all latents with one matrix-vector product.

**Dense baseline.** A latent that fires on every prompt has F1 ``2 n_v / (n + n_v)`` for a value
with ``n_v`` of ``n`` prompts (``2/3`` for a balanced binary value); tables report it as
``f1_dense`` so that a "best F1" near it reads as "no latent for this attribute".

See ``docs/makelov2024_supervised_dictionaries.md`` for the method and where saetools differs from
the authors' code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm

from saetools.dictionaries.interpretability import F1Table, f1_scores
from saetools.dictionaries.supervised import SupervisedDictionary

__all__ = [
    "OverSplitting",
    "ToyOcclusionConfig",
    "ToyOcclusionResult",
    "best_latent_f1",
    "code_norms",
    "greedy_union",
    "node_edit_accuracy",
    "occlusion_table",
    "over_splitting",
    "toy_occlusion_data",
    "toy_occlusion_sweep",
]


# ---- occlusion at real nodes -----------------------------------------------------------------

def _group_label(group) -> str:
    return ",".join(group)


def code_norms(dictionary: SupervisedDictionary, spec: pd.DataFrame | None = None) -> pd.DataFrame:
    """Strength of each group's supervised codes (module docstring: occlusion).

    Args:
        dictionary: a fitted supervised dictionary of one node.
        spec: prompts whose value frequencies weight the codes (``rms_norm`` and ``mean_norm``
            average over these prompts); ``None`` weighs every value equally.

    Returns:
        One row per group: ``attribute`` (the group's attributes joined by ``","``, e.g. ``"io"``
        or ``"io,pos"`` for a coupled group), ``rms_norm = sqrt(mean_p ||u_{a,a(p)}||^2)``,
        ``mean_norm = mean_p ||u_{a,a(p)}||`` and ``n_values``.
    """
    rows = []
    for g in dictionary.groups:
        norms = dictionary.codes[g].norm(dim=-1)
        if spec is None:
            weights = torch.full_like(norms, 1.0 / len(norms))
        else:
            idx = dictionary.feature_index(spec, g) - dictionary._offsets()[g]
            weights = torch.bincount(idx, minlength=len(norms)).float() / len(idx)
        rows.append({"attribute": _group_label(g), "rms_norm": float((weights * norms**2).sum().sqrt()),
                     "mean_norm": float((weights * norms).sum()), "n_values": len(norms)})
    return pd.DataFrame(rows)


def best_latent_f1(table: F1Table) -> dict[str, float]:
    """Best single-latent F1 of an attribute: per value ``v``, ``max_j F1(j, v)``; returns the
    mean over values (``best_f1``), the worst value's (``best_f1_min``) and the latent with the
    highest F1 for any value (``best_latent``, ``best_f1_max``), and ``f1_dense``, the mean over
    values of the F1 a latent firing on every prompt would get (module docstring)."""
    per_value = table.f1.max(0).values
    flat = int(table.f1.argmax())
    n = float(table.n_value.sum())
    return {"best_f1": float(per_value.mean()), "best_f1_min": float(per_value.min()),
            "best_f1_max": float(per_value.max()), "best_latent": flat // table.f1.shape[1],
            "f1_dense": float((2 * table.n_value / (n + table.n_value)).mean())}


def occlusion_table(
    supervised: Mapping[object, SupervisedDictionary],
    f1_tables: Mapping[object, Mapping[str, F1Table]],
    *,
    spec: pd.DataFrame | None = None,
    edit_accuracy: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Occlusion per node and attribute: code-norm ratio vs best latent F1 (and edit accuracy).

    Args:
        supervised: per node (a :class:`~saetools.dictionaries.nodes.Node` or any key), its
            supervised dictionary (independent parametrisation: one group per attribute).
        f1_tables: per node, per attribute (``"io"``, ``"s"``, ``"pos"``), the SAE latents' F1
            table (:func:`~saetools.dictionaries.interpretability.f1_scores` of the node's SAE
            codes against :func:`~saetools.dictionaries.supervised.attribute_values`).
        spec: prompts that weight the code norms (see :func:`code_norms`).
        edit_accuracy: optional frame with columns ``node`` (the node's ``str``), ``attribute``
            and any numeric columns (e.g. the SAE edit's accuracy); merged on those two.

    Returns:
        One row per (node, attribute): ``node`` (``str(node)``), ``attribute``, ``code_norm``
        (RMS norm), ``strongest_other`` and ``other_norm`` (the largest other attribute's RMS
        norm), ``norm_ratio = code_norm / other_norm`` (below 1: the weaker attribute),
        ``best_f1``, ``best_f1_min``, ``best_f1_max``, ``best_latent``, ``f1_dense`` (see
        :func:`best_latent_f1`), then the ``edit_accuracy`` columns.
    """
    missing = [str(n) for n in supervised if n not in f1_tables]
    if missing:
        raise ValueError(f"f1_tables has no entry for nodes {missing[:5]}; pass an F1 table per node and attribute")
    rows = []
    for node, dictionary in supervised.items():
        norms = code_norms(dictionary, spec).set_index("attribute").rms_norm
        for attr, table in f1_tables[node].items():
            if attr not in norms.index:
                raise ValueError(f"{node}: the supervised dictionary has no group {attr!r} (groups: "
                                 f"{list(norms.index)}); fit it with the independent parametrisation")
            others = norms.drop(attr)
            other = others.idxmax() if len(others) else None
            other_norm = float(others.max()) if len(others) else float("nan")
            rows.append({"node": str(node), "attribute": attr, "code_norm": float(norms[attr]),
                         "strongest_other": other, "other_norm": other_norm,
                         "norm_ratio": float(norms[attr]) / other_norm if other_norm > 0 else float("inf"),
                         **best_latent_f1(table)})
    out = pd.DataFrame(rows)
    if edit_accuracy is not None:
        if not {"node", "attribute"} <= set(edit_accuracy.columns):
            raise ValueError(f"edit_accuracy needs columns 'node' and 'attribute', got {list(edit_accuracy.columns)}")
        out = out.merge(edit_accuracy.assign(node=edit_accuracy.node.astype(str)), on=["node", "attribute"], how="left")
    return out


def node_edit_accuracy(model, batch, cf_batches: Mapping[str, object], nodes: Sequence, *,
                       acts: Mapping, cf_acts: Mapping[str, Mapping], supervised: Mapping,
                       saes: Mapping[str, Mapping] | None = None,
                       f1_tables: Mapping[str, Mapping[object, Mapping[str, F1Table]]] | None = None,
                       **edit_kwargs) -> pd.DataFrame:
    """Edit accuracy of every node on its own, per attribute, ready for :func:`occlusion_table`.

    Runs :func:`~saetools.dictionaries.control.edit_cross_section` on a one-node cross-section
    per (node, attribute in ``cf_batches``).

    Args:
        batch: the clean prompts; ``cf_batches`` per attribute, their counterfactuals.
        nodes: the nodes to edit one at a time.
        acts: per node, its vectors on ``batch``; ``cf_acts`` per attribute, per node, on the
            counterfactuals.
        supervised / saes: as for ``edit_cross_section`` (``saes``: per SAE name, per node).
        f1_tables: per SAE name, per node, per attribute, the F1 table (interpretation-aware edits).
        **edit_kwargs: passed on (e.g. ``supervised_methods=("arithmetic",)``, ``ns_aware``, ``ns_greedy``).

    Returns:
        One row per (node, attribute): ``node`` (``str``), ``attribute``, and
        ``accuracy_<dictionary>_<method>`` for every edit row of ``edit_cross_section``
        (``accuracy_none_none``, ``accuracy_supervised_arithmetic``, ``accuracy_<sae>_aware``,
        ``accuracy_<sae>_greedy``, ...), the best over ``n`` where several ``n`` were run.
    """
    from saetools.dictionaries.control import edit_cross_section
    from saetools.dictionaries.nodes import CrossSection, NodeRunner

    edit_kwargs.setdefault("runner", NodeRunner(model, batch))  # one cached clean prefix for every call
    frames = []
    for attr, cf_batch in cf_batches.items():
        for node in tqdm(nodes, desc=f"edits ({attr})", leave=False):
            tables = None if f1_tables is None else {k: {node: v[node][attr]} for k, v in f1_tables.items()}
            df = edit_cross_section(model, batch, cf_batch, CrossSection(f"{attr} at {node}", attr, (node,)),
                                    acts={node: acts[node]}, cf_acts={node: cf_acts[attr][node]},
                                    supervised={node: supervised[node]},
                                    saes=None if saes is None else {k: {node: v[node]} for k, v in saes.items()},
                                    f1_tables=tables, **edit_kwargs)
            frames.append(df.assign(node=str(node)))
    long = pd.concat(frames, ignore_index=True)
    long["column"] = "accuracy_" + long.dictionary.astype(str) + "_" + long.method.astype(str)
    wide = long.pivot_table(index=["node", "attribute"], columns="column", values="accuracy", aggfunc="max")
    return wide.reset_index().rename_axis(columns=None)


# ---- over-splitting ----------------------------------------------------------------------------

def _prf(tp: Tensor, size: Tensor, n_pos: float) -> tuple[Tensor, Tensor, Tensor]:
    precision = tp / size.clamp_min(1)
    recall = tp / max(n_pos, 1)
    f1 = torch.where(tp > 0, 2 * tp / (size + n_pos), torch.zeros_like(tp))
    return precision, recall, f1


def greedy_union(active: Bool[Tensor, "n d_sae"], target: Bool[Tensor, " n"], *, max_latents: int = 64,
                 stop_at: float | None = None, min_precision: float = 0.0) -> pd.DataFrame:
    """Greedy union of latents for one binary target (module docstring: over-splitting).

    Args:
        active: which latents fire on which prompt.
        target: the prompts where the attribute has the value.
        max_latents: most latents added.
        stop_at: stop once the union's F1 reaches this (``None``: run to ``max_latents`` or
            until no latent raises the F1).
        min_precision: only latents with at least this precision are candidates.

    Returns:
        One row per step: ``step`` (1-based), ``latent`` (added), ``union_precision``,
        ``union_recall``, ``union_f1``, and the added latent's own ``precision``, ``recall``, ``f1``.
    """
    if active.ndim != 2 or target.shape != (active.shape[0],):
        raise ValueError(f"active must be [n, d_sae] and target [n]; got {tuple(active.shape)} and {tuple(target.shape)}")
    a, y = active.bool(), target.bool()
    af, yf = a.float(), y.float()
    n_pos = float(yf.sum())
    p1, r1, f1_1 = _prf(af.T @ yf, af.sum(0), n_pos)
    union = torch.zeros_like(y)
    tp_u, size_u, best_f1 = 0.0, 0.0, 0.0
    used = p1 < min_precision  # non-candidates are masked like used latents
    rows = []
    for step in range(1, min(max_latents, a.shape[1]) + 1):
        new = af * (~union).float()[:, None]            # latent's prompts not yet in the union
        _, _, f1 = _prf(tp_u + new.T @ yf, size_u + new.sum(0), n_pos)
        f1 = f1.masked_fill(used, -1.0)
        j = int(f1.argmax())                             # argmax returns the first maximum
        if f1[j] <= best_f1:
            break
        used[j], union = True, union | a[:, j]
        tp_u, size_u, best_f1 = float((union & y).sum()), float(union.sum()), float(f1[j])
        up, ur, uf = _prf(torch.tensor(tp_u), torch.tensor(size_u), n_pos)
        rows.append({"step": step, "latent": j, "union_precision": float(up), "union_recall": float(ur),
                     "union_f1": float(uf), "precision": float(p1[j]), "recall": float(r1[j]), "f1": float(f1_1[j])})
        if stop_at is not None and best_f1 >= stop_at:
            break
    cols = ["step", "latent", "union_precision", "union_recall", "union_f1", "precision", "recall", "f1"]
    return pd.DataFrame(rows, columns=cols).astype({c: "int64" if c in ("step", "latent") else "float64" for c in cols})


@dataclass
class OverSplitting:
    """Over-splitting of one attribute by one dictionary (module docstring: over-splitting)."""

    summary: pd.DataFrame
    """Per value: ``value``, ``count`` (latents for the union to reach ``target``; NaN when the
    greedy union never does), ``best_single_f1`` (any latent, candidate or not), ``f1_dense``,
    ``final_union_f1`` (the greedy union's last F1; 0 without candidates), ``n_candidates`` and ``target``."""
    curve: pd.DataFrame
    """Per value and greedy step: the :func:`greedy_union` columns plus ``value``."""
    scatter: pd.DataFrame
    """Per value and latent that fires at least once: ``value, latent, precision, recall, f1,
    n_active, union_step`` (the step at which the greedy union took it; NaN if never)."""
    target: float = 0.9

    @property
    def count(self) -> dict[str, float]:
        """``{value: count}``."""
        return dict(zip(self.summary.value, self.summary["count"]))


def over_splitting(acts: Float[Tensor, "n d_sae"] | Bool[Tensor, "n d_sae"], labels, *,
                   values: Sequence[str] | None = None, target: float = 0.9, max_latents: int = 64,
                   min_precision: float | None = None) -> OverSplitting:
    """Latents needed for a union to reach F1 >= ``target`` for each value of an attribute.

    Args:
        acts: latent activations (a latent is active where non-zero) or a boolean activity matrix.
        labels: the attribute's value on each row (e.g. ``attribute_values(spec, "pos")``).
        values: the values analysed (default: every value; for a binary attribute, both).
        target: the union F1 to reach (the paper's 0.9).
        max_latents: most latents the greedy union adds per value.
        min_precision: candidates' least precision; default ``target / (2 - target)`` (module docstring).
    """
    if not 0 < target <= 1:
        raise ValueError(f"target must be in (0, 1], got {target}")
    min_precision = target / (2 - target) if min_precision is None else min_precision
    active = acts if acts.dtype == torch.bool else acts != 0
    active = active.cpu()
    table = f1_scores(active, labels)
    labels = np.asarray(labels).astype(str)
    values = table.values if values is None else [str(v) for v in values]
    unknown = sorted(set(values) - set(table.values))
    if unknown:
        raise ValueError(f"values {unknown} do not occur in labels (values: {table.values[:10]})")
    fires = (table.n_active > 0).numpy()
    summaries, curves, scatters = [], [], []
    for v in values:  # one iteration per attribute value (2 for a binary attribute)
        col = table.values.index(v)
        curve = greedy_union(active, torch.as_tensor(labels == v), max_latents=max_latents,
                             min_precision=min_precision).assign(value=v)
        reached = curve[curve.union_f1 >= target]
        summaries.append({"value": v, "count": float(reached.step.iloc[0]) if len(reached) else float("nan"),
                          "best_single_f1": float(table.f1[:, col].max()),
                          "f1_dense": float(2 * table.n_value[col] / (len(labels) + table.n_value[col])),
                          "final_union_f1": float(curve.union_f1.max()) if len(curve) else 0.0,
                          "n_candidates": int((table.precision[:, col] >= min_precision).sum()), "target": target})
        step = np.full(table.f1.shape[0], np.nan)
        step[curve.latent.to_numpy(dtype=np.int64)] = curve.step.to_numpy(dtype=float)
        scatters.append(pd.DataFrame({"value": v, "latent": np.flatnonzero(fires),
                                      "precision": table.precision[fires, col].numpy(),
                                      "recall": table.recall[fires, col].numpy(), "f1": table.f1[fires, col].numpy(),
                                      "n_active": table.n_active[fires].numpy(), "union_step": step[fires]}))
        curves.append(curve)
    return OverSplitting(summary=pd.DataFrame(summaries), curve=pd.concat(curves, ignore_index=True),
                         scatter=pd.concat(scatters, ignore_index=True), target=target)


# ---- toy occlusion sweep -------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class ToyOcclusionConfig:
    """The toy ``x = alpha e_A[v_A] + beta e_B[v_B] + noise`` and the SAE trained per ratio."""

    d: int = 32
    """Activation width."""
    n_values_a: int = 32
    """Values of attribute A (name-like: many values)."""
    n_values_b: int = 2
    """Values of attribute B (Pos-like: binary)."""
    ratios: tuple[float, ...] = (0.5, 0.8, 0.9, 1.0, 1.1, 1.25, 2.0)
    """The swept ``r = alpha / beta`` (with ``alpha^2 + beta^2 = 1``)."""
    noise_std: float = 0.02
    """Isotropic Gaussian noise per dimension, before the inputs are scaled to mean norm ``sqrt(d)``."""
    n_train: int = 8192
    """Training samples (values drawn uniformly and independently)."""
    n_eval: int = 4096
    """Held-out samples on which F1 is scored."""
    architecture: Literal["topk", "standard"] = "topk"
    """sae-lens architecture: ``"topk"`` (a fixed latent budget ``k`` per input) or ``"standard"`` (ReLU + L1)."""
    k: int = 1
    """TopK's latents per input. With ``k = 1`` the SAE must choose which attribute to spend its
    single latent on; the MSE favours the larger one, which is occlusion in its plainest form."""
    l1_coefficient: float = 5.0
    """L1 coefficient of the ``"standard"`` architecture."""
    d_sae: int | None = None
    """SAE width; default ``n_values_a + n_values_b`` (one latent per value: room for both
    attributes, not for every (A, B) combination)."""
    epochs: int = 8
    """Passes over the training samples."""
    batch_size: int = 256
    """Samples per step."""
    lr: float = 3e-3
    """Adam learning rate."""
    seed: int = 0
    """Seeds the code vectors, the samples and every SAE (global RNG untouched)."""

    def __post_init__(self):
        for name in ("d", "n_values_a", "n_values_b", "n_train", "n_eval", "k", "epochs", "batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ToyOcclusionConfig.{name} must be positive, got {getattr(self, name)}")
        if self.n_values_b < 2 or self.n_values_a < 2:
            raise ValueError("ToyOcclusionConfig.n_values_a and n_values_b must be >= 2")
        if not self.ratios or min(self.ratios) <= 0:
            raise ValueError(f"ToyOcclusionConfig.ratios must be non-empty and positive, got {self.ratios}")
        if self.noise_std < 0 or self.lr <= 0 or self.l1_coefficient < 0:
            raise ValueError("ToyOcclusionConfig.noise_std and l1_coefficient must be >= 0 and lr > 0")
        if self.architecture not in ("topk", "standard"):
            raise ValueError(f"ToyOcclusionConfig.architecture must be 'topk' or 'standard', got {self.architecture!r}")
        if self.d_sae is not None and self.d_sae <= 0:
            raise ValueError(f"ToyOcclusionConfig.d_sae must be positive, got {self.d_sae}")

    @property
    def width(self) -> int:
        """The SAE width used."""
        return self.d_sae if self.d_sae is not None else self.n_values_a + self.n_values_b


@dataclass
class ToyOcclusionResult:
    """Per ratio: each attribute's best latent F1 on held-out samples."""

    config: ToyOcclusionConfig
    table: pd.DataFrame
    """One row per ratio: ``ratio, alpha, beta, best_f1_a, best_f1_b`` (mean over values of the
    best latent F1), ``best_f1_b_min`` (the worse B value), ``f1_dense_b`` (the F1 of a latent
    firing on every input, ``2 / (1 + n_values_b)``: the bar a "B latent" must clear),
    ``l0``, ``fvu`` (fraction of variance unexplained on the held-out samples)."""
    meta: dict = field(default_factory=dict)


def toy_occlusion_data(cfg: ToyOcclusionConfig, ratio: float, *, n: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(x [n, d], v_A [n], v_B [n])`` for one ratio. The code vectors depend on ``cfg.seed``
    only; values and noise on ``seed``, so every ratio sees the same draws (common random numbers)."""
    g = torch.Generator().manual_seed(cfg.seed)
    e_a = torch.nn.functional.normalize(torch.randn(cfg.n_values_a, cfg.d, generator=g), dim=-1)
    e_b = torch.nn.functional.normalize(torch.randn(cfg.n_values_b, cfg.d, generator=g), dim=-1)
    g = torch.Generator().manual_seed(seed)
    v_a = torch.randint(cfg.n_values_a, (n,), generator=g)
    v_b = torch.randint(cfg.n_values_b, (n,), generator=g)
    noise = cfg.noise_std * torch.randn(n, cfg.d, generator=g)
    alpha, beta = ratio / (1 + ratio**2) ** 0.5, 1 / (1 + ratio**2) ** 0.5
    x = alpha * e_a[v_a] + beta * e_b[v_b] + noise
    return x * (cfg.d**0.5 / x.norm(dim=-1).mean()), v_a, v_b


def _toy_sae_config(cfg: ToyOcclusionConfig):
    from sae_lens import StandardTrainingSAEConfig, TopKTrainingSAEConfig

    if cfg.architecture == "topk":
        return TopKTrainingSAEConfig(d_in=cfg.d, d_sae=cfg.width, k=cfg.k)
    return StandardTrainingSAEConfig(d_in=cfg.d, d_sae=cfg.width, l1_coefficient=cfg.l1_coefficient)


def toy_occlusion_sweep(cfg: ToyOcclusionConfig = ToyOcclusionConfig(), *, progress: bool = True) -> ToyOcclusionResult:
    """Train one SAE per ratio ``alpha / beta`` and score both attributes' best latent F1.

    The weaker attribute's best F1 collapses once the other one dominates; the table shows
    where. Inputs are scaled to mean norm ``sqrt(d)`` (the paper's normalisation).
    """
    from saetools.training import train_sae

    rows = []
    for i, r in enumerate(tqdm(cfg.ratios, desc="toy occlusion", disable=not progress)):
        x, _, _ = toy_occlusion_data(cfg, r, n=cfg.n_train, seed=cfg.seed + 1)
        x_ev, va, vb = toy_occlusion_data(cfg, r, n=cfg.n_eval, seed=cfg.seed + 2)
        sae = train_sae(x, _toy_sae_config(cfg), total_samples=cfg.epochs * cfg.n_train,
                        batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed + 100 + i)
        with torch.no_grad():
            f = sae.encode(x_ev)
            fvu = float((sae.decode(f) - x_ev).pow(2).sum() / (x_ev - x_ev.mean(0)).pow(2).sum())
        fa, fb = f1_scores(f, va.numpy()), f1_scores(f, vb.numpy())
        best_b = fb.f1.max(0).values
        rows.append({"ratio": r, "alpha": r / (1 + r**2) ** 0.5, "beta": 1 / (1 + r**2) ** 0.5,
                     "best_f1_a": float(fa.f1.max(0).values.mean()), "best_f1_b": float(best_b.mean()),
                     "best_f1_b_min": float(best_b.min()), "f1_dense_b": 2 / (1 + cfg.n_values_b),
                     "l0": float((f != 0).float().sum(1).mean()), "fvu": fvu})
    return ToyOcclusionResult(config=cfg, table=pd.DataFrame(rows), meta={"config": asdict(cfg)})
