"""SAE evaluation: one call, one tidy row per SAE, every metric defined once.

Definitions follow ``docs/README.md`` (conventions) and ``docs/shrinkage.md`` (both gammas) and,
where sae-lens computes the same
quantity (``sae_lens.evals.run_evals``, v6.54.12), its current convention; the tests in
``tests/test_evals.py`` prove agreement on the same SAE and tokens. Notation: ``x`` is the
activation at the SAE's hook for one token, ``x_hat`` its reconstruction, ``f`` the latents;
``E`` is the mean over evaluated tokens. Unlike sae-lens, ratios of expectations (gamma) are
pooled over all tokens rather than averaged over batches (identical for a single batch).

Metric functions take flattened ``[n, d]`` tensors and return Python floats.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import contextmanager

import pandas as pd
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from saetools.splicing import check_sae_fits, splice

__all__ = [
    "METRIC_COLUMNS",
    "evaluate_saes",
    "explained_variance",
    "firing_frequency",
    "flat_hook_z",
    "gamma_proj",
    "gamma_saelens",
    "kl_div",
    "l0",
    "l1",
    "l2_ratio",
    "loss_recovered",
    "mse",
]

X = Float[Tensor, "n d"]

METRIC_COLUMNS = (
    "mse", "explained_variance", "fvu", "l0", "l1", "dead_frac", "dense_frac", "ce_clean",
    "ce_spliced", "ce_zero_ablated", "ce_mean_ablated", "loss_recovered_zero",
    "loss_recovered_mean", "kl_spliced", "kl_zero_ablated", "kl_score", "l2_ratio",
    "gamma_saelens", "gamma_proj",
)


def mse(x: X, x_hat: X) -> float:
    """``E ||x - x_hat||^2`` (summed over dimensions, mean over tokens; sae-lens ``mse``)."""
    return (x - x_hat).double().pow(2).sum(-1).mean().item()


def explained_variance(x: X, x_hat: X) -> float:
    """``1 - E||x - x_hat||^2 / (E||x||^2 - ||E x||^2)``; FVU is ``1 -`` this.

    The variance is the total variance about the mean (sae-lens >= 6.45.1
    ``explained_variance``; ``docs/README.md``: FVU = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2).
    """
    x, x_hat = x.double(), x_hat.double()
    var = x.pow(2).sum(-1).mean() - x.mean(0).pow(2).sum()
    return 1.0 - ((x - x_hat).pow(2).sum(-1).mean() / var).item()


def l0(f: Float[Tensor, "n d_sae"]) -> float:
    """``E #{j : f_j != 0}``: mean number of active latents per token."""
    return (f != 0).double().sum(-1).mean().item()


def l1(f: Float[Tensor, "n d_sae"]) -> float:
    """``E sum_j |f_j|``."""
    return f.double().abs().sum(-1).mean().item()


def firing_frequency(f: Float[Tensor, "n d_sae"]) -> Float[Tensor, " d_sae"]:
    """Per latent, the fraction of tokens where it is non-zero. Dead: 0; dense: above a threshold."""
    return (f != 0).double().mean(0)


def l2_ratio(x: X, x_hat: X) -> float:
    """``E ||x_hat|| / ||x||`` (tokens with ``||x|| < 1e-4`` divide by 1, as in sae-lens)."""
    n_in = x.double().norm(dim=-1)
    n_in = torch.where(n_in.abs() < 1e-4, torch.ones_like(n_in), n_in)
    return (x_hat.double().norm(dim=-1) / n_in).mean().item()


def gamma_saelens(x: X, x_hat: X) -> float:
    """``E ||x_hat||^2 / E [x_hat . x]`` = argmin_g E||x_hat / g - x||^2 (Gated SAEs paper v1).

    sae-lens's ``relative_reconstruction_bias``; < 1 means shrinkage.
    """
    x, x_hat = x.double(), x_hat.double()
    return (x_hat.pow(2).sum(-1).mean() / (x_hat * x).sum(-1).mean()).item()


def gamma_proj(x: X, x_hat: X) -> float:
    """``E [x_hat . x] / E ||x||^2`` = argmin_g E||x_hat - g x||^2 (corrected definition)."""
    x, x_hat = x.double(), x_hat.double()
    return ((x_hat * x).sum(-1).mean() / x.pow(2).sum(-1).mean()).item()


def kl_div(clean_logits: Tensor, new_logits: Tensor) -> Tensor:
    """Per token ``KL(p_clean || p_new) = sum_v p_clean (log p_clean - log p_new)`` (sae-lens ``_kl``)."""
    return F.kl_div(F.log_softmax(new_logits.double(), -1), F.softmax(clean_logits.double(), -1),
                    reduction="none").sum(-1)


def loss_recovered(ce_clean: float, ce_spliced: float, ce_ablated: float) -> float:
    """``(CE_ablated - CE_spliced) / (CE_ablated - CE_clean)`` (sae-lens ``ce_loss_score``)."""
    return (ce_ablated - ce_spliced) / (ce_ablated - ce_clean)


def _keep_mask(tokens: Tensor, ignore: Sequence[int]) -> Tensor:
    keep = torch.ones_like(tokens, dtype=torch.bool)
    for t in ignore:
        keep &= tokens != t
    return keep


def _ignore_ids(model, ignore_tokens) -> list[int]:
    if ignore_tokens != "special":
        return list(ignore_tokens)
    if model.tokenizer is None:
        return []
    from sae_lens.util import get_special_token_ids

    return list(get_special_token_ids(model.tokenizer))


@contextmanager
def flat_hook_z(sae):
    """Within this scope an SAE on ``hook_z`` takes flattened ``[..., n_heads * d_head]`` input
    (sae-lens SAEs on ``hook_z`` otherwise reshape heads themselves); restored on exit."""
    prev = getattr(sae, "hook_z_reshaping_mode", False)
    if prev:
        sae.turn_off_forward_pass_hook_z_reshaping()
    try:
        yield
    finally:
        if prev:
            sae.turn_on_forward_pass_hook_z_reshaping()


def _replace_hook(value):
    return lambda act, hook: value.to(act).expand_as(act).clone()


class _Acc:
    """Streaming float64 sums for one SAE (so evaluations stream over batches)."""

    def __init__(self, d_sae: int):
        self.n = 0
        self.fired = torch.zeros(d_sae, dtype=torch.float64)
        self.sums: dict[str, float] = {}
        self.sum_x: Tensor | None = None
        self.ce = {"clean": [], "spliced": [], "zero": [], "mean": []}
        self.kl = {"spliced": [], "zero": []}

    def add(self, key: str, value: Tensor) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + value.double().sum().item()

    def update(self, x: X, x_hat: X, f: Tensor) -> None:
        x, x_hat = x.double(), x_hat.double()
        n_in = x.norm(dim=-1)
        self.n += x.shape[0]
        self.sum_x = x.sum(0) if self.sum_x is None else self.sum_x + x.sum(0)
        self.fired += (f != 0).double().sum(0).cpu()
        self.add("sq_err", (x - x_hat).pow(2).sum(-1))
        self.add("sq_x", x.pow(2).sum(-1))
        self.add("sq_xhat", x_hat.pow(2).sum(-1))
        self.add("dot", (x * x_hat).sum(-1))
        self.add("l0", (f != 0).sum(-1))
        self.add("l1", f.abs().sum(-1))
        self.add("l2_ratio", x_hat.norm(dim=-1) / torch.where(n_in < 1e-4, torch.ones_like(n_in), n_in))

    def row(self, dense_threshold: float) -> dict[str, float]:
        n, s = self.n, self.sums
        var = s["sq_x"] / n - (self.sum_x / n).pow(2).sum().item()
        ev = 1.0 - (s["sq_err"] / n) / var
        freq = self.fired / n
        ce = {k: torch.cat(v).double().mean().item() for k, v in self.ce.items()}
        kl = {k: torch.cat(v).double().mean().item() for k, v in self.kl.items()}
        return {
            "mse": s["sq_err"] / n, "explained_variance": ev, "fvu": 1.0 - ev, "l0": s["l0"] / n, "l1": s["l1"] / n,
            "dead_frac": (freq == 0).double().mean().item(),
            "dense_frac": (freq > dense_threshold).double().mean().item(),
            "ce_clean": ce["clean"], "ce_spliced": ce["spliced"], "ce_zero_ablated": ce["zero"],
            "ce_mean_ablated": ce["mean"],
            "loss_recovered_zero": loss_recovered(ce["clean"], ce["spliced"], ce["zero"]),
            "loss_recovered_mean": loss_recovered(ce["clean"], ce["spliced"], ce["mean"]),
            "kl_spliced": kl["spliced"], "kl_zero_ablated": kl["zero"],
            "kl_score": (kl["zero"] - kl["spliced"]) / kl["zero"],
            "l2_ratio": s["l2_ratio"] / n, "gamma_saelens": s["sq_xhat"] / s["dot"], "gamma_proj": s["dot"] / s["sq_x"],
            "n_tokens": n,
        }


def _named(saes) -> dict[str, object]:
    if isinstance(saes, Mapping):
        return dict(saes)
    saes = list(saes) if isinstance(saes, Sequence) else [saes]
    return {f"{i}:{s.cfg.architecture()}@{s.cfg.metadata.hook_name}": s for i, s in enumerate(saes)}


@torch.no_grad()
def _means(model, saes: dict, tokens: Tensor, batch_size: int, ignore: list[int]) -> dict[str, Tensor]:
    hooks = sorted({s.cfg.metadata.hook_name for s in saes.values()})
    sums, count = {}, 0
    for i in range(0, tokens.shape[0], batch_size):
        chunk = tokens[i : i + batch_size].to(model.cfg.device)
        keep = _keep_mask(chunk, ignore)
        _, cache = model.run_with_cache(chunk, names_filter=hooks)
        for h in hooks:
            sums[h] = sums.get(h, 0) + cache[h][keep].double().sum(0)
        count += int(keep.sum())
    return {h: (v / count).float() for h, v in sums.items()}


def _check_inputs(model, named: dict, tokens: Tensor, batch_size: int) -> None:
    """Every problem :func:`evaluate_saes` can see before running the model, with its fix."""
    if not named:
        raise ValueError("evaluate_saes needs at least one SAE (one SAE, a list, or {name: sae})")
    if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] < 2:
        raise ValueError(f"tokens must be [batch >= 1, pos >= 2] (next-token loss needs two positions), got "
                         f"{tuple(tokens.shape)}; e.g. ioi.render(model, spec).tokens")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for sae in named.values():
        check_sae_fits(model, sae)


@torch.no_grad()
def evaluate_saes(
    model,
    saes,
    tokens: Int[Tensor, "batch pos"],
    *,
    batch_size: int = 32,
    ignore_tokens: Sequence[int] | str = "special",
    dense_threshold: float = 0.1,
) -> pd.DataFrame:
    """Evaluate SAEs on ``tokens``: reconstruction, sparsity, shrinkage and downstream loss.

    Args:
        model: a ``HookedSAETransformer`` (no SAEs need to be attached).
        saes: one SAE, a list, or ``{name: sae}``.
        tokens: evaluation prompts ``[batch, pos]``.
        batch_size: prompts per forward pass.
        ignore_tokens: token ids left out of every metric and bypassed when splicing
            (``"special"``: the tokenizer's special tokens, as sae-lens's ``run_evals``).
        dense_threshold: a latent is dense if it fires on more than this fraction of tokens.

    Returns:
        One row per SAE with columns ``sae, hook_name, architecture, d_sae, n_tokens`` and
        :data:`METRIC_COLUMNS`: the module's metric functions, plus ``ce_*`` (mean next-token
        cross-entropy: clean; SAE spliced without error term; hook zero-ablated; hook replaced
        by its mean over the evaluated tokens), ``loss_recovered_zero|mean`` (see
        :func:`loss_recovered`), ``kl_*`` (mean :func:`kl_div` against the clean run) and
        ``kl_score = (KL_zero - KL_spliced) / KL_zero``.
    """
    named = _named(saes)
    _check_inputs(model, named, tokens, batch_size)
    ignore = _ignore_ids(model, ignore_tokens)
    means = _means(model, named, tokens, batch_size, ignore)
    accs = {k: _Acc(s.cfg.d_sae) for k, s in named.items()}
    hooks = sorted({s.cfg.metadata.hook_name for s in named.values()})
    for i in range(0, tokens.shape[0], batch_size):
        chunk = tokens[i : i + batch_size].to(model.cfg.device)
        keep = _keep_mask(chunk, ignore)
        (logits, ce), cache = model.run_with_cache(chunk, names_filter=hooks, return_type="both",
                                                   loss_per_token=True)
        clean_ce, clean_logits = ce[keep[:, :-1]].cpu(), logits[keep]
        # the ablation baselines depend on the hook only: run them once per hook, not per SAE
        ablated = {}
        for hook in hooks:
            for name, value in (("zero", torch.zeros(())), ("mean", means[hook])):
                new_logits, new_ce = model.run_with_hooks(chunk, return_type="both", loss_per_token=True,
                                                          fwd_hooks=[(hook, _replace_hook(value))])
                kl = kl_div(clean_logits, new_logits[keep]).cpu() if name == "zero" else None
                ablated[hook, name] = (new_ce[keep[:, :-1]].cpu(), kl)
        for key, sae in named.items():
            acc, hook = accs[key], sae.cfg.metadata.hook_name
            x = cache[hook][keep]
            x = x.flatten(-2) if x.ndim == 3 else x
            with flat_hook_z(sae):
                f = sae.encode(x.to(sae.device))
                acc.update(x, sae.decode(f).to(x), f.to_dense() if f.is_sparse else f)
            with splice(model, sae, exclude_special_tokens=ignore or False):
                new_logits, new_ce = model(chunk, return_type="both", loss_per_token=True)
            acc.ce["clean"].append(clean_ce)
            acc.ce["spliced"].append(new_ce[keep[:, :-1]].cpu())
            acc.kl["spliced"].append(kl_div(clean_logits, new_logits[keep]).cpu())
            for name in ("zero", "mean"):
                acc.ce[name].append(ablated[hook, name][0])
            acc.kl["zero"].append(ablated[hook, "zero"][1])
    rows = [dict(sae=k, hook_name=s.cfg.metadata.hook_name, architecture=s.cfg.architecture(),
                 d_sae=s.cfg.d_sae, **accs[k].row(dense_threshold)) for k, s in named.items()]
    cols = ["sae", "hook_name", "architecture", "d_sae", "n_tokens", *METRIC_COLUMNS]
    return pd.DataFrame(rows)[cols]
