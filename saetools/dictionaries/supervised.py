"""Supervised feature dictionaries for IOI attributes (Makelov, Lange & Nanda 2024).

For the activations ``A`` (``[n, d]``) of one node over ``n`` prompts and attributes with
values per prompt (IO name, S name, Pos = the pattern ABB / BAB):

* ``method="mean"`` (the paper's headline): bias ``u_bias = mean(A)`` and, for each attribute
  group ``g`` and value ``v``, the **mean-centred conditional mean**
  ``u_{g,v} = mean_{p : g(p) = v} (A_p - u_bias)``, as in the paper, when the groups are
  disjoint (the independent parametrization). Groups that share an attribute (the coupled
  ``(io, pos)`` and ``(s, pos)``) would each carry the shared attribute's main effect, and the
  reconstruction would count it twice; they are **backfitted** instead: each group's codes are
  the conditional means of what the other groups leave, ``A_p - u_bias - sum_{h != g} u_{h, h(p)}``,
  swept until they stop changing (Gauss-Seidel on the normal equations, so the fixed point is
  the least-squares fit of the ``lstsq`` method);
* ``method="lstsq"``: the MSE-optimal codes, the minimum-norm least-squares solution of
  ``[1 | C] X = A`` (``C`` the one-hot design of all groups), re-centred per group (each code
  minus its frequency-weighted mean, moved into the bias) so that they are comparable with the
  mean codes; reconstructions are unchanged by the re-centring.

The reconstruction is ``A_hat_p = u_bias + sum_g u_{g, g(p)}``. Parametrisations: ``"independent"``
has one group per attribute (``io``, ``s``, ``pos``); ``"coupled"`` uses the joint groups
``(io, pos)`` and ``(s, pos)`` for nodes where the name and its position interact.

A :class:`SupervisedDictionary` has the interface of an SAE where it matters: ``encode`` gives
feature activations (one-hot over the ``(group, value)`` features, so it needs the prompts'
labels), ``decode(f) = f @ W_dec + b_dec``, and ``W_dec`` / ``b_dec`` hold the codes. The same
evaluation code scores it and an SAE (:class:`SAEDictionary`).

See ``docs/makelov2024_supervised_dictionaries.md`` for the method and where saetools differs from
the authors' code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

__all__ = [
    "ATTRIBUTE_COLUMNS",
    "EDIT_METHODS",
    "PARAMETRIZATIONS",
    "SAEDictionary",
    "SupervisedDictionary",
    "attribute_values",
    "fit_supervised",
]

ATTRIBUTE_COLUMNS = {"io": "io", "s": "s", "pos": "pattern"}
"""The spec column that holds each attribute's value (Pos is the pattern: ABB = IO first)."""
PARAMETRIZATIONS = {"independent": (("io",), ("s",), ("pos",)), "coupled": (("io", "pos"), ("s", "pos"))}
EDIT_METHODS = ("arithmetic", "zero_ablate_subspace", "mean_ablate_subspace")
Group = tuple[str, ...]
_BACKFIT_SWEEPS = 200
_BACKFIT_TOL = 1e-6


def attribute_values(spec: pd.DataFrame, attribute: str) -> np.ndarray:
    """The value of ``attribute`` (``"io"``, ``"s"`` or ``"pos"``) for every prompt of ``spec``."""
    if attribute not in ATTRIBUTE_COLUMNS:
        raise ValueError(f"attribute must be one of {list(ATTRIBUTE_COLUMNS)}, got {attribute!r}")
    return spec[ATTRIBUTE_COLUMNS[attribute]].astype(str).to_numpy()


def _group_values(spec: pd.DataFrame, group: Group) -> np.ndarray:
    """Each prompt's value of ``group``; a joint value is written ``"Mary|ABB"``."""
    out = attribute_values(spec, group[0])
    for a in group[1:]:
        out = out + "|" + attribute_values(spec, a)  # elementwise on object arrays of str
    return out


@dataclass
class SupervisedDictionary:
    """Codes for every ``(group, value)`` of one node, plus the bias (see the module docstring)."""

    groups: tuple[Group, ...]
    values: dict[Group, list[str]]
    """Per group, its values in feature order (joint values are written ``"Mary|ABB"``)."""
    codes: dict[Group, Float[Tensor, "n_values d"]]
    b_dec: Float[Tensor, " d"]
    method: str = "mean"
    node: object = None
    _index: dict[Group, pd.Index] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self._index = {g: pd.Index(vals) for g, vals in self.values.items()}

    # -- SAE-like interface ------------------------------------------------------------------
    @property
    def W_dec(self) -> Float[Tensor, "n_features d"]:
        """All codes stacked in feature order (groups in order, values within a group)."""
        return torch.cat([self.codes[g] for g in self.groups])

    @property
    def feature_names(self) -> list[str]:
        """``"io=Mary"``, ``"pos=ABB"``, ``"io,pos=Mary|ABB"``, ... in feature order."""
        return [f"{','.join(g)}={v}" for g in self.groups for v in self.values[g]]

    @property
    def d_sae(self) -> int:
        return sum(len(self.values[g]) for g in self.groups)

    def _offsets(self) -> dict[Group, int]:
        sizes = np.cumsum([0] + [len(self.values[g]) for g in self.groups])
        return dict(zip(self.groups, sizes[:-1].tolist()))

    def feature_index(self, spec: pd.DataFrame, group: Group) -> Tensor:
        """Feature index of each prompt's value of ``group`` (a clear error for unseen values)."""
        vals = _group_values(spec, group)
        pos = self._index[group].get_indexer(vals)
        if (pos < 0).any():
            unseen = sorted(set(vals[pos < 0]))
            raise ValueError(f"{','.join(group)} values {unseen[:5]} were not seen when the dictionary was "
                             "fitted; fit on prompts that cover every value (e.g. the 'full' distribution)")
        return torch.as_tensor(pos, dtype=torch.long) + self._offsets()[group]

    def encode(self, x: Tensor | None, spec: pd.DataFrame) -> Float[Tensor, "n n_features"]:
        """One-hot feature activations from the prompts' labels (``x`` is ignored: supervised
        codes are a function of the attributes; it is accepted for the SAE interface)."""
        f = torch.zeros(len(spec), self.d_sae)
        rows = torch.arange(len(spec))
        for g in self.groups:
            f[rows, self.feature_index(spec, g)] = 1.0
        return f

    def decode(self, f: Float[Tensor, "n n_features"]) -> Float[Tensor, "n d"]:
        return f @ self.W_dec + self.b_dec

    def reconstruct(self, spec: pd.DataFrame) -> Float[Tensor, "n d"]:
        """``u_bias + sum_g u_{g, g(p)}`` for every prompt."""
        return self.decode(self.encode(None, spec))

    def code(self, spec: pd.DataFrame, group: Group) -> Float[Tensor, "n d"]:
        """Each prompt's code for ``group``."""
        return self.W_dec[self.feature_index(spec, group)]

    def groups_with(self, attribute: str) -> list[Group]:
        return [g for g in self.groups if attribute in g]

    # -- feature weights and edits --------------------------------------------------------------
    def feature_weights(self, spec: pd.DataFrame) -> pd.DataFrame:
        """Per prompt and group, ``w_g = <u_{g,g(p)}, r> / ||r||^2`` with ``r = A_hat_p - u_bias``
       : the share of the reconstruction a feature carries (sums to 1 over groups)."""
        r = self.reconstruct(spec) - self.b_dec
        denom = (r * r).sum(-1).clamp_min(1e-12)
        return pd.DataFrame({",".join(g): ((self.code(spec, g) * r).sum(-1) / denom).numpy() for g in self.groups})

    def edit(self, x: Float[Tensor, "n d"], spec: pd.DataFrame, counterfactual: pd.DataFrame,
             attribute: str, method: Literal["arithmetic", "zero_ablate_subspace", "mean_ablate_subspace"] = "arithmetic",
             ) -> Float[Tensor, "n d"]:
        """Change ``attribute`` of the activations ``x`` from its value in ``spec`` to its value
        in ``counterfactual``: for every group containing the attribute,

        * ``"arithmetic"``: ``x - u_old + u_new``;
        * ``"zero_ablate_subspace"``: remove ``x``'s component along ``u_old / ||u_old||``, add ``u_new``;
        * ``"mean_ablate_subspace"``: set that component to the dataset mean's
          (``<u_bias, dir>``), add ``u_new``. This is the intended operation; the authors' code
          subtracts the scalar ``<mean, dir>`` from every coordinate before projecting (so the
          component along ``dir`` becomes ``<mean, dir> * sum(dir)``), which agrees only when
          ``sum(dir) = 1``.

        The subspace variants are applied group by group (they do not commute).
        """
        if method not in EDIT_METHODS:
            raise ValueError(f"method must be one of {EDIT_METHODS}, got {method!r}")
        groups = self.groups_with(attribute)
        if not groups:
            raise ValueError(f"this dictionary has no group with attribute {attribute!r} (groups: {self.groups})")
        out = x.float().clone()
        for g in groups:
            old, new = self.code(spec, g), self.code(counterfactual, g)
            if method == "arithmetic":
                out = out - old + new
                continue
            unit = old / old.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            keep = (self.b_dec * unit).sum(-1, keepdim=True) if method == "mean_ablate_subspace" else 0.0
            out = out - ((out * unit).sum(-1, keepdim=True) - keep) * unit + new
        return out

    def variance_explained(self, x: Float[Tensor, "n d"], spec: pd.DataFrame) -> float:
        """``1 - sum ||x - A_hat||^2 / sum ||x - mean(x)||^2`` on these prompts."""
        err = (x - self.reconstruct(spec)).pow(2).sum()
        return float(1 - err / (x - x.mean(0)).pow(2).sum())


def fit_supervised(acts: Float[Tensor, "n d"], spec: pd.DataFrame, *,
                   parametrization: Literal["independent", "coupled"] | Sequence[Group] = "independent",
                   method: Literal["mean", "lstsq"] = "mean", node=None) -> SupervisedDictionary:
    """Fit a :class:`SupervisedDictionary` to one node's activations over the prompts of ``spec``.

    Args:
        acts: ``[n, d]`` activations, row ``i`` from prompt ``i`` of ``spec``.
        spec: the prompts' specs (columns ``io``, ``s``, ``pattern``).
        parametrization: ``"independent"``, ``"coupled"`` or explicit groups of attributes.
        method: ``"mean"`` (mean-centred conditional means) or ``"lstsq"`` (MSE-optimal).
        node: recorded on the result (which node it describes).
    """
    acts = acts.float()
    if acts.ndim != 2 or acts.shape[0] != len(spec):
        raise ValueError(f"acts must be [n_prompts={len(spec)}, d], got {tuple(acts.shape)}")
    if not torch.isfinite(acts).all():
        raise ValueError("acts contain NaN or inf")
    if isinstance(parametrization, str) and parametrization not in PARAMETRIZATIONS:
        raise ValueError(f"parametrization must be one of {list(PARAMETRIZATIONS)} or a list of groups, "
                         f"got {parametrization!r}")
    groups = PARAMETRIZATIONS[parametrization] if isinstance(parametrization, str) else tuple(map(tuple, parametrization))
    labels = {g: pd.factorize(_group_values(spec, g), sort=True) for g in groups}
    values = {g: [str(v) for v in uniq] for g, (_, uniq) in labels.items()}
    bias = acts.mean(0)
    codes = {}
    if method == "mean":
        ids_of = {g: torch.as_tensor(ids) for g, (ids, _) in labels.items()}
        counts = {g: torch.bincount(ids_of[g], minlength=len(u)).clamp_min(1)[:, None] for g, (_, u) in labels.items()}

        def cond_mean(g, resid):
            return torch.zeros(len(labels[g][1]), acts.shape[1]).index_add_(0, ids_of[g], resid) / counts[g]

        centred = acts - bias
        codes = {g: cond_mean(g, centred) for g in groups}
        overlapping = any(set(a) & set(b) for i, a in enumerate(groups) for b in groups[i + 1 :])
        for _ in range(_BACKFIT_SWEEPS if overlapping else 0):
            shift = 0.0
            for g in groups:  # Gauss-Seidel: each group's conditional mean of what the others leave
                others = sum(codes[h][ids_of[h]] for h in groups if h != g)
                new = cond_mean(g, centred - others)
                shift = max(shift, float((new - codes[g]).abs().max()))
                codes[g] = new
            if shift <= _BACKFIT_TOL * float(centred.abs().max()):
                break
    elif method == "lstsq":
        design = [torch.ones(len(spec), 1)] + [torch.nn.functional.one_hot(torch.as_tensor(ids), len(uniq)).float()
                                               for ids, uniq in labels.values()]
        sol = torch.linalg.lstsq(torch.cat(design, 1).double(), acts.double(), driver="gelsd").solution.float()
        bias, start = sol[0].clone(), 1
        for g, (ids, uniq) in labels.items():
            block = sol[start : start + len(uniq)]
            start += len(uniq)
            freq = torch.bincount(torch.as_tensor(ids), minlength=len(uniq)).float() / len(ids)
            centre = freq @ block
            codes[g], bias = block - centre, bias + centre
    else:
        raise ValueError(f"method must be 'mean' or 'lstsq', got {method!r}")
    return SupervisedDictionary(groups=groups, values=values, codes=codes, b_dec=bias, method=method, node=node)


class SAEDictionary:
    """An SAE seen through the dictionary interface (``encode(x, spec)`` ignores ``spec``).

    Works for any sae-lens SAE whose input is the node's vector (per-node IOI SAEs, or an
    attention SAE on a ``z`` node of all heads). ``W_dec`` holds the *effective* decoder rows,
    ``decode(f) = f @ W_dec + b_dec``, also for TopK SAEs that rescale activations by decoder
    norms, so that edits and latent weights can be computed from ``f`` and ``W_dec`` alone.
    """

    def __init__(self, sae, node=None):
        if not hasattr(sae, "encode") or not hasattr(sae, "W_dec"):
            raise TypeError(f"expected a sae-lens SAE, got {type(sae).__name__}")
        self.sae, self.node = sae, node

    @property
    def W_dec(self) -> Float[Tensor, "d_sae d"]:
        w = self.sae.W_dec.detach().float().cpu()
        if getattr(self.sae.cfg, "rescale_acts_by_decoder_norm", False):
            w = w / w.norm(dim=-1, keepdim=True)
        return w

    @property
    def b_dec(self) -> Float[Tensor, " d"]:
        return self.sae.b_dec.detach().float().cpu()

    @property
    def d_sae(self) -> int:
        return self.sae.cfg.d_sae

    @torch.no_grad()
    def encode(self, x: Float[Tensor, "n d"], spec: pd.DataFrame | None = None) -> Float[Tensor, "n d_sae"]:
        if x.ndim != 2 or x.shape[1] != self.sae.cfg.d_in:
            raise ValueError(f"x must be [n, d_in={self.sae.cfg.d_in}], got {tuple(x.shape)}")
        return self.sae.encode(x.to(self.sae.W_dec.device, self.sae.W_dec.dtype)).float().cpu()

    @torch.no_grad()
    def decode(self, f: Float[Tensor, "n d_sae"]) -> Float[Tensor, "n d"]:
        return f.float().cpu() @ self.W_dec + self.b_dec

    def reconstruct_acts(self, x: Float[Tensor, "n d"]) -> Float[Tensor, "n d"]:
        return self.decode(self.encode(x))
