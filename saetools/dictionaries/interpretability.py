"""Interpretability of dictionary latents against IOI attribute values.

On a set of prompts, latent ``j`` is **active** iff its activation is non-zero (ReLU / gated:
``f_j > 0``; TopK, including the no-ReLU variant: selected). For latent ``j`` and attribute
value ``v``:

* precision ``= |active_j and a = v| / |active_j|``;
* recall ``= |active_j and a = v| / |a = v|``;
* F1 ``= 2 P R / (P + R)``, and 0 where it is undefined (a latent that never fires).

All three are computed for every (latent, value) pair at once with one matrix product of the
activity and one-hot label matrices. :func:`grouped_f1` scores a latent against the union of
its best ``m <= 10`` values (latents that encode a *group* of names); :func:`mean_max_cosine`
compares supervised codes with SAE decoder rows.

See ``docs/makelov2024_supervised_dictionaries.md`` for the method and where saetools differs from
the authors' code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float
from torch import Tensor

__all__ = ["F1Table", "best_f1", "f1_scores", "grouped_f1", "mean_max_cosine"]


@dataclass(frozen=True)
class F1Table:
    """Precision, recall and F1 of every latent for every value of one attribute."""

    values: list[str]
    precision: Float[Tensor, "d_sae n_values"]
    recall: Float[Tensor, "d_sae n_values"]
    f1: Float[Tensor, "d_sae n_values"]
    true_positives: Float[Tensor, "d_sae n_values"]
    n_active: Float[Tensor, " d_sae"]
    n_value: Float[Tensor, " n_values"]

    def ranking(self, value: str) -> Tensor:
        """Latents sorted by F1 for ``value``, best first."""
        return torch.argsort(self.f1[:, self.values.index(value)], descending=True, stable=True)

    def best(self) -> pd.DataFrame:
        """Per value: the best latent, its F1, precision and recall."""
        j = self.f1.argmax(0)
        cols = torch.arange(len(self.values))
        return pd.DataFrame({"value": self.values, "latent": j.numpy(), "f1": self.f1[j, cols].numpy(),
                             "precision": self.precision[j, cols].numpy(), "recall": self.recall[j, cols].numpy()})

    def to_frame(self) -> pd.DataFrame:
        """Long table ``latent, value, precision, recall, f1`` (every pair)."""
        d, v = self.f1.shape
        return pd.DataFrame({"latent": np.repeat(np.arange(d), v), "value": self.values * d,
                             "precision": self.precision.flatten().numpy(), "recall": self.recall.flatten().numpy(),
                             "f1": self.f1.flatten().numpy()})


def f1_scores(acts: Float[Tensor, "n d_sae"] | Bool[Tensor, "n d_sae"], labels) -> F1Table:
    """Precision / recall / F1 of every latent for every value in ``labels`` (one per row of ``acts``)."""
    active = (acts != 0).float() if acts.dtype != torch.bool else acts.float()
    labels = np.asarray(labels).astype(str)
    if active.shape[0] != len(labels):
        raise ValueError(f"acts has {active.shape[0]} rows but labels has {len(labels)}")
    ids, uniq = pd.factorize(labels, sort=True)
    onehot = torch.nn.functional.one_hot(torch.as_tensor(ids), len(uniq)).float()
    tp = active.T @ onehot
    n_active, n_value = active.sum(0), onehot.sum(0)
    precision = tp / n_active.clamp_min(1)[:, None]
    recall = tp / n_value.clamp_min(1)[None, :]
    f1 = torch.where(tp > 0, 2 * tp / (n_active[:, None] + n_value[None, :]), torch.zeros_like(tp))
    return F1Table(values=[str(u) for u in uniq], precision=precision, recall=recall, f1=f1,
                   true_positives=tp, n_active=n_active, n_value=n_value)


def best_f1(table: F1Table) -> Float[Tensor, " n_values"]:
    """The best latent's F1 for each value."""
    return table.f1.max(0).values


def grouped_f1(table: F1Table, *, max_group: int = 10) -> pd.DataFrame:
    """Per latent: F1 against the union of its top-``m`` values by F1, best over ``m <= max_group``.

    Values of one attribute are disjoint events, so the union's true positives and size are
    sums; everything is vectorised over latents and ``m``.
    """
    m = min(max_group, len(table.values))
    order = torch.argsort(table.f1, dim=1, descending=True, stable=True)[:, :m]
    tp = torch.gather(table.true_positives, 1, order).cumsum(1)
    size = table.n_value[order].cumsum(1)
    f1 = torch.where(tp > 0, 2 * tp / (table.n_active[:, None] + size), torch.zeros_like(tp))
    best = f1.max(1)
    return pd.DataFrame({"latent": np.arange(len(f1)), "grouped_f1": best.values.numpy(),
                         "group_size": best.indices.numpy() + 1, "single_f1": f1[:, 0].numpy()})


def mean_max_cosine(codes: Float[Tensor, "n_values d"], decoder: Float[Tensor, "d_sae d"]) -> Float[Tensor, " n_values"]:
    """For each supervised code, the largest cosine with any decoder row (average it for the
    paper's "mean-max cosine similarity")."""
    a = codes / codes.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    b = decoder / decoder.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return (a @ b.T).max(1).values
