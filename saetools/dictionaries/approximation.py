"""Approximation: sufficiency and necessity of a dictionary at a set of nodes.

With ``LD`` the mean logit difference over the evaluation prompts:

* ``LD_clean``: the unmodified model;
* ``LD_mean``: every node set to its mean over the evaluation prompts (mean ablation);
* ``LD_recon``: every node replaced by its dictionary reconstruction ``a_hat``;
* ``LD_nec``: every node's reconstruction removed except its mean, ``a - (a_hat - mean(a_hat))``.

**Sufficiency** ``= (LD_recon - LD_mean) / (LD_clean - LD_mean)``: 1 when the reconstructions
do everything the clean activations do, 0 when they are no better than the mean. **Necessity**
``= (LD_clean - LD_nec) / (LD_clean - LD_mean)``: 1 when removing what the dictionary explains
hurts as much as mean ablation. We keep the sign (Makelov et al.'s selection score takes
absolute values, :func:`ld_recovered`), so a reconstruction that pushes the logit difference
the wrong way scores below 0 instead of looking good.

Supervised dictionaries reconstruct from the prompts' labels (a fixed tensor per node); SAEs
reconstruct the value flowing through the node in the same run.

See ``docs/makelov2024_supervised_dictionaries.md`` for the method and where saetools differs from
the authors' code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import pandas as pd
import torch
from torch import Tensor

from saetools.dictionaries.nodes import Node, NodeRunner, node_acts
from saetools.dictionaries.supervised import SAEDictionary, SupervisedDictionary
from saetools.tasks import ioi

__all__ = ["Approximation", "approximation", "ld_recovered", "mean_logit_diff", "reconstruction", "shared_residual"]


def _ld(end: Tensor, batch: ioi.IOIBatch) -> float:
    return float(ioi.end_logit_diff(end, batch).mean())


def mean_logit_diff(model, batch: ioi.IOIBatch, replacements: Mapping[Node, object] | None = None, *,
                    runner: NodeRunner | None = None) -> float:
    """Mean logit difference with the given node replacements (none: the clean model)."""
    runner = runner if runner is not None else NodeRunner(model, batch)
    return _ld(runner(dict(replacements or {})), batch)


def reconstruction(dictionary, x: Tensor, batch: ioi.IOIBatch) -> Tensor:
    """A dictionary's reconstruction of the node vectors ``x`` of ``batch``'s prompts."""
    return _reconstruct(dictionary, x, batch.spec)


def _reconstruct(dictionary, x: Tensor, spec: pd.DataFrame) -> Tensor:
    # one path for both kinds: supervised codes read ``spec`` (and ignore ``x``), SAEs read ``x``
    return dictionary.decode(dictionary.encode(x, spec))


def shared_residual(dictionary, x: Tensor, spec: pd.DataFrame, x_twin: Tensor, twin_spec: pd.DataFrame) -> float:
    """How much of a dictionary's residual ``r = a - a_hat`` a twin prompt shares.

    ``1 - E||r - r'||^2 / (E||r||^2 + E||r'||^2)`` with ``r`` the residual of the node vectors
    ``x`` of the prompts ``spec`` and ``r'`` that of their twins (one per prompt, e.g. from
    :func:`saetools.tasks.ioi.counterfactual` or :func:`~saetools.tasks.ioi.resample_context`):
    1 when each twin leaves the same residual, about 0 when the two are unrelated (below 0 when
    they are anti-correlated, as centred interaction terms over a few values are). What the twin
    keeps and what it changes says what the residual follows: kept by a twin with the same
    attribute values in another context but lost when only IO (or only S) changes, it is a
    function of the names that the codes do not express -- an interaction between IO and S for
    additive or (name, Pos)-coupled codes.
    """
    if len(x) != len(spec) or len(x_twin) != len(twin_spec) or len(x) != len(x_twin):
        raise ValueError(f"got {len(x)} / {len(spec)} vectors / prompts and {len(x_twin)} / {len(twin_spec)} twins: "
                         "pass one vector per prompt and one twin per prompt")
    r = x - _reconstruct(dictionary, x, spec)
    r_twin = x_twin - _reconstruct(dictionary, x_twin, twin_spec)
    norms = r.pow(2).sum(-1).mean() + r_twin.pow(2).sum(-1).mean()
    return float(1 - (r - r_twin).pow(2).sum(-1).mean() / norms.clamp_min(1e-12))


def _in_flight(dictionary, batch: ioi.IOIBatch, x: Tensor, *, remove_mean_part: bool):
    """The node replacement: a tensor for supervised dictionaries, a function for SAEs."""
    if isinstance(dictionary, SupervisedDictionary):
        rec = dictionary.reconstruct(batch.spec)
        return x - (rec - rec.mean(0)) if remove_mean_part else rec
    if not isinstance(dictionary, SAEDictionary):
        raise TypeError(f"expected a SupervisedDictionary or SAEDictionary, got {type(dictionary).__name__}")
    if not remove_mean_part:
        return lambda v: dictionary.decode(dictionary.encode(v))
    mean_rec = dictionary.decode(dictionary.encode(x)).mean(0)
    return lambda v: v - (dictionary.decode(dictionary.encode(v)) - mean_rec)


@dataclass(frozen=True)
class Approximation:
    """Logit differences and the two scores for one dictionary set at one node set."""

    clean: float
    mean_ablated: float
    reconstructed: float
    necessity_ablated: float
    sufficiency: float
    necessity: float
    mse: float
    """Mean over nodes of the mean squared error ``||a - a_hat||^2 / d``."""
    variance_explained: float
    """Mean over nodes of ``1 - sum ||a - a_hat||^2 / sum ||a - mean(a)||^2``."""

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def approximation(model, batch: ioi.IOIBatch, dictionaries: Mapping[Node, object], *,
                  acts: Mapping[Node, Tensor] | None = None, clean_ld: float | None = None,
                  runner: NodeRunner | None = None) -> Approximation:
    """Sufficiency and necessity (module docstring) of ``dictionaries`` (node -> dictionary) on ``batch``.

    Args:
        acts: the nodes' clean vectors on ``batch`` if already computed (:func:`node_acts`).
        clean_ld: the clean mean logit difference if already computed.
        runner: a :class:`NodeRunner` on ``batch`` to reuse across calls (it caches the clean prefix).
    """
    if not dictionaries:
        raise ValueError("dictionaries is empty: pass at least one node -> dictionary")
    nodes = list(dictionaries)
    runner = runner if runner is not None else NodeRunner(model, batch)
    acts = dict(acts) if acts is not None else node_acts(model, batch, nodes)
    clean = clean_ld if clean_ld is not None else mean_logit_diff(model, batch, runner=runner)
    means = {n: acts[n].mean(0, keepdim=True).expand_as(acts[n]) for n in nodes}
    mean_ab = mean_logit_diff(model, batch, means, runner=runner)
    recon = mean_logit_diff(model, batch, {n: _in_flight(d, batch, acts[n], remove_mean_part=False)
                                           for n, d in dictionaries.items()}, runner=runner)
    nec = mean_logit_diff(model, batch, {n: _in_flight(d, batch, acts[n], remove_mean_part=True)
                                         for n, d in dictionaries.items()}, runner=runner)
    mses, ves = [], []
    for n, d in dictionaries.items():
        err = (acts[n] - reconstruction(d, acts[n], batch)).pow(2)
        mses.append(float(err.mean()))
        ves.append(float(1 - err.sum() / (acts[n] - acts[n].mean(0)).pow(2).sum()))
    span = clean - mean_ab
    return Approximation(clean=clean, mean_ablated=mean_ab, reconstructed=recon, necessity_ablated=nec,
                         sufficiency=(recon - mean_ab) / span, necessity=(clean - nec) / span,
                         mse=sum(mses) / len(mses), variance_explained=sum(ves) / len(ves))


def ld_recovered(result: Approximation) -> float:
    """Makelov et al.'s SAE-selection score ``|LD_recon - LD_mean| / |LD_clean - LD_mean|``."""
    return abs(result.reconstructed - result.mean_ablated) / abs(result.clean - result.mean_ablated)
