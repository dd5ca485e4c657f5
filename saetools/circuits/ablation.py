"""Head ablation on IOI: zero, mean (over the ABC distribution) and resample.

Mean ablation follows Wang et al. (2022): an ablated head's output ``z`` is replaced by its
mean over the ABC distribution, taken *per template and position* (prompts of one template
share a token layout, so position ``t`` means the same word for all of them). The ABC
reference of a clean batch keeps each prompt's template, place and object and replaces the
subject by a third name (:func:`abc_counterpart`), so layouts align row by row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from saetools.hooks import check_heads, replace_heads_hook
from saetools.tasks import ioi

__all__ = [
    "abc_counterpart",
    "template_means",
    "head_z_replacements",
    "run_with_head_ablation",
    "head_ablated_logit_diff",
    "head_ablation_sweep",
    "head_ablation_hooks",
]

Head = tuple[int, int]
Method = Literal["zero", "mean", "resample"]


def abc_counterpart(spec: pd.DataFrame, *, seed: int, names: Sequence[str] | None = None) -> pd.DataFrame:
    """The ABC prompt of every IOI prompt: the subject replaced by a third, distinct name."""
    out = ioi.counterfactual(spec, "s", seed=seed, names=names)
    out["s1"] = spec["s1"].to_numpy()
    return out


def template_means(acts: Tensor, templates: pd.Series) -> Tensor:
    """Replace each row of ``acts`` (``[batch, ...]``) by the mean over rows of its template."""
    codes, _ = pd.factorize(templates)
    codes_t = torch.as_tensor(codes, device=acts.device)
    n = int(codes.max()) + 1
    sums = torch.zeros((n, *acts.shape[1:]), device=acts.device, dtype=acts.dtype)
    sums.index_add_(0, codes_t, acts)
    counts = torch.bincount(codes_t, minlength=n).to(acts.dtype)
    return (sums / counts.view(-1, *([1] * (acts.ndim - 1))))[codes_t]


@torch.no_grad()
def head_z_replacements(
    model, batch: ioi.IOIBatch, *, method: Method, reference: ioi.IOIBatch | None = None, seed: int = 0
) -> dict[int, Tensor]:
    """Per-layer replacement values of ``hook_z`` for ``batch``, each broadcastable to
    ``[batch, pos, n_heads, d_head]`` (zeros of shape ``[1, 1, n_heads, d_head]`` for zero ablation).
    """
    if method not in ("zero", "mean", "resample"):
        raise ValueError(f"method must be 'zero', 'mean' or 'resample', got {method!r}")
    if method == "zero":
        p = next(model.parameters())
        zero = torch.zeros(1, 1, model.cfg.n_heads, model.cfg.d_head, device=p.device, dtype=p.dtype)
        return dict.fromkeys(range(model.cfg.n_layers), zero)
    if reference is None:
        raise ValueError(f"method={method!r} needs a reference batch (e.g. the ABC counterpart)")
    if reference.tokens.shape != batch.tokens.shape:
        raise ValueError("reference batch must have the same token layout as the clean batch")
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(reference.tokens, names_filter=lambda n: n in names)
    if method == "mean":
        return {layer: template_means(cache[n], reference.spec["template"]) for layer, n in enumerate(names)}
    if method == "resample":
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(reference), generator=g)
        # Resample within a template so the token layout still matches.
        codes, _ = pd.factorize(reference.spec["template"])
        order = np.argsort(codes, kind="stable")
        perm_np = perm.numpy()
        out = np.arange(len(reference))
        for c in np.unique(codes):
            rows = order[codes[order] == c]
            out[rows] = rows[np.argsort(perm_np[rows])]
        idx = torch.as_tensor(out)
        return {layer: cache[n][idx] for layer, n in enumerate(names)}


def _hooks_for(heads: Sequence[Head], replacements: dict[int, Tensor]):
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(int(layer), []).append(int(head))
    missing = sorted(set(by_layer) - set(replacements))
    if missing:
        raise ValueError(f"no replacement values for layers {missing} (they exist for {sorted(replacements)}): "
                         "compute them with head_z_replacements(model, batch, method=...) for this model")
    return [(f"blocks.{layer}.attn.hook_z", replace_heads_hook(hs, replacements[layer]))
            for layer, hs in by_layer.items()]


def head_ablation_hooks(heads: Sequence[Head], replacements: dict[int, Tensor]) -> list:
    """``(hook_name, fn)`` pairs ablating ``heads`` (apply them in a scope, e.g. ``model.hooks``)."""
    return _hooks_for(heads, replacements)


@torch.no_grad()
def run_with_head_ablation(
    model, batch: ioi.IOIBatch, heads: Sequence[Head], *, replacements: dict[int, Tensor]
) -> Tensor:
    """Logits with ``heads`` ablated (their ``z`` replaced by :func:`head_z_replacements`)."""
    check_heads(model, heads)
    return model.run_with_hooks(batch.tokens, fwd_hooks=_hooks_for(heads, replacements))


@torch.no_grad()
def head_ablated_logit_diff(
    model, batch: ioi.IOIBatch, heads: Sequence[Head], *, replacements: dict[int, Tensor]
) -> Tensor:
    """Per-prompt logit difference with ``heads`` ablated, without building full logits."""
    check_heads(model, heads)
    resid = model.run_with_hooks(batch.tokens, fwd_hooks=_hooks_for(heads, replacements),
                                 stop_at_layer=model.cfg.n_layers)
    return ioi.logit_diff_from_resid(model, resid, batch)


@torch.no_grad()
def head_ablation_sweep(
    model, batch: ioi.IOIBatch, *, method: Method = "mean", reference: ioi.IOIBatch | None = None,
    seed: int = 0, replacements: dict[int, Tensor] | None = None,
) -> pd.DataFrame:
    """Ablate each head alone; tidy table of the mean logit difference and its change.

    Pass ``replacements`` (from :func:`head_z_replacements`) to reuse values already computed
    for ``batch`` (``method`` and ``reference`` are then unused); otherwise they are computed
    from ``method`` and ``reference``.

    Columns: ``layer, head, logit_diff, delta`` (ablated minus clean mean logit difference)
    and ``frac_drop = -delta / clean``; sorted by ``frac_drop`` descending.
    """
    n_layers = model.cfg.n_layers
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(n_layers)]
    with torch.no_grad():
        final, cache = model.run_with_cache(batch.tokens, names_filter=lambda n: n in names, stop_at_layer=n_layers)
    clean = float(ioi.logit_diff_from_resid(model, final, batch).mean())
    reps = replacements
    if reps is None:
        reps = head_z_replacements(model, batch, method=method, reference=reference, seed=seed)
    rows = []
    heads = [(l, h) for l in range(n_layers) for h in range(model.cfg.n_heads)]
    for layer, head in tqdm(heads, desc="head ablation", leave=False):
        # the layers before the head's are unchanged: start from the clean residual stream there
        with torch.no_grad():
            resid = model.run_with_hooks(cache[names[layer]], start_at_layer=layer, stop_at_layer=n_layers,
                                         fwd_hooks=_hooks_for([(layer, head)], reps))
        ld = float(ioi.logit_diff_from_resid(model, resid, batch).mean())
        rows.append({"layer": layer, "head": head, "logit_diff": ld, "delta": ld - clean})
    df = pd.DataFrame(rows)
    df["frac_drop"] = -df["delta"] / clean
    df.attrs.update(clean_logit_diff=clean, method=method)
    return df.sort_values("frac_drop", ascending=False, kind="stable").reset_index(drop=True)
